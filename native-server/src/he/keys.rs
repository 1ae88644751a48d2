//! Which rotation keys the client makes and uploads, and which the server derives from those
//! (`blindsight_core::derive`): a key is derived wherever its level has a derived layout and the
//! keys already available at the level it is derived at compose to its rotation. What remains to
//! upload is the top levels' keys (no prime of Q above them) and relinearization.

use std::collections::BTreeMap;

use blindsight_core::derive::galois_path;
use blindsight_core::params::SpecialPrimes;
use blindsight_core::{CkksError, Context, EvaluationKeys, Evaluator};

/// The rotation keys of a plan, split between the client and the server.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyPlan {
    /// Amounts (left, in slots) the client makes keys for, with the level each is made at.
    pub uploaded: BTreeMap<usize, usize>,
    /// Amounts the server derives, with their levels, in the order they are derived (each from
    /// the uploaded keys and those derived before it).
    pub derived: Vec<(usize, usize)>,
}

impl KeyPlan {
    /// Splits `rotations` (amount -> highest level used). Keys are taken from the highest level
    /// down, so that every key that could serve a derivation is settled before it.
    pub fn new(ctx: &Context, rotations: &BTreeMap<usize, usize>) -> Self {
        let two_n = 2 * ctx.n() as u64;
        let mut by_level: Vec<(usize, usize)> = rotations.iter().map(|(&a, &l)| (a, l)).collect();
        by_level.sort_by_key(|&(a, l)| (std::cmp::Reverse(l), a));
        let mut have: Vec<(u64, usize)> = Vec::new();
        let mut plan = Self {
            uploaded: BTreeMap::new(),
            derived: Vec::new(),
        };
        for (amount, level) in by_level {
            let g = ctx.galois_element(amount as i64);
            let derivable = derived_at(ctx, level).is_some_and(|m| {
                let available: Vec<u64> = have
                    .iter()
                    .filter(|&&(_, l)| l >= m)
                    .map(|&(h, _)| h)
                    .collect();
                galois_path(two_n, &available, g).is_some()
            });
            if derivable {
                plan.derived.push((amount, level));
            } else {
                plan.uploaded.insert(amount, level);
            }
            have.push((g, level));
        }
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

/// The level a key for `level` is derived at (its pairs live over Q_m), if it can be derived.
fn derived_at(ctx: &Context, level: usize) -> Option<usize> {
    let layout = ctx.params().derived_layout(level)?;
    match layout.primes {
        SpecialPrimes::Q { first } => Some(first + layout.special - 1),
        SpecialPrimes::P => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// For ResNet-20's keys: the top level's three are uploaded, everything below level 12
    /// derived, and a set without a derivable level uploads all.
    #[test]
    fn only_the_top_keys_are_uploaded() {
        let ctx = Context::named("N16_L39").unwrap();
        let rotations: BTreeMap<usize, usize> = [
            (1, 20),
            (2, 11),
            (4, 11),
            (8, 6),
            (16, 1),
            (32, 20),
            (64, 11),
            (128, 11),
            (256, 6),
            (512, 1),
            (1024, 20),
        ]
        .into();
        let plan = KeyPlan::new(&ctx, &rotations);
        assert_eq!(
            plan.uploaded,
            BTreeMap::from([(1, 20), (32, 20), (1024, 20)])
        );
        assert_eq!(plan.derived.len(), 8);
        assert_eq!(plan.derived[0].1, 11, "highest level first");
        // an amount the keys above cannot reach is uploaded: multiples of 1024 never make 1
        let only = BTreeMap::from([(1024, 20), (1, 6)]);
        let plan = KeyPlan::new(&ctx, &only);
        assert_eq!(plan.uploaded, only);
        assert!(plan.derived.is_empty());
    }
}
