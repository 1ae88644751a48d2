//! Times the pieces of key switching separately (development aid; the criterion benches and
//! peers_bench are the recorded measurements):
//!
//!     cargo run --release -p blindsight-core --example profile_keyswitch -- N16_D20 8 [THREADS]
use std::time::Instant;

use blindsight_core::keyswitch::Decomposition;
use blindsight_core::*;

/// Median of `iters` timed calls (this VM's timings drift: the mean follows the outliers).
fn time<T>(label: &str, iters: usize, mut f: impl FnMut() -> T) {
    let mut ms: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    eprintln!("{label:>28}: {:8.2} ms", ms[ms.len() / 2]);
}

fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "N16_D20".into());
    let iters: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    blindsight_core::memory::keep_freed_memory();
    let threads: usize = std::env::args()
        .nth(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    let ctx = Context::named(&name).unwrap();
    let sk = SecretKey::generate(&ctx);
    let mut kg = KeyGenerator::new(&ctx, &sk);
    let mut keys = EvaluationKeys::new(&ctx);
    keys.insert(kg.rotation_key(1, ctx.max_level()).unwrap())
        .unwrap();
    let top = ctx.max_level();
    let pt = Plaintext::encode_real(&ctx, &[0.5; 100], top, ctx.params().default_scale()).unwrap();
    let ct = Encryptor::new(&ctx).encrypt_sk(&pt, &sk).unwrap();
    let ev = Evaluator::new(&ctx);
    let lc = ctx.level(top).expect("top level");
    let mut limb = ct.parts()[0].limb(0).to_vec();
    time("NTT forward (1 limb)", 200, || {
        lc.q.ntt(0).forward(&mut limb)
    });
    time("NTT inverse (1 limb)", 200, || {
        lc.q.ntt(0).inverse(&mut limb)
    });
    let mut coeff = ct.parts()[1].clone();
    lc.q.inverse(&mut coeff);
    let sw = ctx.switching(top, top).expect("top level");
    let d0 = &sw.mod_up[0];
    let part = coeff.slice_limbs(d0.range.clone());
    time("ModUp convert (1 digit)", iters, || d0.conv.convert(&part));
    time("decomposition", iters, || {
        Decomposition::new(&ctx, top, ctx.params().key_layout(top), &ct.parts()[1])
    });
    let dec = Decomposition::new(&ctx, top, ctx.params().key_layout(top), &ct.parts()[1]);
    let key = keys.galois(ctx.galois_element(1)).unwrap();
    time("inner product", iters, || dec.inner_product(&ctx, key));
    let (b, _a) = dec.inner_product(&ctx, key);
    time("ModDown (1 poly)", iters, || dec.mod_down(&b));
    time("rotate", iters, || ev.rotate(&ct, 1, &keys).unwrap());
    let mut relin_keys = EvaluationKeys::new(&ctx);
    relin_keys.insert(kg.relin_key(top).unwrap()).unwrap();
    let sq = ev.mul(&ct, &ct).unwrap();
    time("tensor product", iters, || ev.mul(&ct, &ct).unwrap());
    time("relinearize", iters, || {
        ev.relinearize(&sq, &relin_keys).unwrap()
    });
    time("rescale", iters, || ev.rescale(&ct).unwrap());
}
