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
use blindsight_core::Context;
use rayon::prelude::*;

use crate::he::linear::{LinearPlan, Operator};
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
        let nodes = model.nodes();
        // depth (levels consumed) of every node
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
        let total = depth[model.output()];
        if total > params.max_level() {
            return Err(PlanError::TooDeep {
                depth: total,
                max: params.max_level(),
                params: params.name().to_string(),
            });
        }
        let delta = params.default_scale();
        let input_level = total;
        let input_scale = delta * delta;
        let shape = model.input_shape();
        let Shape::Map {
            channels,
            height,
            width,
        } = shape
        else {
            return Err(PlanError::Output("a vector input".into()));
        };
        let input = SlotLayout::dense(channels, height, width, params.slots())
            .map_err(|e| PlanError::layout("input", e))?;
        let input_value = ValueInfo {
            layout: input.clone(),
            level: input_level,
            scale: input_scale,
            mult: 1.0,
            offset: vec![0.0; input.len()],
        };
        // consumers, to re-plan a linear layer whose only reader is an Add
        let mut readers = vec![0usize; nodes.len()];
        for node in nodes {
            for s in &node.inputs {
                if let Source::Node(j) = *s {
                    readers[j] += 1;
                }
            }
        }
        let mut steps: Vec<Step> = Vec::with_capacity(nodes.len());
        let mut step_of = vec![usize::MAX; nodes.len()];
        for (i, node) in nodes.iter().enumerate() {
            let to_ref = |s: &Source| match *s {
                Source::Input => Ref::Input,
                Source::Node(j) => Ref::Step(step_of[j]),
            };
            let value_of = |s: &Source, steps: &[Step]| match *s {
                Source::Input => input_value.clone(),
                Source::Node(j) => steps[step_of[j]].value.clone(),
            };
            let src = to_ref(&node.inputs[0]);
            let name = node.name.clone();
            let step = match &node.op {
                Op::Conv2d(c) => {
                    let v = value_of(&node.inputs[0], &steps);
                    let raw = v
                        .layout
                        .derive(
                            c.out_channels,
                            c.out_height,
                            c.out_width,
                            v.layout.gap * c.stride,
                        )
                        .map_err(|e| PlanError::layout(&name, e))?;
                    linear_step(model, i, name, src, Operator::Conv(i), &v, raw, delta)
                }
                Op::Linear(l) => {
                    let v = value_of(&node.inputs[0], &steps);
                    let raw = v
                        .layout
                        .derive(l.out_features, 1, 1, v.layout.gap)
                        .map_err(|e| PlanError::layout(&name, e))?;
                    linear_step(model, i, name, src, Operator::Dense(i), &v, raw, delta)
                }
                Op::Quadratic { a, b, c } => {
                    let v = value_of(&node.inputs[0], &steps);
                    if *a == 0.0 {
                        return Err(PlanError::Unsupported {
                            node: name,
                            op: "a quadratic with a = 0".into(),
                        });
                    }
                    let m = v.mult;
                    let beta = v.offset.iter().map(|o| o / m + b / (2.0 * a * m)).collect();
                    let constant = c - b * b / (4.0 * a);
                    Step {
                        node: i,
                        name,
                        kind: StepKind::Activation { input: src, beta },
                        value: ValueInfo {
                            layout: v.layout.clone(),
                            level: v.level,
                            scale: v.scale * v.scale,
                            mult: a * m * m,
                            offset: vec![constant; v.offset.len()],
                        },
                    }
                }
                Op::Relu => {
                    return Err(PlanError::Unsupported {
                        node: name,
                        op: "ReLU".into(),
                    })
                }
                Op::GlobalAvgPool => {
                    let v = value_of(&node.inputs[0], &steps);
                    let l = &v.layout;
                    if !(l.height.is_power_of_two() && l.width.is_power_of_two()) {
                        return Err(PlanError::Layout {
                            node: name,
                            detail: format!(
                                "pooling a {}x{} map needs power-of-two sides",
                                l.height, l.width
                            ),
                        });
                    }
                    let mut amounts = Vec::new();
                    let mut s = 1;
                    while s < l.width {
                        amounts.push(s * l.gap);
                        s *= 2;
                    }
                    let mut s = 1;
                    while s < l.height {
                        amounts.push(s * l.gap * l.row);
                        s *= 2;
                    }
                    let plane = l.height * l.width;
                    let layout = SlotLayout {
                        height: 1,
                        width: 1,
                        ..l.clone()
                    }
                    .validated()
                    .map_err(|e| PlanError::layout(&name, e))?;
                    let offset = v
                        .offset
                        .chunks(plane)
                        .map(|ch| ch.iter().sum::<f64>() / plane as f64)
                        .collect();
                    Step {
                        node: i,
                        name,
                        kind: StepKind::Pool {
                            input: src,
                            amounts,
                        },
                        value: ValueInfo {
                            layout,
                            level: v.level,
                            scale: v.scale,
                            mult: v.mult / plane as f64,
                            offset,
                        },
                    }
                }
                Op::Add => {
                    let (na, nb) = (node.inputs[0], node.inputs[1]);
                    let (va, vb) = (value_of(&na, &steps), value_of(&nb, &steps));
                    let (sa, sb) = (to_ref(&na), to_ref(&nb));
                    // the deeper input fixes level, scale, layout and multiplier; the other follows
                    let (deep, shallow_src, shallow) = if va.level <= vb.level {
                        (va, nb, vb)
                    } else {
                        (vb, na, va)
                    };
                    let compatible = shallow.layout == deep.layout
                        && (shallow.scale / deep.scale - 1.0).abs() < 1e-9
                        && (shallow.mult / deep.mult - 1.0).abs() < 1e-12;
                    let mut new_shallow = None;
                    if !compatible {
                        if shallow.level <= deep.level {
                            return Err(PlanError::Layout {
                                node: name,
                                detail: "both inputs at the same level but in different layouts"
                                    .into(),
                            });
                        }
                        let replan = match shallow_src {
                            Source::Node(j) if readers[j] == 1 => {
                                matches!(steps[step_of[j]].kind, StepKind::Linear { .. })
                            }
                            _ => false,
                        };
                        if replan {
                            // the layer feeding only this sum writes straight into its layout
                            let Source::Node(j) = shallow_src else {
                                unreachable!()
                            };
                            let st = &mut steps[step_of[j]];
                            let StepKind::Linear { lin, .. } = &mut st.kind else {
                                unreachable!()
                            };
                            **lin = LinearPlan::new(
                                model,
                                lin.op.clone(),
                                lin.mult,
                                lin.input.clone(),
                                deep.layout.clone(),
                                false,
                                deep.level + 1,
                                deep.scale,
                            );
                            st.value.layout = deep.layout.clone();
                            st.value.level = deep.level;
                            st.value.scale = deep.scale;
                            if (st.value.mult / deep.mult - 1.0).abs() > 1e-12 {
                                return Err(PlanError::Layout {
                                    node: name,
                                    detail: "inputs with different multipliers".into(),
                                });
                            }
                        } else {
                            // an identity layer moves the shallow input (one level spare)
                            let lin = LinearPlan::new(
                                model,
                                Operator::Identity,
                                shallow.mult / deep.mult,
                                shallow.layout.clone(),
                                deep.layout.clone(),
                                false,
                                deep.level + 1,
                                deep.scale,
                            );
                            new_shallow = Some(lin);
                        }
                    }
                    let offset = deep
                        .offset
                        .iter()
                        .zip(&shallow.offset)
                        .map(|(x, y)| x + y)
                        .collect();
                    let value = ValueInfo {
                        layout: deep.layout.clone(),
                        level: deep.level,
                        scale: deep.scale,
                        mult: deep.mult,
                        offset,
                    };
                    match new_shallow {
                        None => Step {
                            node: i,
                            name,
                            kind: StepKind::Add { inputs: [sa, sb] },
                            value,
                        },
                        Some(lin) => {
                            // the identity is its own step, feeding the sum
                            let moved = ValueInfo {
                                layout: deep.layout.clone(),
                                level: deep.level,
                                scale: deep.scale,
                                mult: deep.mult,
                                offset: shallow.offset.clone(),
                            };
                            steps.push(Step {
                                node: i,
                                name: format!("{name}.shortcut"),
                                kind: StepKind::Linear {
                                    input: to_ref(&shallow_src),
                                    lin: Box::new(lin),
                                },
                                value: moved,
                            });
                            let moved_src = Ref::Step(steps.len() - 1);
                            let other = if shallow_src == na { sb } else { sa };
                            Step {
                                node: i,
                                name,
                                kind: StepKind::Add {
                                    inputs: [other, moved_src],
                                },
                                value,
                            }
                        }
                    }
                }
            };
            step_of[i] = steps.len();
            steps.push(step);
        }
        let mut output_step = step_of[model.output()];
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
        let mut rotations = BTreeMap::new();
        let mut relin_level = None;
        for st in &steps {
            let mut note = |amount: usize, level: usize| {
                let e = rotations.entry(amount).or_insert(level);
                *e = (*e).max(level);
            };
            for lin in st.kind.linear_plans() {
                for a in lin.rotation_amounts() {
                    note(a, lin.level);
                }
            }
            match &st.kind {
                StepKind::Linear { .. } | StepKind::LinearSum { .. } => {}
                StepKind::Pool { amounts, .. } => {
                    for &a in amounts {
                        note(a, st.value.level);
                    }
                }
                StepKind::Activation { .. } => {
                    relin_level = relin_level.max(Some(st.value.level));
                }
                StepKind::Add { .. } => {}
            }
        }
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

#[allow(clippy::too_many_arguments)]
fn linear_step(
    model: &Model,
    node: usize,
    name: String,
    input: Ref,
    op: Operator,
    v: &ValueInfo,
    raw: SlotLayout,
    delta: f64,
) -> Step {
    let outputs = raw.len();
    let lin = LinearPlan::new(
        model,
        op.clone(),
        v.mult,
        v.layout.clone(),
        raw,
        true,
        v.level,
        delta,
    );
    let offset = op.apply_plain(model, &v.offset, outputs);
    Step {
        node,
        name,
        value: ValueInfo {
            layout: lin.output.clone(),
            level: v.level - 1,
            scale: delta,
            mult: 1.0,
            offset,
        },
        kind: StepKind::Linear {
            input,
            lin: Box::new(lin),
        },
    }
}
