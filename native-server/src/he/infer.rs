//! Server-side evaluation of a plan on an encrypted input. Holds no secret key and has no decrypt
//! path: what goes in and what comes out are ciphertexts.

use std::time::{Duration, Instant};

use blindsight_core::layout::SlotLayout;
use blindsight_core::{
    scales_equal, Ciphertext, CkksError, Complex, EvaluationKeys, Evaluator, Plaintext,
};

use crate::he::linear::{apply_sum, OpCounts};
use crate::he::plan::{Lanes, Plan, Ref, StepKind};

/// Why an evaluation stopped.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("{found} input ciphertexts for a plan of {expected} images")]
    Batch { expected: usize, found: usize },
    #[error("the input ciphertext is at level {found}, the plan needs {expected}")]
    InputLevel { expected: usize, found: usize },
    #[error("the input ciphertext has scale 2^{found:.2}, the plan needs 2^{expected:.2}")]
    InputScale { expected: f64, found: f64 },
    #[error("step {step}: {source}")]
    Ckks {
        step: String,
        #[source]
        source: CkksError,
    },
}

/// Time and work of one step, for the per-layer table.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub name: String,
    pub kind: &'static str,
    pub time: Duration,
    /// Level and log2 scale of the value produced.
    pub level: usize,
    pub log_scale: f64,
    pub counts: OpCounts,
}

/// Runs every step of a single-image `plan` on `input`; returns the output ciphertext (logits,
/// offsets added) and a report per step. `progress` is called after each step with (done, total,
/// the step's value).
pub fn evaluate(
    plan: &Plan,
    ev: &Evaluator,
    keys: &EvaluationKeys,
    input: &Ciphertext,
    mut progress: impl FnMut(usize, usize, &Ciphertext),
) -> Result<(Ciphertext, Vec<StepReport>), InferError> {
    let (mut outs, reports) = evaluate_batch(
        plan,
        ev,
        keys,
        std::slice::from_ref(input),
        |i, n, _, ct| progress(i, n, ct),
    )?;
    Ok((outs.swap_remove(0), reports))
}

/// Runs `plan` on a batch of inputs, one ciphertext per image, 1 to `plan.batch` of them: a plan
/// made for a batch serves every smaller one, the steps of the missing images' own ciphertexts
/// skipped (so a batch costs about what its images need) and their slots in shared ciphertexts
/// filled with copies of present images (which keep every slot in the model's range). Returns the output ciphertexts of the groups that hold
/// images (image `j`'s logits are where [`Plan::output_value`] places them) and a report per
/// step evaluated.
pub fn evaluate_batch(
    plan: &Plan,
    ev: &Evaluator,
    keys: &EvaluationKeys,
    inputs: &[Ciphertext],
    mut progress: impl FnMut(usize, usize, &str, &Ciphertext),
) -> Result<(Vec<Ciphertext>, Vec<StepReport>), InferError> {
    if inputs.is_empty() || inputs.len() > plan.batch {
        return Err(InferError::Batch {
            expected: plan.batch,
            found: inputs.len(),
        });
    }
    for input in inputs {
        if input.level() != plan.input_level {
            return Err(InferError::InputLevel {
                expected: plan.input_level,
                found: input.level(),
            });
        }
        if !scales_equal(input.scale(), plan.input_scale) {
            return Err(InferError::InputScale {
                expected: plan.input_scale.log2(),
                found: input.scale().log2(),
            });
        }
    }
    let ctx = ev.context().clone();
    let n = plan.steps.len();
    let present = present_steps(plan, inputs.len());
    // A term whose images are missing still writes their slots, from a present ciphertext of the
    // same value (its group 0): slots left empty would carry the bias alone through the squares,
    // outside the range the model was trained for, until they overflow the modulus and take
    // every slot with them. Copies of real images stay in range.
    let stand_in = |r: Ref| -> Option<Ref> {
        match r {
            Ref::Step(j) if !present[j] => {
                let node = plan.steps[j].node;
                (0..n)
                    .find(|&k| present[k] && plan.steps[k].node == node && plan.steps[k].group == 0)
                    .map(Ref::Step)
            }
            Ref::Input(j) if j >= inputs.len() => Some(Ref::Input(0)),
            r => Some(r),
        }
    };
    let terms_of = |st: &crate::he::plan::Step| -> Vec<Ref> {
        st.kind.refs().into_iter().filter_map(stand_in).collect()
    };
    // last reader of every step's value, to free ciphertexts early
    let mut last_use: Vec<usize> = (0..n).collect();
    for (i, st) in plan.steps.iter().enumerate() {
        if !present[i] {
            continue;
        }
        for r in terms_of(st) {
            if let Ref::Step(j) = r {
                last_use[j] = i;
            }
        }
    }
    for &o in &plan.outputs {
        last_use[o] = usize::MAX;
    }
    let mut values: Vec<Option<Ciphertext>> = vec![None; n];
    let mut reports = Vec::with_capacity(n);
    let total = present.iter().filter(|&&p| p).count();
    let mut done = 0;
    for (i, st) in plan.steps.iter().enumerate() {
        if !present[i] {
            continue;
        }
        let t0 = Instant::now();
        let mut counts = OpCounts::default();
        // values are read in place: a step copies only what it changes
        let get = |r: Ref| -> Result<&Ciphertext, InferError> {
            match r {
                Ref::Input(j) => inputs.get(j).ok_or_else(|| InferError::Ckks {
                    step: st.name.clone(),
                    source: CkksError::Layout(format!("no input for image {j}")),
                }),
                Ref::Step(j) => values[j].as_ref().ok_or_else(|| InferError::Ckks {
                    step: st.name.clone(),
                    source: CkksError::Layout(format!("value of step {j} was freed early")),
                }),
            }
        };
        let wrap = |source: CkksError| InferError::Ckks {
            step: st.name.clone(),
            source,
        };
        let (out, kind) = match &st.kind {
            StepKind::Linear { input: r, lin } => (
                lin.apply(ev, keys, get(*r)?, &mut counts).map_err(wrap)?,
                "linear",
            ),
            StepKind::LinearSum { terms } => {
                let mut pairs = Vec::with_capacity(terms.len());
                for (r, l) in terms {
                    if let Some(r) = stand_in(*r) {
                        pairs.push((l, get(r)?));
                    }
                }
                (
                    apply_sum(ev, keys, &pairs, &mut counts).map_err(wrap)?,
                    "linear+add",
                )
            }
            StepKind::Activation {
                input: r,
                beta,
                lanes,
            } => {
                let x = get(*r)?;
                let slots = st
                    .value
                    .layout
                    .place_shifted(beta, &st.value.shifts)
                    .map_err(|e| wrap(CkksError::Layout(e.to_string())))?;
                let out = match lanes {
                    Lanes::One => {
                        let pt = Plaintext::encode_real(&ctx, &slots, x.level(), x.scale())
                            .map_err(wrap)?;
                        counts.ct_mults += 1;
                        ev.square_relin(&ev.add_plain(x, &pt).map_err(wrap)?, keys)
                    }
                    // both images shifted by beta, parted, squared, and rejoined or taken
                    Lanes::Both | Lanes::Take(_) => {
                        let both: Vec<Complex> =
                            slots.iter().map(|&b| Complex::new(b, b)).collect();
                        let pt =
                            Plaintext::encode(&ctx, &both, x.level(), x.scale()).map_err(wrap)?;
                        let y = ev.add_plain(x, &pt).map_err(wrap)?;
                        let (re, im) = ev.real_imag(&y, keys).map_err(wrap)?;
                        counts.rotations += 1;
                        match lanes {
                            Lanes::Take(lane) => {
                                counts.ct_mults += 1;
                                ev.square_relin(if *lane == 0 { &re } else { &im }, keys)
                            }
                            _ => {
                                counts.ct_mults += 2;
                                let (re2, im2) = rayon::join(
                                    || ev.square_relin(&re, keys),
                                    || ev.square_relin(&im, keys),
                                );
                                ev.add(
                                    &re2.map_err(wrap)?,
                                    &ev.mul_imag(&im2.map_err(wrap)?).map_err(wrap)?,
                                )
                            }
                        }
                    }
                }
                .map_err(wrap)?;
                (out, "square")
            }
            StepKind::Add { inputs } => {
                let (a, b) = (get(inputs[0])?, get(inputs[1])?);
                let (deep, shallow) = if a.level() <= b.level() {
                    (a, b)
                } else {
                    (b, a)
                };
                let mut sum = ev.drop_level(shallow, deep.level()).map_err(wrap)?;
                ev.add_assign(&mut sum, deep).map_err(wrap)?;
                (sum, "add")
            }
            StepKind::Pool { input: r, amounts } => {
                let mut acc = get(*r)?.clone();
                for &a in amounts {
                    let rot = ev.rotate(&acc, a as i64, keys).map_err(wrap)?;
                    counts.rotations += 1;
                    ev.add_assign(&mut acc, &rot).map_err(wrap)?;
                }
                (acc, "pool")
            }
        };
        reports.push(StepReport {
            name: st.name.clone(),
            kind,
            time: t0.elapsed(),
            level: out.level(),
            log_scale: out.scale().log2(),
            counts,
        });
        done += 1;
        progress(done, total, &st.name, &out);
        values[i] = Some(out);
        for r in terms_of(st) {
            if let Ref::Step(j) = r {
                if last_use[j] == i {
                    values[j] = None;
                }
            }
        }
    }
    let output_offset = |source| InferError::Ckks {
        step: "output offset".into(),
        source,
    };
    let mut outs = Vec::with_capacity(plan.outputs.len());
    for &o in plan.outputs.iter().filter(|&&o| present[o]) {
        let mut out = values[o].take().ok_or_else(|| InferError::Ckks {
            step: "output".into(),
            source: CkksError::Layout("the output step was not evaluated".into()),
        })?;
        let value = &plan.steps[o].value;
        let pt = encode_tensor(
            &ctx,
            &value.layout,
            &plan.output_offset,
            &value.shifts,
            out.level(),
            out.scale(),
        )
        .map_err(output_offset)?;
        ev.add_plain_assign(&mut out, &pt).map_err(output_offset)?;
        outs.push(out);
    }
    Ok((outs, reports))
}

/// Which steps of `plan` run for a batch of `images` images: those that carry one of them.
pub fn present_steps(plan: &Plan, images: usize) -> Vec<bool> {
    let mut present = vec![false; plan.steps.len()];
    for (i, st) in plan.steps.iter().enumerate() {
        present[i] = st.kind.refs().iter().any(|&r| match r {
            Ref::Input(j) => j < images,
            Ref::Step(j) => present[j],
        });
    }
    present
}

/// A per-element tensor placed by `layout` at each of `shifts` (every image of a group) and
/// encoded as a plaintext.
pub fn encode_tensor(
    ctx: &blindsight_core::Context,
    layout: &SlotLayout,
    tensor: &[f64],
    shifts: &[usize],
    level: usize,
    scale: f64,
) -> Result<Plaintext, CkksError> {
    let slots = layout
        .place_shifted(tensor, shifts)
        .map_err(|e| CkksError::Layout(e.to_string()))?;
    Plaintext::encode_real(ctx, &slots, level, scale)
}
