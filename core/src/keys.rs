//! The public evaluation objects: the public key, the key-switching keys of hybrid key switching
//! (relinearization and Galois keys), and the set of them a server holds for one session.
//!
//! A switching key made at level k covers q0..qk plus the special primes of k's layout
//! ([`KeyLayout`](crate::params::KeyLayout)) and works at every level <= k, because the digits are
//! fixed by prime index. Keys made for the levels where they are used are smaller (fewer primes of
//! Q, and fewer digits and special primes below the top), which is what the browser uploads. The
//! secret key and the key generator are in `secret_key` and `keygen`, which only the client side
//! builds.

use std::collections::HashMap;
use std::sync::Arc;

use crate::context::Context;
use crate::error::CkksError;
use crate::params::KeyLayout;
use crate::rns::RnsPoly;
use crate::sampler::expand_uniform;

/// `(b, a) = (-a*s + e, a)` over Q_L; `a` is the expansion of `seed`.
#[derive(Clone, Debug, PartialEq)]
pub struct PublicKey {
    pub(crate) b: RnsPoly,
    pub(crate) a: RnsPoly,
    pub(crate) seed: [u8; 32],
    pub(crate) fingerprint: [u8; 32],
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
    pub(crate) kind: KeyKind,
    /// Highest ciphertext level the key serves.
    pub(crate) level: usize,
    /// Its digits and special primes: [`Params::key_layout`] of its level for a key a client
    /// made, [`Params::derived_layout`] for one the server derived.
    ///
    /// [`Params::key_layout`]: crate::params::Params::key_layout
    /// [`Params::derived_layout`]: crate::params::Params::derived_layout
    pub(crate) layout: KeyLayout,
    pub(crate) b: Vec<RnsPoly>,
    /// Expansions of `seed`, stream j for digit j.
    pub(crate) a: Vec<RnsPoly>,
    pub(crate) seed: [u8; 32],
    pub(crate) fingerprint: [u8; 32],
}

impl PublicKey {
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }
}

impl SwitchingKey {
    /// What the key switches to.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// Highest ciphertext level the key serves.
    pub fn level(&self) -> usize {
        self.level
    }

    /// Its digits and special primes.
    pub fn layout(&self) -> KeyLayout {
        self.layout
    }

    /// Number of digits (`(b_j, a_j)` pairs).
    pub fn digits(&self) -> usize {
        self.b.len()
    }

    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    /// Re-derives every `a_j` from the seed (after the wire format has carried only the seed).
    pub(crate) fn expand_a(
        ctx: &Context,
        level: usize,
        digits: usize,
        seed: &[u8; 32],
    ) -> Vec<RnsPoly> {
        let basis = &ctx.made_key_ctx(level).qp;
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
///
/// A kind may have keys for several levels (a key the server derived for the low levels beside the
/// uploaded one for the top): an operation uses the one made for the lowest level that serves its
/// ciphertext, whose switch is the cheapest.
#[derive(Clone, Debug)]
pub struct EvaluationKeys {
    ctx: Arc<Context>,
    /// Per kind, by ascending level.
    keys: HashMap<KeyKind, Vec<Arc<SwitchingKey>>>,
}

impl EvaluationKeys {
    pub fn new(ctx: &Arc<Context>) -> Self {
        Self {
            ctx: ctx.clone(),
            keys: HashMap::new(),
        }
    }

    /// Adds a key (replacing one of the same kind and level). Errors if it belongs to other
    /// parameters.
    pub fn insert(&mut self, mut key: SwitchingKey) -> Result<(), CkksError> {
        if &key.fingerprint != self.ctx.fingerprint() {
            return Err(CkksError::ParamsMismatch);
        }
        if let KeyKind::Galois(g) = key.kind {
            let basis = &self.ctx.switch_ctx(key.level, key.layout).qp;
            let inv = self
                .ctx
                .permutation(inverse_mod_2n(g, 2 * self.ctx.n() as u64));
            for p in key.b.iter_mut().chain(key.a.iter_mut()) {
                *p = basis.permute(p, &inv);
            }
        }
        let held = self.keys.entry(key.kind).or_default();
        held.retain(|k| k.level != key.level);
        held.push(Arc::new(key));
        held.sort_by_key(|k| k.level);
        Ok(())
    }

    /// The key of `kind` for a ciphertext at `level`: the one made for the lowest level at or
    /// above it, or the highest held if none reaches it (the caller's level check says so).
    fn for_level(&self, kind: KeyKind, level: usize) -> Option<&SwitchingKey> {
        let held = self.keys.get(&kind)?;
        held.iter()
            .find(|k| k.level >= level)
            .or(held.last())
            .map(|k| &**k)
    }

    /// The relinearization key made for the highest level.
    pub fn relin(&self) -> Result<&SwitchingKey, CkksError> {
        self.relin_at(usize::MAX)
    }

    /// The relinearization key for a ciphertext at `level`.
    pub fn relin_at(&self, level: usize) -> Result<&SwitchingKey, CkksError> {
        self.for_level(KeyKind::Relin, level)
            .ok_or(CkksError::MissingRelinKey)
    }

    /// The Galois key for `g` made for the highest level.
    pub fn galois(&self, g: u64) -> Result<&SwitchingKey, CkksError> {
        self.galois_at(g, usize::MAX)
    }

    /// The Galois key for `g` for a ciphertext at `level`.
    pub fn galois_at(&self, g: u64, level: usize) -> Result<&SwitchingKey, CkksError> {
        self.for_level(KeyKind::Galois(g), level)
            .ok_or(CkksError::MissingGaloisKey(g))
    }

    /// Keys held, counting each level of a kind.
    pub fn len(&self) -> usize {
        self.keys.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys held (Galois keys in their prepared, permuted form).
    pub fn iter(&self) -> impl Iterator<Item = &SwitchingKey> {
        self.keys.values().flatten().map(|k| &**k)
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
