//! The client contract made from the server's plan: what the browser (or a native client) needs
//! to make keys, encrypt an image and read the result. The same function serves `GET
//! /api/contract`, `bench` and `classify`, so every client follows one description.

use blindsight_client::contract::{ImageSpec, InputSpec, KeyPurpose, OutputSpec, ParamsSpec};
use blindsight_client::{hex, BatchSpec, ClientContract, KeySpec, CONTRACT_VERSION};
use blindsight_core::wire::{ciphertext_size, switching_key_size};
use blindsight_core::{CkksError, Context};
use sha2::{Digest, Sha256};

use crate::he::plan::Plan;
use crate::model::Model;

/// The contract of `plan` (made for `model` with `ctx`). Keys come in the order rotations by
/// ascending amount, then conjugation, then relinearization; each is made at the highest level it
/// is used at. Only the keys the server cannot derive are listed (`plan.keys.uploaded`).
pub fn client_contract(
    model: &Model,
    plan: &Plan,
    ctx: &Context,
) -> Result<ClientContract, CkksError> {
    let mut keys = Vec::with_capacity(plan.keys.uploaded.len() + 1);
    for (&amount, &level) in &plan.keys.uploaded {
        let amount = amount as i64;
        keys.push(KeySpec {
            index: keys.len(),
            purpose: KeyPurpose::Rotation {
                amount,
                galois_element: ctx.galois_element(amount),
            },
            level,
            bytes: switching_key_size(ctx, level)?,
        });
    }
    if let Some(level) = plan.conj_level {
        keys.push(KeySpec {
            index: keys.len(),
            purpose: KeyPurpose::Conjugation {
                galois_element: ctx.conjugation_element(),
            },
            level,
            bytes: switching_key_size(ctx, level)?,
        });
    }
    if let Some(level) = plan.relin_level {
        keys.push(KeySpec {
            index: keys.len(),
            purpose: KeyPurpose::Relin,
            level,
            bytes: switching_key_size(ctx, level)?,
        });
    }
    let input = model.input();
    let output_level = plan.output_value().level;
    Ok(ClientContract {
        version: CONTRACT_VERSION,
        params: ParamsSpec {
            name: plan.params.clone(),
            fingerprint: hex(ctx.fingerprint()),
            ring_degree: ctx.n(),
            slots: ctx.params().slots(),
        },
        model: model.metadata().name.clone(),
        image: ImageSpec {
            channels: input.channels,
            height: input.height,
            width: input.width,
            mean: input.mean.clone(),
            std: input.std.clone(),
        },
        input: InputSpec {
            layout: plan.input.clone(),
            level: plan.input_level,
            scale: plan.input_scale,
            bytes: ciphertext_size(ctx, plan.input_level, 1, true)?,
        },
        keys,
        output: OutputSpec {
            layout: plan.output_layout().clone(),
            level: output_level,
            bytes: ciphertext_size(ctx, output_level, 1, false)?,
        },
        classes: model.metadata().classes.clone(),
        plan_hash: plan_hash(plan),
        batch: BatchSpec::default(),
    })
}

/// What a server evaluates and serves: the single-image plan, the plan of the largest batch (up
/// to `max_batch` images, or as many as one output ciphertext holds; none for 1, or where a
/// batch would need a key the client would not upload for one image), and the contract
/// describing both. Keys the server derives for the batch alone are added to the single
/// plan's (they cost no upload).
pub fn server_contract(
    model: &Model,
    ctx: &Context,
    max_batch: usize,
) -> Result<(Plan, Option<Plan>, ClientContract), PlanOrKeyError> {
    let mut plan = Plan::new(model, ctx)?;
    if max_batch < 2 {
        let contract = client_contract(model, &plan, ctx)?;
        return Ok((plan, None, contract));
    }
    let mut largest = Plan::batched(model, ctx, max_batch)?;
    let room = largest.output_value().room.len();
    if largest.outputs.len() > 1 && room > 1 {
        largest = Plan::batched(model, ctx, room)?;
    }
    let mut both = plan.clone();
    both.cover_keys_of(&largest, ctx);
    let same_upload = both.keys.uploaded == plan.keys.uploaded
        && both.relin_level == plan.relin_level
        && both.conj_level == plan.conj_level;
    if same_upload {
        plan = both;
    }
    let mut contract = client_contract(model, &plan, ctx)?;
    match add_batch(&mut contract, &plan, &largest) {
        Ok(()) => Ok((plan, Some(largest), contract)),
        Err(e) => {
            tracing::warn!("one image per job: {e}");
            Ok((plan, None, contract))
        }
    }
}

/// Why a server's plans or contract could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanOrKeyError {
    #[error(transparent)]
    Plan(#[from] crate::he::plan::PlanError),
    #[error(transparent)]
    Ckks(#[from] CkksError),
}

/// Adds jobs of several images to `contract` (made from the single-image plan): `largest` is the
/// plan of the largest batch, which evaluates every smaller one too (the missing images'
/// steps skipped); its output, one ciphertext, says where each image's logits are. It must need
/// no key the single image does not. The plan hash then covers the batch too.
fn add_batch(contract: &mut ClientContract, single: &Plan, largest: &Plan) -> Result<(), String> {
    let out = largest.output_value();
    if largest.outputs.len() != 1 || out.capacity() < largest.batch {
        return Err(format!(
            "a batch of {} images does not fit one output ciphertext (at most {})",
            largest.batch,
            out.capacity()
        ));
    }
    if !largest.keys_covered_by(single) {
        return Err("a batch would need evaluation keys that one image does not".into());
    }
    // the batch's output layout is the single image's, moved: the shifts are counted from
    // the contract's output layout
    let (one, many) = (single.output_layout(), &out.layout);
    if many.shifted(one.offset() as i64 - many.offset() as i64) != *one {
        return Err("a batch's logits are laid out unlike one image's".into());
    }
    let slots = one.slots();
    contract.batch = BatchSpec {
        max: largest.batch,
        // image j's logits, wherever the plan placed it
        shifts: (0..largest.batch)
            .map(|j| (out.place_of(j).1 + many.offset() + slots - one.offset()) % slots)
            .collect(),
    };
    contract.plan_hash = {
        let mut h = Sha256::new();
        h.update(contract.plan_hash.as_bytes());
        h.update(format!("{:?}", contract.batch).as_bytes());
        hex(&h.finalize())
    };
    Ok(())
}

/// SHA-256 over everything of the plan that the evaluation depends on (layouts, levels, scales,
/// steps with their diagonals, offsets, keys): a different model, parameter set or planner gives
/// a different hash.
pub fn plan_hash(plan: &Plan) -> String {
    struct Hasher(Sha256);
    impl std::fmt::Write for Hasher {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0.update(s.as_bytes());
            Ok(())
        }
    }
    // streamed: the plan's text form is megabytes of diagonals
    let mut h = Hasher(Sha256::new());
    std::fmt::write(&mut h, format_args!("{plan:?}")).expect("hashing cannot fail");
    hex(&h.0.finalize())
}
