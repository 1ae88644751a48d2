//! The whole encrypted ResNet-20 (the embedded default model) on one CIFAR-10 test image at the
//! product parameters (N16_L39, 128-bit): the decrypted label equals the plaintext label and every
//! logit is within the stated tolerance. About a minute on two cores.

use std::path::PathBuf;

use blindsight_server::bench::{argmax, Session};
use blindsight_server::cifar;
use blindsight_server::model::Model;
use blindsight_server::plain;

/// Largest allowed |encrypted - plaintext| per logit (measured: about 0.06 at Delta = 2^25).
const LOGIT_TOLERANCE: f64 = 0.25;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/cifar10")
}

#[test]
#[ignore = "the whole ResNet-20: scripts/test.sh runs it optimized (--release --include-ignored)"]
fn encrypted_resnet20_matches_the_plaintext_model() {
    blindsight_core::memory::keep_freed_memory();
    let model = Model::embedded().unwrap();
    let path = cifar::test_batch(&data_dir(), true);
    let records = cifar::read(&path, 0, 8)
        .unwrap_or_else(|e| panic!("the test needs the CIFAR-10 test images: {e}"));
    // the first image whose plaintext top-2 margin is clear of the tolerance, so that the label
    // comparison is meaningful
    let (input, record) = records
        .iter()
        .map(|r| (r.model_input(&model).unwrap(), r))
        .find(|(x, _)| {
            let mut l = plain::forward(&model, x).unwrap();
            l.sort_by(|a, b| b.total_cmp(a));
            l[0] - l[1] > 4.0 * LOGIT_TOLERANCE
        })
        .expect("one of the first 8 test images has a clear margin");
    let session = Session::new(&model, "N16_L39", 1).unwrap();
    let result = session
        .run(&model, &input, record.label, |_, _| {})
        .unwrap();
    eprintln!(
        "label {} plaintext {} encrypted {}, max logit error {:.3e}, evaluation {:.1} s",
        record.label,
        result.plain_label,
        result.he_label,
        result.max_abs_logit_error,
        result.eval.as_secs_f64()
    );
    assert_eq!(result.he_label, result.plain_label);
    assert_eq!(
        result.plain_label,
        argmax(&plain::forward(&model, &input).unwrap())
    );
    assert!(
        result.max_abs_logit_error < LOGIT_TOLERANCE,
        "logit error {}",
        result.max_abs_logit_error
    );
}

/// Three images as one job of the server's batch plan (made for 8, the missing images skipped),
/// read back by the client through the contract's batch spec, as the page and `classify --server`
/// do: every label equals the plaintext label, every logit within the tolerance.
#[test]
#[ignore = "the whole ResNet-20: scripts/test.sh runs it optimized (--release --include-ignored)"]
fn a_batch_through_the_contract_matches_the_plaintext_model() {
    use blindsight_client::Client;
    use blindsight_core::{Context, Evaluator};
    use blindsight_server::contract::server_contract;
    use blindsight_server::he::infer::evaluate_batch;
    blindsight_core::memory::keep_freed_memory();
    let model = Model::embedded().unwrap();
    let ctx = Context::named("N16_L39").unwrap();
    let (single, batch, contract) = server_contract(&model, &ctx, 8).unwrap();
    let batch = batch.expect("ResNet-20 batches");
    assert_eq!(contract.batch.max, 8);
    let client = Client::with_context(ctx.clone(), contract).unwrap();
    let mut keys = client.evaluation_keys().unwrap();
    single
        .keys
        .derive(&Evaluator::new(&ctx), &mut keys)
        .unwrap();
    let path = cifar::test_batch(&data_dir(), true);
    let records = cifar::read(&path, 0, 3)
        .unwrap_or_else(|e| panic!("the test needs the CIFAR-10 test images: {e}"));
    let inputs: Vec<Vec<f64>> = records
        .iter()
        .map(|r| r.model_input(&model).unwrap())
        .collect();
    let cts: Vec<_> = inputs
        .iter()
        .map(|x| client.encrypt_tensor(x).unwrap())
        .collect();
    let (outs, _) =
        evaluate_batch(&batch, &Evaluator::new(&ctx), &keys, &cts, |_, _, _, _| {}).unwrap();
    assert_eq!(outs.len(), 1);
    let bytes = outs[0].to_bytes(&ctx).unwrap();
    let predictions = client.decrypt_batch_result(&bytes, inputs.len()).unwrap();
    for (input, p) in inputs.iter().zip(&predictions) {
        let want = plain::forward(&model, input).unwrap();
        for (a, b) in p.logits.iter().zip(&want) {
            assert!(
                (a - b).abs() < LOGIT_TOLERANCE,
                "{:?} vs {want:?}",
                p.logits
            );
        }
        assert_eq!(p.index, argmax(&want));
    }
}
