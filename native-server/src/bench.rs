//! The benchmark pipeline: keys, encryption, encrypted evaluation and decryption of CIFAR test
//! images, timed per step and compared with the plaintext reference.

use std::sync::Arc;
use std::time::{Duration, Instant};

use blindsight_core::wire::ciphertext_size;
use blindsight_core::{Context, Evaluator, SecretKey};
use serde_json::{json, Value};

use crate::he::client::{
    decrypt_logits, encrypt_input, evaluation_key_bytes, evaluation_keys, input_bytes,
};
use crate::he::infer::{evaluate, StepReport};
use crate::he::plan::Plan;
use crate::model::Model;
use crate::plain;

/// One image's outcome.
#[derive(Debug, Clone)]
pub struct ImageResult {
    pub label: usize,
    pub plain_label: usize,
    pub he_label: usize,
    pub max_abs_logit_error: f64,
    pub encrypt: Duration,
    pub eval: Duration,
    pub decrypt: Duration,
    pub steps: Vec<StepReport>,
}

/// Keys made once for a run.
pub struct Session {
    pub ctx: Arc<Context>,
    pub plan: Plan,
    pub sk: SecretKey,
    pub keys: blindsight_core::EvaluationKeys,
    pub keygen: Duration,
}

impl Session {
    pub fn new(model: &Model, params: &str) -> anyhow::Result<Self> {
        let ctx = Context::named(params)?;
        let plan = Plan::new(model, &ctx)?;
        let t0 = Instant::now();
        let sk = SecretKey::generate(&ctx);
        let keys = evaluation_keys(&ctx, &sk, &plan)?;
        Ok(Self {
            ctx,
            plan,
            sk,
            keys,
            keygen: t0.elapsed(),
        })
    }

    /// Encrypts, evaluates and decrypts one normalized image; `progress` sees (done, total) steps.
    pub fn run(
        &self,
        model: &Model,
        input: &[f64],
        label: usize,
        mut progress: impl FnMut(usize, usize),
    ) -> anyhow::Result<ImageResult> {
        let reference = plain::forward(model, input)?;
        let t0 = Instant::now();
        let ct = encrypt_input(&self.ctx, &self.sk, &self.plan, input)?;
        let encrypt = t0.elapsed();
        let ev = Evaluator::new(&self.ctx);
        let t1 = Instant::now();
        let (out, steps) = evaluate(&self.plan, &ev, &self.keys, &ct, |i, n, _| progress(i, n))?;
        let eval = t1.elapsed();
        let t2 = Instant::now();
        let logits = decrypt_logits(&self.ctx, &self.sk, &self.plan, &out)?;
        let decrypt = t2.elapsed();
        let err = logits
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        Ok(ImageResult {
            label,
            plain_label: argmax(&reference),
            he_label: argmax(&logits),
            max_abs_logit_error: err,
            encrypt,
            eval,
            decrypt,
            steps,
        })
    }
}

pub fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Peak resident memory of this process (VmHWM), if the platform reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Per-step medians over images: (name, kind, seconds, level, log2 scale, rotations, plain mults,
/// ct mults).
pub fn layer_table(results: &[ImageResult]) -> Vec<Value> {
    let Some(first) = results.first() else {
        return Vec::new();
    };
    first
        .steps
        .iter()
        .enumerate()
        .map(|(i, st)| {
            let secs = median(
                results
                    .iter()
                    .map(|r| r.steps[i].time.as_secs_f64())
                    .collect(),
            );
            json!({
                "name": st.name, "kind": st.kind, "seconds": secs, "level": st.level,
                "log2_scale": st.log_scale, "rotations": st.counts.rotations,
                "plain_mults": st.counts.plain_mults, "ct_mults": st.counts.ct_mults,
            })
        })
        .collect()
}

/// The JSON report of a run.
pub fn report(session: &Session, model: &Model, results: &[ImageResult], threads: usize) -> Value {
    let n = results.len().max(1) as f64;
    let p = session.ctx.params();
    let ctx = &session.ctx;
    json!({
        "model": model.metadata().name,
        "images": results.len(),
        "threads": threads,
        "latency_s": median(results.iter().map(|r| r.eval.as_secs_f64()).collect()),
        "encrypt_s": median(results.iter().map(|r| r.encrypt.as_secs_f64()).collect()),
        "decrypt_s": median(results.iter().map(|r| r.decrypt.as_secs_f64()).collect()),
        "keygen_s": session.keygen.as_secs_f64(),
        "eval_key_bytes": evaluation_key_bytes(ctx, &session.plan),
        "rotation_keys": session.plan.rotations.len(),
        "ciphertext_bytes": input_bytes(ctx, &session.plan),
        "output_ciphertext_bytes": ciphertext_size(ctx, 0, 1, false),
        "peak_rss_bytes": peak_rss_bytes(),
        "max_abs_logit_error": results.iter().map(|r| r.max_abs_logit_error).fold(0.0, f64::max),
        "agreement": results.iter().filter(|r| r.he_label == r.plain_label).count() as f64 / n,
        "accuracy": results.iter().filter(|r| r.he_label == r.label).count() as f64 / n,
        "plaintext_accuracy": results.iter().filter(|r| r.plain_label == r.label).count() as f64 / n,
        "params": {
            "name": p.name(), "n": p.n(), "log_q_bits": p.spec().q_bits, "log_p_bits": p.spec().p_bits,
            "dnum": p.dnum(), "log2_qp": p.log_qp(), "log2_scale": p.spec().log_scale,
        },
        "layers": layer_table(results),
    })
}
