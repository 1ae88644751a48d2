//! Linear layers on one packed ciphertext: the generalized diagonal method with a baby-step /
//! giant-step split and a Horner chain over the giant steps.
//!
//! A linear map `out = M in` between two slot layouts is `sum_a d_a * rot_a(in)` over the rotation
//! amounts `a = slot(in) - slot(out)`. Writing `a = g*G + b` (`G` = one channel block), the baby
//! amounts `b` are the few spatial shifts of a convolution kernel and the giant steps `g` the channel
//! offsets: `out = V_0 + rot_G(V_1 + rot_G(V_2 + ...))` with `V_g = sum_b rot_{-gG}(d_{gG+b}) * rot_b(in)`.
//! Baby rotations are composed from power-of-two steps along a shared prefix tree (hoisted per parent)
//! and the giant chain uses the single amount `G`, so a whole network needs only a handful of keys.
//! All amounts are non-negative left rotations: the planner shifts output layouts to make them so.

use std::collections::HashMap;

use blindsight_core::layout::SlotLayout;
use blindsight_core::{Ciphertext, CkksError, Context, EvaluationKeys, Evaluator, SmallPlaintext};

use crate::model::{Model, Op};

/// The linear operator a step applies, by model node.
#[derive(Debug, Clone, PartialEq)]
pub enum Operator {
    /// A `Conv2d` node.
    Conv(usize),
    /// A `Linear` node reading a pooled vector.
    Dense(usize),
    /// The identity (moving a value to another layout, level or multiplier).
    Identity,
}

impl Operator {
    /// Calls `f(input_element, weight)` for every term of output element `out` (flat CHW indices).
    pub fn terms(&self, model: &Model, out: usize, mut f: impl FnMut(usize, f64)) {
        match *self {
            Operator::Conv(node) => {
                let Op::Conv2d(c) = &model.nodes()[node].op else {
                    unreachable!("planner checked the node kind")
                };
                let plane = c.out_height * c.out_width;
                let (o, y, x) = (out / plane, (out % plane) / c.out_width, out % c.out_width);
                let k = c.kernel;
                for i in 0..c.in_channels {
                    for ky in 0..k {
                        let iy = (y * c.stride + ky) as isize - c.padding as isize;
                        if iy < 0 || iy >= c.in_height as isize {
                            continue;
                        }
                        for kx in 0..k {
                            let ix = (x * c.stride + kx) as isize - c.padding as isize;
                            if ix < 0 || ix >= c.in_width as isize {
                                continue;
                            }
                            let w = c.weight[((o * c.in_channels + i) * k + ky) * k + kx];
                            if w != 0.0 {
                                f(
                                    (i * c.in_height + iy as usize) * c.in_width + ix as usize,
                                    w,
                                );
                            }
                        }
                    }
                }
            }
            Operator::Dense(node) => {
                let Op::Linear(l) = &model.nodes()[node].op else {
                    unreachable!("planner checked the node kind")
                };
                for i in 0..l.in_features {
                    let w = l.weight[out * l.in_features + i];
                    if w != 0.0 {
                        f(i, w);
                    }
                }
            }
            Operator::Identity => f(out, 1.0),
        }
    }

    /// The operator's bias (zero for the identity).
    pub fn bias(&self, model: &Model, out: usize) -> f64 {
        match *self {
            Operator::Conv(node) => match &model.nodes()[node].op {
                Op::Conv2d(c) => c.bias[out / (c.out_height * c.out_width)],
                _ => 0.0,
            },
            Operator::Dense(node) => match &model.nodes()[node].op {
                Op::Linear(l) => l.bias[out],
                _ => 0.0,
            },
            Operator::Identity => 0.0,
        }
    }

    /// The operator applied to a plaintext tensor, bias included: how constants travel through it.
    pub fn apply_plain(&self, model: &Model, input: &[f64], outputs: usize) -> Vec<f64> {
        (0..outputs)
            .map(|o| {
                let mut acc = self.bias(model, o);
                self.terms(model, o, |i, w| acc += w * input[i]);
                acc
            })
            .collect()
    }
}

/// One node of the baby-step tree: `amount = parent's amount + step`, `step` a power of two.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeNode {
    pub parent: usize,
    pub step: usize,
    pub amount: usize,
}

/// A planned linear layer: layouts, level, scales and the rotation structure.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearPlan {
    pub op: Operator,
    /// Factor applied to every weight (the input value's multiplier, folded in).
    pub mult: f64,
    pub input: SlotLayout,
    pub output: SlotLayout,
    /// Output elements (CHW).
    pub outputs: usize,
    /// Level the input is brought to (dropped) before the layer; the output is one level lower.
    pub level: usize,
    /// Exact scale of the output after the rescale.
    pub out_scale: f64,
    /// The giant step `G` (slots).
    pub giant: usize,
    /// Number of giant steps (the Horner chain has `giants - 1` rotations by `G`).
    pub giants: usize,
    /// Baby amounts, ascending; `tree[baby_node[i]]` computes `babies[i]`.
    pub babies: Vec<usize>,
    pub tree: Vec<TreeNode>,
    pub baby_node: Vec<usize>,
    /// The nonzero diagonals (one plaintext product each), pre-rotated for the Horner chain and run-compressed; filled by
    /// [`LinearPlan::build_diagonals`] once the layouts are final (empty until then).
    pub diags: Vec<Diagonal>,
}

/// `count` slots from `start`, `stride` apart, all holding `weight`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Run {
    pub start: u32,
    pub count: u32,
    pub stride: u32,
    pub weight: f64,
}

/// One plaintext of a linear layer: giant step `giant`, baby index `baby`, as runs of equal
/// weights (a convolution's diagonal is a few hundred runs, not 32768 values: kept for every
/// image at a few KB instead of re-derived from the model or stored expanded).
#[derive(Debug, Clone, PartialEq)]
pub struct Diagonal {
    pub giant: usize,
    pub baby: usize,
    pub runs: Vec<Run>,
}

impl Diagonal {
    /// The slot vector.
    pub fn expand(&self, slots: usize) -> Vec<f64> {
        let mut v = vec![0.0; slots];
        for r in &self.runs {
            for k in 0..r.count as usize {
                v[r.start as usize + k * r.stride as usize] = r.weight;
            }
        }
        v
    }
}

/// Compresses slot-sorted `(slot, weight)` entries (distinct slots) into runs.
fn compress(entries: &[(u32, f64)]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for &(slot, weight) in entries {
        if let Some(r) = runs.last_mut() {
            let last = r.start + (r.count - 1) * r.stride;
            if r.weight == weight && (r.count == 1 || slot - last == r.stride) {
                if r.count == 1 {
                    r.stride = slot - last;
                }
                r.count += 1;
                continue;
            }
        }
        runs.push(Run {
            start: slot,
            count: 1,
            stride: 1,
            weight,
        });
    }
    runs
}

/// Counts of what a step did, for the per-layer table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpCounts {
    pub rotations: usize,
    pub plain_mults: usize,
    pub ct_mults: usize,
    pub rescales: usize,
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
        free_offset: bool,
        level: usize,
        out_scale: f64,
    ) -> Self {
        let giant = input.block;
        let outputs = output_raw.len();
        let output = if free_offset {
            // shift so that the most negative (centered) baby amount becomes 0
            let mut min_b = 0i64;
            for_each_amount(model, &op, &input, &output_raw, |a, _, _| {
                let b = (a % giant) as i64;
                let centered = if b >= giant as i64 / 2 {
                    b - giant as i64
                } else {
                    b
                };
                min_b = min_b.min(centered);
            });
            output_raw.shifted(min_b)
        } else {
            output_raw
        };
        let mut babies = std::collections::BTreeSet::new();
        let mut last_giant = 0;
        for_each_amount(model, &op, &input, &output, |a, _, _| {
            babies.insert(a % giant);
            last_giant = last_giant.max(a / giant);
        });
        let babies: Vec<usize> = babies.into_iter().collect();
        let giants = last_giant + 1;
        let (tree, baby_node) = baby_tree(&babies);
        Self {
            op,
            mult,
            input,
            output,
            outputs,
            level,
            out_scale,
            giant,
            giants,
            babies,
            tree,
            baby_node,
            diags: Vec::new(),
        }
    }

    /// Derives the diagonals from the model (once per plan: the same for every image).
    pub fn build_diagonals(&mut self, model: &Model) {
        let slots = self.input.slots;
        let mut index = vec![u32::MAX; self.giant];
        for (i, &b) in self.babies.iter().enumerate() {
            index[b] = i as u32;
        }
        let nb = self.babies.len();
        let mut entries: Vec<(u32, u32, f64)> = Vec::new();
        for_each_amount(model, &self.op, &self.input, &self.output, |a, p, w| {
            let (g, b) = (a / self.giant, a % self.giant);
            // rot_{-gG}(d)[p'] = d[p' - gG]: the entry for output slot p lands at p + gG
            let slot = (p + g * self.giant) % slots;
            entries.push(((g * nb) as u32 + index[b], slot as u32, w * self.mult));
        });
        entries.sort_unstable_by_key(|&(k, slot, _)| (k, slot));
        let mut diags = Vec::new();
        let mut i = 0;
        while i < entries.len() {
            let key = entries[i].0;
            let mut merged: Vec<(u32, f64)> = Vec::new();
            while i < entries.len() && entries[i].0 == key {
                let (_, slot, w) = entries[i];
                match merged.last_mut() {
                    Some(last) if last.0 == slot => last.1 += w,
                    _ => merged.push((slot, w)),
                }
                i += 1;
            }
            diags.push(Diagonal {
                giant: key as usize / nb,
                baby: key as usize % nb,
                runs: compress(&merged),
            });
        }
        self.diags = diags;
    }

    /// Every rotation amount this layer uses.
    pub fn rotation_amounts(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.tree.iter().skip(1).map(|t| t.step).collect();
        if self.giants > 1 {
            v.push(self.giant);
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Rotations per evaluation.
    pub fn rotation_count(&self) -> usize {
        self.tree.len() - 1 + self.giants - 1
    }

    /// Evaluates the layer on `ct` (at this plan's level or above) and rescales.
    pub fn apply(
        &self,
        ev: &Evaluator,
        keys: &EvaluationKeys,
        ct: &Ciphertext,
        counts: &mut OpCounts,
    ) -> Result<Ciphertext, CkksError> {
        apply_sum(ev, keys, &[(self, ct)], counts)
    }

    /// Whether `self` and `other` can be summed inside one Horner chain: same output layout,
    /// level, scale and giant step.
    pub fn fuses_with(&self, other: &LinearPlan) -> bool {
        self.output == other.output
            && self.level == other.level
            && self.out_scale == other.out_scale
            && self.giant == other.giant
            && self.input.slots == other.input.slots
    }
}

/// Rotations per evaluation of the sum of `plans` (each its own baby tree, one shared chain).
pub fn sum_rotation_count(plans: &[&LinearPlan]) -> usize {
    let babies: usize = plans.iter().map(|p| p.tree.len() - 1).sum();
    let giants = plans.iter().map(|p| p.giants).max().unwrap_or(1);
    babies + giants - 1
}

/// A term's input brought to the plan's level, with its baby rotations.
struct Prepared<'a> {
    plan: &'a LinearPlan,
    nodes: Vec<Option<Ciphertext>>,
    /// Scale of the plaintexts: every term's products land at the same scale.
    pt_scale: f64,
    by_giant: Vec<&'a [Diagonal]>,
}

/// Evaluates `sum_t plan_t(ct_t)` and rescales once. The plans must fuse (see
/// [`LinearPlan::fuses_with`]): a residual block's last convolution and its shortcut then share
/// one Horner chain of giant rotations and one rescale instead of paying for two.
pub fn apply_sum(
    ev: &Evaluator,
    keys: &EvaluationKeys,
    terms: &[(&LinearPlan, &Ciphertext)],
    counts: &mut OpCounts,
) -> Result<Ciphertext, CkksError> {
    let Some(&(first, _)) = terms.first() else {
        return Err(CkksError::Count(0));
    };
    if terms.iter().any(|(p, _)| !first.fuses_with(p)) {
        return Err(CkksError::Layout(
            "summed linear layers differ in output layout, level, scale or giant step".into(),
        ));
    }
    let ctx: &Context = ev.context();
    let q = ctx.params().q()[first.level] as f64;
    let slots = first.input.slots;
    let mut prepared = Vec::with_capacity(terms.len());
    for &(plan, ct) in terms {
        let ct = if ct.level > plan.level {
            ev.drop_level(ct, plan.level)?
        } else {
            ct.clone()
        };
        if ct.level != plan.level {
            return Err(CkksError::LevelMismatch(plan.level, ct.level));
        }
        let pt_scale = plan.out_scale * q / ct.scale;
        // baby rotations along the tree, hoisted per parent
        let mut nodes: Vec<Option<Ciphertext>> = vec![None; plan.tree.len()];
        nodes[0] = Some(ct);
        for parent in 0..plan.tree.len() {
            let children: Vec<usize> = (1..plan.tree.len())
                .filter(|&c| plan.tree[c].parent == parent)
                .collect();
            if children.is_empty() {
                continue;
            }
            let steps: Vec<i64> = children.iter().map(|&c| plan.tree[c].step as i64).collect();
            let src = nodes[parent].as_ref().expect("parents come first");
            let rotated = ev.rotate_hoisted(src, &steps, keys)?;
            counts.rotations += rotated.len();
            for (c, r) in children.into_iter().zip(rotated) {
                nodes[c] = Some(r);
            }
        }
        // diagonals are sorted by giant step
        let mut by_giant: Vec<&[Diagonal]> = vec![&[]; plan.giants];
        for chunk in plan.diags.chunk_by(|a, b| a.giant == b.giant) {
            by_giant[chunk[0].giant] = chunk;
        }
        counts.plain_mults += plan.diags.len();
        prepared.push(Prepared {
            plan,
            nodes,
            pt_scale,
            by_giant,
        });
    }
    let giants = terms.iter().map(|(p, _)| p.giants).max().unwrap_or(1);
    // V_g = sum_t sum_b d_{t,g,b} * rot_b(in_t): one limb-major inner product per giant step
    let giant_term = |g: usize| -> Result<Option<Ciphertext>, CkksError> {
        let items: Vec<(&Prepared, &Diagonal)> = prepared
            .iter()
            .flat_map(|t| {
                let diags = t.by_giant.get(g).copied().unwrap_or(&[]);
                diags.iter().map(move |d| (t, d))
            })
            .collect();
        if items.is_empty() {
            return Ok(None);
        }
        // two real diagonals per transform
        let mut pts = Vec::with_capacity(items.len());
        for pair in items.chunks(2) {
            match *pair {
                [(ta, da), (tb, db)] => {
                    let (a, b) = SmallPlaintext::encode_real_pair(
                        ctx,
                        &da.expand(slots),
                        ta.pt_scale,
                        &db.expand(slots),
                        tb.pt_scale,
                        first.level,
                    )?;
                    pts.extend([a, b]);
                }
                [(t, d)] => pts.push(SmallPlaintext::encode_real(
                    ctx,
                    &d.expand(slots),
                    first.level,
                    t.pt_scale,
                )?),
                _ => unreachable!("chunks of at most two"),
            }
        }
        let cts: Vec<&Ciphertext> = items
            .iter()
            .map(|(t, d)| {
                t.nodes[t.plan.baby_node[d.baby]]
                    .as_ref()
                    .expect("every tree node is computed")
            })
            .collect();
        ev.dot_small_plain(&cts, &pts).map(Some)
    };
    // Horner from the last giant down, acc = rot_G(acc) + V_g, each rotation computed beside
    // the next term: the two jobs keep both cores busy where a key switch alone does not,
    // and only one term is alive at a time
    let mut acc = giant_term(giants - 1)?;
    for g in (0..giants - 1).rev() {
        let (rotated, term) = rayon::join(
            || {
                acc.as_ref()
                    .map(|a| ev.rotate(a, first.giant as i64, keys))
                    .transpose()
            },
            || giant_term(g),
        );
        let (rotated, term) = (rotated?, term?);
        if rotated.is_some() {
            counts.rotations += 1;
        }
        acc = match (rotated, term) {
            (Some(mut r), Some(t)) => {
                ev.add_assign(&mut r, &t)?;
                Some(r)
            }
            (r, t) => r.or(t),
        };
    }
    drop(prepared);
    let basis = &ctx.level(first.level).q;
    let acc = acc.unwrap_or_else(|| Ciphertext {
        c: vec![basis.zero(), basis.zero()],
        level: first.level,
        scale: first.out_scale * q,
        fingerprint: *ctx.fingerprint(),
        seed: None,
    });
    counts.rescales += 1;
    let mut out = ev.rescale(&acc)?;
    // the rescale divides by q exactly; pin the bookkeeping to the planned value it equals
    out.scale = first.out_scale;
    Ok(out)
}

/// Calls `f(amount, output slot, weight)` for every term of the map, over every copy of the output;
/// each term reads the copy of its input that makes the amount smallest.
fn for_each_amount(
    model: &Model,
    op: &Operator,
    input: &SlotLayout,
    output: &SlotLayout,
    mut f: impl FnMut(usize, usize, f64),
) {
    let slots = output.slots;
    let (pin, pout) = (input.period(), output.period());
    for o in 0..output.len() {
        let p0 = output.slot_of(o);
        for k in 0..slots / pout {
            let p = (p0 + k * pout) % slots;
            op.terms(model, o, |i, w| {
                let q = input.slot_of(i);
                let a = (q as i64 - p as i64).rem_euclid(pin as i64) as usize;
                f(a, p, w);
            });
        }
    }
}

/// Prefix tree of the babies' binary expansions (high bits first): node 0 is the input itself.
fn baby_tree(babies: &[usize]) -> (Vec<TreeNode>, Vec<usize>) {
    let mut tree = vec![TreeNode {
        parent: 0,
        step: 0,
        amount: 0,
    }];
    let mut by_amount: HashMap<usize, usize> = HashMap::from([(0, 0)]);
    let mut baby_node = Vec::with_capacity(babies.len());
    for &b in babies {
        let (mut cur, mut acc) = (0usize, 0usize);
        for bit in (0..usize::BITS).rev() {
            let step = 1usize << bit;
            if b & step == 0 {
                continue;
            }
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
        let (tree, node) = baby_tree(&babies);
        // 1, 2, 32, 64 from the root; 33, 34 under 32; 65, 66 under 64
        assert_eq!(tree.len(), 9);
        for (i, &b) in babies.iter().enumerate() {
            assert_eq!(tree[node[i]].amount, b);
        }
        for t in &tree[1..] {
            assert!(t.step.is_power_of_two());
            assert_eq!(tree[t.parent].amount + t.step, t.amount);
        }
    }
}
