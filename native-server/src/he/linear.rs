//! Evaluation of planned linear layers on packed ciphertexts: baby rotations along the plan's
//! tree (hoisted per parent), one limb-major inner product with the diagonals per giant step,
//! and the Horner chain of giant rotations, then one rescale. With complex packing the input
//! first gets its imaginary copy and the result its real part (see `bsgs`).

use blindsight_core::{
    Ciphertext, CkksError, Context, EvaluationKeys, Evaluator, RaisedCiphertext, SmallPlaintext,
};

use crate::he::bsgs::LinearPlan;
use crate::he::diagonal::Diagonal;

/// Counts of what a step did, for the per-layer table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpCounts {
    pub rotations: usize,
    pub plain_mults: usize,
    pub ct_mults: usize,
    pub rescales: usize,
}

impl LinearPlan {
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
}

/// The accumulator of a Horner chain: nothing yet, a first term, or a rotated sum raised by P.
enum Horner {
    Empty,
    Plain(Ciphertext),
    Raised(RaisedCiphertext),
}

/// A term's input brought to the plan's level, with its baby rotations.
struct Prepared<'a> {
    plan: &'a LinearPlan,
    nodes: Vec<Option<Ciphertext>>,
    /// Scale of the plaintexts: every term's products land at the same scale.
    pt_scale: f64,
    by_giant: Vec<&'a [Diagonal]>,
}

/// The baby rotation each diagonal multiplies.
fn baby_inputs<'a>(items: &[(&'a Prepared<'_>, &Diagonal)]) -> Vec<&'a Ciphertext> {
    items
        .iter()
        .map(|(t, d)| {
            t.nodes[t.plan.baby_node[d.baby]]
                .as_ref()
                .expect("every tree node is computed")
        })
        .collect()
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
    let slots = first.input.slots();
    let mut prepared = Vec::with_capacity(terms.len());
    for &(plan, ct) in terms {
        // the input is read in place when it is at the plan's level (the common case)
        let ct = if ct.level() > plan.level {
            ev.drop_level(ct, plan.level)?
        } else if ct.level() == plan.level {
            ct.clone()
        } else {
            return Err(CkksError::LevelMismatch(plan.level, ct.level()));
        };
        // replicas: X = in + rot_s(in)
        let ct = match plan.replicas {
            Some(r) => {
                let copy = ev.rotate(&ct, r.shift as i64, keys)?;
                counts.rotations += 1;
                ev.add(&ct, &copy)?
            }
            None => ct,
        };
        // complex packing: X = in + i*rot_G(in)
        let ct = if plan.packs_imaginary() {
            let copy = ev.rotate(&ct, plan.giant as i64, keys)?;
            counts.rotations += 1;
            ev.add(&ct, &ev.mul_imag(&copy)?)?
        } else {
            ct
        };
        // complex packing takes the real part at the end, which doubles the scale
        let pt_scale = plan.out_scale * q / ct.scale() / plan.fold() as f64;
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
        let mut by_giant: Vec<&[Diagonal]> = vec![&[]; plan.horner_terms()];
        for chunk in plan.diags().chunk_by(|a, b| a.giant == b.giant) {
            by_giant[chunk[0].giant] = chunk;
        }
        counts.plain_mults += plan.diags().len();
        prepared.push(Prepared {
            plan,
            nodes,
            pt_scale,
            by_giant,
        });
    }
    let giants = terms
        .iter()
        .map(|(p, _)| p.horner_terms())
        .max()
        .unwrap_or(1);
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
        let mut pts = Vec::with_capacity(items.len());
        // complex packing, or a term into the imaginary lane: complex diagonals; the rest two
        // real ones per transform
        let (cplx, items): (Vec<_>, Vec<_>) = items
            .into_iter()
            .partition(|(_, d)| first.complex || !d.imag.is_empty());
        for (t, d) in &cplx {
            pts.push(SmallPlaintext::encode_complex(
                ctx,
                &d.expand(slots),
                &d.expand_imag(slots),
                first.level,
                t.pt_scale,
            )?);
        }
        let items = [cplx, items].concat();
        for pair in items[pts.len()..].chunks(2) {
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
        ev.dot_small_plain(&baby_inputs(&items), &pts).map(Some)
    };
    // Horner from the last giant down, acc = rot_G(acc) + V_g, each rotation computed beside
    // the next term: the two jobs keep both cores busy where a key switch alone does not,
    // and only one term is alive at a time. The accumulator stays raised by the key's special
    // modulus from its first rotation on and is divided once at the end (`RaisedCiphertext`).
    let (step, times) = first.horner_rotation();
    let step = step as i64;
    let rotate = |acc: &Horner| -> Result<Horner, CkksError> {
        let mut r = match acc {
            Horner::Empty => return Ok(Horner::Empty),
            Horner::Plain(a) => ev.rotate_raising(a, step, keys)?,
            Horner::Raised(a) => ev.rotate_raised(a, step, keys)?,
        };
        for _ in 1..times {
            r = ev.rotate_raised(&r, step, keys)?;
        }
        Ok(Horner::Raised(r))
    };
    let mut acc = Horner::Empty;
    for g in (0..giants).rev() {
        let (rotated, term) = rayon::join(|| rotate(&acc), || giant_term(g));
        let (rotated, term) = (rotated?, term?);
        if !matches!(rotated, Horner::Empty) {
            counts.rotations += times;
        }
        acc = match (rotated, term) {
            (Horner::Raised(mut r), Some(t)) => {
                ev.add_raised(&mut r, &t)?;
                Horner::Raised(r)
            }
            (Horner::Empty, Some(t)) => Horner::Plain(t),
            (r, _) => r,
        };
    }
    drop(prepared);
    let mut acc = match acc {
        Horner::Plain(acc) => acc,
        Horner::Raised(acc) => ev.lower(&acc),
        Horner::Empty => ev.zero(first.level, first.out_scale * q / first.fold() as f64)?,
    };
    if let Some(r) = first.replicas {
        // the two halves of the giant steps, written at sub-position s and a half period on
        let halves = ev.rotate_hoisted(&acc, &[r.half as i64, r.shift as i64], keys)?;
        counts.rotations += 2;
        acc = ev.add(&halves[0], &halves[1])?;
    }
    if first.complex && !first.real_after_rescale {
        // the real part before the rescale where the key serves: the key switch's error is
        // then divided by q with the rest
        acc = ev.real_part(&acc, keys)?;
        counts.rotations += 1;
    }
    counts.rescales += 1;
    ev.rescale_assign(&mut acc)?;
    if first.complex && first.real_after_rescale {
        acc = ev.real_part(&acc, keys)?;
        counts.rotations += 1;
    }
    // the rescale divides by q exactly; pin the bookkeeping to the planned value it equals
    acc.pin_scale(first.out_scale)?;
    Ok(acc)
}
