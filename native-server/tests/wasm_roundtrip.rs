//! The second half of the wasm client's round trip (the first is `mini_network_keys_and_image_for
//! _the_native_side` in wasm-client/tests/node.rs, run by wasm-bindgen-test in node): the keys and
//! the encrypted image that the wasm build made for the reduced test network (the mini ResNet of
//! `tests/fixtures/mini_resnet` at N14_TEST) are checked and evaluated here by the server's code,
//! and the result decrypts, with the secret key the wasm client exported, to the label the
//! plaintext model gives the same pixels. `scripts/test.sh` runs it after the wasm tests
//! (`--include-ignored`); alone it has no files to read.

use std::path::{Path, PathBuf};

use blindsight_client::{Client, ClientContract};
use blindsight_core::{Ciphertext, Context, EvaluationKeys, Evaluator, SwitchingKey};
use blindsight_server::contract::server_contract;
use blindsight_server::he::infer::evaluate;
use blindsight_server::model::Model;
use blindsight_server::plain;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(name: &str) -> Vec<u8> {
    let path = root().join("target/wasm-roundtrip").join(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the wasm test `mini_network_keys_and_image_for_the_native_side` writes it)",
            path.display()
        )
    })
}

#[test]
#[ignore = "reads what the wasm tests wrote: scripts/test.sh runs it after them"]
fn what_wasm_made_evaluates_here_to_the_plaintext_label() {
    let model = Model::from_dir(&root().join("native-server/tests/fixtures/mini_resnet")).unwrap();
    let ctx = Context::named("N14_TEST").unwrap();
    // the contract the server serves (batches included), and its single-image plan
    let max_batch = blindsight_server::api::ServeConfig::default().max_batch;
    let (plan, _, contract) = server_contract(&model, &ctx, max_batch).unwrap();
    let fixture =
        std::fs::read(root().join("wasm-client/tests/fixtures/mini_contract.json")).unwrap();
    assert_eq!(
        ClientContract::from_json(&fixture).unwrap(),
        contract,
        "the wasm side's contract"
    );

    // the server's checks, as `PUT /keys/{k}` and `POST /jobs` make them
    let mut keys = EvaluationKeys::new(&ctx);
    for spec in &contract.keys {
        let bytes = read(&format!("key-{}.bin", spec.index));
        assert_eq!(bytes.len(), spec.bytes);
        let key = SwitchingKey::from_bytes(&ctx, &bytes, spec.bytes).unwrap();
        assert_eq!((key.kind(), key.level()), (spec.kind(), spec.level));
        keys.insert(key).unwrap();
    }
    plan.keys.derive(&Evaluator::new(&ctx), &mut keys).unwrap();
    let input = Ciphertext::from_bytes(&ctx, &read("input.bin"), contract.input.bytes).unwrap();
    assert_eq!(input.level(), contract.input.level);
    let (out, _) = evaluate(&plan, &Evaluator::new(&ctx), &keys, &input, |_, _, _| {}).unwrap();
    let result = out.to_bytes(&ctx).unwrap();
    assert_eq!(result.len(), contract.output.bytes);

    // the client's side, with the key the wasm client made
    let client = Client::from_secret_key(contract, &read("secret.key")).unwrap();
    let prediction = client.decrypt_result(&result).unwrap();
    let tensor = client.image_tensor(&read("image.rgba"), 12, 10).unwrap();
    let want = plain::forward(&model, &tensor).unwrap();
    assert_eq!(prediction.index, blindsight_client::argmax(&want));
    for (got, want) in prediction.logits.iter().zip(&want) {
        assert!(
            (got - want).abs() < 2e-3,
            "logits {:?} vs {want:?}",
            prediction.logits
        );
    }
}
