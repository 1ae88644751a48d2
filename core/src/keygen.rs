//! The key generator: public, relinearization and Galois keys from a secret key, one key per
//! call so that a browser can stream each to the server and drop it. Client side only (feature
//! `secret-key`).
//!
//! Secret intermediates (copies of `s`, `s^2`, `s(X^g)`, the errors) are [`SecretPoly`]s and the
//! CSPRNG is a [`SecretRng`]: all wiped when dropped. No `a*s` is ever held on its own: each `b`
//! starts as its error and takes `a*(-s)` by a multiply-accumulate in place.

use std::sync::Arc;

use crate::context::Context;
use crate::error::CkksError;
use crate::keys::{KeyKind, PublicKey, SwitchingKey};
use crate::rns::{RnsBasis, RnsPoly};
use crate::sampler::{
    declassify, expand_uniform, gaussian, os_seed, secure_rng, small_to_rns, SecretPoly, SecretRng,
};
use crate::secret_key::SecretKey;

/// Makes keys from a secret key, one at a time.
pub struct KeyGenerator<'a> {
    ctx: &'a Arc<Context>,
    sk: &'a SecretKey,
    rng: SecretRng,
}

impl<'a> KeyGenerator<'a> {
    pub fn new(ctx: &'a Arc<Context>, sk: &'a SecretKey) -> Self {
        Self {
            ctx,
            sk,
            rng: secure_rng(),
        }
    }

    /// A fresh error in NTT form over `basis`.
    fn error(&mut self, basis: &RnsBasis) -> SecretPoly {
        let e = gaussian(&mut self.rng, self.ctx.n());
        let mut p = small_to_rns(basis, &e);
        basis.forward(&mut p);
        p
    }

    pub fn public_key(&mut self) -> PublicKey {
        let level = self.ctx.max_level();
        let basis = &self.ctx.level_ctx(level).q;
        let seed = os_seed();
        let a = expand_uniform(basis, &seed, 0);
        let mut neg_s = self.sk.at_q(level);
        basis.neg_assign(&mut neg_s);
        // b = e - a*s
        let mut b = self.error(basis);
        basis.mul_add_assign(&mut b, &a, &neg_s);
        PublicKey {
            b: declassify(b),
            a,
            seed,
            fingerprint: *self.ctx.fingerprint(),
        }
    }

    /// Relinearization key serving ciphertext levels up to `level`.
    pub fn relin_key(&mut self, level: usize) -> Result<SwitchingKey, CkksError> {
        self.ctx.check_level(level)?;
        let basis = &self.ctx.made_key_ctx(level).qp;
        let s = self.sk.at_qp(self.ctx, level);
        let s2 = SecretPoly::new(basis.mul(&s, &s));
        Ok(self.switching_key(KeyKind::Relin, level, s, &s2))
    }

    /// Key for the automorphism X -> X^g (g odd), serving levels up to `level`.
    pub fn galois_key(&mut self, g: u64, level: usize) -> Result<SwitchingKey, CkksError> {
        self.ctx.check_level(level)?;
        let two_n = 2 * self.ctx.n() as u64;
        if g.is_multiple_of(2) || g >= two_n {
            return Err(CkksError::MissingGaloisKey(g));
        }
        let basis = &self.ctx.made_key_ctx(level).qp;
        let s = self.sk.at_qp(self.ctx, level);
        let sg = SecretPoly::new(basis.permute(&s, &self.ctx.permutation(g)));
        Ok(self.switching_key(KeyKind::Galois(g), level, s, &sg))
    }

    /// Key for a left rotation by `r` slots.
    pub fn rotation_key(&mut self, r: i64, level: usize) -> Result<SwitchingKey, CkksError> {
        self.galois_key(self.ctx.galois_element(r), level)
    }

    pub fn conjugation_key(&mut self, level: usize) -> Result<SwitchingKey, CkksError> {
        self.galois_key(self.ctx.conjugation_element(), level)
    }

    /// A key from `s` to `s_new`, both in NTT form over Q_level ++ P. `s` is taken to be negated
    /// in place (and wiped when done).
    fn switching_key(
        &mut self,
        kind: KeyKind,
        level: usize,
        s: SecretPoly,
        s_new: &RnsPoly,
    ) -> SwitchingKey {
        let ctx = self.ctx;
        let lc = ctx.made_key_ctx(level);
        let basis = &lc.qp;
        let digits = lc.mod_up.len();
        let seed = os_seed();
        let a = SwitchingKey::expand_a(ctx, level, digits, &seed);
        let mut neg_s = s;
        basis.neg_assign(&mut neg_s);
        // P mod q_i for the gadget term
        let special = &ctx.p_basis().moduli()[..lc.layout.special];
        let p_mod_q: Vec<u64> = basis.moduli()[..level + 1]
            .iter()
            .map(|m| {
                special
                    .iter()
                    .fold(1u64, |acc, p| m.mul(acc, m.reduce(p.value())))
            })
            .collect();
        let mut b = Vec::with_capacity(digits);
        for (j, a_j) in a.iter().enumerate() {
            // b_j = e_j - a_j*s + P*g_j*s_new
            let mut b_j = self.error(basis);
            basis.mul_add_assign(&mut b_j, a_j, &neg_s);
            for i in lc.mod_up[j].range.clone() {
                let m = *basis.modulus(i);
                let (w, ws) = (p_mod_q[i], m.shoup(p_mod_q[i]));
                let src = s_new.limb(i);
                for (x, &v) in b_j.limb_mut(i).iter_mut().zip(src) {
                    *x = m.add(*x, m.mul_shoup(v, w, ws));
                }
            }
            b.push(declassify(b_j));
        }
        SwitchingKey {
            kind,
            level,
            layout: lc.layout,
            b,
            a,
            seed,
            fingerprint: *ctx.fingerprint(),
        }
    }
}

/// The polynomials of keys, which are public (the server holds them): for tests that look for
/// `a*s` and the keys' errors, recomputed from these and a copy of the secret key, in freed memory.
#[doc(hidden)]
pub mod inspect {
    use crate::keys::{PublicKey, SwitchingKey};
    use crate::rns::RnsPoly;

    /// `(b, a)`, NTT form over Q_L.
    pub fn public_key_parts(pk: &PublicKey) -> (&RnsPoly, &RnsPoly) {
        (&pk.b, &pk.a)
    }

    /// `(b_j, a_j)` for every digit j, NTT form over Q_level ++ P.
    pub fn switching_key_parts(key: &SwitchingKey) -> (&[RnsPoly], &[RnsPoly]) {
        (&key.b, &key.a)
    }
}
