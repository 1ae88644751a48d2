//! Keys: the ternary secret key (never serialized, zeroized on drop), the public key, and the
//! key-switching keys of hybrid key switching (relinearization and Galois keys).
//!
//! A switching key made at level k covers q0..qk plus P and works at every level <= k, because the
//! digits are fixed by prime index. Keys made for the levels where they are used are smaller,
//! which is what the browser uploads. The key generator makes one key per call so that the
//! browser can stream them.

use std::collections::HashMap;
use std::sync::Arc;

use rand_chacha::ChaCha20Rng;
use zeroize::Zeroize;

use crate::context::Context;
use crate::error::CkksError;
use crate::rns::{RnsBasis, RnsPoly};
use crate::sampler::{expand_uniform, gaussian, os_seed, secure_rng, small_to_rns, ternary};

/// The secret key: ternary coefficients, and their NTT form over every prime (Q then P).
pub struct SecretKey {
    coeffs: Vec<i8>,
    /// NTT form over q0..qL, p0..p(K-1).
    ntt: RnsPoly,
    fingerprint: [u8; 32],
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.coeffs.zeroize();
        self.ntt.zeroize();
    }
}

impl SecretKey {
    /// A fresh secret key from the OS-seeded CSPRNG.
    pub fn generate(ctx: &Context) -> Self {
        let mut rng = secure_rng();
        let coeffs = ternary(&mut rng, ctx.n());
        let all = ctx.q_basis().concat(ctx.p_basis());
        let mut ntt = small_to_rns(&all, &coeffs);
        all.forward(&mut ntt);
        Self {
            coeffs,
            ntt,
            fingerprint: *ctx.fingerprint(),
        }
    }

    /// NTT form over q0..q_level (no P).
    pub(crate) fn at_q(&self, level: usize) -> RnsPoly {
        self.ntt.slice_limbs(0..level + 1)
    }

    /// NTT form over q0..q_level followed by P.
    pub(crate) fn at_qp(&self, ctx: &Context, level: usize) -> RnsPoly {
        let l_all = ctx.max_level() + 1;
        let mut s = self.ntt.slice_limbs(0..level + 1);
        s.extend_limbs(&self.ntt.slice_limbs(l_all..l_all + ctx.p_basis().len()));
        s
    }

    /// Hamming weight (for tests of the distribution).
    pub fn hamming_weight(&self) -> usize {
        self.coeffs.iter().filter(|&&c| c != 0).count()
    }

    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }
}

/// `(b, a) = (-a*s + e, a)` over Q_L; `a` is the expansion of `seed`.
#[derive(Clone, Debug, PartialEq)]
pub struct PublicKey {
    pub b: RnsPoly,
    pub a: RnsPoly,
    pub seed: [u8; 32],
    pub fingerprint: [u8; 32],
}

/// What a switching key switches to: `s^2` (relinearization) or `s(X^g)` (Galois element g).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Relin,
    Galois(u64),
}

/// A hybrid key-switching key: for each digit j, `(b_j, a_j)` over Q_level ++ P with
/// `b_j = -a_j*s + e_j + P * g_j * s'` (g_j = 1 modulo the digit's primes, 0 modulo the others).
#[derive(Clone, Debug, PartialEq)]
pub struct SwitchingKey {
    pub kind: KeyKind,
    /// Highest ciphertext level the key serves.
    pub level: usize,
    pub b: Vec<RnsPoly>,
    /// Expansions of `seed`, stream j for digit j.
    pub a: Vec<RnsPoly>,
    pub seed: [u8; 32],
    pub fingerprint: [u8; 32],
}

impl SwitchingKey {
    /// Re-derives every `a_j` from the seed (after the wire format has carried only the seed).
    pub(crate) fn expand_a(
        ctx: &Context,
        level: usize,
        digits: usize,
        seed: &[u8; 32],
    ) -> Vec<RnsPoly> {
        let basis = &ctx.level(level).qp;
        (0..digits)
            .map(|j| expand_uniform(basis, seed, j as u64))
            .collect()
    }

    /// Bytes of the 64-bit in-memory form (b and a halves).
    pub fn memory_bytes(&self) -> usize {
        self.b
            .iter()
            .chain(&self.a)
            .map(|p| p.data().len() * 8)
            .sum()
    }
}

/// The evaluation keys a server holds for one session, prepared for use: a Galois key for g is
/// stored as `sigma_g^-1(key)`, so that a rotation permutes its two output polynomials once
/// instead of every digit of the decomposition (see `Evaluator::apply_galois`).
#[derive(Clone, Debug)]
pub struct EvaluationKeys {
    ctx: Arc<Context>,
    keys: HashMap<KeyKind, Arc<SwitchingKey>>,
}

impl EvaluationKeys {
    pub fn new(ctx: &Arc<Context>) -> Self {
        Self {
            ctx: ctx.clone(),
            keys: HashMap::new(),
        }
    }

    /// Adds a key (replacing one of the same kind). Errors if it belongs to other parameters.
    pub fn insert(&mut self, mut key: SwitchingKey) -> Result<(), CkksError> {
        if &key.fingerprint != self.ctx.fingerprint() {
            return Err(CkksError::ParamsMismatch);
        }
        if let KeyKind::Galois(g) = key.kind {
            let basis = &self.ctx.level(key.level).qp;
            let inv = self
                .ctx
                .permutation(inverse_mod_2n(g, 2 * self.ctx.n() as u64));
            for p in key.b.iter_mut().chain(key.a.iter_mut()) {
                *p = basis.permute(p, &inv);
            }
        }
        self.keys.insert(key.kind, Arc::new(key));
        Ok(())
    }

    pub fn relin(&self) -> Result<&SwitchingKey, CkksError> {
        self.keys
            .get(&KeyKind::Relin)
            .map(|k| &**k)
            .ok_or(CkksError::MissingRelinKey)
    }

    pub fn galois(&self, g: u64) -> Result<&SwitchingKey, CkksError> {
        self.keys
            .get(&KeyKind::Galois(g))
            .map(|k| &**k)
            .ok_or(CkksError::MissingGaloisKey(g))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys held (Galois keys in their prepared, permuted form).
    pub fn iter(&self) -> impl Iterator<Item = &SwitchingKey> {
        self.keys.values().map(|k| &**k)
    }
}

/// `g^-1 mod two_n` for odd g and a power-of-two modulus (Newton iteration on 2-adic inverses).
fn inverse_mod_2n(g: u64, two_n: u64) -> u64 {
    let mut x = g; // correct to 3 bits for odd g
    for _ in 0..6 {
        x = x.wrapping_mul(2u64.wrapping_sub(g.wrapping_mul(x)));
    }
    x & (two_n - 1)
}

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
        let basis = &self.ctx.level(level).q;
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
        self.check_level(level)?;
        let basis = self.ctx.level(level).qp.clone();
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
        self.check_level(level)?;
        let two_n = 2 * self.ctx.n() as u64;
        if g.is_multiple_of(2) || g >= two_n {
            return Err(CkksError::MissingGaloisKey(g));
        }
        let basis = self.ctx.level(level).qp.clone();
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

    fn check_level(&self, level: usize) -> Result<(), CkksError> {
        if level > self.ctx.max_level() {
            return Err(CkksError::Level {
                wanted: level,
                max: self.ctx.max_level(),
            });
        }
        Ok(())
    }

    /// `s_new` in NTT form over Q_level ++ P.
    fn switching_key(&mut self, kind: KeyKind, level: usize, s_new: &RnsPoly) -> SwitchingKey {
        let ctx = self.ctx;
        let lc = ctx.level(level);
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
