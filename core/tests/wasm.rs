//! Runs on wasm32 only (`cargo test --target wasm32-unknown-unknown --test wasm`, with
//! wasm-bindgen-test-runner in node): the browser build must expand seeds exactly as the native
//! build does, and encrypt/decrypt correctly with the OS randomness of the browser.
#![cfg(target_arch = "wasm32")]

use blindsight_core::*;
use wasm_bindgen_test::*;

#[wasm_bindgen_test]
fn seed_expansion_matches_native_vector() {
    let ctx = Context::named("N12_TINY").unwrap();
    let hex: String = wire::seed_expansion_digest(&ctx)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect();
    assert_eq!(hex, include_str!("seed_vector.txt").trim());
}

#[wasm_bindgen_test]
fn encrypt_rotate_decrypt() {
    let ctx = Context::named("N12_TINY").unwrap();
    let sk = SecretKey::generate(&ctx);
    let mut kg = KeyGenerator::new(&ctx, &sk);
    let mut keys = EvaluationKeys::new(&ctx);
    keys.insert(kg.rotation_key(1, ctx.max_level()).unwrap())
        .unwrap();
    let v: Vec<f64> = (0..ctx.params().slots())
        .map(|i| (i % 17) as f64 / 17.0)
        .collect();
    let pt = Plaintext::encode_real(&ctx, &v, ctx.max_level(), 2f64.powi(25)).unwrap();
    let ct = Encryptor::new(&ctx).encrypt_sk(&pt, &sk).unwrap();
    let bytes = ct.to_bytes(&ctx).unwrap();
    let ct = Ciphertext::from_bytes(&ctx, &bytes, 1 << 20).unwrap();
    let r = Evaluator::new(&ctx).rotate(&ct, 1, &keys).unwrap();
    let got = decrypt(&ctx, &r, &sk).unwrap().decode(&ctx).unwrap();
    for i in 0..v.len() {
        assert!((got[i].re - v[(i + 1) % v.len()]).abs() < 1e-2, "slot {i}");
    }
}

/// A measurement, not a test (ignored; run it with `-- --include-ignored`): key generation at the
/// peers' N16_D20 set in this wasm build, beside `../shared/peers/node_seal_bench.mjs` in the same
/// node. Prints the median of 5 rotation keys (alone, and with their wire bytes as `makeKey`
/// makes them) and of 3 relinearization keys.
#[wasm_bindgen_test]
#[ignore = "a benchmark: prints timings"]
fn key_generation_timing_n16_d20() {
    let ctx = Context::named("N16_D20").unwrap();
    let sk = SecretKey::generate(&ctx);
    let top = ctx.max_level();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let time = |f: &mut dyn FnMut()| {
        let t0 = js_sys::Date::now();
        f();
        js_sys::Date::now() - t0
    };
    let rot: Vec<f64> = (0..5)
        .map(|i| {
            time(&mut || {
                let key = KeyGenerator::new(&ctx, &sk)
                    .rotation_key(1 + i, top)
                    .unwrap();
                assert_eq!(key.level(), top);
            })
        })
        .collect();
    // what the browser's `makeKey` does: the key, then its seeded, bit-packed wire form
    let rot_bytes: Vec<f64> = (0..5)
        .map(|i| {
            time(&mut || {
                let key = KeyGenerator::new(&ctx, &sk)
                    .rotation_key(1 + i, top)
                    .unwrap();
                assert!(!key.to_bytes(&ctx).unwrap().is_empty());
            })
        })
        .collect();
    let relin: Vec<f64> = (0..3)
        .map(|_| {
            time(&mut || {
                KeyGenerator::new(&ctx, &sk).relin_key(top).unwrap();
            })
        })
        .collect();
    console_log!(
        "N16_D20 in wasm: rotation key {:.0} ms (median of 5; {:.0} ms with its wire bytes), relinearization key {:.0} ms (median of 3), {} bytes each",
        median(rot),
        median(rot_bytes),
        median(relin),
        wire::switching_key_size(&ctx, top).unwrap()
    );
}
