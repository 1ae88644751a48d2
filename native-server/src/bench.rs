//! The benchmark pipeline: keys, encryption, encrypted evaluation and decryption of CIFAR test
//! images, timed per step and compared with the plaintext reference.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blindsight_client::{Client, ClientContract};
use blindsight_core::{Ciphertext, CkksError, Context, EvaluationKeys, Evaluator};
use serde::{Deserialize, Serialize};

use crate::contract::server_contract;
use crate::he::infer::{evaluate, evaluate_batch, present_steps, StepReport};
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
    /// Per step, the largest error of its decrypted value against the plaintext model (with
    /// [`Session::check_layers`]; `None` for a step whose value is no model node's output).
    pub layer_errors: Vec<Option<f64>>,
}

/// Both halves in one process: the server's plan and the client made from its contract, with
/// keys made once for a run. The client side is the very code the browser runs.
pub struct Session {
    pub ctx: Arc<Context>,
    pub plan: Plan,
    /// The plan of the largest batch, which serves every smaller one (as the server's does).
    pub batch_plan: Option<Plan>,
    pub contract: ClientContract,
    pub client: Client,
    pub keys: EvaluationKeys,
    /// The client's key generation (what a browser does).
    pub keygen: Duration,
    /// The server's derivation of the keys the client does not upload.
    pub derive: Duration,
    /// Decrypt every step's value and compare it with the plaintext model (a precision
    /// diagnostic: the decryptions are inside the timed evaluation).
    pub check_layers: bool,
}

impl Session {
    /// Keys for jobs of one image and, with `max_batch` above 1, batches of up to `max_batch`
    /// (the server's contract).
    pub fn new(model: &Model, params: &str, max_batch: usize) -> anyhow::Result<Self> {
        let ctx = Context::named(params)?;
        let (plan, batch_plan, contract) = server_contract(model, &ctx, max_batch)?;
        let t0 = Instant::now();
        let client = Client::with_context(ctx.clone(), contract.clone())?;
        let mut keys = client.evaluation_keys()?;
        let keygen = t0.elapsed();
        let t1 = Instant::now();
        plan.keys.derive(&Evaluator::new(&ctx), &mut keys)?;
        Ok(Self {
            ctx,
            plan,
            batch_plan,
            contract,
            client,
            keys,
            keygen,
            derive: t1.elapsed(),
            check_layers: false,
        })
    }

    /// The largest error of step `i`'s decrypted value against the plaintext node outputs.
    fn step_error(&self, i: usize, value: &Ciphertext, reference: &[Vec<f64>]) -> Option<f64> {
        let slots = self.client.decrypt_slots(value).ok()?;
        self.plan.steps[i].value_error(&slots, reference)
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
        let all = if self.check_layers {
            plain::forward_all(model, input)?
        } else {
            Vec::new()
        };
        let t0 = Instant::now();
        let ct = self.client.encrypt_tensor(input)?;
        let encrypt = t0.elapsed();
        let ev = Evaluator::new(&self.ctx);
        let mut layer_errors = Vec::new();
        let t1 = Instant::now();
        let (out, steps) = evaluate(&self.plan, &ev, &self.keys, &ct, |i, n, value| {
            if self.check_layers {
                layer_errors.push(self.step_error(i - 1, value, &all));
            }
            progress(i, n)
        })?;
        let eval = t1.elapsed();
        let t2 = Instant::now();
        let logits = self.client.decrypt_logits(&out)?;
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
            layer_errors,
        })
    }
}

/// One batched evaluation of several images (one job, shared ciphertexts where slots are idle).
#[derive(Debug, Clone)]
pub struct BatchResult {
    pub eval: Duration,
    /// Per image: the encrypted label.
    pub he_labels: Vec<usize>,
    /// Largest logit error of any image against the plaintext model.
    pub max_abs_logit_error: f64,
    /// Peak resident memory during the batch (reset before it where the kernel allows).
    pub peak_rss_bytes: Option<u64>,
    /// Seconds spent in steps by how many images their ciphertext holds (1: the per-image
    /// stage, then the merged ones): where a batch's time goes.
    pub seconds_by_packing: BTreeMap<usize, f64>,
    /// Seconds per layer (steps of one name summed over the batch's ciphertexts), in the order
    /// they ran.
    pub seconds_by_layer: Vec<(String, f64)>,
}

impl Session {
    /// Evaluates `inputs` as one batch with `plan` (made by [`Plan::batched`] for this model and
    /// parameter set); the session's keys must cover the plan's.
    pub fn run_batch(
        &self,
        model: &Model,
        plan: &Plan,
        inputs: &[Vec<f64>],
        mut progress: impl FnMut(usize, usize),
    ) -> anyhow::Result<BatchResult> {
        if !plan.keys_covered_by(&self.plan) {
            anyhow::bail!("the batch plan needs evaluation keys this session did not make");
        }
        let cts = inputs
            .iter()
            .map(|x| self.client.encrypt_tensor(x))
            .collect::<Result<Vec<_>, _>>()?;
        let ev = Evaluator::new(&self.ctx);
        reset_peak_rss();
        let t0 = Instant::now();
        let (outs, reports) =
            evaluate_batch(plan, &ev, &self.keys, &cts, |i, n, _, _| progress(i, n))?;
        let eval = t0.elapsed();
        let mut seconds_by_packing = BTreeMap::new();
        let mut seconds_by_layer: Vec<(String, f64)> = Vec::new();
        let ran = plan
            .steps
            .iter()
            .zip(present_steps(plan, inputs.len()))
            .filter_map(|(st, p)| p.then_some(st));
        for (st, r) in ran.zip(&reports) {
            let s = r.time.as_secs_f64();
            match seconds_by_layer.iter_mut().find(|(n, _)| *n == st.name) {
                Some((_, t)) => *t += s,
                None => seconds_by_layer.push((st.name.clone(), s)),
            }
            *seconds_by_packing.entry(st.value.capacity()).or_insert(0.0) += r.time.as_secs_f64();
        }
        let peak_rss_bytes = peak_rss_bytes();
        let out = plan.output_value();
        let mut he_labels = Vec::with_capacity(inputs.len());
        let mut worst = 0.0f64;
        // each output ciphertext decrypted once, however many images it holds
        let decrypted = outs
            .iter()
            .map(|ct| self.client.decrypt_slots(ct))
            .collect::<Result<Vec<_>, _>>()?;
        for (j, input) in inputs.iter().enumerate() {
            let (group, shift) = out.place_of(j);
            let logits = out.layout.extract_shifted(&decrypted[group], shift)?;
            let reference = plain::forward(model, input)?;
            for (a, b) in logits.iter().zip(&reference) {
                worst = worst.max((a - b).abs());
            }
            he_labels.push(argmax(&logits));
        }
        Ok(BatchResult {
            eval,
            he_labels,
            max_abs_logit_error: worst,
            peak_rss_bytes,
            seconds_by_packing,
            seconds_by_layer,
        })
    }
}

/// Resets the peak resident set size the kernel reports (`VmHWM`), so that a later reading is
/// the peak of what ran in between; a no-op where `/proc/self/clear_refs` is not writable.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

pub use blindsight_client::argmax;

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

/// The JSON report of a run (`blindsight bench --json`). Field names are the JSON keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    /// The model's name.
    pub model: String,
    pub images: usize,
    pub threads: usize,
    /// Median seconds of the encrypted network per image.
    pub latency_s: f64,
    /// Median seconds of encryption per image.
    pub encrypt_s: f64,
    /// Median seconds of decryption per image.
    pub decrypt_s: f64,
    /// Seconds to make the secret and evaluation keys (once per run).
    pub keygen_s: f64,
    /// Bytes the client uploads for the evaluation keys.
    pub eval_key_bytes: usize,
    /// Rotation keys the plan uses, uploaded and derived.
    pub rotation_keys: usize,
    /// Keys the server derives (after the upload, once per session), copies for lower levels of
    /// uploaded amounts included.
    pub derived_keys: usize,
    /// Seconds the server takes to derive them.
    pub derive_s: f64,
    /// Bytes of all evaluation keys in the server's memory (uploaded and derived, 64-bit limbs).
    pub key_memory_bytes: usize,
    /// Bytes of the uploaded (seeded) input ciphertext.
    pub ciphertext_bytes: usize,
    /// Bytes of the returned output ciphertext.
    pub output_ciphertext_bytes: usize,
    /// Peak resident memory of the process; `null` where the platform does not report it.
    pub peak_rss_bytes: Option<u64>,
    /// Largest |encrypted - plaintext| logit over all images.
    pub max_abs_logit_error: f64,
    /// Fraction of images whose encrypted label equals the plaintext label.
    pub agreement: f64,
    /// Fraction of images whose encrypted label is the true label.
    pub accuracy: f64,
    /// Fraction of images whose plaintext label is the true label.
    pub plaintext_accuracy: f64,
    pub params: ParamsInfo,
    /// One row per evaluation step, in order.
    pub layers: Vec<LayerRow>,
    /// `bench --batch B`: the same images again as batches of B, in the same process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchReport>,
}

/// Batched evaluation beside the single-image runs of the same images.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchReport {
    /// Images per batch.
    pub size: usize,
    pub batches: usize,
    /// Median time of one batch evaluation.
    pub latency_s: f64,
    /// Median over batches of the batch time divided by its images: the amortized time per image.
    pub per_image_s: f64,
    /// Median single-image latency over the same images (the main report's `latency_s`).
    pub single_latency_s: f64,
    /// `per_image_s / single_latency_s`.
    pub ratio: f64,
    /// Images whose batched label equals their single-image encrypted label, of `images`.
    pub same_label_as_single: usize,
    pub images: usize,
    pub max_abs_logit_error: f64,
    /// Largest peak resident memory of a batch evaluation (keys included).
    pub peak_rss_bytes: Option<u64>,
    /// Median over batches of the seconds spent in steps whose ciphertext holds this many
    /// images (JSON keys are the counts).
    pub seconds_by_packing: BTreeMap<usize, f64>,
    /// Median over batches of the seconds per layer (summed over a batch's ciphertexts), in the
    /// order they ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seconds_by_layer: Vec<(String, f64)>,
}

/// The CKKS parameter set of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParamsInfo {
    pub name: String,
    /// Ring degree.
    pub n: usize,
    /// Bit sizes of the ciphertext primes q_i.
    pub log_q_bits: Vec<u32>,
    /// Bit sizes of the key-switching primes p_j.
    pub log_p_bits: Vec<u32>,
    pub dnum: usize,
    /// log2 of the whole modulus QP.
    pub log2_qp: f64,
    /// log2 of the encoding scale.
    pub log2_scale: u32,
}

/// One evaluation step: the median time over images, and the step's level, scale and op counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerRow {
    pub name: String,
    pub kind: String,
    pub seconds: f64,
    /// Level of the value produced.
    pub level: usize,
    /// log2 of the scale of the value produced.
    pub log2_scale: f64,
    pub rotations: usize,
    pub plain_mults: usize,
    pub ct_mults: usize,
    /// Largest error of the step's decrypted value over the images (`bench --layer-errors`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error: Option<f64>,
}

/// Per-step medians over images.
pub fn layer_table(results: &[ImageResult]) -> Vec<LayerRow> {
    let Some(first) = results.first() else {
        return Vec::new();
    };
    first
        .steps
        .iter()
        .enumerate()
        .map(|(i, st)| LayerRow {
            name: st.name.clone(),
            kind: st.kind.to_string(),
            seconds: median(
                results
                    .iter()
                    .map(|r| r.steps[i].time.as_secs_f64())
                    .collect(),
            ),
            level: st.level,
            log2_scale: st.log_scale,
            rotations: st.counts.rotations,
            plain_mults: st.counts.plain_mults,
            ct_mults: st.counts.ct_mults,
            max_error: results
                .iter()
                .filter_map(|r| r.layer_errors.get(i).copied().flatten())
                .reduce(f64::max),
        })
        .collect()
}

/// The report of a run. Fails only where a key or ciphertext size cannot be computed (a level the
/// parameter set does not have).
/// The batch figures: `batches` as (index of the batch's first image in `results`, result).
pub fn batch_report(
    results: &[ImageResult],
    batches: &[(usize, BatchResult)],
    size: usize,
) -> BatchReport {
    let latency_s = median(batches.iter().map(|(_, b)| b.eval.as_secs_f64()).collect());
    let per_image_s = median(
        batches
            .iter()
            .map(|(_, b)| b.eval.as_secs_f64() / b.he_labels.len() as f64)
            .collect(),
    );
    let single_latency_s = median(results.iter().map(|r| r.eval.as_secs_f64()).collect());
    let mut same = 0;
    let mut images = 0;
    for (first, b) in batches {
        for (j, &label) in b.he_labels.iter().enumerate() {
            images += 1;
            same += usize::from(results.get(first + j).is_some_and(|r| r.he_label == label));
        }
    }
    BatchReport {
        size,
        batches: batches.len(),
        latency_s,
        per_image_s,
        single_latency_s,
        ratio: per_image_s / single_latency_s,
        same_label_as_single: same,
        images,
        max_abs_logit_error: batches
            .iter()
            .map(|(_, b)| b.max_abs_logit_error)
            .fold(0.0, f64::max),
        peak_rss_bytes: batches.iter().filter_map(|(_, b)| b.peak_rss_bytes).max(),
        seconds_by_packing: {
            let packings: std::collections::BTreeSet<usize> = batches
                .iter()
                .flat_map(|(_, b)| b.seconds_by_packing.keys().copied())
                .collect();
            packings
                .into_iter()
                .map(|k| {
                    let v = batches
                        .iter()
                        .map(|(_, b)| b.seconds_by_packing.get(&k).copied().unwrap_or(0.0))
                        .collect();
                    (k, median(v))
                })
                .collect()
        },
        seconds_by_layer: batches
            .first()
            .map(|(_, b)| {
                b.seconds_by_layer
                    .iter()
                    .map(|(name, _)| {
                        let v = batches
                            .iter()
                            .filter_map(|(_, b)| b.seconds_by_layer.iter().find(|(n, _)| n == name))
                            .map(|&(_, s)| s)
                            .collect();
                        (name.clone(), median(v))
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

pub fn report(
    session: &Session,
    model: &Model,
    results: &[ImageResult],
    threads: usize,
) -> Result<BenchReport, CkksError> {
    let n = results.len().max(1) as f64;
    let fraction = |f: fn(&ImageResult) -> bool| results.iter().filter(|r| f(r)).count() as f64 / n;
    let median_s = |f: fn(&ImageResult) -> Duration| {
        median(results.iter().map(|r| f(r).as_secs_f64()).collect())
    };
    let p = session.ctx.params();
    Ok(BenchReport {
        model: model.metadata().name.clone(),
        images: results.len(),
        threads,
        latency_s: median_s(|r| r.eval),
        encrypt_s: median_s(|r| r.encrypt),
        decrypt_s: median_s(|r| r.decrypt),
        keygen_s: session.keygen.as_secs_f64(),
        eval_key_bytes: session.contract.key_bytes(),
        rotation_keys: session.plan.rotations.len(),
        derived_keys: session.plan.keys.derived.len(),
        derive_s: session.derive.as_secs_f64(),
        key_memory_bytes: session.keys.iter().map(|k| k.memory_bytes()).sum(),
        ciphertext_bytes: session.contract.input.bytes,
        output_ciphertext_bytes: session.contract.output.bytes,
        peak_rss_bytes: peak_rss_bytes(),
        max_abs_logit_error: results
            .iter()
            .map(|r| r.max_abs_logit_error)
            .fold(0.0, f64::max),
        agreement: fraction(|r| r.he_label == r.plain_label),
        accuracy: fraction(|r| r.he_label == r.label),
        plaintext_accuracy: fraction(|r| r.plain_label == r.label),
        params: ParamsInfo {
            name: p.name().to_string(),
            n: p.n(),
            log_q_bits: p.spec().q_bits.clone(),
            log_p_bits: p.spec().p_bits.clone(),
            dnum: p.dnum(),
            log2_qp: p.log_qp(),
            log2_scale: p.spec().log_scale,
        },
        layers: layer_table(results),
        batch: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn sample() -> BenchReport {
        BenchReport {
            model: "m".into(),
            images: 2,
            threads: 4,
            latency_s: 1.5,
            encrypt_s: 0.25,
            decrypt_s: 0.125,
            keygen_s: 3.0,
            eval_key_bytes: 1000,
            rotation_keys: 7,
            derived_keys: 4,
            derive_s: 2.0,
            key_memory_bytes: 5000,
            ciphertext_bytes: 200,
            output_ciphertext_bytes: 300,
            peak_rss_bytes: None,
            max_abs_logit_error: 0.01,
            agreement: 1.0,
            accuracy: 0.5,
            plaintext_accuracy: 0.5,
            params: ParamsInfo {
                name: "P".into(),
                n: 8,
                log_q_bits: vec![30, 25],
                log_p_bits: vec![31],
                dnum: 1,
                log2_qp: 86.0,
                log2_scale: 25,
            },
            layers: vec![LayerRow {
                name: "conv1".into(),
                kind: "linear".into(),
                seconds: 0.5,
                level: 3,
                log2_scale: 25.0,
                rotations: 10,
                plain_mults: 20,
                ct_mults: 0,
                max_error: None,
            }],
            batch: None,
        }
    }

    /// The keys and value types of the JSON file, as the report has always written them.
    #[test]
    fn report_json_keeps_its_keys_and_types() {
        let value = serde_json::to_value(sample()).unwrap();
        let want = json!({
            "model": "m", "images": 2, "threads": 4, "latency_s": 1.5, "encrypt_s": 0.25,
            "decrypt_s": 0.125, "keygen_s": 3.0, "eval_key_bytes": 1000, "rotation_keys": 7,
            "derived_keys": 4, "derive_s": 2.0, "key_memory_bytes": 5000,
            "ciphertext_bytes": 200, "output_ciphertext_bytes": 300, "peak_rss_bytes": null,
            "max_abs_logit_error": 0.01, "agreement": 1.0, "accuracy": 0.5,
            "plaintext_accuracy": 0.5,
            "params": {
                "name": "P", "n": 8, "log_q_bits": [30, 25], "log_p_bits": [31], "dnum": 1,
                "log2_qp": 86.0, "log2_scale": 25,
            },
            "layers": [{
                "name": "conv1", "kind": "linear", "seconds": 0.5, "level": 3, "log2_scale": 25.0,
                "rotations": 10, "plain_mults": 20, "ct_mults": 0,
            }],
        });
        assert_eq!(value, want);
        let mut with_rss = sample();
        with_rss.peak_rss_bytes = Some(1 << 30);
        assert_eq!(
            serde_json::to_value(with_rss).unwrap()["peak_rss_bytes"],
            Value::from(1u64 << 30)
        );
        let back: BenchReport = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(serde_json::to_value(back).unwrap(), value);
    }
}
