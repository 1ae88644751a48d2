//! The browser client, run as wasm32 in node (`CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=
//! wasm-bindgen-test-runner cargo test -p blindsight-wasm-client --target wasm32-unknown-unknown`)
//! against the server's real ResNet-20 contract (`fixtures/resnet20_contract.json`, kept equal
//! to the server's by `tests/fixture.rs`). Every N = 2^16 key costs about a second here, so only
//! the smallest key and the relinearization key are made.
#![cfg(target_arch = "wasm32")]

use blindsight_client::{ClientContract, KeySpec};
use blindsight_core::{Ciphertext, Encryptor, Evaluator, Plaintext, SecretKey, SwitchingKey};
use blindsight_wasm_client::WasmClient;
use wasm_bindgen::{JsCast, JsError, JsValue};
use wasm_bindgen_test::*;

const CONTRACT: &str = include_str!("fixtures/resnet20_contract.json");

fn message(e: JsError) -> String {
    let v: JsValue = e.into();
    v.dyn_into::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .unwrap_or_else(|v| format!("not an Error: {v:?}"))
}

fn ok<T>(r: Result<T, JsError>) -> T {
    r.unwrap_or_else(|e| panic!("{}", message(e)))
}

fn now_ms() -> f64 {
    js_sys::Date::now()
}

fn contract() -> ClientContract {
    ClientContract::from_json(CONTRACT.as_bytes()).unwrap()
}

/// A 40x30 RGBA image with some structure and some transparency.
fn rgba_40x30() -> Vec<u8> {
    let (w, h) = (40usize, 30usize);
    let mut px = Vec::with_capacity(w * h * 4);
    for y in 0..h {
        for x in 0..w {
            px.extend_from_slice(&[
                (x * 255 / (w - 1)) as u8,
                (y * 255 / (h - 1)) as u8,
                ((x * y) % 256) as u8,
                if (x + y) % 7 == 0 { 128 } else { 255 },
            ]);
        }
    }
    px
}

#[wasm_bindgen_test]
fn keys_one_at_a_time_and_the_encrypted_image_match_the_contract() {
    let c = contract();
    let t = now_ms();
    let client = ok(WasmClient::new(CONTRACT));
    console_log!("new WasmClient: {:.0} ms", now_ms() - t);
    let ctx = client.client().context().clone();
    assert_eq!(client.key_count(), c.keys.len());
    assert_eq!(client.input_bytes(), c.input.bytes);
    assert_eq!(client.output_bytes(), c.output.bytes);
    assert_eq!(client.key_bytes_total(), c.key_bytes() as f64);
    assert_eq!(client.classes(), c.classes);
    assert_eq!(client.params_name(), "N16_L39");
    assert_eq!(client.plan_hash(), c.plan_hash);
    assert_eq!((client.image_width(), client.image_height()), (32, 32));

    // The smallest key and the relinearization key.
    let smallest = c.keys.iter().min_by_key(|k| (k.bytes, k.index)).unwrap();
    let relin = c
        .keys
        .iter()
        .find(|k| k.kind() == blindsight_core::KeyKind::Relin)
        .unwrap();
    for want in [smallest, relin] {
        let spec: KeySpec =
            serde_wasm_bindgen::from_value(ok(client.key_spec(want.index))).unwrap();
        assert_eq!(&spec, want, "keySpec({}) is the contract's", want.index);
        let t = now_ms();
        let bytes = ok(client.make_key(want.index));
        console_log!(
            "makeKey({}) ({}, level {}, {} bytes): {:.0} ms",
            want.index,
            if spec.kind() == blindsight_core::KeyKind::Relin {
                "relin"
            } else {
                "rotation"
            },
            spec.level,
            spec.bytes,
            now_ms() - t
        );
        assert_eq!(bytes.len(), spec.bytes, "key {}", want.index);
        let key = SwitchingKey::from_bytes(&ctx, &bytes, spec.bytes).unwrap();
        assert_eq!(key.kind(), spec.kind(), "key {}", want.index);
        assert_eq!(key.level(), spec.level, "key {}", want.index);
    }
    assert!(client.make_key(c.keys.len()).is_err());
    assert!(client.key_spec(c.keys.len()).is_err());

    // The image: resized and normalized by the client's code, encrypted at the input level.
    let px = rgba_40x30();
    let t = now_ms();
    let ct = ok(client.encrypt_rgba(&px, 40, 30));
    console_log!("encryptRgba(40x30): {:.0} ms", now_ms() - t);
    assert_eq!(ct.len(), c.input.bytes);
    let ct = Ciphertext::from_bytes(&ctx, &ct, c.input.bytes).unwrap();
    assert_eq!(ct.level(), c.input.level);
    assert!(ct.is_seeded());
    let want = c
        .input
        .layout
        .place(&client.client().image_tensor(&px, 40, 30).unwrap())
        .unwrap();
    let got = client.client().decrypt_slots(&ct).unwrap();
    let err = want
        .iter()
        .zip(got.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(err < 1e-3, "the image decrypts with error {err}");
    let msg = message(client.encrypt_rgba(&px, 40, 31).err().unwrap());
    assert!(msg.starts_with("image:"), "{msg}");
}

#[wasm_bindgen_test]
fn an_exported_secret_key_decrypts_what_the_first_client_encrypted() {
    let c = contract();
    let first = ok(WasmClient::new(CONTRACT));
    let exported = first.export_secret_key().to_vec();
    let again = ok(WasmClient::from_secret_key(CONTRACT, exported.clone()));
    let other = ok(WasmClient::new(CONTRACT));

    let tensor: Vec<f64> = (0..c.input.layout.len())
        .map(|i| ((i * 37) % 101) as f64 / 50.0 - 1.0)
        .collect();
    let want = c.input.layout.place(&tensor).unwrap();
    let ct = first.client().encrypt_tensor(&tensor).unwrap();
    let max_err = |client: &WasmClient| {
        let got = client.client().decrypt_slots(&ct).unwrap();
        want.iter()
            .zip(got.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(
                0.0,
                |m: f64, d| if d.is_nan() { f64::INFINITY } else { m.max(d) },
            )
    };
    let err = max_err(&again);
    assert!(err < 1e-3, "the re-imported key decrypts with error {err}");
    let err = max_err(&other);
    assert!(err > 1.0, "another key must not decrypt it (error {err})");

    // decryptResult on a result-shaped ciphertext: logits at the output layout and level,
    // unseeded and exactly `outputBytes` long, as the server sends it.
    let ctx = first.client().context().clone();
    let sk = SecretKey::from_secret_bytes(&ctx, &exported).unwrap();
    let logits: Vec<f64> = (0..c.classes.len())
        .map(|i| if i == 7 { 3.0 } else { i as f64 / 10.0 - 0.5 })
        .collect();
    let slots = c.output.layout.place(&logits).unwrap();
    let scale = ctx.params().default_scale();
    let pt = Plaintext::encode_real(&ctx, &slots, c.output.level, scale).unwrap();
    let fresh = Encryptor::new(&ctx).encrypt_sk(&pt, &sk).unwrap();
    let result = Evaluator::new(&ctx)
        .drop_level(&fresh, c.output.level)
        .unwrap()
        .to_bytes(&ctx)
        .unwrap();
    assert_eq!(result.len(), c.output.bytes);
    let t = now_ms();
    let prediction = ok(again.decrypt_result(&result));
    console_log!("decryptResult: {:.0} ms", now_ms() - t);
    #[derive(serde::Deserialize)]
    struct Prediction {
        logits: Vec<f64>,
        probabilities: Vec<f64>,
        index: usize,
        label: String,
    }
    let p: Prediction = serde_wasm_bindgen::from_value(prediction).unwrap();
    assert_eq!((p.index, p.label.as_str()), (7, c.classes[7].as_str()));
    assert_eq!(p.logits.len(), logits.len());
    for (a, b) in p.logits.iter().zip(&logits) {
        assert!((a - b).abs() < 1e-3, "logit {a} for {b}");
    }
    assert!((p.probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    let msg = message(again.decrypt_result(&result[..100]).err().unwrap());
    assert!(!msg.is_empty());

    // A key for other parameters is refused.
    let msg = message(
        WasmClient::from_secret_key(CONTRACT, exported[..exported.len() / 2].to_vec())
            .err()
            .unwrap(),
    );
    assert!(!msg.is_empty());
}

#[wasm_bindgen_test]
fn bad_contracts_are_refused_with_their_reason() {
    let msg = message(WasmClient::new("{ not json").err().unwrap());
    assert!(msg.starts_with("invalid contract:"), "{msg}");

    let old = CONTRACT.replacen("\"version\": 1,", "\"version\": 2,", 1);
    assert_ne!(old, CONTRACT);
    let msg = message(WasmClient::new(&old).err().unwrap());
    assert!(msg.contains("contract version 2 is not supported"), "{msg}");

    let fingerprint = &contract().params.fingerprint;
    let forged = CONTRACT.replacen(fingerprint.as_str(), &"0".repeat(fingerprint.len()), 1);
    assert_ne!(forged, CONTRACT);
    let msg = message(WasmClient::new(&forged).err().unwrap());
    assert!(msg.contains("fingerprint does not match"), "{msg}");
    let msg = message(
        WasmClient::from_secret_key(&forged, vec![0; 32 + 65536])
            .err()
            .unwrap(),
    );
    assert!(msg.contains("fingerprint does not match"), "{msg}");
}

/// Node's file system, to hand the round trip's bytes to the native side.
mod node_fs {
    use wasm_bindgen::prelude::*;

    #[wasm_bindgen(module = "fs")]
    extern "C" {
        #[wasm_bindgen(js_name = writeFileSync)]
        pub fn write_file_sync(path: &str, data: &[u8]);
        #[wasm_bindgen(js_name = mkdirSync)]
        pub fn mkdir_sync(path: &str, options: &JsValue);
    }
}

const MINI: &str = include_str!("fixtures/mini_contract.json");

/// Where the round trip's files go: the workspace's target directory (the test runs in the
/// crate's directory). `native-server/tests/wasm_roundtrip.rs` reads them.
const ROUNDTRIP_DIR: &str = "../target/wasm-roundtrip";

/// The first half of the round trip on the reduced test network (the server's mini ResNet at
/// N14_TEST): every evaluation key, one at a time, and an encrypted 12x10 image, made here in
/// wasm, plus the secret key (test only) so that the native side can check the decryption.
/// The native side evaluates the network on them and decrypts to the plaintext label.
#[wasm_bindgen_test]
fn mini_network_keys_and_image_for_the_native_side() {
    let client = ok(WasmClient::new(MINI));
    let options = js_sys::Object::new();
    js_sys::Reflect::set(&options, &"recursive".into(), &JsValue::TRUE).unwrap();
    node_fs::mkdir_sync(ROUNDTRIP_DIR, &options);
    for k in 0..client.key_count() {
        let bytes = ok(client.make_key(k));
        node_fs::write_file_sync(&format!("{ROUNDTRIP_DIR}/key-{k}.bin"), &bytes);
    }
    let (w, h) = (12u32, 10u32);
    let px: Vec<u8> = (0..w * h * 4)
        .map(|i| {
            if i % 4 == 3 {
                255
            } else {
                ((i * 97 + 13) % 251) as u8
            }
        })
        .collect();
    node_fs::write_file_sync(&format!("{ROUNDTRIP_DIR}/image.rgba"), &px);
    node_fs::write_file_sync(
        &format!("{ROUNDTRIP_DIR}/input.bin"),
        &ok(client.encrypt_rgba(&px, w, h)),
    );
    node_fs::write_file_sync(
        &format!("{ROUNDTRIP_DIR}/secret.key"),
        &client.export_secret_key().to_vec(),
    );
}
