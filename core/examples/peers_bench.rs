//! Times the peer benchmarks' CKKS operations (../shared/peers) on our library and writes the
//! same JSON schema, so `compare.py` shows the libraries side by side:
//!
//!     cargo run --release -p blindsight-core --example peers_bench -- --config N16_D20 --threads 1 --out rust_results.json
//!
//! Every operation runs at the top level on full-slot ciphertexts; times are medians (7 runs, 5
//! for key generation), as in the peers' scripts. An existing `--out` file gains or replaces the
//! run for this configuration and thread count.

use std::time::Instant;

use blindsight_core::wire::{ciphertext_size, switching_key_size};
use blindsight_core::*;

fn median_ms<T>(reps: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut ts = Vec::with_capacity(reps);
    let mut out = None;
    for _ in 0..reps {
        let t = Instant::now();
        out = Some(std::hint::black_box(f()));
        ts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (ts[ts.len() / 2], out.unwrap())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_string())
    };
    let config = arg("--config", "N16_D20");
    let threads: usize = arg("--threads", "1").parse().expect("--threads N");
    let reps: usize = arg("--reps", "7").parse().expect("--reps N");
    let reps_keygen: usize = arg("--reps-keygen", "5").parse().expect("--reps-keygen N");
    let out_path = arg("--out", "rust_results.json");
    blindsight_core::memory::keep_freed_memory();
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("thread pool");

    let ctx = Context::named(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
    let params = ctx.params();
    let top = ctx.max_level();
    let slots = params.slots();
    let mut times = serde_json::Map::new();
    let mut put = |k: &str, v: f64| {
        eprintln!("{k:>24}: {v:10.2} ms");
        times.insert(k.to_string(), v.into());
    };

    let (t, sk) = median_ms(reps_keygen, || {
        let sk = SecretKey::generate(&ctx);
        let pk = KeyGenerator::new(&ctx, &sk).public_key();
        (sk, pk)
    });
    put("keygen_sk_pk", t);
    let (sk, pk) = sk;
    let mut kg = KeyGenerator::new(&ctx, &sk);
    let (t, rlk) = median_ms(reps_keygen, || kg.relin_key(top).unwrap());
    put("relin_keygen", t);
    let (t, rk1) = median_ms(reps_keygen, || kg.rotation_key(1, top).unwrap());
    put("rot_keygen_1", t);
    let mut keys = EvaluationKeys::new(&ctx);
    keys.insert(rlk.clone()).unwrap();
    for r in 1..=8 {
        keys.insert(kg.rotation_key(r, top).unwrap()).unwrap();
    }

    let x: Vec<f64> = (0..slots)
        .map(|i| ((i * 7919) % 2000) as f64 / 1000.0 - 1.0)
        .collect();
    let y: Vec<f64> = (0..slots)
        .map(|i| ((i * 104729) % 2000) as f64 / 1000.0 - 1.0)
        .collect();
    let scale = params.default_scale();
    let (t, ptx) = median_ms(reps, || {
        Plaintext::encode_real(&ctx, &x, top, scale).unwrap()
    });
    put("encode", t);
    let pty = Plaintext::encode_real(&ctx, &y, top, scale).unwrap();
    let mut enc = Encryptor::new(&ctx);
    let (t, ctx_x) = median_ms(reps, || enc.encrypt_pk(&ptx, &pk).unwrap());
    put("encrypt_pk", t);
    let (t, _) = median_ms(reps, || enc.encrypt_sk(&ptx, &sk).unwrap());
    put("encrypt_sk", t);
    let cty = enc.encrypt_pk(&pty, &pk).unwrap();
    let (t, dec) = median_ms(reps, || {
        decrypt(&ctx, &ctx_x, &sk).unwrap().decode(&ctx).unwrap()
    });
    put("decrypt_decode", t);
    let err_fresh = dec
        .iter()
        .zip(&x)
        .map(|(a, b)| (a.re - b).abs())
        .fold(0.0, f64::max);

    let ev = Evaluator::new(&ctx);
    put(
        "add_ct_ct",
        median_ms(reps, || ev.add(&ctx_x, &cty).unwrap()).0,
    );
    put(
        "mul_ct_pt",
        median_ms(reps, || ev.mul_plain(&ctx_x, &pty).unwrap()).0,
    );
    let (t, ct3) = median_ms(reps, || ev.mul(&ctx_x, &cty).unwrap());
    put("mul_ct_ct_no_relin", t);
    put(
        "relinearize",
        median_ms(reps, || ev.relinearize(&ct3, &keys).unwrap()).0,
    );
    let (t, prod) = median_ms(reps, || ev.mul_relin(&ctx_x, &cty, &keys).unwrap());
    put("mul_ct_ct_relin", t);
    let (t, prod_rs) = median_ms(reps, || ev.rescale(&prod).unwrap());
    put("rescale", t);
    put(
        "rotate_1",
        median_ms(reps, || ev.rotate(&ctx_x, 1, &keys).unwrap()).0,
    );
    let amounts: Vec<i64> = (1..=8).collect();
    put(
        "hoist_8_total",
        median_ms(reps, || ev.rotate_hoisted(&ctx_x, &amounts, &keys).unwrap()).0,
    );
    put(
        "rotate_8_plain",
        median_ms(reps, || {
            amounts
                .iter()
                .map(|&r| ev.rotate(&ctx_x, r, &keys).unwrap())
                .collect::<Vec<_>>()
        })
        .0,
    );

    let got = decrypt(&ctx, &prod_rs, &sk).unwrap().decode(&ctx).unwrap();
    let err_mul = got
        .iter()
        .zip(x.iter().zip(&y))
        .map(|(g, (a, b))| (g.re - a * b).abs())
        .fold(0.0, f64::max);
    eprintln!("max error: fresh {err_fresh:.2e}, after mul+relin+rescale {err_mul:.2e}");

    let sizes = serde_json::json!({
        "ciphertext_bytes_top_level": ciphertext_size(&ctx, top, 1, false).expect("top level"),
        "ciphertext_seeded_bytes_top_level": ciphertext_size(&ctx, top, 1, true).expect("top level"),
        "relin_key_bytes": rlk.memory_bytes(),
        "relin_key_seeded_bytes": rlk.to_bytes(&ctx).expect("own key").len(),
        "rot_key_bytes": rk1.memory_bytes(),
        "rot_key_seeded_bytes": switching_key_size(&ctx, top).expect("top level"),
        "rot_key_seeded_bytes_level10": switching_key_size(&ctx, 10.min(top)).expect("level"),
        "public_key_bytes": pk.to_bytes(&ctx).expect("own key").len(),
    });
    let run = serde_json::json!({
        "params": {
            "config": config,
            "ring_dim": params.n(),
            "num_q_moduli": params.q().len(),
            "q_bit_sizes": params.q().iter().map(|&q| ((q as f64).log2() * 100.0).round() / 100.0).collect::<Vec<_>>(),
            "log2_Q": params.log_q_at(top),
            "dnum": params.dnum(),
            "alpha_towers_per_digit": params.key_layout(top).alpha,
            "num_p_moduli": params.key_layout(top).special,
            "p_bits_each_approx": params.spec().p_bits.first().copied().unwrap_or(0),
            "log2_QP_approx": params.log_qp(),
            "key_switching": "HYBRID (exact ModDown)",
            "scaling": "manual",
            "slots": slots,
            "secret_key_dist": "UNIFORM_TERNARY",
            "max_error_fresh": err_fresh,
            "max_error_mul_rescale": err_mul,
        },
        "threads": threads,
        "times_ms": times,
        "sizes_bytes": sizes,
    });
    let mut doc: serde_json::Value = std::fs::read_to_string(&out_path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_else(|| serde_json::json!({"library": "blindsight", "runs": []}));
    let runs = doc["runs"].as_array_mut().expect("runs array");
    runs.retain(|r| !(r["params"]["config"] == config && r["threads"] == threads));
    runs.push(run);
    std::fs::write(&out_path, serde_json::to_string_pretty(&doc).unwrap()).expect("write --out");
    eprintln!("wrote {out_path}");
}
