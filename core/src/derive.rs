//! Galois keys the server derives from the keys it holds, so that a client uploads only the keys
//! no one else can make (those of the top levels and relinearization).
//!
//! A key for the automorphism g at level l, under a derived layout ([`Params::derived_layout`]:
//! digits of Q_l, special modulus S made of the primes of Q just above l), is for each digit j a
//! pair over Q_m (m = l + |S|) with `b_j + a_j*s = S*g_j*s(X^g) + e_j`: an encryption of the
//! message `S*g_j*s(X^g)` at level m. The trivial pair `(0, S*g_j)` encrypts `S*g_j*s` without
//! error (the constant `S*g_j` times s), and applying held Galois keys h1, h2, ... (each made for
//! level m or above) to it, as to any ciphertext, turns its message into `S*g_j*s(X^(h1*h2*...))`:
//! a key for the product of their elements. The server learns nothing it could not compute from
//! the uploaded keys; the derived key's error is that of the rotations (about 2^10), which
//! [`DERIVED_MARGIN_BITS`] absorbs.
//!
//! This is the idea of hierarchical rotation keys (Lee, Lee, Kim and No, ASIACRYPT 2023) with the
//! top-level keys as the masters: they need no larger modulus because a derived key lives below
//! the top of Q.
//!
//! [`Params::derived_layout`]: crate::params::Params::derived_layout
//! [`DERIVED_MARGIN_BITS`]: crate::params::DERIVED_MARGIN_BITS

use std::collections::{HashMap, VecDeque};

use crate::ciphertext::Ciphertext;
use crate::error::CkksError;
use crate::evaluator::Evaluator;
use crate::keys::{EvaluationKeys, KeyKind, SwitchingKey};
use crate::rns::RnsPoly;

/// The fewest Galois elements among `available` whose product (mod 2N) is `target`, in order of
/// application; `Some(vec![])` for the identity, `None` if they do not generate it. A
/// breadth-first search over the group (at most N elements).
pub fn galois_path(two_n: u64, available: &[u64], target: u64) -> Option<Vec<u64>> {
    let mut from: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut queue = VecDeque::from([1u64]);
    from.insert(1, (0, 0));
    while let Some(x) = queue.pop_front() {
        if x == target % two_n {
            let mut path = Vec::new();
            let mut at = x;
            while at != 1 {
                let (prev, step) = from[&at];
                path.push(step);
                at = prev;
            }
            path.reverse();
            return Some(path);
        }
        for &h in available {
            let y = (x as u128 * h as u128 % two_n as u128) as u64;
            if let std::collections::hash_map::Entry::Vacant(e) = from.entry(y) {
                e.insert((x, h));
                queue.push_back(y);
            }
        }
    }
    None
}

impl EvaluationKeys {
    /// Derives the key for Galois element `g` at ciphertext `level` from the Galois keys held
    /// (see the module documentation) and adds it. Errors where `level` has no derived layout
    /// (the top levels) or the held keys of the level it needs do not compose to `g`.
    pub fn derive_galois(&mut self, ev: &Evaluator, g: u64, level: usize) -> Result<(), CkksError> {
        let key = derive_galois_key(ev, self, g, level)?;
        self.insert(key)
    }
}

/// The key for Galois element `g` at `level`, derived from `keys`.
pub fn derive_galois_key(
    ev: &Evaluator,
    keys: &EvaluationKeys,
    g: u64,
    level: usize,
) -> Result<SwitchingKey, CkksError> {
    let ctx = ev.context();
    ctx.check_level(level)?;
    let two_n = 2 * ctx.n() as u64;
    if g.is_multiple_of(2) || g >= two_n {
        return Err(CkksError::MissingGaloisKey(g));
    }
    let layout = ctx
        .params()
        .derived_layout(level)
        .ok_or(CkksError::NotDerivable { level })?;
    // the level the pairs live at, which the keys used must serve
    let m = layout
        .derived_at()
        .expect("a derived layout's special primes are in Q");
    let first = m + 1 - layout.special;
    let available: Vec<u64> = keys
        .iter()
        .filter(|k| k.level() >= m)
        .filter_map(|k| match k.kind() {
            KeyKind::Galois(h) => Some(h),
            KeyKind::Relin => None,
        })
        .collect();
    let path = galois_path(two_n, &available, g).ok_or(CkksError::NoDerivation {
        galois_element: g,
        level,
    })?;
    let basis = &ctx.level(m)?.q;
    let special_product = |i: usize| {
        let q = basis.modulus(i);
        (first..first + layout.special).fold(1u64, |acc, k| {
            q.mul(acc, q.reduce(basis.modulus(k).value()))
        })
    };
    // the digits are independent: in parallel, a derivation's key switches keep both cores busy
    // (one digit after another, a session's derivation ran at about one core's worth)
    let pairs = crate::par::map_range(layout.digits(level), |j| {
        let digit = j * layout.alpha..((j + 1) * layout.alpha).min(level + 1);
        // (0, S*g_j) in NTT form: a constant is the same at every root
        let constant = RnsPoly::from_limbs(ctx.n(), m + 1, |i, limb| {
            limb.fill(if digit.contains(&i) {
                special_product(i)
            } else {
                0
            })
        });
        let mut ct = Ciphertext {
            c: vec![RnsPoly::zero(ctx.n(), m + 1), constant],
            level: m,
            scale: 1.0,
            fingerprint: *ctx.fingerprint(),
            seed: None,
        };
        for &h in &path {
            ct = ev.apply_galois(&ct, h, keys)?;
        }
        let [b_j, a_j]: [RnsPoly; 2] = ct.c.try_into().expect("a rotation keeps degree 1");
        Ok((b_j, a_j))
    });
    let (b, a): (Vec<RnsPoly>, Vec<RnsPoly>) = pairs
        .into_iter()
        .collect::<Result<Vec<_>, CkksError>>()?
        .into_iter()
        .unzip();
    Ok(SwitchingKey {
        kind: KeyKind::Galois(g),
        level,
        layout,
        b,
        a,
        seed: [0; 32],
        fingerprint: *ctx.fingerprint(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths are shortest, applied in order, and absent outside the generated subgroup.
    #[test]
    fn galois_paths_are_shortest_products() {
        let two_n = 64;
        let pow5 = |r: u32| (0..r).fold(1u64, |g, _| g * 5 % two_n);
        let (g1, g4) = (pow5(1), pow5(4));
        // 6 = 4 + 1 + 1: three steps, whichever order
        let path = galois_path(two_n, &[g1, g4], pow5(6)).unwrap();
        assert_eq!(path.len(), 3);
        assert_eq!(path.iter().fold(1, |g, h| g * h % two_n), pow5(6));
        assert_eq!(galois_path(two_n, &[g1], 1), Some(vec![]));
        // powers of 5 never reach the conjugation element -1
        assert_eq!(galois_path(two_n, &[g1, g4], two_n - 1), None);
        assert_eq!(galois_path(two_n, &[g4], pow5(2)), None);
    }
}
