//! The baby-step / giant-step plan of a linear layer on one packed ciphertext (the generalized
//! diagonal method), with a Horner chain over the giant steps.
//!
//! A linear map `out = M in` between two slot layouts is `sum_a d_a * rot_a(in)` over the rotation
//! amounts `a = slot(in) - slot(out)`. Writing `a = g*G + b` (`G` = one channel block), the baby
//! amounts `b` are the few spatial shifts of a convolution kernel and the giant steps `g` the channel
//! offsets: `out = V_0 + rot_G(V_1 + rot_G(V_2 + ...))` with `V_g = sum_b rot_{-gG}(d_{gG+b}) * rot_b(in)`.
//! Baby rotations are composed along a shared prefix tree (hoisted per parent) and the giant chain
//! uses the single amount `G`, so a whole network needs only a handful of keys. The tree's steps
//! are powers of two, or, where keys are large (two-digit levels, see [`BabySteps`]), only one slot
//! and one row of the 32-wide grid every layout shares: three decompositions more per 3x3 layer,
//! and no rotation key at those levels but 1, the row and the giant step.
//! All amounts are non-negative left rotations: the planner shifts output layouts to make them so.
//!
//! **Complex packing** (`complex`): the input becomes `X = in + i*rot_G(in)`, one rotation and a
//! free product with `i`, so that each baby rotation of `X` carries the input at two giant
//! offsets, `g` in its real part and `g + 1` in its imaginary part. One complex diagonal
//! `d_g - i*rot_G(d_(g+1))` then does the work of two real ones, the Horner chain steps by `2G`
//! with half the terms, and the real part of the result, `(acc + conj(acc))/2`, drops the
//! imaginary cross terms exactly and spends no level: half the plaintext products and giant
//! rotations for one rotation and one conjugation more. Above the levels whose keys the server
//! derives there is no key for `2G`; the chain then takes two rotations by `G` a term
//! (`split_step`), and the halved products still pay (at N16_L39 levels 16-19, about 0.87x a
//! real layer's time, measured); above the conjugation key's level the real part is taken after
//! the rescale.
//!
//! **Replicas** (`replicas`, see [`crate::he::replicas`]): where a layout leaves sub-positions
//! of its gap cells idle, a copy of the input takes the second half of the giant steps, and one
//! product serves two of them.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use blindsight_core::layout::SlotLayout;

use crate::he::diagonal::Diagonal;
use crate::he::operator::Operator;
use crate::he::replicas::Replicas;
use crate::model::Model;

/// One node of the baby-step tree: `amount = parent's amount + step`, `step` a power of two.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeNode {
    pub parent: usize,
    pub step: usize,
    pub amount: usize,
}

/// How baby amounts are composed from keyed rotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BabySteps {
    /// Binary expansion: each power of two is a key; fewest decompositions.
    Binary,
    /// Only 1 and the layout's row (`row` slots: one pixel and one row of a dense map, two rows
    /// of a map with gap 2): the fewest keys, for the levels where each key is largest.
    Layout,
}

/// A planned linear layer: layouts, level, scales and the rotation structure.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearPlan {
    pub op: Operator,
    /// Factor applied to every weight (the input value's multiplier, folded in).
    pub mult: f64,
    pub input: SlotLayout,
    pub output: SlotLayout,
    /// The images the layer maps, as (input shift, output shift) in slots: a batch's images sit
    /// at shifted copies of the layouts, and each image's output reads only its own input.
    pub pairs: Vec<(usize, usize)>,
    /// Output elements (CHW).
    pub outputs: usize,
    /// Level the input is brought to (dropped) before the layer; the output is one level lower.
    pub level: usize,
    /// Exact scale of the output after the rescale.
    pub out_scale: f64,
    /// The giant step `G` (slots).
    pub giant: usize,
    /// Number of giant steps (channel-block offsets `0..giants`).
    pub giants: usize,
    /// Complex packing (see the module doc): two giant steps per Horner term.
    pub complex: bool,
    /// Complex packing above the levels whose keys the server derives: no key rotates by the
    /// Horner step `2G` there, so the chain takes two rotations by `G` per term (the products
    /// still halve; the rotations, most of a layer's work at those levels, stay as many).
    pub split_step: bool,
    /// Complex packing above the conjugation key's level: the real part is taken after the
    /// rescale, one level lower, where that key serves (its switching error then stays at the
    /// output's scale, that of one more rotation in the next layer).
    pub real_after_rescale: bool,
    /// The weights times `i`: the term moves a one-image input into the imaginary lane of a
    /// paired output (see `plan::Lanes`).
    pub imag: bool,
    /// Two copies of the input in its idle sub-positions (see [`crate::he::replicas`]).
    pub replicas: Option<Replicas>,
    /// Baby amounts, ascending; `tree[baby_node[i]]` computes `babies[i]`.
    pub babies: Vec<usize>,
    pub tree: Vec<TreeNode>,
    pub baby_node: Vec<usize>,
    /// The nonzero diagonals (one plaintext product each), pre-rotated for the Horner chain and
    /// run-compressed; filled by [`LinearPlan::build_diagonals`] once the layouts are final (empty
    /// until then), and shared by the clones of a plan (the same layer of every image of a batch
    /// evaluated one image per ciphertext).
    pub diagonals: Arc<OnceLock<Vec<Diagonal>>>,
}

impl LinearPlan {
    /// Plans `op` from `input` to `output_raw`. With `free_offset`, the output layout is shifted so
    /// that every baby amount is small and non-negative; otherwise `output_raw` is kept as is.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: &Model,
        op: Operator,
        mult: f64,
        input: SlotLayout,
        output_raw: SlotLayout,
        pairs: Vec<(usize, usize)>,
        free_offset: bool,
        level: usize,
        out_scale: f64,
        steps: BabySteps,
        complex: bool,
        replicas: Option<Replicas>,
    ) -> Self {
        let giant = input.block();
        let outputs = output_raw.len();
        let output = if free_offset {
            // shift so that the most negative (centered) baby amount becomes 0
            let mut min_b = 0i64;
            for_each_term(
                model,
                &op,
                &input,
                &output_raw,
                &pairs,
                replicas,
                |a, _, _| {
                    let b = (a % giant) as i64;
                    let centered = if b >= giant as i64 / 2 {
                        b - giant as i64
                    } else {
                        b
                    };
                    min_b = min_b.min(centered);
                },
            );
            output_raw.shifted(min_b)
        } else {
            output_raw
        };
        // images whose output sits at the same distance from their input have the same amounts
        let alike = match pairs.split_first() {
            Some((&(i0, o0), rest)) => rest
                .iter()
                .all(|&(i, o)| o.wrapping_sub(i) == o0.wrapping_sub(i0)),
            None => true,
        };
        let distinct = if alike {
            &pairs[..pairs.len().min(1)]
        } else {
            &pairs[..]
        };
        let mut babies = BTreeSet::new();
        let mut last_giant = 0;
        for_each_term(
            model,
            &op,
            &input,
            &output,
            distinct,
            replicas,
            |a, _, _| {
                babies.insert(a % giant);
                last_giant = last_giant.max(a / giant);
            },
        );
        let babies: Vec<usize> = babies.into_iter().collect();
        let giants = last_giant + 1;
        let steps = match steps {
            BabySteps::Binary => None,
            BabySteps::Layout => {
                let mut v = vec![input.row(), 1];
                v.dedup();
                Some(v)
            }
        };
        let (tree, baby_node) = baby_tree(&babies, steps.as_deref());
        Self {
            op,
            mult,
            input,
            output,
            pairs,
            outputs,
            level,
            out_scale,
            giant,
            giants,
            complex,
            split_step: false,
            real_after_rescale: false,
            imag: false,
            replicas,
            babies,
            tree,
            baby_node,
            diagonals: Arc::default(),
        }
    }

    /// The diagonals (empty before [`LinearPlan::build_diagonals`]).
    pub fn diags(&self) -> &[Diagonal] {
        self.diagonals.get().map_or(&[], Vec::as_slice)
    }

    /// Giant steps per Horner term: two with complex packing.
    pub fn fold(&self) -> usize {
        if self.complex {
            2
        } else {
            1
        }
    }

    /// The Horner chain's rotation amount.
    pub fn horner_step(&self) -> usize {
        self.giant * self.fold()
    }

    /// The Horner chain's keyed rotation and how many of it make one step (see
    /// [`LinearPlan::split_step`]).
    pub fn horner_rotation(&self) -> (usize, usize) {
        if self.split_step {
            (self.giant, self.fold())
        } else {
            (self.horner_step(), 1)
        }
    }

    /// The level of the conjugation this layer takes, if any.
    pub fn conjugation_level(&self) -> Option<usize> {
        self.complex
            .then(|| self.level - usize::from(self.real_after_rescale))
    }

    /// Terms of the Horner chain.
    pub fn horner_terms(&self) -> usize {
        self.giants.div_ceil(self.fold())
    }

    /// Whether the input gets an imaginary copy (complex packing with an odd giant step to
    /// carry).
    pub fn packs_imaginary(&self) -> bool {
        self.complex && self.giants > 1
    }

    /// Every rotation amount this layer uses (the conjugation of complex packing aside).
    pub fn rotation_amounts(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.tree.iter().skip(1).map(|t| t.step).collect();
        if self.horner_terms() > 1 {
            v.push(self.horner_rotation().0);
        }
        if self.packs_imaginary() {
            v.push(self.giant);
        }
        if let Some(r) = self.replicas {
            v.extend([r.shift, r.half]);
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Rotations per evaluation (a conjugation counted as one).
    pub fn rotation_count(&self) -> usize {
        sum_rotation_count(&[self])
    }

    /// Whether `self` and `other` can be summed inside one Horner chain: same output layout,
    /// level, scale and giant step.
    pub fn fuses_with(&self, other: &LinearPlan) -> bool {
        self.output == other.output
            && self.level == other.level
            && self.out_scale == other.out_scale
            && self.giant == other.giant
            && self.complex == other.complex
            && self.split_step == other.split_step
            && self.real_after_rescale == other.real_after_rescale
            && self.replicas == other.replicas
            && self.input.slots() == other.input.slots()
    }
}

/// Rotations per evaluation of the sum of `plans` (each its own baby tree, copy and imaginary
/// copy, one shared chain, sum of the copies and conjugation).
pub fn sum_rotation_count(plans: &[&LinearPlan]) -> usize {
    let babies: usize = plans
        .iter()
        .map(|p| {
            p.tree.len() - 1 + usize::from(p.packs_imaginary()) + usize::from(p.replicas.is_some())
        })
        .sum();
    let copies = 2 * usize::from(plans.iter().any(|p| p.replicas.is_some()));
    let terms = plans.iter().map(|p| p.horner_terms()).max().unwrap_or(1);
    let per_term = plans
        .iter()
        .map(|p| p.horner_rotation().1)
        .max()
        .unwrap_or(1);
    let conj = usize::from(plans.iter().any(|p| p.complex));
    babies + (terms - 1) * per_term + copies + conj
}

/// [`for_each_amount`] with each term moved to where `replicas` evaluate it: `f(amount on X,
/// slot of Y, weight)`.
pub(crate) fn for_each_term(
    model: &Model,
    op: &Operator,
    input: &SlotLayout,
    output: &SlotLayout,
    pairs: &[(usize, usize)],
    replicas: Option<Replicas>,
    mut f: impl FnMut(usize, usize, f64),
) {
    let (period, slots) = (input.period(), output.slots());
    for_each_amount(model, op, input, output, pairs, |a, p, w| match replicas {
        None => f(a, p, w),
        Some(r) => {
            let (a, p) = r.place(a, p, period, slots);
            f(a, p, w)
        }
    });
}

/// Calls `f(amount, output slot, weight)` for every term of the map, for every image of `pairs`
/// (input and output shifted by its pair) and over every copy of the output; each term reads the
/// copy of its input that makes the amount smallest.
pub(crate) fn for_each_amount(
    model: &Model,
    op: &Operator,
    input: &SlotLayout,
    output: &SlotLayout,
    pairs: &[(usize, usize)],
    mut f: impl FnMut(usize, usize, f64),
) {
    let slots = output.slots();
    let (pin, pout) = (input.period(), output.period());
    for &(din, dout) in pairs {
        for o in 0..output.len() {
            let p0 = output.slot_of(o) + dout;
            for k in 0..slots / pout {
                let p = (p0 + k * pout) % slots;
                op.terms(model, o, |i, w| {
                    let q = input.slot_of(i) + din;
                    let a = (q as i64 - p as i64).rem_euclid(pin as i64) as usize;
                    f(a, p, w);
                });
            }
        }
    }
}

/// The steps that compose `b`, largest first: its binary expansion, or greedily from `steps`
/// (descending, ending in 1, so every amount has a path).
fn path(b: usize, steps: Option<&[usize]>) -> Vec<usize> {
    match steps {
        None => (0..usize::BITS)
            .rev()
            .map(|bit| 1usize << bit)
            .filter(|&step| b & step != 0)
            .collect(),
        Some(steps) => {
            let mut rest = b;
            let mut out = Vec::new();
            for &step in steps {
                out.extend(std::iter::repeat_n(step, rest / step));
                rest %= step;
            }
            out
        }
    }
}

/// Prefix tree of the babies' paths (largest steps first): node 0 is the input itself.
fn baby_tree(babies: &[usize], steps: Option<&[usize]>) -> (Vec<TreeNode>, Vec<usize>) {
    let mut tree = vec![TreeNode {
        parent: 0,
        step: 0,
        amount: 0,
    }];
    let mut by_amount: HashMap<usize, usize> = HashMap::from([(0, 0)]);
    let mut baby_node = Vec::with_capacity(babies.len());
    for &b in babies {
        let (mut cur, mut acc) = (0usize, 0usize);
        for step in path(b, steps) {
            acc += step;
            cur = *by_amount.entry(acc).or_insert_with(|| {
                tree.push(TreeNode {
                    parent: cur,
                    step,
                    amount: acc,
                });
                tree.len() - 1
            });
        }
        baby_node.push(cur);
    }
    (tree, baby_node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baby_tree_shares_prefixes() {
        let babies = [0, 1, 2, 32, 33, 34, 64, 65, 66];
        let (tree, node) = baby_tree(&babies, None);
        // 1, 2, 32, 64 from the root; 33, 34 under 32; 65, 66 under 64
        assert_eq!(tree.len(), 9);
        for (i, &b) in babies.iter().enumerate() {
            assert_eq!(tree[node[i]].amount, b);
        }
        for t in &tree[1..] {
            assert!(t.step.is_power_of_two());
            assert_eq!(tree[t.parent].amount + t.step, t.amount);
        }
        let parents = |tree: &[TreeNode]| {
            let mut p: Vec<usize> = tree[1..].iter().map(|t| t.parent).collect();
            p.sort_unstable();
            p.dedup();
            p.len()
        };
        assert_eq!(parents(&tree), 3);
        // from the layout's steps only: the same 8 rotations with keys 1 and 32, 6 parents
        let (tree, node) = baby_tree(&babies, Some(&[32, 1]));
        assert_eq!(tree.len(), 9);
        for (i, &b) in babies.iter().enumerate() {
            assert_eq!(tree[node[i]].amount, b);
        }
        for t in &tree[1..] {
            assert!(t.step == 1 || t.step == 32);
            assert_eq!(tree[t.parent].amount + t.step, t.amount);
        }
        assert_eq!(parents(&tree), 6);
        // an amount off the layout's grid still has a path (through steps of 1)
        let (tree, node) = baby_tree(&[0, 2, 65], Some(&[64, 2, 1]));
        assert_eq!(tree[node[2]].amount, 65);
    }
}
