//! The key generator: public, relinearization and Galois keys from a secret key, one key per
//! call so that a browser can stream each to the server and drop it. Client side only (feature
//! `secret-key`).

use std::sync::Arc;

use rand_chacha::ChaCha20Rng;
use zeroize::Zeroize;

use crate::context::Context;
use crate::error::CkksError;
use crate::keys::{KeyKind, PublicKey, SwitchingKey};
use crate::rns::{RnsBasis, RnsPoly};
use crate::sampler::{expand_uniform, gaussian, os_seed, secure_rng, small_to_rns};
use crate::secret_key::SecretKey;

/// Makes keys from a secret key, one at a time.
pub struct KeyGenerator<'a> {
    ctx: &'a Arc<Context>,
    sk: &'a SecretKey,
    rng: ChaCha20Rng,
}

impl<'a> KeyGenerator<'a> {
    pub fn new(ctx: &'a Arc<Context>, sk: &'a SecretKey) -> Self {
        Self {
            ctx,
            sk,
            rng: secure_rng(),
        }
    }

    fn error(&mut self, basis: &RnsBasis) -> RnsPoly {
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
        let mut b = self.error(basis);
        let mut as_ = a.clone();
        let mut s = self.sk.at_q(level);
        basis.mul_assign(&mut as_, &s);
        s.zeroize();
        basis.sub_assign(&mut b, &as_);
        PublicKey {
            b,
            a,
            seed,
            fingerprint: *self.ctx.fingerprint(),
        }
    }

    /// Relinearization key serving ciphertext levels up to `level`.
    pub fn relin_key(&mut self, level: usize) -> Result<SwitchingKey, CkksError> {
        self.ctx.check_level(level)?;
        let basis = self.ctx.level_ctx(level).qp.clone();
        let mut s2 = self.sk.at_qp(self.ctx, level);
        let s = s2.clone();
        basis.mul_assign(&mut s2, &s);
        let key = self.switching_key(KeyKind::Relin, level, &s2);
        s2.zeroize();
        let mut s = s;
        s.zeroize();
        Ok(key)
    }

    /// Key for the automorphism X -> X^g (g odd), serving levels up to `level`.
    pub fn galois_key(&mut self, g: u64, level: usize) -> Result<SwitchingKey, CkksError> {
        self.ctx.check_level(level)?;
        let two_n = 2 * self.ctx.n() as u64;
        if g.is_multiple_of(2) || g >= two_n {
            return Err(CkksError::MissingGaloisKey(g));
        }
        let basis = self.ctx.level_ctx(level).qp.clone();
        let mut s = self.sk.at_qp(self.ctx, level);
        let mut sg = basis.permute(&s, &self.ctx.permutation(g));
        s.zeroize();
        let key = self.switching_key(KeyKind::Galois(g), level, &sg);
        sg.zeroize();
        Ok(key)
    }

    /// Key for a left rotation by `r` slots.
    pub fn rotation_key(&mut self, r: i64, level: usize) -> Result<SwitchingKey, CkksError> {
        self.galois_key(self.ctx.galois_element(r), level)
    }

    pub fn conjugation_key(&mut self, level: usize) -> Result<SwitchingKey, CkksError> {
        self.galois_key(self.ctx.conjugation_element(), level)
    }

    /// `s_new` in NTT form over Q_level ++ P.
    fn switching_key(&mut self, kind: KeyKind, level: usize, s_new: &RnsPoly) -> SwitchingKey {
        let ctx = self.ctx;
        let lc = ctx.level_ctx(level);
        let basis = &lc.qp;
        let digits = ctx.params().digits_at(level);
        let seed = os_seed();
        let a = SwitchingKey::expand_a(ctx, level, digits, &seed);
        let mut s = self.sk.at_qp(ctx, level);
        // P mod q_i for the gadget term
        let p_mod_q: Vec<u64> =
            lc.q.moduli()
                .iter()
                .map(|m| {
                    ctx.p_basis()
                        .moduli()
                        .iter()
                        .fold(1u64, |acc, p| m.mul(acc, m.reduce(p.value())))
                })
                .collect();
        let mut b = Vec::with_capacity(digits);
        for (j, a_j) in a.iter().enumerate() {
            let mut b_j = self.error(basis);
            let mut as_ = a_j.clone();
            basis.mul_assign(&mut as_, &s);
            basis.sub_assign(&mut b_j, &as_);
            for i in lc.mod_up[j].range.clone() {
                let m = *basis.modulus(i);
                let (w, ws) = (p_mod_q[i], m.shoup(p_mod_q[i]));
                let src = s_new.limb(i);
                for (x, &v) in b_j.limb_mut(i).iter_mut().zip(src) {
                    *x = m.add(*x, m.mul_shoup(v, w, ws));
                }
            }
            b.push(b_j);
        }
        s.zeroize();
        SwitchingKey {
            kind,
            level,
            b,
            a,
            seed,
            fingerprint: *ctx.fingerprint(),
        }
    }
}
