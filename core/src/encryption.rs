//! Encryption with the public key or the secret key, and decryption (the secret-key operations
//! only with the feature `secret-key`).
//!
//! Secret-key encryption makes `c1` the expansion of a fresh seed, so a fresh ciphertext travels
//! as `c0` plus 32 bytes: half the upload of a public-key encryption.

use rand_chacha::ChaCha20Rng;

use crate::ciphertext::Ciphertext;
use crate::context::Context;
use crate::error::CkksError;
use crate::keys::PublicKey;
use crate::plaintext::Plaintext;
use crate::rns::RnsPoly;
#[cfg(feature = "secret-key")]
use crate::sampler::{expand_uniform, os_seed};
use crate::sampler::{gaussian, secure_rng, small_to_rns, ternary};
#[cfg(feature = "secret-key")]
use crate::secret_key::SecretKey;

pub struct Encryptor<'a> {
    ctx: &'a Context,
    rng: ChaCha20Rng,
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

    fn small_ntt(&self, level: usize, coeffs: &[i64]) -> RnsPoly {
        let basis = &self.ctx.level_ctx(level).q;
        let mut p = small_to_rns(basis, coeffs);
        basis.forward(&mut p);
        p
    }

    /// `(v*b + e0 + m, v*a + e1)` at the plaintext's level.
    pub fn encrypt_pk(&mut self, pt: &Plaintext, pk: &PublicKey) -> Result<Ciphertext, CkksError> {
        self.check(&pt.fingerprint)?;
        self.check(&pk.fingerprint)?;
        let level = pt.level;
        let basis = &self.ctx.level_ctx(level).q;
        let n = self.ctx.n();
        let v: Vec<i64> = ternary(&mut self.rng, n)
            .into_iter()
            .map(i64::from)
            .collect();
        let v = self.small_ntt(level, &v);
        let e0 = gaussian(&mut self.rng, n);
        let e1 = gaussian(&mut self.rng, n);
        let mut c0 = self.small_ntt(level, &e0);
        let mut c1 = self.small_ntt(level, &e1);
        let b = pk.b.slice_limbs(0..level + 1);
        let a = pk.a.slice_limbs(0..level + 1);
        basis.mul_add_assign(&mut c0, &v, &b);
        basis.mul_add_assign(&mut c1, &v, &a);
        basis.add_assign(&mut c0, &pt.poly);
        Ok(Ciphertext {
            c: vec![c0, c1],
            level,
            scale: pt.scale,
            fingerprint: *self.ctx.fingerprint(),
            seed: None,
        })
    }

    /// `(-a*s + e + m, a)` with `a` the expansion of a fresh seed kept in the ciphertext.
    #[cfg(feature = "secret-key")]
    pub fn encrypt_sk(&mut self, pt: &Plaintext, sk: &SecretKey) -> Result<Ciphertext, CkksError> {
        self.check(&pt.fingerprint)?;
        self.check(sk.fingerprint())?;
        let level = pt.level;
        let basis = &self.ctx.level_ctx(level).q;
        let seed = os_seed();
        let a = expand_uniform(basis, &seed, 0);
        let e = gaussian(&mut self.rng, self.ctx.n());
        let mut c0 = self.small_ntt(level, &e);
        let mut as_ = a.clone();
        basis.mul_assign(&mut as_, &sk.at_q(level));
        basis.sub_assign(&mut c0, &as_);
        basis.add_assign(&mut c0, &pt.poly);
        Ok(Ciphertext {
            c: vec![c0, a],
            level,
            scale: pt.scale,
            fingerprint: *self.ctx.fingerprint(),
            seed: Some(seed),
        })
    }
}

/// `c0 + c1*s (+ c2*s^2)`.
#[cfg(feature = "secret-key")]
pub fn decrypt(ctx: &Context, ct: &Ciphertext, sk: &SecretKey) -> Result<Plaintext, CkksError> {
    if &ct.fingerprint != ctx.fingerprint() || sk.fingerprint() != ctx.fingerprint() {
        return Err(CkksError::ParamsMismatch);
    }
    ctx.check_level(ct.level)?;
    let basis = &ctx.level_ctx(ct.level).q;
    let s = sk.at_q(ct.level);
    let mut m = ct.c[ct.degree()].clone();
    for c in ct.c[..ct.degree()].iter().rev() {
        basis.mul_assign(&mut m, &s);
        basis.add_assign(&mut m, c);
    }
    let mut s = s;
    zeroize::Zeroize::zeroize(&mut s);
    Ok(Plaintext {
        poly: m,
        level: ct.level,
        scale: ct.scale,
        fingerprint: *ctx.fingerprint(),
    })
}
