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

use std::collections::BTreeMap;

use blindsight_core::layout::{LayoutError, SlotLayout};
use blindsight_core::{scales_equal, Context};
use rayon::prelude::*;

use crate::he::bsgs::LinearPlan;
use crate::he::operator::Operator;
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
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    pub layout: SlotLayout,
    pub level: usize,
    pub scale: f64,
    pub mult: f64,
    /// Per element (CHW).
    pub offset: Vec<f64>,
}

/// Where a step reads a value: the encrypted input or an earlier step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ref {
    Input,
    Step(usize),
}

/// One homomorphic step; `node` is the model node whose value it produces.
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    Linear {
        input: Ref,
        lin: Box<LinearPlan>,
    },
    /// `ct + beta`, squared and relinearized.
    Activation {
        input: Ref,
        beta: Vec<f64>,
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
fn fuse_linear_sums(steps: &mut Vec<Step>, output_step: &mut usize) {
    let mut readers = vec![0usize; steps.len()];
    for st in steps.iter() {
        for r in st.kind.refs() {
            if let Ref::Step(j) = r {
                readers[j] += 1;
            }
        }
    }
    readers[*output_step] += 1;
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
        let (StepKind::Linear { input: ia, lin: la }, StepKind::Linear { input: ib, lin: lb }) =
            (&steps[a].kind, &steps[b].kind)
        else {
            continue;
        };
        if !la.fuses_with(lb) {
            continue;
        }
        let terms = vec![(*ia, (**la).clone()), (*ib, (**lb).clone())];
        steps[i].kind = StepKind::LinearSum { terms };
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
            Ref::Input => Ref::Input,
        });
        steps.push(st);
    }
    *output_step = index[*output_step];
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub node: usize,
    pub name: String,
    pub kind: StepKind,
    /// The value the step produces.
    pub value: ValueInfo,
}

/// Everything the server evaluates and the client must match (layouts, level, scale, keys).
#[derive(Debug, Clone)]
pub struct Plan {
    pub params: String,
    /// Where the client places the normalized image, at which level and scale it encrypts it.
    pub input: SlotLayout,
    pub input_level: usize,
    pub input_scale: f64,
    pub steps: Vec<Step>,
    /// Index into `steps` of the output value.
    pub output_step: usize,
    /// Added to the output ciphertext at the end (the last layer's bias and carried constants).
    pub output_offset: Vec<f64>,
    /// Rotation amounts (left, in slots) and the highest level each is used at.
    pub rotations: BTreeMap<usize, usize>,
    /// Highest level of a relinearization, if any.
    pub relin_level: Option<usize>,
}

impl Plan {
    /// Where the logits are in the decrypted slots.
    pub fn output_layout(&self) -> &SlotLayout {
        &self.steps[self.output_step].value.layout
    }

    /// Plans `model` for `ctx`; errors if the model is not made of supported layers, does not fit
    /// one ciphertext, or is deeper than the set's levels.
    pub fn new(model: &Model, ctx: &Context) -> Result<Self, PlanError> {
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
            ValueInfo {
                layout: input.clone(),
                level: input_level,
                scale: input_scale,
                mult: 1.0,
                offset: vec![0.0; input.len()],
            },
        );
        for i in 0..model.nodes().len() {
            planner.node(i)?;
        }
        let mut steps = planner.steps;
        let mut output_step = planner.step_of[model.output()];
        fuse_linear_sums(&mut steps, &mut output_step);
        steps.par_iter_mut().for_each(|st| match &mut st.kind {
            StepKind::Linear { lin, .. } => lin.build_diagonals(model),
            StepKind::LinearSum { terms } => {
                terms.iter_mut().for_each(|(_, l)| l.build_diagonals(model))
            }
            _ => {}
        });
        let out = &steps[output_step].value;
        if (out.mult - 1.0).abs() > 1e-12 || out.level != 0 {
            return Err(PlanError::Output(format!(
                "a value with multiplier {} at level {}",
                out.mult, out.level
            )));
        }
        let output_offset = out.offset.clone();
        let (rotations, relin_level) = keys_needed(&steps);
        Ok(Self {
            params: params.name().to_string(),
            input,
            input_level,
            input_scale,
            steps,
            output_step,
            output_offset,
            rotations,
            relin_level,
        })
    }
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

/// The rotation amounts with the highest level each is used at, and the highest level of a
/// relinearization: the evaluation keys the client must make.
fn keys_needed(steps: &[Step]) -> (BTreeMap<usize, usize>, Option<usize>) {
    let mut rotations = BTreeMap::new();
    let mut relin_level = None;
    let mut note = |amount: usize, level: usize| {
        let e = rotations.entry(amount).or_insert(level);
        *e = (*e).max(level);
    };
    for st in steps {
        for lin in st.kind.linear_plans() {
            for a in lin.rotation_amounts() {
                note(a, lin.level);
            }
        }
        match &st.kind {
            StepKind::Pool { amounts, .. } => {
                for &a in amounts {
                    note(a, st.value.level);
                }
            }
            StepKind::Activation { .. } => {
                relin_level = relin_level.max(Some(st.value.level));
            }
            StepKind::Linear { .. } | StepKind::LinearSum { .. } | StepKind::Add { .. } => {}
        }
    }
    (rotations, relin_level)
}

/// The planner's state while it walks the model's nodes in order: the steps so far, the step of
/// each node, and how many nodes read each node.
struct Planner<'a> {
    model: &'a Model,
    delta: f64,
    input: ValueInfo,
    steps: Vec<Step>,
    step_of: Vec<usize>,
    readers: Vec<usize>,
}

impl<'a> Planner<'a> {
    fn new(model: &'a Model, delta: f64, input: ValueInfo) -> Self {
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
            input,
            steps: Vec::with_capacity(nodes.len()),
            step_of: vec![usize::MAX; nodes.len()],
            readers,
        }
    }

    fn to_ref(&self, s: Source) -> Ref {
        match s {
            Source::Input => Ref::Input,
            Source::Node(j) => Ref::Step(self.step_of[j]),
        }
    }

    fn value_of(&self, s: Source) -> &ValueInfo {
        match s {
            Source::Input => &self.input,
            Source::Node(j) => &self.steps[self.step_of[j]].value,
        }
    }

    /// Plans node `i` (its inputs are planned) and records its step.
    fn node(&mut self, i: usize) -> Result<(), PlanError> {
        let node = &self.model.nodes()[i];
        let name = node.name.clone();
        let src = node.inputs[0];
        let step = match &node.op {
            Op::Conv2d(c) => {
                let v = self.value_of(src);
                let raw = v
                    .layout
                    .derive(
                        c.out_channels,
                        c.out_height,
                        c.out_width,
                        v.layout.gap() * c.stride,
                    )
                    .map_err(|e| PlanError::layout(&name, e))?;
                self.linear(i, name, src, Operator::Conv(i), raw)
            }
            Op::Linear(l) => {
                let v = self.value_of(src);
                let raw = v
                    .layout
                    .derive(l.out_features, 1, 1, v.layout.gap())
                    .map_err(|e| PlanError::layout(&name, e))?;
                self.linear(i, name, src, Operator::Dense(i), raw)
            }
            &Op::Quadratic { a, b, c } => self.activation(i, name, src, a, b, c)?,
            Op::Relu => {
                return Err(PlanError::Unsupported {
                    node: name,
                    op: "ReLU".into(),
                })
            }
            Op::GlobalAvgPool => self.pool(i, name, src)?,
            Op::Add => self.add(i, name, node.inputs[0], node.inputs[1])?,
        };
        self.step_of[i] = self.steps.len();
        self.steps.push(step);
        Ok(())
    }

    /// A convolution or dense layer reading `src`, writing near `raw` (shifted to keep its
    /// rotation amounts small), output at exactly Delta one level down.
    fn linear(
        &self,
        node: usize,
        name: String,
        src: Source,
        op: Operator,
        raw: SlotLayout,
    ) -> Step {
        let v = self.value_of(src);
        let outputs = raw.len();
        let lin = LinearPlan::new(
            self.model,
            op.clone(),
            v.mult,
            v.layout.clone(),
            raw,
            true,
            v.level,
            self.delta,
        );
        let offset = op.apply_plain(self.model, &v.offset, outputs);
        Step {
            node,
            name,
            value: ValueInfo {
                layout: lin.output.clone(),
                level: v.level - 1,
                scale: self.delta,
                mult: 1.0,
                offset,
            },
            kind: StepKind::Linear {
                input: self.to_ref(src),
                lin: Box::new(lin),
            },
        }
    }

    /// `a*x^2 + b*x + c` as `a*(x + b/2a)^2 + (c - b^2/4a)`: one square, `a` and the constant
    /// carried into the next linear layer.
    fn activation(
        &self,
        node: usize,
        name: String,
        src: Source,
        a: f64,
        b: f64,
        c: f64,
    ) -> Result<Step, PlanError> {
        if a == 0.0 {
            return Err(PlanError::Unsupported {
                node: name,
                op: "a quadratic with a = 0".into(),
            });
        }
        let v = self.value_of(src);
        let m = v.mult;
        let beta = v.offset.iter().map(|o| o / m + b / (2.0 * a * m)).collect();
        let constant = c - b * b / (4.0 * a);
        Ok(Step {
            node,
            name,
            kind: StepKind::Activation {
                input: self.to_ref(src),
                beta,
            },
            value: ValueInfo {
                layout: v.layout.clone(),
                level: v.level,
                scale: v.scale * v.scale,
                mult: a * m * m,
                offset: vec![constant; v.offset.len()],
            },
        })
    }

    /// Sum over each channel's map by log2(H) + log2(W) rotations; the 1/HW rides in `mult`.
    fn pool(&self, node: usize, name: String, src: Source) -> Result<Step, PlanError> {
        let v = self.value_of(src);
        let l = &v.layout;
        if !(l.height().is_power_of_two() && l.width().is_power_of_two()) {
            return Err(PlanError::Layout {
                node: name,
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
        let layout = l.pooled().map_err(|e| PlanError::layout(&name, e))?;
        let offset = v
            .offset
            .chunks(plane)
            .map(|ch| ch.iter().sum::<f64>() / plane as f64)
            .collect();
        Ok(Step {
            node,
            name,
            kind: StepKind::Pool {
                input: self.to_ref(src),
                amounts,
            },
            value: ValueInfo {
                layout,
                level: v.level,
                scale: v.scale,
                mult: v.mult / plane as f64,
                offset,
            },
        })
    }

    /// A residual add. The deeper input fixes level, scale, layout and multiplier; the other
    /// follows: a linear layer that only this sum reads is re-planned to write straight into the
    /// deeper layout, anything else is moved by an identity layer of its own (one level spare).
    fn add(
        &mut self,
        node: usize,
        name: String,
        na: Source,
        nb: Source,
    ) -> Result<Step, PlanError> {
        let (va, vb) = (self.value_of(na), self.value_of(nb));
        let (deep, shallow_src, shallow) = if va.level <= vb.level {
            (va.clone(), nb, vb.clone())
        } else {
            (vb.clone(), na, va.clone())
        };
        let deep_src = if shallow_src == nb { na } else { nb };
        let compatible = shallow.layout == deep.layout
            && scales_equal(shallow.scale, deep.scale)
            && (shallow.mult / deep.mult - 1.0).abs() < 1e-12;
        let mut inputs = [self.to_ref(na), self.to_ref(nb)];
        if !compatible {
            if shallow.level <= deep.level {
                return Err(PlanError::Layout {
                    node: name,
                    detail: "both inputs at the same level but in different layouts".into(),
                });
            }
            match self.sole_linear_reader(shallow_src) {
                Some(step) => self.retarget(step, &deep, &name)?,
                None => {
                    let moved = self.identity_move(node, &name, shallow_src, &shallow, &deep);
                    self.steps.push(moved);
                    inputs = [self.to_ref(deep_src), Ref::Step(self.steps.len() - 1)];
                }
            }
        }
        let offset = deep
            .offset
            .iter()
            .zip(&shallow.offset)
            .map(|(x, y)| x + y)
            .collect();
        Ok(Step {
            node,
            name,
            kind: StepKind::Add { inputs },
            value: ValueInfo { offset, ..deep },
        })
    }

    /// The step of `src` if it is a linear layer that nothing but the current node reads.
    fn sole_linear_reader(&self, src: Source) -> Option<usize> {
        let Source::Node(j) = src else {
            return None;
        };
        let step = self.step_of[j];
        let linear = matches!(self.steps[step].kind, StepKind::Linear { .. });
        (self.readers[j] == 1 && linear).then_some(step)
    }

    /// Re-plans linear step `step` to write into `target`'s layout, level and scale.
    fn retarget(&mut self, step: usize, target: &ValueInfo, name: &str) -> Result<(), PlanError> {
        let model = self.model;
        let st = &mut self.steps[step];
        if (st.value.mult / target.mult - 1.0).abs() > 1e-12 {
            return Err(PlanError::Layout {
                node: name.to_string(),
                detail: "inputs with different multipliers".into(),
            });
        }
        if let StepKind::Linear { lin, .. } = &mut st.kind {
            **lin = LinearPlan::new(
                model,
                lin.op.clone(),
                lin.mult,
                lin.input.clone(),
                target.layout.clone(),
                false,
                target.level + 1,
                target.scale,
            );
        }
        st.value.layout = target.layout.clone();
        st.value.level = target.level;
        st.value.scale = target.scale;
        Ok(())
    }

    /// An identity layer moving `from` (read at `src`) into `to`'s layout, level and multiplier.
    fn identity_move(
        &self,
        node: usize,
        name: &str,
        src: Source,
        from: &ValueInfo,
        to: &ValueInfo,
    ) -> Step {
        let lin = LinearPlan::new(
            self.model,
            Operator::Identity,
            from.mult / to.mult,
            from.layout.clone(),
            to.layout.clone(),
            false,
            to.level + 1,
            to.scale,
        );
        Step {
            node,
            name: format!("{name}.shortcut"),
            kind: StepKind::Linear {
                input: self.to_ref(src),
                lin: Box::new(lin),
            },
            value: ValueInfo {
                offset: from.offset.clone(),
                ..to.clone()
            },
        }
    }
}
