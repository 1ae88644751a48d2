//! Which rotation keys the client makes and uploads, and which the server derives from those
//! (`blindsight_core::derive`): a key is derived wherever its level has a derived layout and the
//! keys already available at the level it is derived at compose to its rotation. What remains to
//! upload is the top levels' keys (no prime of Q above them) and relinearization.
//!
//! An amount used at several derivable levels below its key's also gets a derived copy for the
//! highest of them whose layout has at most dnum digits, where its key is an uploaded one (the
//! top's special primes) or a derived one with more digits: the lower levels then switch with the
//! copy's layout instead. ResNet-20's giant step 1024 is the case: its rotations at levels 0-12
//! take a key for level 12 (two digits, special primes q13..q20) instead of the top's (12 special
//! primes of P); so does complex packing's Horner step 2048, whose first key, for level 15, has
//! four digits (measured: stage 2 about 5% slower with the four-digit key alone).
//!
//! The conjugation key (complex packing, and the activations of a batch's paired images) is
//! always uploaded: no product of rotations is a conjugation.

use std::collections::{BTreeMap, BTreeSet};

use blindsight_core::derive::galois_path;
use blindsight_core::{CkksError, Context, EvaluationKeys, Evaluator};

/// The rotation keys of a plan, split between the client and the server.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyPlan {
    /// Amounts (left, in slots) the client makes keys for, with the level each is made at.
    pub uploaded: BTreeMap<usize, usize>,
    /// Amounts the server derives, with their levels, in the order they are derived (each from
    /// the uploaded keys and those derived before it). An amount may appear twice (or once here
    /// and once uploaded): a copy for lower levels.
    pub derived: Vec<(usize, usize)>,
}

/// Derivable levels an uploaded amount must be used at for a copy: a copy for a single layer costs
/// its derivation and memory (about 44 MB at level 12) for a few rotations.
const COPY_MIN_LEVELS: usize = 3;

impl KeyPlan {
    /// Splits `uses` (amount -> levels it is used at). Keys are taken from the highest level
    /// down, so that every key that could serve a derivation is settled before it.
    pub fn new(ctx: &Context, uses: &BTreeMap<usize, BTreeSet<usize>>) -> Self {
        let two_n = 2 * ctx.n() as u64;
        let mut by_level: Vec<(usize, usize)> = uses
            .iter()
            .filter_map(|(&a, levels)| Some((a, *levels.last()?)))
            .collect();
        by_level.sort_by_key(|&(a, l)| (std::cmp::Reverse(l), a));
        let mut have: Vec<(u64, usize)> = Vec::new();
        let mut plan = Self {
            uploaded: BTreeMap::new(),
            derived: Vec::new(),
        };
        for (amount, level) in by_level {
            let g = ctx.galois_element(amount as i64);
            let derivable = derived_at(ctx, level).is_some_and(|m| reaches(two_n, &have, m, g));
            if derivable {
                plan.derived.push((amount, level));
            } else {
                plan.uploaded.insert(amount, level);
            }
            have.push((g, level));
        }
        // a copy for the levels below a key that has the top's special primes (uploaded) or
        // more digits than the set's dnum (derived near the top): made for the highest used
        // level whose derived layout has at most dnum digits, where enough levels use it
        let params = ctx.params();
        let dnum = params.dnum();
        let firsts: Vec<(usize, usize)> =
            plan.uploaded
                .iter()
                .map(|(&a, &l)| (a, l))
                .chain(
                    plan.derived.iter().copied().filter(|&(_, l)| {
                        params.derived_layout(l).is_some_and(|k| k.digits(l) > dnum)
                    }),
                )
                .collect();
        for (amount, top) in firsts {
            let g = ctx.galois_element(amount as i64);
            let lower: Vec<usize> = uses[&amount]
                .iter()
                .rev()
                .copied()
                .filter(|&l| l < top)
                .filter(|&l| {
                    params.derived_layout(l).is_some_and(|copy| {
                        copy.digits(l) <= dnum
                            && copy
                                .derived_at()
                                .is_some_and(|m| reaches(two_n, &have, m, g))
                    })
                })
                .collect();
            if lower.len() >= COPY_MIN_LEVELS {
                plan.derived.push((amount, lower[0]));
            }
        }
        plan.derived
            .sort_by_key(|&(a, l)| (std::cmp::Reverse(l), a));
        plan
    }

    /// Derives every key of `derived` into `keys`, which hold the uploaded ones.
    pub fn derive(&self, ev: &Evaluator, keys: &mut EvaluationKeys) -> Result<(), CkksError> {
        let ctx = ev.context();
        for &(amount, level) in &self.derived {
            keys.derive_galois(ev, ctx.galois_element(amount as i64), level)?;
        }
        Ok(())
    }
}

/// Whether the keys `have` (Galois element, level) made for level `m` or above compose to `g`.
fn reaches(two_n: u64, have: &[(u64, usize)], m: usize, g: u64) -> bool {
    let available: Vec<u64> = have
        .iter()
        .filter(|&&(_, l)| l >= m)
        .map(|&(h, _)| h)
        .collect();
    galois_path(two_n, &available, g).is_some()
}

/// The level a key for `level` is derived at (its pairs live over Q_m), if it can be derived.
fn derived_at(ctx: &Context, level: usize) -> Option<usize> {
    ctx.params().derived_layout(level)?.derived_at()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uses(list: &[(usize, &[usize])]) -> BTreeMap<usize, BTreeSet<usize>> {
        list.iter()
            .map(|&(a, levels)| (a, levels.iter().copied().collect()))
            .collect()
    }

    /// For ResNet-20's keys: the top level's three are uploaded, everything below derived, the
    /// giant step (used at every level) gets a copy for level 12 and the baby steps of stage 1
    /// (whose derivable levels, 13-15, have layouts of three or four digits) none; complex
    /// packing's Horner step, first derived for level 15 with four digits, gets a two-digit
    /// copy for level 12. A set without a derivable level uploads all.
    #[test]
    fn only_the_top_keys_are_uploaded() {
        let ctx = Context::named("N16_L39").unwrap();
        let every: Vec<usize> = (0..=20).collect();
        let stage1: Vec<usize> = (13..=20).collect();
        let horner: Vec<usize> = (1..=15).collect();
        let resnet = uses(&[
            (1, &stage1),
            (2, &[11, 9, 7]),
            (4, &[11]),
            (8, &[6]),
            (16, &[1]),
            (32, &stage1),
            (64, &[11, 9]),
            (128, &[11]),
            (256, &[6]),
            (512, &[1]),
            (1024, &every),
            (2048, &horner),
        ]);
        let plan = KeyPlan::new(&ctx, &resnet);
        assert_eq!(
            plan.uploaded,
            BTreeMap::from([(1, 20), (32, 20), (1024, 20)])
        );
        assert_eq!(plan.derived[0], (2048, 15), "highest level first");
        assert!(plan
            .derived
            .is_sorted_by_key(|&(_, l)| std::cmp::Reverse(l)));
        // copies with two digits for the levels below the top key and the four-digit one
        assert!(plan.derived.contains(&(1024, 12)) && plan.derived.contains(&(2048, 12)));
        assert_eq!(plan.derived.len(), 11);
        let params = ctx.params();
        assert_eq!(params.derived_layout(15).unwrap().digits(15), 4);
        assert_eq!(params.derived_layout(12).unwrap().digits(12), 2);
        // the baby steps of stage 1 are used at derivable levels (13-15), but their layouts
        // there have three or four digits: no copy
        assert!(!plan.derived.iter().any(|&(a, _)| a == 1 || a == 32));
        // every derivation composes a few rotations of keys held at its level (a key for the
        // top level missing would make 2048 from 64 rotations by 32: seconds per session)
        let two_n = 2 * ctx.n() as u64;
        let galois = |a: usize| ctx.galois_element(a as i64);
        let mut have: Vec<(u64, usize)> = plan
            .uploaded
            .iter()
            .map(|(&a, &l)| (galois(a), l))
            .collect();
        for &(a, l) in &plan.derived {
            let m = derived_at(&ctx, l).unwrap();
            let held: Vec<u64> = have
                .iter()
                .filter(|&&(_, hl)| hl >= m)
                .map(|&(g, _)| g)
                .collect();
            let path = galois_path(two_n, &held, galois(a)).unwrap();
            assert!(path.len() <= 8, "{a}@{l}: {} rotations", path.len());
            have.push((galois(a), l));
        }
        // an amount the keys above cannot reach is uploaded: multiples of 1024 never make 1
        let only = uses(&[(1024, &[20]), (1, &[6])]);
        let plan = KeyPlan::new(&ctx, &only);
        assert_eq!(plan.uploaded, BTreeMap::from([(1024, 20), (1, 6)]));
        assert!(plan.derived.is_empty());
    }
}
