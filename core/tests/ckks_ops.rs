//! Every evaluator operation against the same computation on plaintext values, with stated error
//! bounds, on the fast secure test set N14_TEST (N = 2^14, 8192 slots).

use std::sync::{Arc, OnceLock};

use blindsight_core::*;

struct Fixture {
    ctx: Arc<Context>,
    sk: SecretKey,
    pk: PublicKey,
    keys: EvaluationKeys,
}

/// Rotation amounts the tests use (keys at the top level).
const ROTATIONS: [i64; 7] = [1, 2, 5, -1, 64, 4095, 4096];

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let ctx = Context::named("N14_TEST").unwrap();
        let sk = SecretKey::generate(&ctx);
        let mut kg = KeyGenerator::new(&ctx, &sk);
        let pk = kg.public_key();
        let top = ctx.max_level();
        let mut keys = EvaluationKeys::new(&ctx);
        keys.insert(kg.relin_key(top).unwrap()).unwrap();
        keys.insert(kg.conjugation_key(top).unwrap()).unwrap();
        for r in ROTATIONS {
            keys.insert(kg.rotation_key(r, top).unwrap()).unwrap();
        }
        // powers of two for rotate_and_sum(step 1, count 8)
        keys.insert(kg.rotation_key(4, top).unwrap()).unwrap();
        Fixture { ctx, sk, pk, keys }
    })
}

/// Deterministic test values in [-1, 1].
fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

fn encrypt(f: &Fixture, v: &[f64], level: usize, scale: f64) -> Ciphertext {
    let pt = Plaintext::encode_real(&f.ctx, v, level, scale).unwrap();
    Encryptor::new(&f.ctx).encrypt_sk(&pt, &f.sk).unwrap()
}

fn decrypt_real(f: &Fixture, ct: &Ciphertext) -> Vec<f64> {
    decrypt_with(&f.ctx, &f.sk, ct)
}

fn decrypt_with(ctx: &Context, sk: &SecretKey, ct: &Ciphertext) -> Vec<f64> {
    decrypt(ctx, ct, sk)
        .unwrap()
        .decode(ctx)
        .unwrap()
        .iter()
        .map(|c| c.re)
        .collect()
}

fn max_err(got: &[f64], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

fn rms_err(got: &[f64], want: &[f64]) -> f64 {
    let sum: f64 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum();
    (sum / got.len() as f64).sqrt()
}

const D25: f64 = 33554432.0; // 2^25
const D40: f64 = 1099511627776.0; // 2^40

#[test]
fn encrypt_decrypt_precision_pk_and_sk() {
    let f = fixture();
    let slots = f.ctx.params().slots();
    let v = values(slots, 1);
    let top = f.ctx.max_level();
    let pt = Plaintext::encode_real(&f.ctx, &v, top, D40).unwrap();
    // encoding alone: rounding error only
    let decoded: Vec<f64> = pt.decode(&f.ctx).unwrap().iter().map(|c| c.re).collect();
    assert!(
        max_err(&decoded, &v) < 1e-9,
        "encode {}",
        max_err(&decoded, &v)
    );
    let sk_ct = Encryptor::new(&f.ctx).encrypt_sk(&pt, &f.sk).unwrap();
    let e_sk = max_err(&decrypt_real(f, &sk_ct), &v);
    // fresh error ~ sqrt(N)*3.2*6 / 2^40 < 2^-26
    assert!(e_sk < 2f64.powi(-26), "sk {e_sk}");
    let pk_ct = Encryptor::new(&f.ctx).encrypt_pk(&pt, &f.pk).unwrap();
    let e_pk = max_err(&decrypt_real(f, &pk_ct), &v);
    // public-key error ~ N*3.2*6 / 2^40 < 2^-20
    assert!(e_pk < 2f64.powi(-20), "pk {e_pk}");
}

#[test]
fn add_sub_neg_constants() {
    let f = fixture();
    let ev = Evaluator::new(&f.ctx);
    let n = f.ctx.params().slots();
    let (a, b) = (values(n, 2), values(n, 3));
    let l = f.ctx.max_level();
    let (ca, cb) = (encrypt(f, &a, l, D40), encrypt(f, &b, l, D40));
    let tol = 1e-6;
    let sum: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    assert!(max_err(&decrypt_real(f, &ev.add(&ca, &cb).unwrap()), &sum) < tol);
    let diff: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
    assert!(max_err(&decrypt_real(f, &ev.sub(&ca, &cb).unwrap()), &diff) < tol);
    let neg: Vec<f64> = a.iter().map(|x| -x).collect();
    assert!(max_err(&decrypt_real(f, &ev.neg(&ca).unwrap()), &neg) < tol);
    let plus_c: Vec<f64> = a.iter().map(|x| x + 0.75).collect();
    assert!(max_err(&decrypt_real(f, &ev.add_const(&ca, 0.75).unwrap()), &plus_c) < tol);
    let times3: Vec<f64> = a.iter().map(|x| 3.0 * x).collect();
    assert!(max_err(&decrypt_real(f, &ev.mul_int(&ca, 3).unwrap()), &times3) < tol);
    let pb = Plaintext::encode_real(&f.ctx, &b, l, D40).unwrap();
    assert!(max_err(&decrypt_real(f, &ev.add_plain(&ca, &pb).unwrap()), &sum) < tol);
    assert!(max_err(&decrypt_real(f, &ev.sub_plain(&ca, &pb).unwrap()), &diff) < tol);
}

#[test]
fn multiply_relinearize_rescale_single_level() {
    let f = fixture();
    let ev = Evaluator::new(&f.ctx);
    let n = f.ctx.params().slots();
    let (a, b) = (values(n, 4), values(n, 5));
    let l = f.ctx.max_level();
    let (ca, cb) = (encrypt(f, &a, l, D40), encrypt(f, &b, l, D40));
    let prod: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x * y).collect();
    let ct = ev.mul_relin(&ca, &cb, &f.keys).unwrap();
    assert_eq!(ct.degree(), 1);
    assert!((ct.scale() - D40 * D40).abs() < 1.0);
    assert!(
        max_err(&decrypt_real(f, &ct), &prod) < 1e-6,
        "mul {}",
        max_err(&decrypt_real(f, &ct), &prod)
    );
    let r = ev.rescale(&ct).unwrap();
    assert_eq!(r.level(), l - 1);
    let q_l = f.ctx.params().q()[l] as f64;
    assert_eq!(r.scale(), D40 * D40 / q_l);
    // scale 2^30 after the rescale: error ~ 4.5 * N/4.24 / 2^30 ~ 2^-16
    assert!(
        max_err(&decrypt_real(f, &r), &prod) < 5e-5,
        "rescale {}",
        max_err(&decrypt_real(f, &r), &prod)
    );
    // degree-2 ciphertext decrypts too (c0 + c1 s + c2 s^2)
    let raw = ev.mul(&ca, &cb).unwrap();
    assert!(max_err(&decrypt_real(f, &raw), &prod) < 1e-6);
    // plaintext multiplication and constants
    let pb = Plaintext::encode_real(&f.ctx, &b, l, D40).unwrap();
    assert!(max_err(&decrypt_real(f, &ev.mul_plain(&ca, &pb).unwrap()), &prod) < 1e-6);
    let scaled: Vec<f64> = a.iter().map(|x| -1.375 * x).collect();
    let mc = ev
        .rescale(&ev.mul_const(&ca, -1.375, q_l).unwrap())
        .unwrap();
    assert!(
        (mc.scale() / D40 - 1.0).abs() < 1e-12,
        "const scale chosen as q_l keeps the scale"
    );
    assert!(max_err(&decrypt_real(f, &mc), &scaled) < 1e-6);
}

#[test]
fn two_levels_per_prime() {
    // Delta = 2^25 with 50-bit primes: two multiplications (Delta^3), then one rescale by a
    // prime of about Delta^2 back to about Delta.
    let f = fixture();
    let ev = Evaluator::new(&f.ctx);
    let n = f.ctx.params().slots();
    let (a, w, b) = (values(n, 6), values(n, 7), values(n, 8));
    let mut level = f.ctx.max_level();
    let mut ct = encrypt(f, &a, level, D25);
    let mut want = a.clone();
    let mut rounds = 0;
    while level >= 2 {
        // x <- (x * w) * x' ... a conv-like plaintext product, then a square-like ct product
        let pw = Plaintext::encode_real(&f.ctx, &w, level, D25).unwrap();
        let t = ev.mul_plain(&ct, &pw).unwrap(); // Delta^2
        let cb = encrypt(f, &b, level, D25);
        let t = ev.mul_relin(&t, &cb, &f.keys).unwrap(); // Delta^3
        ct = ev.rescale(&t).unwrap(); // ~Delta
        level -= 1;
        for ((x, wi), bi) in want.iter_mut().zip(&w).zip(&b) {
            *x = *x * wi * bi;
        }
        assert!(
            (ct.scale().log2() - 25.0).abs() < 0.01,
            "scale 2^{}",
            ct.scale().log2()
        );
        rounds += 1;
    }
    let got = decrypt_real(f, &ct);
    // Each rescale adds a rounding error that the secret key multiplies slot-wise, so the slot
    // errors are products of two near-Gaussians: the RMS is steady (8.0e-5 to 9.1e-5 over 60
    // fresh keys) but the maximum over 8192 slots has an exponential tail (median 6.3e-4, 1.0e-3
    // at worst, tail scale ~1e-4). The bounds below sit >10 tail scales above what was seen, so
    // a correct evaluator fails them with probability below 1e-9; a wrong scale or a lost term
    // gives errors of the size of the values themselves (RMS ~7e-3).
    let rms = rms_err(&got, &want);
    let err = max_err(&got, &want);
    assert!(rms < 2e-4, "after {rounds} rounds: RMS {rms}");
    assert!(err < 3e-3, "after {rounds} rounds: max {err}");
    assert!(rounds >= 4);
}

#[test]
fn rotations_are_cyclic_shifts_and_hoisting_agrees() {
    let f = fixture();
    let ev = Evaluator::new(&f.ctx);
    let n = f.ctx.params().slots();
    let a = values(n, 9);
    let ct = encrypt(f, &a, f.ctx.max_level(), D40);
    let hoisted = ev.rotate_hoisted(&ct, &ROTATIONS, &f.keys).unwrap();
    for (r, h) in ROTATIONS.iter().zip(&hoisted) {
        let want: Vec<f64> = (0..n)
            .map(|i| a[(i as i64 + r).rem_euclid(n as i64) as usize])
            .collect();
        let plain = ev.rotate(&ct, *r, &f.keys).unwrap();
        let (ep, eh) = (
            max_err(&decrypt_real(f, &plain), &want),
            max_err(&decrypt_real(f, h), &want),
        );
        assert!(ep < 1e-6 && eh < 1e-6, "rotation {r}: {ep} {eh}");
        // the same computation: identical up to the ModDown rounding
        assert!(max_err(&decrypt_real(f, &plain), &decrypt_real(f, h)) < 1e-8);
    }
}

#[test]
fn conjugation_and_rotate_and_sum() {
    let f = fixture();
    let ev = Evaluator::new(&f.ctx);
    let n = f.ctx.params().slots();
    let re = values(n, 10);
    let im = values(n, 11);
    let z: Vec<Complex> = re
        .iter()
        .zip(&im)
        .map(|(&a, &b)| Complex::new(a, b))
        .collect();
    let l = f.ctx.max_level();
    let pt = Plaintext::encode(&f.ctx, &z, l, D40).unwrap();
    let ct = Encryptor::new(&f.ctx).encrypt_sk(&pt, &f.sk).unwrap();
    let conj = ev.conjugate(&ct, &f.keys).unwrap();
    let got = decrypt(&f.ctx, &conj, &f.sk)
        .unwrap()
        .decode(&f.ctx)
        .unwrap();
    for (g, w) in got.iter().zip(&z) {
        assert!((g.re - w.re).abs() < 1e-6 && (g.im + w.im).abs() < 1e-6);
    }
    let ca = encrypt(f, &re, l, D40);
    let sum = ev.rotate_and_sum(&ca, 1, 8, &f.keys).unwrap();
    let want: Vec<f64> = (0..n)
        .map(|i| (0..8).map(|k| re[(i + k) % n]).sum())
        .collect();
    assert!(max_err(&decrypt_real(f, &sum), &want) < 1e-5);
    assert!(matches!(
        ev.rotate_and_sum(&ca, 1, 6, &f.keys),
        Err(CkksError::Count(6))
    ));
}

/// Two real vectors that share a ciphertext as real and imaginary parts come apart with one
/// conjugation and no level, and each squares on its own: the pair's activation.
#[test]
fn real_and_imaginary_parts_come_apart() {
    let f = fixture();
    let ev = Evaluator::new(&f.ctx);
    let n = f.ctx.params().slots();
    let (a, b) = (values(n, 12), values(n, 13));
    let l = f.ctx.max_level() - 1;
    let pair = ev
        .add(
            &encrypt(f, &a, l, D40),
            &ev.mul_imag(&encrypt(f, &b, l, D40)).unwrap(),
        )
        .unwrap();
    let (re, im) = ev.real_imag(&pair, &f.keys).unwrap();
    for (ct, want) in [(&re, &a), (&im, &b)] {
        assert_eq!(ct.level(), l);
        assert!(scales_equal(ct.scale(), 2.0 * D40));
        assert!(max_err(&decrypt_real(f, ct), want) < 1e-6);
    }
    // a^2 + i*b^2: the squares back in one ciphertext
    let sq = |ct: &Ciphertext| ev.square_relin(ct, &f.keys).unwrap();
    let both = ev.add(&sq(&re), &ev.mul_imag(&sq(&im)).unwrap()).unwrap();
    let got = decrypt(&f.ctx, &both, &f.sk)
        .unwrap()
        .decode(&f.ctx)
        .unwrap();
    for ((g, x), y) in got.iter().zip(&a).zip(&b) {
        assert!((g.re - x * x).abs() < 1e-5 && (g.im - y * y).abs() < 1e-5);
    }
}

/// Two real vectors in one ciphertext (`a + i*b`, the second part by `mul_imag`), one complex
/// plaintext product `(p - i*q) (a + i*b)` and a conjugation: the real part `p*a + q*b` alone,
/// the imaginary part gone, with no level spent but the product's.
#[test]
fn imaginary_parts_carry_a_second_vector() {
    let f = fixture();
    let ev = Evaluator::new(&f.ctx);
    let n = f.ctx.params().slots();
    let (a, b, p, q) = (values(n, 20), values(n, 21), values(n, 22), values(n, 23));
    let l = f.ctx.max_level();
    let (ca, cb) = (encrypt(f, &a, l, D40), encrypt(f, &b, l, D40));
    let packed = ev.add(&ca, &ev.mul_imag(&cb).unwrap()).unwrap();
    assert_eq!(packed.level(), l);
    let got = decrypt(&f.ctx, &packed, &f.sk)
        .unwrap()
        .decode(&f.ctx)
        .unwrap();
    for j in 0..n {
        assert!((got[j].re - a[j]).abs() < 1e-6 && (got[j].im - b[j]).abs() < 1e-6);
    }
    let neg_q: Vec<f64> = q.iter().map(|x| -x / 2.0).collect();
    let half_p: Vec<f64> = p.iter().map(|x| x / 2.0).collect();
    let pt = SmallPlaintext::encode_complex(&f.ctx, &half_p, &neg_q, l, D40).unwrap();
    let prod = ev.dot_small_plain(&[&packed], &[pt]).unwrap();
    let mut re = ev
        .add(&prod, &ev.conjugate(&prod, &f.keys).unwrap())
        .unwrap();
    ev.rescale_assign(&mut re).unwrap();
    let want: Vec<f64> = (0..n).map(|j| p[j] * a[j] + q[j] * b[j]).collect();
    let got = decrypt(&f.ctx, &re, &f.sk).unwrap().decode(&f.ctx).unwrap();
    let (mut err_re, mut err_im) = (0f64, 0f64);
    for j in 0..n {
        err_re = err_re.max((got[j].re - want[j]).abs());
        err_im = err_im.max(got[j].im.abs());
    }
    // measured 2e-5 on this set: two products' rounding, a key switch and the rescale
    assert!(err_re < 1e-4 && err_im < 1e-4, "{err_re} {err_im}");
}

/// Slot vectors that repeat every N/2^(t+1) slots (replicated layouts) encode to polynomials in
/// X^(2^t), which are transformed at 1/2^t of the size: every limb equals the full transform of
/// the same coefficients, and a product with such a plaintext decrypts as a product should.
#[test]
fn replicated_plaintexts_transform_in_a_subring() {
    let f = fixture();
    let ev = Evaluator::new(&f.ctx);
    let n = f.ctx.params().slots();
    let l = f.ctx.max_level();
    let a = values(n, 30);
    let ct = encrypt(f, &a, l, D40);
    for (t, period) in [(0, n), (1, n / 2), (3, n / 8), (4, n / 64)] {
        let base = values(period, 31 + t as u64);
        let p: Vec<f64> = (0..n).map(|j| base[j % period]).collect();
        let q: Vec<f64> = p.iter().map(|x| 1.0 - x).collect();
        let (pt, pt_q) = SmallPlaintext::encode_real_pair(&f.ctx, &p, D25, &q, D25, l).unwrap();
        assert_eq!((pt.subring(), pt_q.subring()), (t, t), "period {period}");
        let basis = &f.ctx.level(l).unwrap().q;
        let (mut out, mut scratch) = (vec![0u64; f.ctx.n()], Vec::new());
        for i in [0, l] {
            pt.limb_into(&f.ctx, i, &mut out, &mut scratch);
            let m = basis.modulus(i).value();
            let mut want: Vec<u64> = pt
                .coeffs()
                .iter()
                .map(|&c| {
                    if c < 0 {
                        m - c.unsigned_abs()
                    } else {
                        c as u64
                    }
                })
                .collect();
            basis.ntt(i).forward(&mut want);
            assert!(out == want, "limb {i}, t = {t}");
        }
        let prod = ev.dot_small_plain(&[&ct], &[pt]).unwrap();
        let want: Vec<f64> = (0..n).map(|j| a[j] * p[j]).collect();
        let err = max_err(&decrypt_with(&f.ctx, &f.sk, &prod), &want);
        assert!(err < 1e-4, "t = {t}: {err}");
    }
}

/// Horner's rule over rotations, `acc = rot_r(acc) + v_k`, with the accumulator kept raised by P
/// (one ModDown per rotation instead of two, one at the end) gives the rotated sum as precisely
/// as rotating and dividing every time; an operand of another level is refused.
#[test]
fn raised_horner_chains_rotate_like_plain_ones() {
    let f = fixture();
    let ev = Evaluator::new(&f.ctx);
    let n = f.ctx.params().slots();
    let l = f.ctx.max_level() - 1;
    let r = 64;
    let vs: Vec<Vec<f64>> = (0..5).map(|k| values(n, 50 + k)).collect();
    let cts: Vec<Ciphertext> = vs.iter().map(|v| encrypt(f, v, l, D40)).collect();
    // plain chain
    let mut plain = cts[4].clone();
    for ct in cts[..4].iter().rev() {
        plain = ev.rotate(&plain, r, &f.keys).unwrap();
        ev.add_assign(&mut plain, ct).unwrap();
    }
    // raised chain
    let mut raised = ev.rotate_raising(&cts[4], r, &f.keys).unwrap();
    ev.add_raised(&mut raised, &cts[3]).unwrap();
    for ct in cts[..3].iter().rev() {
        raised = ev.rotate_raised(&raised, r, &f.keys).unwrap();
        ev.add_raised(&mut raised, ct).unwrap();
    }
    assert_eq!((raised.level(), raised.scale()), (l, D40));
    let lowered = ev.lower(&raised);
    // sum_k rot_{k r}(v_k)
    let want: Vec<f64> = (0..n)
        .map(|j| (0..5).map(|k| vs[k][(j + k * r as usize) % n]).sum())
        .collect();
    let e_plain = max_err(&decrypt_with(&f.ctx, &f.sk, &plain), &want);
    let e_raised = max_err(&decrypt_with(&f.ctx, &f.sk, &lowered), &want);
    // measured 2.4e-8 for both at 2^40
    assert!(e_plain < 1e-6 && e_raised < 1e-6, "{e_plain} {e_raised}");
    assert!(
        e_raised < 2.0 * e_plain.max(1e-9),
        "{e_raised} against {e_plain}"
    );
    // an operand at another level is refused
    let other = encrypt(f, &vs[0], l - 1, D40);
    assert!(matches!(
        ev.add_raised(&mut raised, &other),
        Err(CkksError::LevelMismatch(..))
    ));
}

#[test]
fn keys_work_below_their_level_and_are_refused_above() {
    let f = fixture();
    let ev = Evaluator::new(&f.ctx);
    let n = f.ctx.params().slots();
    let a = values(n, 12);
    let mut kg = KeyGenerator::new(&f.ctx, &f.sk);
    let key_level = 2;
    let mut keys = EvaluationKeys::new(&f.ctx);
    keys.insert(kg.rotation_key(3, key_level).unwrap()).unwrap();
    keys.insert(kg.relin_key(key_level).unwrap()).unwrap();
    let want: Vec<f64> = (0..n).map(|i| a[(i + 3) % n]).collect();
    for level in 0..=key_level {
        let ct = encrypt(f, &a, level, D25);
        let got = decrypt_real(f, &ev.rotate(&ct, 3, &keys).unwrap());
        // At Delta = 2^25 the key switch's rounding, multiplied slot-wise by the key, dominates:
        // over 150 fresh keys the RMS stayed within 7.9e-5..8.5e-5 while the maximum over 8192
        // slots had median 5.4e-4 and an exponential tail up to 1.15e-3 (a 1e-3 bound failed
        // about once in a hundred runs). Both bounds leave >30 tail scales of margin.
        let (rms, e) = (rms_err(&got, &want), max_err(&got, &want));
        assert!(rms < 2e-4 && e < 3e-3, "level {level}: RMS {rms}, max {e}");
    }
    let sq: Vec<f64> = a.iter().map(|x| x * x).collect();
    let ct = encrypt(f, &a, 1, D25);
    assert!(max_err(&decrypt_real(f, &ev.square_relin(&ct, &keys).unwrap()), &sq) < 1e-3);
    let high = encrypt(f, &a, key_level + 1, D25);
    assert!(matches!(
        ev.rotate(&high, 3, &keys),
        Err(CkksError::KeyLevel {
            key_level: 2,
            level: 3
        })
    ));
    assert!(matches!(
        ev.square_relin(&high, &keys),
        Err(CkksError::KeyLevel { .. })
    ));
    // a key made at level 2 is smaller than one at the top
    let top = kg.rotation_key(3, f.ctx.max_level()).unwrap();
    assert!(keys.iter().next().unwrap().memory_bytes() < top.memory_bytes());
}

#[test]
fn operand_errors_are_errors() {
    let f = fixture();
    let ev = Evaluator::new(&f.ctx);
    let n = f.ctx.params().slots();
    let a = values(n, 13);
    let l = f.ctx.max_level();
    let x = encrypt(f, &a, l, D40);
    let y = encrypt(f, &a, l - 1, D40);
    assert!(matches!(ev.add(&x, &y), Err(CkksError::LevelMismatch(..))));
    let z = encrypt(f, &a, l, D25);
    assert!(matches!(ev.add(&x, &z), Err(CkksError::ScaleMismatch(..))));
    assert!(matches!(
        ev.rotate(&x, 7, &f.keys),
        Err(CkksError::MissingGaloisKey(_))
    ));
    let bottom = encrypt(f, &a, 0, D25);
    assert!(matches!(
        ev.rescale(&bottom),
        Err(CkksError::RescaleAtLevelZero)
    ));
    // Delta^2 = 2^80 does not fit below q0 (60 bits)
    assert!(matches!(
        ev.mul(&encrypt(f, &a, 0, D40), &encrypt(f, &a, 0, D40)),
        Err(CkksError::ScaleOverflow { .. })
    ));
    assert!(matches!(
        ev.mul_const(&x, f64::NAN, 1.0),
        Err(CkksError::NotFinite(_))
    ));
    assert!(matches!(
        Plaintext::encode_real(&f.ctx, &vec![0.0; n + 1], l, D40),
        Err(CkksError::TooManyValues { .. })
    ));
    assert!(matches!(
        Plaintext::encode_real(&f.ctx, &[1.0], l + 1, D40),
        Err(CkksError::Level { .. })
    ));
    // objects of another parameter set
    let other = Context::named("N12_TINY").unwrap();
    let ev2 = Evaluator::new(&other);
    assert!(matches!(ev2.add(&x, &x), Err(CkksError::ParamsMismatch)));
    assert!(matches!(
        decrypt(&other, &x, &f.sk),
        Err(CkksError::ParamsMismatch)
    ));
    let mut no_relin = EvaluationKeys::new(&f.ctx);
    no_relin
        .insert(KeyGenerator::new(&f.ctx, &f.sk).rotation_key(1, l).unwrap())
        .unwrap();
    assert!(matches!(
        ev.mul_relin(&x, &x, &no_relin),
        Err(CkksError::MissingRelinKey)
    ));
}

#[test]
fn secret_key_is_ternary() {
    let f = fixture();
    let h = f.sk.hamming_weight();
    let n = f.ctx.n();
    // uniform ternary: about 2N/3 non-zero
    assert!(
        (h as f64 - 2.0 * n as f64 / 3.0).abs() < 0.03 * n as f64,
        "{h}"
    );
}

#[test]
fn decoding_wide_values_falls_back_to_all_limbs() {
    // 2^90 at scale 2^25 needs 115 bits: more than the limbs the decoder tries first
    let f = fixture();
    let big = 2f64.powi(90);
    let v = [big, -big, 1.5, -3.25];
    let pt = Plaintext::encode_real(&f.ctx, &v, f.ctx.max_level(), D25).unwrap();
    let ct = Encryptor::new(&f.ctx).encrypt_sk(&pt, &f.sk).unwrap();
    let got = decrypt(&f.ctx, &ct, &f.sk).unwrap().decode(&f.ctx).unwrap();
    assert!((got[0].re / big - 1.0).abs() < 1e-9 && (got[1].re / big + 1.0).abs() < 1e-9);
    // f64 transforms keep about 2^-50 of the largest value: small slots next to 2^90 are
    // accurate to about 2^40
    assert!((got[2].re - 1.5).abs() < big * 2f64.powi(-45));
}

#[test]
fn encrypt_decrypt_precision_at_every_shipped_set() {
    // Fresh encryption at each set's default scale, top level: the error is the encryption
    // noise over the scale.
    for name in params::NAMED_SETS {
        let ctx = Context::named(name).unwrap();
        let sk = SecretKey::generate(&ctx);
        let pk = KeyGenerator::new(&ctx, &sk).public_key();
        let n = ctx.params().slots();
        let v = values(n, 21);
        let scale = ctx.params().default_scale();
        let pt = Plaintext::encode_real(&ctx, &v, ctx.max_level(), scale).unwrap();
        let mut enc = Encryptor::new(&ctx);
        // sk: the noise e is Gaussian in every slot, sd 3.2*sqrt(N/2): bound at 7 sd.
        // pk: v*e + e1*s are products; a slot holds e(zeta)*v(zeta), whose tail is heavier than a
        // Gaussian's, so bound each product by the product of its factors' maxima (4.5 sd each:
        // 3.2*sqrt(N/2) for the Gaussian, sqrt(N/3) for the ternary), for both products.
        let nf = ctx.n() as f64;
        let bound_sk = 7.0 * 3.2 * (nf / 2.0).sqrt() / scale;
        let bound_pk =
            bound_sk + 2.0 * (4.5 * 3.2 * (nf / 2.0).sqrt()) * (4.5 * (nf / 3.0).sqrt()) / scale;
        for (ct, bound) in [
            (enc.encrypt_sk(&pt, &sk).unwrap(), bound_sk),
            (enc.encrypt_pk(&pt, &pk).unwrap(), bound_pk),
        ] {
            let got = decrypt(&ctx, &ct, &sk).unwrap().decode(&ctx).unwrap();
            let err = got
                .iter()
                .zip(&v)
                .map(|(g, w)| (g.re - w).abs())
                .fold(0.0, f64::max);
            assert!(err < bound, "{name}: error {err:.3e} above {bound:.3e}");
        }
    }
}

#[test]
fn small_plaintext_inner_products_match_plaintext_products() {
    let f = fixture();
    let ev = Evaluator::new(&f.ctx);
    let n = f.ctx.params().slots();
    let l = f.ctx.max_level();
    let (a, b, w1, w2) = (values(n, 21), values(n, 22), values(n, 23), values(n, 24));
    let (ca, cb) = (encrypt(f, &a, l, D40), encrypt(f, &b, l, D40));
    let (p1, p2) = (
        SmallPlaintext::encode_real(&f.ctx, &w1, l, D25).unwrap(),
        SmallPlaintext::encode_real(&f.ctx, &w2, l, D25).unwrap(),
    );
    // its limbs are those of the ordinary encoding
    let full = Plaintext::encode_real(&f.ctx, &w1, l, D25).unwrap();
    let mut limb = vec![0u64; f.ctx.n()];
    p1.limb_into(&f.ctx, 1, &mut limb, &mut Vec::new());
    assert_eq!(limb.as_slice(), full.poly().limb(1));
    // a*w1 + b*w2
    let acc = ev
        .dot_small_plain(&[&ca, &cb], &[p1.clone(), p2.clone()])
        .unwrap();
    assert_eq!(acc.scale(), D40 * D25);
    let want: Vec<f64> = (0..n).map(|i| a[i] * w1[i] + b[i] * w2[i]).collect();
    let err = max_err(&decrypt_real(f, &acc), &want);
    assert!(err < 1e-5, "{err}");
    // operands must agree: count, scale, level
    assert!(ev.dot_small_plain(&[&ca], &[]).is_err());
    let other_scale = encrypt(f, &a, l, D25);
    assert!(ev
        .dot_small_plain(&[&ca, &other_scale], &[p1.clone(), p2.clone()])
        .is_err());
    let low = ev.drop_level(&ca, l - 1).unwrap();
    assert!(ev
        .dot_small_plain(&[&low], std::slice::from_ref(&p1))
        .is_err());
    // a scale too large for the coefficient form is an error, not a wrong result
    assert!(SmallPlaintext::encode_real(&f.ctx, &w1, l, 2f64.powi(60)).is_err());
}

#[test]
fn paired_small_plaintexts_equal_single_encodings() {
    let f = fixture();
    let n = f.ctx.params().slots();
    let l = f.ctx.max_level();
    let (w1, w2) = (values(n, 31), values(n / 3, 32));
    let (p1, p2) = SmallPlaintext::encode_real_pair(&f.ctx, &w1, D25, &w2, 4.0 * D25, l).unwrap();
    let q1 = SmallPlaintext::encode_real(&f.ctx, &w1, l, D25).unwrap();
    let q2 = SmallPlaintext::encode_real(&f.ctx, &w2, l, 4.0 * D25).unwrap();
    // the same integers up to the float rounding of ties (coefficients are about 2^17)
    for (p, q) in [(&p1, &q1), (&p2, &q2)] {
        assert_eq!((p.scale(), p.level()), (q.scale(), q.level()));
        let worst = p
            .coeffs()
            .iter()
            .zip(q.coeffs())
            .map(|(a, b)| (a - b).abs())
            .max()
            .unwrap();
        assert!(worst <= 1, "coefficients differ by {worst}");
        assert!(q.coeffs().iter().any(|&c| c.abs() > 1 << 12));
    }
    assert!(SmallPlaintext::encode_real_pair(&f.ctx, &w1, 0.5, &w2, D25, l).is_err());
    assert!(SmallPlaintext::encode_real_pair(&f.ctx, &w1, D25, &w2, 2f64.powi(60), l).is_err());
    assert!(SmallPlaintext::encode_real_pair(&f.ctx, &[f64::NAN], D25, &w2, D25, l).is_err());
}

/// Key switching at the ResNet set on a value at the default scale (2^25), the top level (two
/// digits) and a low one (one digit): rotation and relinearization noise must stay far below the
/// network's tolerance. (Found by the demo: with as many special primes as a digit has, the
/// rotation error at 2^25 was 4.5.)
#[test]
fn key_switching_precision_at_the_resnet_set() {
    let ctx = Context::named("N16_L39").unwrap();
    let sk = SecretKey::generate(&ctx);
    let mut kg = KeyGenerator::new(&ctx, &sk);
    let top = ctx.max_level();
    let mut keys = EvaluationKeys::new(&ctx);
    keys.insert(kg.rotation_key(1, top).unwrap()).unwrap();
    keys.insert(kg.relin_key(top).unwrap()).unwrap();
    // keys made for levels 16-19 have the set's small special primes (11.6 bits above a
    // digit at 18-19)
    for level in [18, 16] {
        keys.insert(kg.rotation_key(1, level).unwrap()).unwrap();
        keys.insert(kg.relin_key(level).unwrap()).unwrap();
    }
    let ev = Evaluator::new(&ctx);
    let n = ctx.params().slots();
    let x = values(n, 31);
    let scale = ctx.params().default_scale();
    for level in [top, 18, 16, 5] {
        let pt = Plaintext::encode_real(&ctx, &x, level, scale).unwrap();
        let ct = Encryptor::new(&ctx).encrypt_sk(&pt, &sk).unwrap();
        let got = decrypt_with(&ctx, &sk, &ev.rotate(&ct, 1, &keys).unwrap());
        let want: Vec<f64> = (0..n).map(|i| x[(i + 1) % n]).collect();
        let err = max_err(&got, &want);
        // ModDown's rounding floor, sqrt(N/18) ~ 60 per coefficient, is ~5e-4 rms in a slot at
        // 2^25 (measured maximum 2.4e-3 over 32768 slots); the network rotates only at >= 2^50
        assert!(err < 1e-2, "rotation at level {level}: {err}");
        let sq = ev.square_relin(&ct, &keys).unwrap();
        let got = decrypt_with(&ctx, &sk, &sq);
        let want: Vec<f64> = x.iter().map(|v| v * v).collect();
        let err = max_err(&got, &want);
        assert!(err < 1e-2, "square at level {level}: {err}");
    }
}

/// Keys made for low levels have their own layout (one digit, a special modulus just above Q_l):
/// they are smaller, agree with a top-level key to within ModDown's rounding, and a hoisted
/// rotation that mixes the two layouts matches separate rotations.
#[test]
fn low_level_keys_have_a_smaller_layout_and_mix_with_top_keys() {
    let ctx = Context::named("N16_L39").unwrap();
    let sk = SecretKey::generate(&ctx);
    let mut kg = KeyGenerator::new(&ctx, &sk);
    let (top, low) = (ctx.max_level(), 6);
    let mut keys = EvaluationKeys::new(&ctx);
    let top_key = kg.rotation_key(1, top).unwrap();
    let low_key = kg.rotation_key(2, low).unwrap();
    assert_eq!((top_key.digits(), low_key.digits()), (2, 1));
    // 7 + 8 limbs against 2 x (21 + 12)
    assert_eq!(low_key.memory_bytes() * 66, top_key.memory_bytes() * 15);
    keys.insert(top_key).unwrap();
    keys.insert(low_key).unwrap();
    keys.insert(kg.relin_key(low).unwrap()).unwrap();
    let ev = Evaluator::new(&ctx);
    let n = ctx.params().slots();
    let x = values(n, 41);
    let scale = ctx.params().default_scale();
    for level in [low, 3, 1] {
        let pt = Plaintext::encode_real(&ctx, &x, level, scale).unwrap();
        let ct = Encryptor::new(&ctx).encrypt_sk(&pt, &sk).unwrap();
        let hoisted = ev.rotate_hoisted(&ct, &[1, 2], &keys).unwrap();
        for (r, h) in [1, 2].into_iter().zip(&hoisted) {
            let want: Vec<f64> = (0..n).map(|i| x[(i + r) % n]).collect();
            let single = decrypt_with(&ctx, &sk, &ev.rotate(&ct, r as i64, &keys).unwrap());
            let err = max_err(&single, &want);
            assert!(err < 1e-2, "rotation {r} at level {level}: {err}");
            assert!(max_err(&decrypt_with(&ctx, &sk, h), &single) < 1e-6);
        }
        let sq = decrypt_with(&ctx, &sk, &ev.square_relin(&ct, &keys).unwrap());
        let want: Vec<f64> = x.iter().map(|v| v * v).collect();
        assert!(max_err(&sq, &want) < 1e-2, "square at level {level}");
    }
}

#[test]
fn in_place_forms_equal_the_allocating_ones() {
    let f = fixture();
    let ev = Evaluator::new(&f.ctx);
    let n = f.ctx.params().slots();
    let l = f.ctx.max_level();
    let a = values(n, 31);
    let ct = encrypt(f, &a, l, D40 * D40);
    // rescale
    let want = ev.rescale(&ct).unwrap();
    let mut got = ct.clone();
    ev.rescale_assign(&mut got).unwrap();
    assert_eq!(got, want);
    assert_eq!(got.level(), l - 1);
    // drop_level
    let want = ev.drop_level(&ct, l - 2).unwrap();
    let mut got = ct.clone();
    ev.drop_level_assign(&mut got, l - 2).unwrap();
    assert_eq!(got, want);
    assert!(
        ev.drop_level_assign(&mut got, l).is_err(),
        "cannot raise a level"
    );
    // add_plain
    let pt = Plaintext::encode_real(&f.ctx, &values(n, 32), l, D40 * D40).unwrap();
    let want = ev.add_plain(&ct, &pt).unwrap();
    let mut got = ct.clone();
    ev.add_plain_assign(&mut got, &pt).unwrap();
    assert_eq!(got.parts(), want.parts());
    // the zero ciphertext decrypts to zero and is neutral
    let z = ev.zero(l, D40).unwrap();
    assert!(max_err(&decrypt_real(f, &z), &vec![0.0; n]) < 1e-9);
    assert!(ev.zero(l + 1, D40).is_err(), "no such level");
}

#[test]
fn invariants_are_checked_at_the_boundary() {
    let f = fixture();
    let l = f.ctx.max_level();
    let mut ct = encrypt(f, &values(8, 33), l, D40);
    // the scale can be pinned to an equal value, never changed
    ct.pin_scale(D40 * (1.0 + 1e-12)).unwrap();
    assert!(matches!(
        ct.pin_scale(D40 * 1.001),
        Err(CkksError::ScaleMismatch(..))
    ));
    // levels above the top are errors, not panics
    assert!(f.ctx.level(l).is_ok());
    assert!(matches!(f.ctx.level(l + 1), Err(CkksError::Level { .. })));
    assert!(wire::ciphertext_size(&f.ctx, l + 1, 1, false).is_err());
    assert!(wire::switching_key_size(&f.ctx, l + 1).is_err());
    // serializing with another parameter set's context is refused
    let other = Context::named("N12_TINY").unwrap();
    assert_eq!(ct.to_bytes(&other), Err(WireError::Fingerprint));
}

/// Keys the server derives (`derive`): from top-level keys for 1 and 32 alone, keys for 2 and 64
/// at level 11 (two digits, special primes q12..q18), 8 at level 6 (eight rotations by 1) and 16 at
/// level 1 (from the derived 8) rotate as accurately as keys a client made, mix with them in a
/// hoisted rotation, and a level with no derived layout or an element the keys do not reach is an
/// error. A copy of the top key for 1 made for level 6 is what ciphertexts at levels 6 and below
/// use; those above still use the top key. A key for 128 at level 15 takes four digits of four
/// primes (special q16..q20): it too rotates like a made one.
#[test]
fn derived_keys_rotate_like_made_ones() {
    let ctx = Context::named("N16_L39").unwrap();
    let sk = SecretKey::generate(&ctx);
    let mut kg = KeyGenerator::new(&ctx, &sk);
    let top = ctx.max_level();
    let mut keys = EvaluationKeys::new(&ctx);
    for r in [1, 32] {
        keys.insert(kg.rotation_key(r, top).unwrap()).unwrap();
    }
    let ev = Evaluator::new(&ctx);
    let g = |r| ctx.galois_element(r);
    for (r, level) in [(128, 15), (2, 11), (64, 11), (8, 6), (16, 1), (1, 6)] {
        keys.derive_galois(&ev, g(r), level).unwrap();
        let key = keys.galois_at(g(r), level).unwrap();
        assert_eq!(key.layout(), ctx.params().derived_layout(level).unwrap());
        assert_eq!(key.level(), level);
    }
    assert_eq!(keys.len(), 8, "the copy for 1 is held beside the top key");
    assert_eq!(keys.galois(g(128)).unwrap().digits(), 4);
    assert_eq!(keys.galois_at(g(1), 3).unwrap().level(), 6);
    assert_eq!(keys.galois_at(g(1), 7).unwrap().level(), top);
    assert_eq!(keys.galois(g(1)).unwrap().level(), top);
    assert_eq!(keys.galois(g(2)).unwrap().digits(), 2);
    assert!(matches!(
        keys.derive_galois(&ev, g(2), top),
        Err(CkksError::NotDerivable { .. })
    ));
    assert!(matches!(
        keys.derive_galois(&ev, ctx.conjugation_element(), 6),
        Err(CkksError::NoDerivation { .. })
    ));
    // the same rotations with keys made at those levels, for comparison
    let mut made = EvaluationKeys::new(&ctx);
    for (r, level) in [(128, 15), (2, 11), (64, 11), (8, 6), (16, 1)] {
        made.insert(kg.rotation_key(r, level).unwrap()).unwrap();
    }
    let n = ctx.params().slots();
    let x = values(n, 43);
    let scale = ctx.params().default_scale();
    for (level, rs) in [
        (15, vec![1, 128]),
        (11, vec![1, 2, 64]),
        (6, vec![8, 2, 1]),
        (1, vec![16, 8, 1]),
    ] {
        let pt = Plaintext::encode_real(&ctx, &x, level, scale).unwrap();
        let ct = Encryptor::new(&ctx).encrypt_sk(&pt, &sk).unwrap();
        let hoisted = ev.rotate_hoisted(&ct, &rs, &keys).unwrap();
        for (&r, h) in rs.iter().zip(&hoisted) {
            let want: Vec<f64> = (0..n).map(|i| x[(i + r as usize) % n]).collect();
            let got = decrypt_with(&ctx, &sk, &ev.rotate(&ct, r, &keys).unwrap());
            let err = max_err(&got, &want);
            assert!(err < 1e-2, "rotation {r} at level {level}: {err}");
            assert!(max_err(&decrypt_with(&ctx, &sk, h), &got) < 1e-6);
            if r != 1 {
                let by_made = decrypt_with(&ctx, &sk, &ev.rotate(&ct, r, &made).unwrap());
                let made_err = max_err(&by_made, &want);
                assert!(
                    err < 2.0 * made_err,
                    "rotation {r} at level {level}: derived {err}, made {made_err}"
                );
            }
        }
    }
}
