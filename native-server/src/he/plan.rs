//! The evaluation plan: from a validated model and a CKKS context to the layout, level and scale of
//! every value, the homomorphic steps, and the evaluation keys they need.
//!
//! Values are kept in a lazy affine form `value = mult * decrypt(ct) + offset`: an activation
//! `a*x^2 + b*x + c` is evaluated as `a*(x + b/2a)^2 + (c - b^2/4a)` with one ciphertext square; its
//! `a` and constant ride along (`mult`, `offset`) and are folded into the next linear layer's weights
//! and bias (weight redistribution), so each activation costs exactly one multiplication. A linear
//! layer reads a squared value (scale Delta^2) and multiplies by weights at about Delta, and one
//! rescale by a ~2*log(Delta)-bit prime brings it back to Delta: activation plus layer take one prime
//! (two levels per prime). Every layer's output scale is exactly Delta: weights are encoded at
//! `Delta * q / scale_in`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use blindsight_core::layout::{LayoutError, SlotLayout};
use blindsight_core::{scales_equal, Context};
use rayon::prelude::*;

use crate::he::bsgs::{BabySteps, LinearPlan};
use crate::he::keys::KeyPlan;
use crate::he::operator::Operator;
use crate::he::replicas::{occupied, Replicas};
use crate::model::{Model, Op, Shape, Source};

/// Why a model cannot be evaluated homomorphically with a parameter set.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "the model needs {depth} levels (one per linear layer) but parameter set {params} has {max} \
         (no secure set of this library is deep enough; use a shallower model)"
    )]
    TooDeep {
        depth: usize,
        max: usize,
        params: String,
    },
    #[error("node {node}: {op} cannot be evaluated homomorphically (use a quadratic activation)")]
    Unsupported { node: String, op: String },
    #[error("node {node}: {detail}")]
    Layout { node: String, detail: String },
    #[error("the model output must be a linear layer (found {0})")]
    Output(String),
}

impl PlanError {
    fn layout(node: &str, e: LayoutError) -> Self {
        PlanError::Layout {
            node: node.to_string(),
            detail: e.to_string(),
        }
    }
}

/// What the planner knows about a value: `value = mult * decrypt(ct) + offset`.
///
/// A batch's images share ciphertexts where a layout leaves slots idle: image `k` of a
/// ciphertext sits at `layout` shifted by `shifts[k]` slots, so a value of a batch of `B` images
/// is `ceil(B / shifts.len())` ciphertexts (groups), image `j` in group `j / shifts.len()`.
/// Where a layout has no idle slots (stage 1), two images may share each slot instead, one in
/// its real and one in its imaginary part (`lanes` 2, see [`Planner::lanes_for`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    pub layout: SlotLayout,
    pub shifts: Vec<usize>,
    /// Images per slot: 1, or 2 (real and imaginary parts).
    pub lanes: usize,
    /// The image at each place of the batch, places in order of group, then shift, then lane:
    /// `0..batch` unless a parted pair reordered them (see [`Lanes::Take`]); later values
    /// keep the order, so each image keeps its distance from its input.
    pub images: Vec<usize>,
    /// Every shift the layout has room for (`shifts` is its first `min(batch, room)`): batches
    /// of every size place their outputs as a full one would, so they need no other keys.
    pub room: Vec<usize>,
    pub level: usize,
    pub scale: f64,
    pub mult: f64,
    /// Per element (CHW) of one image.
    pub offset: Vec<f64>,
    /// Slots outside the layout that may hold nonzero values (`None`: all zero).
    pub strays: Option<Strays>,
}

/// The slots outside a value's layout that may hold nonzero values: the partial sums a layer
/// with replicas leaves beside its outputs, or a pooling's rotated sums. Replicas read a
/// value only where it holds zeros ([`Replicas::reads_clean`]).
#[derive(Clone, PartialEq)]
pub struct Strays(Arc<[bool]>);

impl Strays {
    fn all(slots: usize) -> Self {
        Self(vec![true; slots].into())
    }

    /// Marks of both (either may be absent).
    fn union(a: Option<&Strays>, b: Option<&Strays>) -> Option<Strays> {
        match (a, b) {
            (Some(a), Some(b)) => Some(Strays(
                a.0.iter().zip(b.0.iter()).map(|(x, y)| *x || *y).collect(),
            )),
            (a, b) => a.or(b).cloned(),
        }
    }
}

impl fmt::Debug for Strays {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.iter().filter(|&&x| x).count();
        write!(f, "Strays({n} of {} slots)", self.0.len())
    }
}

impl ValueInfo {
    /// Images per ciphertext.
    pub fn capacity(&self) -> usize {
        self.shifts.len() * self.lanes
    }

    /// The place of image `j` (`j` itself unless reordered).
    fn place(&self, j: usize) -> usize {
        self.images.iter().position(|&i| i == j).unwrap_or(j)
    }

    /// The group (ciphertext) and shift of image `j`.
    pub fn place_of(&self, j: usize) -> (usize, usize) {
        let p = self.place(j);
        let k = p % self.capacity();
        (p / self.capacity(), self.shifts[k / self.lanes])
    }

    /// The lane of image `j`: 0 for the real part of its slots, 1 for the imaginary part.
    pub fn lane_of(&self, j: usize) -> usize {
        self.place(j) % self.capacity() % self.lanes
    }
}

/// How an activation treats a value whose ciphertexts may hold two images as real and
/// imaginary parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lanes {
    /// One image per slot: `(x + beta)^2`.
    One,
    /// Both lanes squared and kept together: `y = x + beta*(1+i)` is split into its real and
    /// imaginary parts (one conjugation), each squared, and `re^2 + i*im^2` rejoined.
    Both,
    /// As `Both`, but only lane `0` or `1` is squared and kept, as a one-lane value: where the
    /// next layers have idle slots for the batch instead.
    Take(usize),
}

/// Where a step reads a value: the encrypted input of one image or an earlier step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ref {
    Input(usize),
    Step(usize),
}

/// One homomorphic step; `node` is the model node whose value it produces.
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    Linear {
        input: Ref,
        lin: Box<LinearPlan>,
    },
    /// `ct + beta`, squared and relinearized (per lane, see [`Lanes`]).
    Activation {
        input: Ref,
        beta: Vec<f64>,
        lanes: Lanes,
    },
    /// Sum of two values at the same level, scale, layout and multiplier.
    Add {
        inputs: [Ref; 2],
    },
    /// Sum over each channel's map by rotations (the mean's 1/HW rides in `mult`).
    Pool {
        input: Ref,
        amounts: Vec<usize>,
    },
    /// `sum_t lin_t(input_t)`: a residual add of two linear layers that nothing else reads,
    /// evaluated with one shared chain of giant rotations and one rescale.
    LinearSum {
        terms: Vec<(Ref, LinearPlan)>,
    },
}

impl StepKind {
    /// The values the step reads.
    pub fn refs(&self) -> Vec<Ref> {
        match self {
            StepKind::Linear { input, .. }
            | StepKind::Activation { input, .. }
            | StepKind::Pool { input, .. } => vec![*input],
            StepKind::Add { inputs } => inputs.to_vec(),
            StepKind::LinearSum { terms } => terms.iter().map(|(r, _)| *r).collect(),
        }
    }

    fn map_refs(&mut self, f: impl Fn(Ref) -> Ref) {
        match self {
            StepKind::Linear { input, .. }
            | StepKind::Activation { input, .. }
            | StepKind::Pool { input, .. } => *input = f(*input),
            StepKind::Add { inputs } => inputs.iter_mut().for_each(|r| *r = f(*r)),
            StepKind::LinearSum { terms } => terms.iter_mut().for_each(|(r, _)| *r = f(*r)),
        }
    }

    /// The linear plans the step evaluates.
    pub fn linear_plans(&self) -> Vec<&LinearPlan> {
        match self {
            StepKind::Linear { lin, .. } => vec![&**lin],
            StepKind::LinearSum { terms } => terms.iter().map(|(_, l)| l).collect(),
            _ => Vec::new(),
        }
    }
}

/// Turns every sum of two linear layers, each read only by the sum, into one `LinearSum` step
/// (a residual block's last convolution and its shortcut): the shortcut's giant rotations and
/// rescale disappear into the convolution's. Renumbers the remaining steps.
fn fuse_linear_sums(steps: &mut Vec<Step>, outputs: &mut [usize]) {
    let mut readers = vec![0usize; steps.len()];
    for st in steps.iter() {
        for r in st.kind.refs() {
            if let Ref::Step(j) = r {
                readers[j] += 1;
            }
        }
    }
    for &o in outputs.iter() {
        readers[o] += 1;
    }
    let mut removed = vec![false; steps.len()];
    for i in 0..steps.len() {
        let StepKind::Add {
            inputs: [Ref::Step(a), Ref::Step(b)],
        } = steps[i].kind
        else {
            continue;
        };
        if a == b || readers[a] != 1 || readers[b] != 1 {
            continue;
        }
        let terms = |k: &StepKind| -> Vec<(Ref, LinearPlan)> {
            match k {
                StepKind::Linear { input, lin } => vec![(*input, (**lin).clone())],
                StepKind::LinearSum { terms } => terms.clone(),
                _ => Vec::new(),
            }
        };
        let (ta, tb) = (terms(&steps[a].kind), terms(&steps[b].kind));
        if ta.is_empty()
            || tb.is_empty()
            || !ta.iter().chain(&tb).all(|(_, l)| ta[0].1.fuses_with(l))
        {
            continue;
        }
        steps[i].kind = StepKind::LinearSum {
            terms: ta.into_iter().chain(tb).collect(),
        };
        removed[a] = true;
        removed[b] = true;
    }
    let mut index = vec![usize::MAX; steps.len()];
    let mut kept = 0;
    for (i, &r) in removed.iter().enumerate() {
        if !r {
            index[i] = kept;
            kept += 1;
        }
    }
    let old = std::mem::take(steps);
    for (i, mut st) in old.into_iter().enumerate() {
        if removed[i] {
            continue;
        }
        st.kind.map_refs(|r| match r {
            Ref::Step(j) => Ref::Step(index[j]),
            input => input,
        });
        steps.push(st);
    }
    for o in outputs.iter_mut() {
        *o = index[*o];
    }
}

/// Orders the steps so that a batch's images go through the stages that hold one image per
/// ciphertext one after another, each as far as the next merge, instead of all side by side:
/// only one image's intermediate values are alive at a time. Among the steps whose inputs are
/// ready, the one whose group starts at the lowest image goes first (ties in plan order); for a
/// single image this is the plan order.
fn order_depth_first(steps: &mut Vec<Step>, outputs: &mut [usize]) {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let n = steps.len();
    let first_image = |st: &Step| st.group * st.value.capacity();
    let mut waiting: Vec<usize> = steps
        .iter()
        .map(|st| {
            st.kind
                .refs()
                .iter()
                .filter(|r| matches!(r, Ref::Step(_)))
                .count()
        })
        .collect();
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, st) in steps.iter().enumerate() {
        for r in st.kind.refs() {
            if let Ref::Step(j) = r {
                readers[j].push(i);
            }
        }
    }
    let mut ready: BinaryHeap<Reverse<(usize, usize)>> = (0..n)
        .filter(|&i| waiting[i] == 0)
        .map(|i| Reverse((first_image(&steps[i]), i)))
        .collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse((_, i))) = ready.pop() {
        order.push(i);
        for &k in &readers[i] {
            waiting[k] -= 1;
            if waiting[k] == 0 {
                ready.push(Reverse((first_image(&steps[k]), k)));
            }
        }
    }
    debug_assert_eq!(order.len(), n, "the steps form a DAG");
    let mut index = vec![0; n];
    for (new, &old) in order.iter().enumerate() {
        index[old] = new;
    }
    let mut old: Vec<Option<Step>> = std::mem::take(steps).into_iter().map(Some).collect();
    for &i in &order {
        let mut st = old[i].take().expect("each step once");
        st.kind.map_refs(|r| match r {
            Ref::Step(j) => Ref::Step(index[j]),
            input => input,
        });
        steps.push(st);
    }
    for o in outputs.iter_mut() {
        *o = index[*o];
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub node: usize,
    pub name: String,
    /// Which ciphertext of the node's value the step computes (see [`ValueInfo`]).
    pub group: usize,
    pub kind: StepKind,
    /// The value the step produces.
    pub value: ValueInfo,
}

impl Step {
    /// The largest error of this step's decrypted `slots` (one image at a time) against the
    /// plaintext outputs of every node (`plain::forward_all`); `None` where the value is no
    /// node's output (a shortcut folded into a sum) or its size differs from the node's.
    pub fn value_error(&self, slots: &[f64], reference: &[Vec<f64>]) -> Option<f64> {
        if self.name.ends_with(".shortcut") {
            return None;
        }
        let got = self.value.layout.extract(slots).ok()?;
        let want = reference.get(self.node)?;
        (got.len() == want.len()).then(|| {
            got.iter()
                .zip(&self.value.offset)
                .zip(want)
                .map(|((g, o), w)| (self.value.mult * g + o - w).abs())
                .fold(0.0, f64::max)
        })
    }
}

/// Everything the server evaluates and the client must match (layouts, level, scale, keys).
#[derive(Debug, Clone)]
pub struct Plan {
    pub params: String,
    /// Where the client places the normalized image, at which level and scale it encrypts it.
    pub input: SlotLayout,
    pub input_level: usize,
    pub input_scale: f64,
    /// Images evaluated together; the input is one ciphertext per image.
    pub batch: usize,
    pub steps: Vec<Step>,
    /// Indices into `steps` of the output value's ciphertexts (one per group).
    pub outputs: Vec<usize>,
    /// Added to each image's output at the end (the last layer's bias and carried constants).
    pub output_offset: Vec<f64>,
    /// Rotation amounts (left, in slots) and the highest level each is used at.
    pub rotations: BTreeMap<usize, usize>,
    /// Which of those keys the client uploads and which the server derives.
    pub keys: KeyPlan,
    /// Highest level of a relinearization, if any.
    pub relin_level: Option<usize>,
    /// Highest level of a conjugation (complex packing), if any: its key is uploaded, since no
    /// product of rotations is a conjugation.
    pub conj_level: Option<usize>,
}

impl Plan {
    /// Where the logits are in the decrypted slots.
    pub fn output_layout(&self) -> &SlotLayout {
        &self.output_value().layout
    }

    /// The output value (logits) of every group.
    pub fn output_value(&self) -> &ValueInfo {
        &self.steps[self.outputs[0]].value
    }

    /// Whether the keys made for `other` serve this plan too: every rotation amount it uses at
    /// or above the level it is needed at, and relinearization high enough.
    pub fn keys_covered_by(&self, other: &Plan) -> bool {
        self.rotations
            .iter()
            .all(|(a, l)| other.rotations.get(a).is_some_and(|have| have >= l))
            && self.relin_level <= other.relin_level
            && self.conj_level <= other.conj_level
    }

    /// Extends this plan's keys to serve `other` too (a session makes one set of keys for jobs
    /// of one image and of several): the union of their rotation uses, relinearization and
    /// conjugation levels, split again between client and server.
    pub fn cover_keys_of(&mut self, other: &Plan, ctx: &Context) {
        let pair_to = Packing::of(ctx.params()).pair_to;
        let (mut uses, relin, conj) = keys_needed(&self.steps, pair_to);
        let (more, other_relin, other_conj) = keys_needed(&other.steps, pair_to);
        for (a, levels) in more {
            uses.entry(a).or_default().extend(levels);
        }
        self.rotations = uses
            .iter()
            .map(|(&a, levels)| (a, *levels.last().expect("an amount is used somewhere")))
            .collect();
        self.keys = KeyPlan::new(ctx, &uses);
        self.relin_level = relin.max(other_relin);
        self.conj_level = conj.max(other_conj);
    }

    /// Plans `model` for one image at a time.
    pub fn new(model: &Model, ctx: &Context) -> Result<Self, PlanError> {
        Self::batched(model, ctx, 1)
    }

    /// Plans `model` for `ctx` and `batch` images evaluated together; errors if the model is not
    /// made of supported layers, does not fit one ciphertext, or is deeper than the set's levels.
    pub fn batched(model: &Model, ctx: &Context, batch: usize) -> Result<Self, PlanError> {
        Self::packed(model, ctx, batch, Packing::of(ctx.params()))
    }

    /// [`Plan::batched`] with complex packing and pairs at other levels than the set's keys
    /// give: tests reach every kind of layer (real, split Horner steps, the real part after the
    /// rescale) with the small sets.
    #[cfg(test)]
    pub(crate) fn with_packing_levels(
        model: &Model,
        ctx: &Context,
        batch: usize,
        derived_to: usize,
        pair_to: usize,
    ) -> Result<Self, PlanError> {
        let mut packing = Packing::of(ctx.params());
        packing.derived_to = Some(derived_to);
        packing.pair_to = Some(pair_to);
        Self::packed(model, ctx, batch, packing)
    }

    fn packed(
        model: &Model,
        ctx: &Context,
        batch: usize,
        packing: Packing,
    ) -> Result<Self, PlanError> {
        if batch == 0 {
            return Err(PlanError::Output("an empty batch".into()));
        }
        let params = ctx.params();
        let total = depth(model);
        if total > params.max_level() {
            return Err(PlanError::TooDeep {
                depth: total,
                max: params.max_level(),
                params: params.name().to_string(),
            });
        }
        let delta = params.default_scale();
        let Shape::Map {
            channels,
            height,
            width,
        } = model.input_shape()
        else {
            return Err(PlanError::Output("a vector input".into()));
        };
        let input = SlotLayout::dense(channels, height, width, params.slots())
            .map_err(|e| PlanError::layout("input", e))?;
        let (input_level, input_scale) = (total, delta * delta);
        let mut planner = Planner::new(
            model,
            delta,
            batch,
            packing,
            output_gain(params),
            ValueInfo {
                layout: input.clone(),
                shifts: vec![0],
                lanes: 1,
                images: (0..batch).collect(),
                room: vec![0],
                level: input_level,
                scale: input_scale,
                mult: 1.0,
                offset: vec![0.0; input.len()],
                strays: None,
            },
        );
        for i in 0..model.nodes().len() {
            planner.node(i)?;
        }
        let mut steps = planner.steps;
        let mut outputs = planner.step_of[model.output()].clone();
        fuse_linear_sums(&mut steps, &mut outputs);
        order_depth_first(&mut steps, &mut outputs);
        // a plan shared by several steps (the clones of one image's layer) is built once
        steps.par_iter().for_each(|st| {
            for lin in st.kind.linear_plans() {
                lin.build_diagonals(model)
            }
        });
        let out = &steps[outputs[0]].value;
        if (out.mult - 1.0).abs() > 1e-12 || out.level != 0 {
            return Err(PlanError::Output(format!(
                "a value with multiplier {} at level {}",
                out.mult, out.level
            )));
        }
        let output_offset = out.offset.clone();
        let (uses, relin_level, conj_level) = keys_needed(&steps, packing.pair_to);
        let rotations = uses
            .iter()
            .map(|(&a, levels)| (a, *levels.last().expect("an amount is used somewhere")))
            .collect();
        let keys = KeyPlan::new(ctx, &uses);
        Ok(Self {
            params: params.name().to_string(),
            input,
            input_level,
            input_scale,
            batch,
            steps,
            outputs,
            output_offset,
            rotations,
            keys,
            relin_level,
            conj_level,
        })
    }
}

/// How many levels above those whose keys the server derives the conjugation key is made: a
/// batch pairs its images in stage 1 (real and imaginary parts of one ciphertext) up to there,
/// where the layout leaves no slots idle, and one image packs complex up to one level higher.
/// At N16_L39 three levels: the key for level 18 (23.9 MB instead of 20.5 for 15) fits the
/// 128 MB upload beside the other four (127.96 MB in all), with the set's small special primes;
/// level 19's would not.
const CONJUGATION_LEVELS_ABOVE_DERIVED: usize = 3;

/// Bits that the logits may use above their scale at level 0, sign included (magnitudes below
/// 2^13), against q0.
const LOGIT_HEADROOM_BITS: f64 = 14.0;

/// The most bits the output layer's scale goes above Delta.
const MAX_OUTPUT_GAIN_BITS: f64 = 10.0;

/// The output layer's scale over Delta: as much as q0 holds beside the logits' headroom, at most
/// 2^10 (2^10 at N16_L39: a 50-bit q0, Delta = 2^25). Nothing multiplies the logits again, and
/// their precision is the last product's: its plaintexts rounded at the scale, times inputs
/// summed over the whole map. At Delta that rounding was most of the logit error.
fn output_gain(params: &blindsight_core::Params) -> f64 {
    let spare = params.log_q_at(0) - params.default_scale().log2() - LOGIT_HEADROOM_BITS;
    spare.floor().clamp(0.0, MAX_OUTPUT_GAIN_BITS).exp2()
}

/// Levels consumed up to the model's output: one per linear layer on the longest path.
fn depth(model: &Model) -> usize {
    let nodes = model.nodes();
    let mut depth = vec![0usize; nodes.len()];
    let d = |s: &Source, depth: &[usize]| match *s {
        Source::Input => 0,
        Source::Node(j) => depth[j],
    };
    for (i, node) in nodes.iter().enumerate() {
        depth[i] = match &node.op {
            Op::Conv2d(_) | Op::Linear(_) => d(&node.inputs[0], &depth) + 1,
            Op::Add => node.inputs.iter().map(|s| d(s, &depth)).max().unwrap_or(0),
            _ => d(&node.inputs[0], &depth),
        };
    }
    depth[model.output()]
}

/// The evaluation keys the plan needs: the rotation amounts with the levels each is used at, and
/// the highest levels of a relinearization and of a conjugation.
type KeysNeeded = (
    BTreeMap<usize, BTreeSet<usize>>,
    Option<usize>,
    Option<usize>,
);

/// The conjugation key is made for the highest level at which a batch would pair images
/// (`pair_to` and below, where a layout has no room for shifts), by one image's plan too:
/// the client makes one set of keys for jobs of one image and of several.
fn keys_needed(steps: &[Step], pair_to: Option<usize>) -> KeysNeeded {
    let mut rotations: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    let (mut relin_level, mut conj_level) = (None, None);
    let mut note = |amount: usize, level: usize| {
        rotations.entry(amount).or_default().insert(level);
    };
    for st in steps {
        for lin in st.kind.linear_plans() {
            for a in lin.rotation_amounts() {
                note(a, lin.level);
            }
            conj_level = conj_level.max(lin.conjugation_level());
        }
        match &st.kind {
            StepKind::Pool { amounts, .. } => {
                for &a in amounts {
                    note(a, st.value.level);
                }
            }
            StepKind::Activation { .. } => {
                relin_level = relin_level.max(Some(st.value.level));
                if pair_to.is_some_and(|p| st.value.level <= p) && st.value.room.len() == 1 {
                    conj_level = conj_level.max(Some(st.value.level));
                }
            }
            StepKind::Linear { .. } | StepKind::LinearSum { .. } | StepKind::Add { .. } => {}
        }
    }
    (rotations, relin_level, conj_level)
}

/// A linear term's images, as (input shift, output shift) pairs, and whether it writes the
/// imaginary lane.
type TermImages = (Vec<(usize, usize)>, bool);

/// The levels at which each way of packing applies, from the parameter set's key layouts.
#[derive(Debug, Clone, Copy)]
struct Packing {
    /// The lowest level whose keys have more than one digit: baby trees with fewer keys there
    /// (those keys are the largest).
    wide_keys_from: usize,
    /// The highest level whose rotation keys the server derives, if any: complex packing's
    /// Horner step 2G has a key there and below, and is two rotations by G above.
    derived_to: Option<usize>,
    /// The highest level at which a batch pairs images ([`Planner::lanes_for`]), and the
    /// conjugation key's: from where that key still fits the upload (see
    /// [`CONJUGATION_LEVELS_ABOVE_DERIVED`]). One image packs complex up to one level above it, the
    /// real part then taken after the rescale.
    pair_to: Option<usize>,
}

impl Packing {
    fn of(params: &blindsight_core::Params) -> Self {
        let wide_keys_from = (0..=params.max_level())
            .find(|&l| params.digits_at(l) > 1)
            .unwrap_or(usize::MAX);
        let derived_to = (0..=params.max_level())
            .rev()
            .find(|&l| params.derived_layout(l).is_some());
        let pair_to = derived_to.map(|c| {
            (c + CONJUGATION_LEVELS_ABOVE_DERIVED).min(params.max_level().saturating_sub(1))
        });
        Self {
            wide_keys_from,
            derived_to,
            pair_to,
        }
    }
}

/// The planner's state while it walks the model's nodes in order: the steps so far, the steps of
/// each node (one per group of the batch), and how many nodes read each node.
struct Planner<'a> {
    model: &'a Model,
    delta: f64,
    batch: usize,
    packing: Packing,
    /// The output layer's scale over Delta ([`output_gain`]).
    output_gain: f64,
    input: ValueInfo,
    steps: Vec<Step>,
    step_of: Vec<Vec<usize>>,
    /// A linear node's input and operator, to re-plan it into another layout.
    linear_of: Vec<Option<(Source, Operator)>>,
    readers: Vec<usize>,
}

impl<'a> Planner<'a> {
    fn new(
        model: &'a Model,
        delta: f64,
        batch: usize,
        packing: Packing,
        output_gain: f64,
        input: ValueInfo,
    ) -> Self {
        let nodes = model.nodes();
        let mut readers = vec![0usize; nodes.len()];
        for node in nodes {
            for s in &node.inputs {
                if let Source::Node(j) = *s {
                    readers[j] += 1;
                }
            }
        }
        Self {
            model,
            delta,
            batch,
            packing,
            output_gain,
            input,
            steps: Vec::with_capacity(nodes.len()),
            step_of: vec![Vec::new(); nodes.len()],
            linear_of: vec![None; nodes.len()],
            readers,
        }
    }

    /// How a linear layer whose input is at `level` composes its baby rotations: from the
    /// layout's steps where keys are widest (their size dominates the upload), from powers of
    /// two below.
    fn baby_steps(&self, level: usize) -> BabySteps {
        if level >= self.packing.wide_keys_from {
            BabySteps::Layout
        } else {
            BabySteps::Binary
        }
    }

    /// Where the groups of `s` are read.
    fn refs(&self, s: Source) -> Vec<Ref> {
        match s {
            Source::Input => (0..self.batch).map(Ref::Input).collect(),
            Source::Node(j) => self.step_of[j].iter().map(|&i| Ref::Step(i)).collect(),
        }
    }

    fn value_of(&self, s: Source) -> &ValueInfo {
        match s {
            Source::Input => &self.input,
            Source::Node(j) => &self.steps[self.step_of[j][0]].value,
        }
    }

    /// One step per group of `value`, each made by `kind(group)`.
    fn per_group(
        &self,
        node: usize,
        name: &str,
        value: ValueInfo,
        kind: impl Fn(usize) -> StepKind,
    ) -> Vec<Step> {
        (0..self.batch.div_ceil(value.capacity()))
            .map(|group| Step {
                node,
                name: name.to_string(),
                group,
                kind: kind(group),
                value: value.clone(),
            })
            .collect()
    }

    /// Plans node `i` (its inputs are planned) and records its steps.
    fn node(&mut self, i: usize) -> Result<(), PlanError> {
        let node = &self.model.nodes()[i];
        let name = node.name.clone();
        let src = node.inputs[0];
        let steps = match &node.op {
            Op::Conv2d(_) | Op::Linear(_) => {
                let op = match node.op {
                    Op::Conv2d(_) => Operator::Conv(i),
                    _ => Operator::Dense(i),
                };
                let raw = self
                    .output_layout(i, &self.value_of(src).layout)?
                    .expect("a linear node");
                self.linear_of[i] = Some((src, op.clone()));
                self.linear(i, &name, src, op, raw)?
            }
            &Op::Quadratic { a, b, c } => self.activation(i, &name, src, a, b, c)?,
            Op::Relu => {
                return Err(PlanError::Unsupported {
                    node: name,
                    op: "ReLU".into(),
                })
            }
            Op::GlobalAvgPool => self.pool(i, &name, src)?,
            Op::Add => self.add(i, &name, node.inputs[0], node.inputs[1])?,
        };
        let first = self.steps.len();
        self.step_of[i] = (first..first + steps.len()).collect();
        self.steps.extend(steps);
        Ok(())
    }

    /// The raw output layout of linear node `i` reading a value laid out as `input` (`None` for
    /// other nodes).
    fn output_layout(&self, i: usize, input: &SlotLayout) -> Result<Option<SlotLayout>, PlanError> {
        let node = &self.model.nodes()[i];
        let raw = match &node.op {
            Op::Conv2d(c) => input.derive(
                c.out_channels,
                c.out_height,
                c.out_width,
                input.gap() * c.stride,
            ),
            Op::Linear(l) => input.derive(l.out_features, 1, 1, input.gap()),
            _ => return Ok(None),
        };
        raw.map(Some).map_err(|e| PlanError::layout(&node.name, e))
    }

    /// Images per slot of a linear layer's output at `level` whose layout has `room` for
    /// shifts: a batch pairs its images (real and imaginary parts) at `pair_to` and below
    /// where the layout has no idle slots, or where the batch fills its shifts twice over (so
    /// that parting the pairs leaves whole ciphertexts). Its real weights then serve both
    /// images at once; each activation costs one conjugation more (see [`Lanes`]).
    fn lanes_for(&self, level: usize, room: &[usize]) -> usize {
        let paired = self.packing.pair_to.is_some_and(|p| level <= p);
        let fits = room.len() == 1 || self.batch.is_multiple_of(2 * room.len());
        if self.batch >= 2 && fits && paired {
            2
        } else {
            1
        }
    }

    /// Whether an activation of node `node` on a paired value keeps its pairs: every linear
    /// layer reading it writes pairs too (else each image continues alone).
    /// A pooling or a residual add passes the pairs on to its readers; an activation decides
    /// for itself.
    fn keeps_pairs(&self, node: usize, v: &ValueInfo) -> Result<bool, PlanError> {
        for (i, n) in self.model.nodes().iter().enumerate() {
            if !n.inputs.contains(&Source::Node(node)) {
                continue;
            }
            let keeps = match self.output_layout(i, &v.layout)? {
                Some(raw) => self.linear_lanes(i, v.level - 1, &raw.batch_shifts(&v.room)) == 2,
                None if matches!(n.op, Op::Quadratic { .. }) => true,
                None => self.keeps_pairs(i, v)?,
            };
            if !keeps {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// [`Planner::lanes_for`] the output of linear node `i`: the model's output (the logits,
    /// which the client reads from the real parts) is never paired.
    fn linear_lanes(&self, i: usize, level: usize, room: &[usize]) -> usize {
        if i == self.model.output() {
            1
        } else {
            self.lanes_for(level, room)
        }
    }

    /// A convolution or dense layer reading `src`, writing near `raw` (shifted to keep its
    /// rotation amounts small), output at exactly Delta one level down. The batch's images go
    /// to as many shifts of the output layout as it has room for, or pair up.
    fn linear(
        &self,
        node: usize,
        name: &str,
        src: Source,
        op: Operator,
        raw: SlotLayout,
    ) -> Result<Vec<Step>, PlanError> {
        let v = self.value_of(src);
        let room = raw.batch_shifts(&v.room);
        let lanes = self.linear_lanes(node, v.level - 1, &room);
        let shifts = room[..room.len().min(self.batch.div_ceil(lanes))].to_vec();
        let scale = if node == self.model.output() {
            self.delta * self.output_gain
        } else {
            self.delta
        };
        let target = ValueInfo {
            layout: raw,
            shifts,
            lanes,
            images: v.images.clone(),
            room,
            level: v.level - 1,
            scale,
            mult: 1.0,
            offset: Vec::new(),
            strays: None,
        };
        self.linear_steps(node, name, src, op, v.mult, &target, true)
    }

    /// The steps of linear `op` reading `src` (multiplied by `mult`) into `target`'s layout,
    /// shifts, level and scale; with `free_offset`, `target.layout` is shifted to keep the
    /// rotation amounts small. Each output group sums one term per input group it draws images
    /// from (several where the batch is merged into fewer ciphertexts). Pairs pass through
    /// (real weights act on both lanes alike), and a term that moves an image into the
    /// imaginary lane has its weights times `i` ([`LinearPlan::imag`]); a pair cannot part here.
    #[allow(clippy::too_many_arguments)]
    fn linear_steps(
        &self,
        node: usize,
        name: &str,
        src: Source,
        op: Operator,
        mult: f64,
        target: &ValueInfo,
        free_offset: bool,
    ) -> Result<Vec<Step>, PlanError> {
        let v = self.value_of(src);
        if v.lanes > target.lanes {
            return Err(PlanError::Layout {
                node: name.to_string(),
                detail: "a linear layer cannot part paired images".into(),
            });
        }
        let refs = self.refs(src);
        let level = target.level + 1;
        let complex = self.packing.pair_to.is_some_and(|p| target.level <= p)
            && v.lanes == 1
            && target.lanes == 1;
        // one image only: a batch fills the idle sub-positions with its images instead
        let replicas = if self.batch == 1 && v.lanes == 1 {
            self.replicas_for(node, src, &target.layout)
        } else {
            None
        };
        let plan = |output: SlotLayout, pairs: Vec<(usize, usize)>, free: bool| {
            let mut lin = LinearPlan::new(
                self.model,
                op.clone(),
                mult,
                v.layout.clone(),
                output,
                pairs,
                free,
                level,
                target.scale,
                self.baby_steps(level),
                complex,
                replicas,
            );
            lin.split_step = complex && self.packing.derived_to.is_none_or(|d| level > d);
            lin.real_after_rescale = complex && self.packing.pair_to.is_none_or(|p| level > p);
            lin
        };
        // (input group, output group, input shift, output shift, into the imaginary lane) of
        // every image
        let places: Vec<(usize, usize, usize, usize, bool)> = (0..self.batch)
            .map(|j| {
                let ((gi, di), (go, dout)) = (v.place_of(j), target.place_of(j));
                (gi, go, di, dout, target.lane_of(j) > v.lane_of(j))
            })
            .collect();
        let output = if free_offset {
            // a batch keeps its rotation amounts small for every image a full batch would
            // have, so that smaller batches shift their outputs the same way
            let mut all: Vec<(usize, usize)> = if self.batch == 1 {
                vec![(0, 0)]
            } else {
                let (ri, ro) = (&v.room, &target.room);
                let n = ri.len() * ro.len();
                (0..n)
                    .map(|j| (ri[j % ri.len()], ro[j % ro.len()]))
                    .collect()
            };
            all.sort_unstable();
            all.dedup();
            plan(target.layout.clone(), all, true).output
        } else {
            target.layout.clone()
        };
        let value = ValueInfo {
            layout: output.clone(),
            offset: op.apply_plain(self.model, &v.offset, target.layout.len()),
            strays: replicas.map(|r| Strays(r.leftovers(&output).into())),
            ..target.clone()
        };
        let groups = self.batch.div_ceil(target.capacity());
        // one plan per distinct set of images: groups alike share it, diagonals included
        let mut made: Vec<(TermImages, LinearPlan)> = Vec::new();
        Ok((0..groups)
            .map(|go| {
                let mut terms: Vec<(Ref, LinearPlan)> = Vec::new();
                for (gi, &input) in refs.iter().enumerate() {
                    for imag in [false, true] {
                        let mut pairs: Vec<(usize, usize)> = places
                            .iter()
                            .filter(|p| p.0 == gi && p.1 == go && p.4 == imag)
                            .map(|p| (p.2, p.3))
                            .collect();
                        // a pair's two images are one term
                        pairs.dedup();
                        if pairs.is_empty() {
                            continue;
                        }
                        let key = (pairs, imag);
                        let lin = match made.iter().find(|(k, _)| *k == key) {
                            Some((_, lin)) => lin.clone(),
                            None => {
                                let mut lin = plan(output.clone(), key.0.clone(), false);
                                lin.imag = imag;
                                made.push((key, lin.clone()));
                                lin
                            }
                        };
                        terms.push((input, lin));
                    }
                }
                let kind = if terms.len() == 1 {
                    let (input, lin) = terms.pop().expect("one term");
                    StepKind::Linear {
                        input,
                        lin: Box::new(lin),
                    }
                } else {
                    StepKind::LinearSum { terms }
                };
                Step {
                    node,
                    name: name.to_string(),
                    group: go,
                    kind,
                    value: value.clone(),
                }
            })
            .collect())
    }

    /// The replicas for linear node `node` reading `src` into `output` (or, for a residual
    /// add `node`, for its identity shortcut): the first shift that suits the input of every
    /// term the layer is summed with, since they share one Horner chain and one sum of the
    /// halves. `None` where a term has no room (a strided shortcut) or no shift reads clean.
    fn replicas_for(&self, node: usize, src: Source, output: &SlotLayout) -> Option<Replicas> {
        let nodes = self.model.nodes();
        let planned = |s: Source| match s {
            Source::Node(j) => !self.step_of[j].is_empty(),
            Source::Input => true,
        };
        // the value a summand reads: a linear layer's input (planned before the layer), or
        // the value itself (an identity shortcut)
        let term_input = |s: Source| match s {
            Source::Node(j) if matches!(nodes[j].op, Op::Conv2d(_) | Op::Linear(_)) => {
                nodes[j].inputs[0]
            }
            s => s,
        };
        let adds: Vec<usize> = if matches!(nodes[node].op, Op::Add) {
            vec![node]
        } else {
            (0..nodes.len())
                .filter(|&k| {
                    matches!(nodes[k].op, Op::Add) && nodes[k].inputs.contains(&Source::Node(node))
                })
                .collect()
        };
        let mut inputs = vec![src];
        for k in adds {
            for &s in &nodes[k].inputs {
                if s != Source::Node(node) {
                    inputs.push(term_input(s));
                }
            }
        }
        if !inputs.iter().all(|&s| planned(s)) {
            return None;
        }
        let values: Vec<&ValueInfo> = inputs.iter().map(|&s| self.value_of(s)).collect();
        if !values.iter().all(|v| Replicas::fits(&v.layout, output)) {
            return None;
        }
        let nonzero: Vec<Vec<bool>> = values
            .iter()
            .map(|v| {
                let mut z = occupied(&v.layout, 0);
                if let Some(Strays(s)) = &v.strays {
                    z.iter_mut().zip(s.iter()).for_each(|(a, b)| *a |= *b);
                }
                z
            })
            .collect();
        Replicas::candidates(&values[0].layout, output)
            .into_iter()
            .find(|r| {
                values
                    .iter()
                    .zip(&nonzero)
                    .all(|(v, z)| r.reads_clean(&v.layout, z))
            })
    }

    /// `a*x^2 + b*x + c` as `a*(x + b/2a)^2 + (c - b^2/4a)`: one square, `a` and the constant
    /// carried into the next linear layer.
    fn activation(
        &self,
        node: usize,
        name: &str,
        src: Source,
        a: f64,
        b: f64,
        c: f64,
    ) -> Result<Vec<Step>, PlanError> {
        if a == 0.0 {
            return Err(PlanError::Unsupported {
                node: name.to_string(),
                op: "a quadratic with a = 0".into(),
            });
        }
        let v = self.value_of(src);
        let m = v.mult;
        let beta: Vec<f64> = v.offset.iter().map(|o| o / m + b / (2.0 * a * m)).collect();
        let constant = c - b * b / (4.0 * a);
        let lanes = match v.lanes {
            1 => Lanes::One,
            _ if self.keeps_pairs(node, v)? => Lanes::Both,
            _ => Lanes::Take(0),
        };
        let mut value = ValueInfo {
            // a pair's parts come apart at twice the scale (`Evaluator::real_imag`)
            scale: v.scale * v.scale * if lanes == Lanes::One { 1.0 } else { 4.0 },
            mult: a * m * m,
            offset: vec![constant; v.offset.len()],
            lanes: if lanes == Lanes::Both { 2 } else { 1 },
            ..v.clone()
        };
        let refs = self.refs(src);
        // parting a pair: output group g takes lane g % 2 of input group g / 2, its images in
        // their shifts' order
        let parts = if matches!(lanes, Lanes::Take(_)) {
            let ns = v.shifts.len();
            let places = self.batch.div_ceil(v.capacity()) * v.capacity();
            let mut images = vec![usize::MAX; places];
            for (p, &image) in v.images.iter().enumerate() {
                let (g, s, l) = (p / v.capacity(), p % v.capacity() / 2, p % 2);
                images[(2 * g + l) * ns + s] = image;
            }
            let filled = images.iter().take_while(|&&i| i != usize::MAX).count();
            images.truncate(filled);
            if filled != self.batch {
                return Err(PlanError::Layout {
                    node: name.to_string(),
                    detail: "parted pairs leave a ciphertext part-filled".into(),
                });
            }
            value.images = images;
            v.lanes
        } else {
            1
        };
        Ok(self.per_group(node, name, value, |g| StepKind::Activation {
            input: refs[g / parts],
            beta: beta.clone(),
            lanes: match lanes {
                Lanes::Take(_) => Lanes::Take(g % parts),
                l => l,
            },
        }))
    }

    /// Sum over each channel's map by log2(H) + log2(W) rotations; the 1/HW rides in `mult`.
    /// The amounts are multiples of the gap, so each image of a group sums only its own map.
    fn pool(&self, node: usize, name: &str, src: Source) -> Result<Vec<Step>, PlanError> {
        let v = self.value_of(src);
        let l = &v.layout;
        if !(l.height().is_power_of_two() && l.width().is_power_of_two()) {
            return Err(PlanError::Layout {
                node: name.to_string(),
                detail: format!(
                    "pooling a {}x{} map needs power-of-two sides",
                    l.height(),
                    l.width()
                ),
            });
        }
        let mut amounts = Vec::new();
        let mut s = 1;
        while s < l.width() {
            amounts.push(s * l.gap());
            s *= 2;
        }
        let mut s = 1;
        while s < l.height() {
            amounts.push(s * l.gap() * l.row());
            s *= 2;
        }
        let plane = l.height() * l.width();
        let layout = l.pooled().map_err(|e| PlanError::layout(name, e))?;
        let offset = v
            .offset
            .chunks(plane)
            .map(|ch| ch.iter().sum::<f64>() / plane as f64)
            .collect();
        let value = ValueInfo {
            layout,
            mult: v.mult / plane as f64,
            offset,
            // the rotated sums fill the slots around each channel's first element
            strays: Some(Strays::all(v.layout.slots())),
            ..v.clone()
        };
        let refs = self.refs(src);
        Ok(self.per_group(node, name, value, |g| StepKind::Pool {
            input: refs[g],
            amounts: amounts.clone(),
        }))
    }

    /// A residual add. The deeper input fixes level, scale, layout, shifts and multiplier; the
    /// other follows: a linear layer that only this sum reads is re-planned to write straight
    /// into the deeper layout, anything else is moved by an identity layer of its own (one level
    /// spare).
    fn add(
        &mut self,
        node: usize,
        name: &str,
        na: Source,
        nb: Source,
    ) -> Result<Vec<Step>, PlanError> {
        let (va, vb) = (self.value_of(na), self.value_of(nb));
        let (deep, shallow_src, shallow) = if va.level <= vb.level {
            (va.clone(), nb, vb.clone())
        } else {
            (vb.clone(), na, va.clone())
        };
        let deep_src = if shallow_src == nb { na } else { nb };
        let compatible = shallow.layout == deep.layout
            && shallow.shifts == deep.shifts
            && shallow.lanes == deep.lanes
            && shallow.images == deep.images
            && shallow.room == deep.room
            && scales_equal(shallow.scale, deep.scale)
            && (shallow.mult / deep.mult - 1.0).abs() < 1e-12;
        let (mut ra, mut rb) = (self.refs(na), self.refs(nb));
        if !compatible {
            if shallow.level <= deep.level {
                return Err(PlanError::Layout {
                    node: name.to_string(),
                    detail: "both inputs at the same level but in different layouts".into(),
                });
            }
            match self.sole_linear_reader(shallow_src) {
                Some(j) => self.retarget(j, &deep, name)?,
                None => {
                    let moved = self.identity_move(node, name, shallow_src, &shallow, &deep)?;
                    let first = self.steps.len();
                    let moved_refs = (first..first + moved.len()).map(Ref::Step).collect();
                    self.steps.extend(moved);
                    (ra, rb) = (self.refs(deep_src), moved_refs);
                }
            }
        }
        let offset = deep
            .offset
            .iter()
            .zip(&shallow.offset)
            .map(|(x, y)| x + y)
            .collect();
        let strays_of = |r: Ref| match r {
            Ref::Step(i) => self.steps[i].value.strays.clone(),
            Ref::Input(_) => None,
        };
        let strays = Strays::union(strays_of(ra[0]).as_ref(), strays_of(rb[0]).as_ref());
        let value = ValueInfo {
            offset,
            strays,
            ..deep
        };
        Ok(self.per_group(node, name, value, |g| StepKind::Add {
            inputs: [ra[g], rb[g]],
        }))
    }

    /// The node behind `src` if it is a linear layer that nothing but the current node reads.
    fn sole_linear_reader(&self, src: Source) -> Option<usize> {
        let Source::Node(j) = src else {
            return None;
        };
        (self.readers[j] == 1 && self.linear_of[j].is_some()).then_some(j)
    }

    /// Re-plans linear node `j` to write into `target`'s layout, shifts, level and scale.
    fn retarget(&mut self, j: usize, target: &ValueInfo, name: &str) -> Result<(), PlanError> {
        let (src, op) = self.linear_of[j].clone().expect("a linear node");
        let old = self.step_of[j].clone();
        let first = &self.steps[old[0]];
        if (first.value.mult / target.mult - 1.0).abs() > 1e-12 {
            return Err(PlanError::Layout {
                node: name.to_string(),
                detail: "inputs with different multipliers".into(),
            });
        }
        let (node, step_name) = (first.node, first.name.clone());
        let mult = self.value_of(src).mult;
        let mut new = self.linear_steps(node, &step_name, src, op, mult, target, false)?;
        if new.len() != old.len() {
            return Err(PlanError::Layout {
                node: name.to_string(),
                detail: "inputs batched into different numbers of ciphertexts".into(),
            });
        }
        for (&i, mut st) in old.iter().zip(new.drain(..)) {
            st.value.offset = std::mem::take(&mut self.steps[i].value.offset);
            self.steps[i] = st;
        }
        Ok(())
    }

    /// An identity layer moving `from` (read at `src`) into `to`'s layout, shifts, level and
    /// multiplier.
    fn identity_move(
        &self,
        node: usize,
        name: &str,
        src: Source,
        from: &ValueInfo,
        to: &ValueInfo,
    ) -> Result<Vec<Step>, PlanError> {
        let mut steps = self.linear_steps(
            node,
            &format!("{name}.shortcut"),
            src,
            Operator::Identity,
            from.mult / to.mult,
            to,
            false,
        )?;
        for st in &mut steps {
            st.value.offset = from.offset.clone();
        }
        Ok(steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The logits leave 2^10 above Delta at N16_L39 (its primes are just below 2^50, which a
    /// count that spent a bit on the sign twice turned into 2^9), and never more than q0 holds.
    #[test]
    fn output_gain_fills_q0_up_to_its_cap() {
        let gain = |name: &str| output_gain(Context::named(name).unwrap().params());
        assert_eq!(gain("N16_L39"), 1024.0);
        assert_eq!(gain("N14_TEST"), 1024.0);
        for name in blindsight_core::params::NAMED_SETS {
            let p = Context::named(name).unwrap();
            let p = p.params();
            // no gain where q0 has no room beside Delta (N12_TINY), never beyond what it has
            let gain = output_gain(p);
            let top = gain.log2() + p.default_scale().log2() + LOGIT_HEADROOM_BITS;
            assert!(gain == 1.0 || top <= p.log_q_at(0), "{name}");
        }
    }
}
