//! Criterion benches of the CKKS primitives at the shipped parameter sets.
//!
//!     cargo bench -p blindsight-core --bench ckks                       # N16_D20, 1 thread
//!     BENCH_CONFIGS=N16_D20,N16_D30 BENCH_THREADS=2 cargo bench -p blindsight-core --bench ckks
//!
//! `chains` (N16_L39 at level 16, where ResNet-20's stage 1 runs; `BENCH_THREADS` as above): a
//! Horner chain of 15 rotations with each rotation divided by P against the same chain kept raised
//! (`RaisedCiphertext`), and 16 plaintext products with diagonals that repeat every N/4 slots (a
//! replicated layout: transformed at half size) against 16 that do not.
//!
//! The NTT group runs at 2^15 and 2^16 on one core. Whole-pipeline figures with the peers in the
//! same run come from `examples/peers_bench.rs`; BENCHMARKS.md records both.

use std::time::Duration;

use blindsight_core::arith::ntt_primes;
use blindsight_core::ntt::{NttBackend, TfheNtt};
use blindsight_core::*;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn ntt(c: &mut Criterion) {
    let mut g = c.benchmark_group("ntt");
    for log_n in [15u32, 16] {
        let n = 1usize << log_n;
        for bits in [40u32, 50, 60] {
            let q = ntt_primes(bits, 2 * n as u64, 1, &[]).unwrap()[0];
            let plan = TfheNtt::new(n, q).unwrap();
            let mut a: Vec<u64> = (0..n as u64).map(|i| i * 7919 % q).collect();
            g.bench_function(
                BenchmarkId::new(format!("forward/{bits}bit"), format!("2^{log_n}")),
                |b| b.iter(|| plan.forward(black_box(&mut a))),
            );
            g.bench_function(
                BenchmarkId::new(format!("inverse/{bits}bit"), format!("2^{log_n}")),
                |b| b.iter(|| plan.inverse(black_box(&mut a))),
            );
        }
    }
    g.finish();
}

/// `BENCH_THREADS` (default 1) threads for rayon, freed blocks kept in the heap as the binaries do.
fn bench_threads() -> usize {
    memory::keep_freed_memory();
    let threads: usize = std::env::var("BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    threads
}

fn ops(c: &mut Criterion) {
    let threads = bench_threads();
    for config in env_list("BENCH_CONFIGS", "N16_D20") {
        let ctx = Context::named(&config).expect("known parameter set");
        let top = ctx.max_level();
        let sk = SecretKey::generate(&ctx);
        let mut kg = KeyGenerator::new(&ctx, &sk);
        let pk = kg.public_key();
        let mut keys = EvaluationKeys::new(&ctx);
        keys.insert(kg.relin_key(top).unwrap()).unwrap();
        for r in 1..=8 {
            keys.insert(kg.rotation_key(r, top).unwrap()).unwrap();
        }
        let slots = ctx.params().slots();
        let x: Vec<f64> = (0..slots).map(|i| (i % 200) as f64 / 100.0 - 1.0).collect();
        let pt = Plaintext::encode_real(&ctx, &x, top, ctx.params().default_scale()).unwrap();
        let mut enc = Encryptor::new(&ctx);
        let a = enc.encrypt_pk(&pt, &pk).unwrap();
        let b = enc.encrypt_pk(&pt, &pk).unwrap();
        let ev = Evaluator::new(&ctx);
        let prod = ev.mul_relin(&a, &b, &keys).unwrap();
        let amounts: Vec<i64> = (1..=8).collect();

        let mut g = c.benchmark_group(format!("{config}/t{threads}"));
        g.sample_size(10)
            .measurement_time(Duration::from_secs(5))
            .warm_up_time(Duration::from_secs(1));
        g.bench_function("mul_ct_ct_relin", |bn| {
            bn.iter(|| ev.mul_relin(&a, &b, &keys).unwrap())
        });
        g.bench_function("rescale", |bn| bn.iter(|| ev.rescale(&prod).unwrap()));
        g.bench_function("rotate_1", |bn| {
            bn.iter(|| ev.rotate(&a, 1, &keys).unwrap())
        });
        g.bench_function("hoist_8_total", |bn| {
            bn.iter(|| ev.rotate_hoisted(&a, &amounts, &keys).unwrap())
        });
        g.bench_function("encrypt_pk", |bn| {
            bn.iter(|| enc.encrypt_pk(&pt, &pk).unwrap())
        });
        g.bench_function("decrypt_decode", |bn| {
            bn.iter(|| decrypt(&ctx, &a, &sk).unwrap().decode(&ctx).unwrap())
        });
        g.bench_function("relin_keygen", |bn| bn.iter(|| kg.relin_key(top).unwrap()));
        g.finish();
    }
}

fn chains(c: &mut Criterion) {
    let threads = bench_threads();
    let ctx = Context::named("N16_L39").unwrap();
    let (top, level) = (ctx.max_level(), 16);
    let sk = SecretKey::generate(&ctx);
    let mut kg = KeyGenerator::new(&ctx, &sk);
    let mut keys = EvaluationKeys::new(&ctx);
    keys.insert(kg.rotation_key(1024, top).unwrap()).unwrap();
    let slots = ctx.params().slots();
    let scale = ctx.params().default_scale();
    let v = |k: usize| -> Vec<f64> {
        (0..slots)
            .map(|i| ((i * 7 + k * 13) % 200) as f64 / 100.0 - 1.0)
            .collect()
    };
    let mut enc = Encryptor::new(&ctx);
    let terms: Vec<Ciphertext> = (0..16)
        .map(|k| {
            let pt = Plaintext::encode_real(&ctx, &v(k), level, scale * scale).unwrap();
            enc.encrypt_sk(&pt, &sk).unwrap()
        })
        .collect();
    let ev = Evaluator::new(&ctx);
    let mut g = c.benchmark_group(format!("N16_L39/level{level}/t{threads}"));
    g.sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("horner_15_plain", |bn| {
        bn.iter(|| {
            let mut acc = terms[15].clone();
            for t in terms[..15].iter().rev() {
                acc = ev.rotate(&acc, 1024, &keys).unwrap();
                ev.add_assign(&mut acc, t).unwrap();
            }
            acc
        })
    });
    g.bench_function("horner_15_raised", |bn| {
        bn.iter(|| {
            let mut acc = ev.rotate_raising(&terms[15], 1024, &keys).unwrap();
            ev.add_raised(&mut acc, &terms[14]).unwrap();
            for t in terms[..14].iter().rev() {
                acc = ev.rotate_raised(&acc, 1024, &keys).unwrap();
                ev.add_raised(&mut acc, t).unwrap();
            }
            ev.lower(&acc)
        })
    });
    // 16 diagonals at Delta: repeating every N/4 slots (stage 1's replicated layout) or not
    let inputs: Vec<Ciphertext> = (0..16)
        .map(|k| {
            let pt = Plaintext::encode_real(&ctx, &v(k), level, scale).unwrap();
            enc.encrypt_sk(&pt, &sk).unwrap()
        })
        .collect();
    let refs: Vec<&Ciphertext> = inputs.iter().collect();
    for (name, period) in [("dot_16_full", slots), ("dot_16_replicated", slots / 2)] {
        let pts: Vec<SmallPlaintext> = (0..16)
            .map(|k| {
                let d: Vec<f64> = (0..slots).map(|i| v(k)[i % period]).collect();
                SmallPlaintext::encode_real(&ctx, &d, level, scale).unwrap()
            })
            .collect();
        assert_eq!(pts[0].subring(), u32::from(period < slots));
        g.bench_function(name, |bn| {
            bn.iter(|| ev.dot_small_plain(&refs, &pts).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, ntt, ops, chains);
criterion_main!(benches);
