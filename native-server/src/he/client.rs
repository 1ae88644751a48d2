//! What the browser does, natively: evaluation keys for a plan, the encrypted input, the decrypted
//! logits. The benchmark and `blindsight classify` use it; the server proper never does.

use std::sync::Arc;

use blindsight_core::wire::{ciphertext_size, switching_key_size};
use blindsight_core::{
    decrypt, Ciphertext, CkksError, Context, Encryptor, EvaluationKeys, KeyGenerator, SecretKey,
};
use rayon::prelude::*;

use crate::he::infer::encode_tensor;
use crate::he::plan::Plan;

/// The relinearization key and exactly the rotation keys of the plan, each made at the highest
/// level it is used at (smaller below the top).
pub fn evaluation_keys(
    ctx: &Arc<Context>,
    sk: &SecretKey,
    plan: &Plan,
) -> Result<EvaluationKeys, CkksError> {
    let mut jobs: Vec<(Option<usize>, usize)> = plan
        .rotations
        .iter()
        .map(|(&amount, &level)| (Some(amount), level))
        .collect();
    if let Some(level) = plan.relin_level {
        jobs.push((None, level));
    }
    let made: Vec<_> = jobs
        .par_iter()
        .map(|&(amount, level)| {
            let mut kg = KeyGenerator::new(ctx, sk);
            match amount {
                Some(a) => kg.rotation_key(a as i64, level),
                None => kg.relin_key(level),
            }
        })
        .collect();
    let mut keys = EvaluationKeys::new(ctx);
    for k in made {
        keys.insert(k?)?;
    }
    Ok(keys)
}

/// Bytes the client uploads for the plan's evaluation keys (seeded, bit-packed).
pub fn evaluation_key_bytes(ctx: &Context, plan: &Plan) -> usize {
    let rot: usize = plan
        .rotations
        .values()
        .map(|&level| switching_key_size(ctx, level))
        .sum();
    rot + plan
        .relin_level
        .map_or(0, |level| switching_key_size(ctx, level))
}

/// Bytes of the uploaded input (a seeded secret-key encryption).
pub fn input_bytes(ctx: &Context, plan: &Plan) -> usize {
    ciphertext_size(ctx, plan.input_level, 1, true)
}

/// Encrypts a normalized CHW image for the plan (secret-key encryption: seeded, half the upload).
pub fn encrypt_input(
    ctx: &Context,
    sk: &SecretKey,
    plan: &Plan,
    tensor: &[f64],
) -> Result<Ciphertext, CkksError> {
    let pt = encode_tensor(ctx, &plan.input, tensor, plan.input_level, plan.input_scale)?;
    Encryptor::new(ctx).encrypt_sk(&pt, sk)
}

/// Decrypts the output ciphertext and reads the logits from the plan's output layout.
pub fn decrypt_logits(
    ctx: &Context,
    sk: &SecretKey,
    plan: &Plan,
    ct: &Ciphertext,
) -> Result<Vec<f64>, CkksError> {
    let slots: Vec<f64> = decrypt(ctx, ct, sk)?
        .decode(ctx)?
        .iter()
        .map(|c| c.re)
        .collect();
    plan.output_layout()
        .extract(&slots)
        .map_err(|e| CkksError::Layout(e.to_string()))
}
