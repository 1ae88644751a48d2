//! Encryption with the public key or the secret key, and decryption (the secret-key operations
//! only with the feature `secret-key`).
//!
//! Secret-key encryption makes `c1` the expansion of a fresh seed, so a fresh ciphertext travels
//! as `c0` plus 32 bytes: half the upload of a public-key encryption.

use crate::ciphertext::Ciphertext;
use crate::context::Context;
use crate::error::CkksError;
use crate::keys::PublicKey;
use crate::plaintext::Plaintext;
use crate::sampler::{
    declassify, gaussian, secure_rng, small_to_rns, ternary, SecretPoly, SecretRng,
};
#[cfg(feature = "secret-key")]
use crate::sampler::{expand_uniform, os_seed};
#[cfg(feature = "secret-key")]
use crate::secret_key::SecretKey;

pub struct Encryptor<'a> {
    ctx: &'a Context,
    /// Draws the encryption randomness; wiped on drop.
    rng: SecretRng,
}

impl<'a> Encryptor<'a> {
    pub fn new(ctx: &'a Context) -> Self {
        Self {
            ctx,
            rng: secure_rng(),
        }
    }

    fn check(&self, fp: &[u8; 32]) -> Result<(), CkksError> {
        if fp != self.ctx.fingerprint() {
            return Err(CkksError::ParamsMismatch);
        }
        Ok(())
    }

    /// Small secret coefficients (randomness, an error) in NTT form over Q_level.
    fn small_ntt<T: Copy + Into<i64>>(&self, level: usize, coeffs: &[T]) -> SecretPoly {
        let basis = &self.ctx.level_ctx(level).q;
        let mut p = small_to_rns(basis, coeffs);
        basis.forward(&mut p);
        p
    }

    /// `(v*b + e0 + m, v*a + e1)` at the plaintext's level. `v`, `e0` and `e1` are wiped.
    pub fn encrypt_pk(&mut self, pt: &Plaintext, pk: &PublicKey) -> Result<Ciphertext, CkksError> {
        self.check(&pt.fingerprint)?;
        self.check(&pk.fingerprint)?;
        let level = pt.level;
        let basis = &self.ctx.level_ctx(level).q;
        let n = self.ctx.n();
        let (v, e0, e1) = (
            ternary(&mut self.rng, n),
            gaussian(&mut self.rng, n),
            gaussian(&mut self.rng, n),
        );
        let v = self.small_ntt(level, &v);
        let mut c0 = self.small_ntt(level, &e0);
        let mut c1 = self.small_ntt(level, &e1);
        let b = pk.b.slice_limbs(0..level + 1);
        let a = pk.a.slice_limbs(0..level + 1);
        basis.mul_add_assign(&mut c0, &v, &b);
        basis.mul_add_assign(&mut c1, &v, &a);
        basis.add_assign(&mut c0, &pt.poly);
        Ok(Ciphertext {
            c: vec![declassify(c0), declassify(c1)],
            level,
            scale: pt.scale,
            fingerprint: *self.ctx.fingerprint(),
            seed: None,
        })
    }

    /// `(-a*s + e + m, a)` with `a` the expansion of a fresh seed kept in the ciphertext. `e` and
    /// the copy of `s` are wiped; no `a*s` is held on its own (`c0` starts as `e` and takes
    /// `a*(-s)` in place).
    #[cfg(feature = "secret-key")]
    pub fn encrypt_sk(&mut self, pt: &Plaintext, sk: &SecretKey) -> Result<Ciphertext, CkksError> {
        self.check(&pt.fingerprint)?;
        self.check(sk.fingerprint())?;
        let level = pt.level;
        let basis = &self.ctx.level_ctx(level).q;
        let seed = os_seed();
        let a = expand_uniform(basis, &seed, 0);
        let mut neg_s = sk.at_q(level);
        basis.neg_assign(&mut neg_s);
        let e = gaussian(&mut self.rng, self.ctx.n());
        let mut c0 = self.small_ntt(level, &e);
        basis.mul_add_assign(&mut c0, &a, &neg_s);
        basis.add_assign(&mut c0, &pt.poly);
        Ok(Ciphertext {
            c: vec![declassify(c0), a],
            level,
            scale: pt.scale,
            fingerprint: *self.ctx.fingerprint(),
            seed: Some(seed),
        })
    }
}

/// `c0 + c1*s (+ c2*s^2)`. The copy of `s` and the partial sums (`c1*s`, `c2*s + c1`, ...) are
/// wiped. The result is returned as it is: together with the ciphertext it determines `c1*s` (the
/// nature of CKKS decryption), so a caller that keeps it long or passes it on should treat it as
/// secret.
#[cfg(feature = "secret-key")]
pub fn decrypt(ctx: &Context, ct: &Ciphertext, sk: &SecretKey) -> Result<Plaintext, CkksError> {
    if &ct.fingerprint != ctx.fingerprint() || sk.fingerprint() != ctx.fingerprint() {
        return Err(CkksError::ParamsMismatch);
    }
    ctx.check_level(ct.level)?;
    let basis = &ctx.level_ctx(ct.level).q;
    let s = sk.at_q(ct.level);
    // Horner: m = (c_d*s + c_(d-1))*s + ... + c0, each product in a fresh buffer (no `mul_assign`,
    // which would free the previous partial sum unwiped); the previous one is wiped on reassignment.
    let (last, rest) = ct.c.split_last().expect("a ciphertext has polynomials");
    let mut m = SecretPoly::new(last.clone());
    for c in rest.iter().rev() {
        m = SecretPoly::new(basis.mul(&m, &s));
        basis.add_assign(&mut m, c);
    }
    Ok(Plaintext {
        poly: declassify(m),
        level: ct.level,
        scale: ct.scale,
        fingerprint: *ctx.fingerprint(),
    })
}
