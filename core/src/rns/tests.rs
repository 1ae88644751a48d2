//! Tests of the RNS layer: conversions exact up to the stated error, ModDown and rescale rounding.

use super::*;
use crate::arith::ntt_primes;

fn basis(n: usize, bits: u32, count: usize, exclude: &[u64]) -> RnsBasis {
    let primes = ntt_primes(bits, 2 * n as u64, count, exclude).unwrap();
    RnsBasis::new(n, &primes).unwrap()
}

/// Residues of small signed coefficients.
fn poly_from_i64(b: &RnsBasis, coeffs: &[i64]) -> RnsPoly {
    let mut p = b.zero();
    for i in 0..b.len() {
        let m = *b.modulus(i);
        for (x, &c) in p.limb_mut(i).iter_mut().zip(coeffs) {
            *x = m.from_i64(c);
        }
    }
    p
}

#[test]
fn basis_conversion_is_exact_up_to_multiple_of_b() {
    let n = 64;
    let from = basis(n, 50, 3, &[]);
    let excl: Vec<u64> = from.moduli().iter().map(|m| m.value()).collect();
    let to = basis(n, 49, 2, &excl);
    let coeffs: Vec<i64> = (0..n as i64).map(|i| (i - 32) * 1_000_000_007).collect();
    let x = poly_from_i64(&from, &coeffs);
    let conv = BasisConverter::new(&from, &to);
    let y = conv.convert(&x);
    // y = x + u*B mod t with 0 <= u < 3: check that (y - x) mod t is a multiple of B mod t.
    for j in 0..to.len() {
        let t = to.modulus(j);
        let b_mod_t = from
            .moduli()
            .iter()
            .fold(1, |a, m| t.mul(a, t.reduce(m.value())));
        for (k, (&yk, &c)) in y.limb(j).iter().zip(&coeffs).enumerate() {
            let diff = t.sub(yk, t.from_i64(c));
            assert!((0..4).any(|u| t.mul(u, b_mod_t) == diff), "coefficient {k}");
        }
    }
}

#[test]
fn divide_round_by_last_rounds() {
    let n = 32;
    let b = basis(n, 45, 3, &[]);
    let ql = b.modulus(2).value() as i128;
    // x = k*ql + r: result must be round(x/ql).
    let coeffs: Vec<i128> = (0..n as i128)
        .map(|i| (i - 16) * ql * 1000 + (i * 7919 - 100_000) % ql)
        .collect();
    let mut p = b.zero();
    for i in 0..3 {
        let m = b.modulus(i).value() as i128;
        for (x, &c) in p.limb_mut(i).iter_mut().zip(&coeffs) {
            *x = c.rem_euclid(m) as u64;
        }
    }
    b.forward(&mut p);
    b.divide_round_by_last(&mut p);
    let b2 = b.slice(0..2);
    b2.inverse(&mut p);
    for (k, &c) in coeffs.iter().enumerate() {
        let want = (2 * c + ql).div_euclid(2 * ql); // round(c / q_last), exactly
        for i in 0..2 {
            let m = b2.modulus(i).value() as i128;
            assert_eq!(p.limb(i)[k] as i128, want.rem_euclid(m));
        }
    }
}

#[test]
fn mod_down_divides_by_p() {
    let n = 32;
    let q = basis(n, 50, 2, &[]);
    let excl: Vec<u64> = q.moduli().iter().map(|m| m.value()).collect();
    let p = basis(n, 48, 2, &excl);
    let qp = q.concat(&p);
    let pv: i128 = p.moduli().iter().map(|m| m.value() as i128).product();
    let coeffs: Vec<i128> = (0..n as i128)
        .map(|i| (i - 16) * pv * 3 + (i * 1_234_567 - 5_000_000))
        .collect();
    let mut x = qp.zero();
    for i in 0..qp.len() {
        let m = qp.modulus(i).value() as i128;
        for (v, &c) in x.limb_mut(i).iter_mut().zip(&coeffs) {
            *v = c.rem_euclid(m) as u64;
        }
    }
    qp.forward(&mut x);
    let md = ModDown::new(&q, &p);
    let mut y = md.apply(&x);
    q.inverse(&mut y);
    for (k, &c) in coeffs.iter().enumerate() {
        let want = (2 * c + pv).div_euclid(2 * pv); // round(c / P), exactly
        for i in 0..q.len() {
            let m = q.modulus(i);
            let got = m.center(y.limb(i)[k]) as i128;
            assert_eq!(got, want, "coefficient {k}");
        }
    }
}

#[test]
fn fresh_limbs_are_written_whole() {
    let n = 64;
    let src: Vec<u64> = (0..n as u64).map(|k| k * 7 + 1).collect();
    let perm: Vec<u32> = (0..n as u32).rev().collect();
    let p = RnsPoly::from_fresh_limbs(n, 3, |i, fresh| match i {
        0 => fresh.copy_of(&src),
        1 => fresh.gather(&src, &perm),
        _ => fresh.zeroed(),
    });
    assert_eq!(p.limb(0), &src[..]);
    assert!(p.limb(1).iter().rev().eq(src.iter()));
    assert!(p.limb(2).iter().all(|&x| x == 0));
}

#[test]
#[should_panic]
fn a_fresh_limb_must_be_the_one_returned() {
    // an empty slice is the only `&mut [u64]` a closure can make out of nothing: refused
    let _ = RnsPoly::from_fresh_limbs(8, 1, |_, _fresh| &mut []);
}
