//! End-to-end CKKS on the ResNet parameter set: keys, encryption, a conv-like plaintext product
//! and a square at two levels per prime, rotations, decryption; prints sizes, timings and errors.
//!
//!     cargo run --release -p blindsight-core --example demo [PARAM_SET]

use std::time::Instant;

use blindsight_core::wire::{ciphertext_size, switching_key_size};
use blindsight_core::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    memory::keep_freed_memory();
    let name = std::env::args().nth(1).unwrap_or_else(|| "N16_L39".into());
    let t = Instant::now();
    let ctx = Context::named(&name)?;
    let p = ctx.params();
    println!(
        "parameters {name}: N = 2^{}, {} Q primes + {} special primes, dnum {}, log2(QP) = {:.1} (128-bit bound {})",
        p.log_n(),
        p.q().len(),
        p.p().len(),
        p.dnum(),
        p.log_qp(),
        params::max_log_qp_128(p.log_n()).unwrap_or(0.0)
    );
    println!("context built in {:.2} s", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let sk = SecretKey::generate(&ctx);
    let mut kg = KeyGenerator::new(&ctx, &sk);
    let top = ctx.max_level();
    let mut keys = EvaluationKeys::new(&ctx);
    keys.insert(kg.relin_key(top)?)?;
    keys.insert(kg.rotation_key(1, top)?)?;
    keys.insert(kg.rotation_key(-32, top)?)?;
    println!(
        "secret key, relinearization key and 2 rotation keys in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    println!(
        "  a rotation key is {:.1} MB on the wire at the top level, {:.1} MB at level 10",
        switching_key_size(&ctx, top)? as f64 / 1e6,
        switching_key_size(&ctx, 10.min(top))? as f64 / 1e6
    );

    let slots = p.slots();
    let x: Vec<f64> = (0..slots)
        .map(|i| ((i * 37) % 401) as f64 / 200.0 - 1.0)
        .collect();
    let w: Vec<f64> = (0..slots)
        .map(|i| ((i * 11) % 7) as f64 / 7.0 - 0.5)
        .collect();
    let scale = p.default_scale();
    let t = Instant::now();
    let pt = Plaintext::encode_real(&ctx, &x, top, scale)?;
    let ct = Encryptor::new(&ctx).encrypt_sk(&pt, &sk)?;
    let bytes = ct.to_bytes(&ctx)?;
    println!(
        "encoded and encrypted {slots} values in {:.0} ms; the upload is {:.1} MB (seeded; {:.1} MB unseeded)",
        t.elapsed().as_secs_f64() * 1e3,
        bytes.len() as f64 / 1e6,
        ciphertext_size(&ctx, top, 1, false)? as f64 / 1e6
    );
    let ct = Ciphertext::from_bytes(&ctx, &bytes, 64 << 20)?;

    let ev = Evaluator::new(&ctx);
    let t = Instant::now();
    // y = rotate((w * x)^2, 1) + rotate(x, -32), two levels consumed by one prime
    let wx = ev.mul_plain(&ct, &Plaintext::encode_real(&ctx, &w, top, scale)?)?;
    let sq = ev.rescale(&ev.mul_relin(
        &wx,
        &ev.mul_plain(&ct, &Plaintext::encode_real(&ctx, &w, top, scale)?)?,
        &keys,
    )?)?;
    let r1 = ev.rotate(&sq, 1, &keys)?;
    let r2 = ev.rotate(&ev.drop_level(&ct, sq.level())?, -32, &keys)?;
    // bring the shortcut to the same scale before adding: multiply by 1 at the matching scale
    let r2 =
        ev.rescale(&ev.mul_const(&r2, 1.0, r1.scale() * p.q()[r2.level()] as f64 / r2.scale())?)?;
    let r1 = ev.drop_level(&r1, r2.level())?;
    let y = ev.add(&r1, &r2)?;
    let eval_ms = t.elapsed().as_secs_f64() * 1e3;

    let t = Instant::now();
    let got = decrypt(&ctx, &y, &sk)?.decode(&ctx)?;
    let dec_ms = t.elapsed().as_secs_f64() * 1e3;
    let want = |i: usize| {
        let j = (i + 1) % slots;
        (w[j] * x[j]).powi(2) + x[(i + slots - 32) % slots]
    };
    let err = (0..slots)
        .map(|i| (got[i].re - want(i)).abs())
        .fold(0.0, f64::max);
    println!(
        "evaluated (w*x)^2 rotated by 1 plus x rotated by -32 in {eval_ms:.0} ms, down to level {}",
        y.level()
    );
    println!("decrypted in {dec_ms:.0} ms; max error over {slots} slots: {err:.2e}");
    if err > 1e-2 {
        return Err(format!("error {err} exceeds 1e-2").into());
    }
    Ok(())
}
