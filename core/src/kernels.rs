//! Inner loops of the RNS layer, vectorized where the CPU allows (AVX-512 IFMA: 52-bit
//! multiply-add on 8 lanes) with portable scalar versions beside them (wasm32, other CPUs, and
//! primes too wide for 52-bit arithmetic). Results are identical either way: tests compare them.

use std::mem::MaybeUninit;

use crate::arith::Modulus;

/// Widest target prime the IFMA row kernel accepts (residues in [0, 2t) must fit in 52 bits).
pub const IFMA_MAX_TARGET: u64 = 1 << 50;
/// Widest source residue the IFMA kernels accept.
pub const IFMA_MAX_SOURCE: u64 = 1 << 52;

/// Whether this CPU runs the IFMA kernels (checked once).
pub fn has_ifma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512ifma")
                && is_x86_feature_detected!("avx512dq")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One output row of a basis conversion: `out[k] = sum_i src[i][k] * c[i] mod t`.
/// `c_shoup52[i] = floor(c[i] * 2^52 / t)` is used by the IFMA path.
pub fn conversion_row(
    src: &[&[u64]],
    c: &[u64],
    c_shoup52: &[u64],
    t: &Modulus,
    ifma: bool,
    out: &mut [u64],
) {
    conversion_row_uninit(src, c, c_shoup52, t, ifma, as_written(out));
}

/// Initialized memory seen as memory to write. Sound for the kernels here, which only ever
/// write reduced residues into their outputs (never an uninitialized value).
fn as_written(out: &mut [u64]) -> &mut [MaybeUninit<u64>] {
    // SAFETY: same layout; every value written through it is initialized.
    unsafe { &mut *(out as *mut [u64] as *mut [MaybeUninit<u64>]) }
}

/// [`conversion_row`] into fresh memory: writes every element of `out`.
pub fn conversion_row_uninit(
    src: &[&[u64]],
    c: &[u64],
    c_shoup52: &[u64],
    t: &Modulus,
    ifma: bool,
    out: &mut [MaybeUninit<u64>],
) {
    let (n, out) = (out.len(), out.as_mut_ptr().cast::<u64>());
    assert!(src.iter().all(|s| s.len() >= n));
    #[cfg(target_arch = "x86_64")]
    if ifma && src.len() <= 32 {
        // SAFETY: `ifma` is only true when `has_ifma()` held and every source residue and the
        // target are within the bounds above (checked by the caller at construction).
        unsafe { conversion_row_ifma(src, c, c_shoup52, t.value(), out, n) };
        return;
    }
    let _ = (c_shoup52, ifma);
    // SAFETY: `out` is valid for `n` writes and the sources are long enough (asserted).
    unsafe { conversion_row_scalar_raw(src, c, t, out, n) }
}

/// Portable version: u128 accumulation in registers, one Barrett reduction per output (with
/// intermediate reductions when many wide terms could overflow).
pub fn conversion_row_scalar(src: &[&[u64]], c: &[u64], t: &Modulus, out: &mut [u64]) {
    assert!(src.iter().all(|s| s.len() >= out.len()));
    // SAFETY: `out` is valid for `out.len()` writes and the sources are long enough.
    unsafe { conversion_row_scalar_raw(src, c, t, out.as_mut_ptr(), out.len()) }
}

/// # Safety
/// `out` must be valid for `n` writes and every source must hold at least `n` residues.
unsafe fn conversion_row_scalar_raw(
    src: &[&[u64]],
    c: &[u64],
    t: &Modulus,
    out: *mut u64,
    n: usize,
) {
    let max_src = src
        .iter()
        .flat_map(|s| s.iter().max())
        .max()
        .copied()
        .unwrap_or(0) as u128
        + 1;
    let per = (u128::MAX / (max_src * t.value() as u128)).max(1) as usize;
    for k in 0..n {
        let mut acc: u128 = 0;
        for (i, (s, &ci)) in src.iter().zip(c).enumerate() {
            acc += s[k] as u128 * ci as u128;
            if (i + 1) % per == 0 {
                acc = t.reduce_u128(acc) as u128;
            }
        }
        // SAFETY: k < n.
        unsafe { out.add(k).write(t.reduce_u128(acc)) };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512ifma,avx512dq")]
unsafe fn conversion_row_ifma(
    src: &[&[u64]],
    c: &[u64],
    c_shoup52: &[u64],
    t: u64,
    out: *mut u64,
    n: usize,
) {
    use std::arch::x86_64::*;
    let mask52 = _mm512_set1_epi64(((1u64 << 52) - 1) as i64);
    let tv = _mm512_set1_epi64(t as i64);
    let inv_t = _mm512_set1_pd(1.0 / t as f64);
    let zero = _mm512_setzero_si512();
    let cs: Vec<(__m512i, __m512i)> = c
        .iter()
        .zip(c_shoup52)
        .map(|(&a, &b)| (_mm512_set1_epi64(a as i64), _mm512_set1_epi64(b as i64)))
        .collect();
    let mut k = 0;
    while k + 8 <= n {
        let mut acc = zero;
        for (s, &(cv, csv)) in src.iter().zip(&cs) {
            let y = _mm512_loadu_si512(s.as_ptr().add(k) as *const _);
            // Shoup at 52 bits: q ~ floor(y*c/t), r = y*c - q*t in [0, 2t), computed mod 2^52
            let q = _mm512_madd52hi_epu64(zero, y, csv);
            let lo = _mm512_madd52lo_epu64(zero, y, cv);
            let qt = _mm512_madd52lo_epu64(zero, q, tv);
            let r = _mm512_and_si512(_mm512_sub_epi64(lo, qt), mask52);
            acc = _mm512_add_epi64(acc, r);
        }
        // acc < 32 * 2t < 2^57: the quotient from f64 is off by at most one either way
        let qf = _mm512_roundscale_pd::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(
            _mm512_mul_pd(_mm512_cvtepu64_pd(acc), inv_t),
        );
        let q = _mm512_cvttpd_epu64(qf);
        let mut r = _mm512_sub_epi64(acc, _mm512_mullo_epi64(q, tv));
        // r in (-t, 2t) as signed: fix both ways
        let neg = _mm512_cmplt_epi64_mask(r, zero);
        r = _mm512_mask_add_epi64(r, neg, r, tv);
        let ge = _mm512_cmpge_epu64_mask(r, tv);
        r = _mm512_mask_sub_epi64(r, ge, r, tv);
        _mm512_storeu_si512(out.add(k) as *mut _, r);
        k += 8;
    }
    if k < n {
        let tail: Vec<&[u64]> = src.iter().map(|s| &s[k..]).collect();
        conversion_row_scalar_raw(&tail, c, &Modulus::new(t), out.add(k), n - k);
    }
}

/// `out[k] = (a[k] - out[k]) * w mod q` in place, `w < q`, inputs reduced (the ModDown combine).
pub fn rsub_mul_const_in_place(a: &[u64], out: &mut [u64], w: u64, w_shoup52: u64, q: &Modulus) {
    assert!(a.len() >= out.len());
    #[cfg(target_arch = "x86_64")]
    if has_ifma() && q.value() < IFMA_MAX_TARGET {
        let (n, dst) = (out.len(), out.as_mut_ptr());
        // SAFETY: IFMA is present, q < 2^50 (residues and Shoup products fit in 52 bits), the
        // lengths are checked, and each lane of `out` is read before it is written.
        unsafe {
            sub_mul_const_ifma(
                a.as_ptr(),
                Some(dst as *const u64),
                w,
                w_shoup52,
                0,
                q.value(),
                dst,
                n,
            )
        };
        return;
    }
    let _ = w_shoup52;
    let ws = q.shoup(w);
    for (o, &x) in out.iter_mut().zip(a) {
        *o = q.mul_shoup(q.sub(x, *o), w, ws);
    }
}

/// `out[k] = a[k] * w mod q`, `w < q`, `a` reduced. `w_shoup52 = floor(w * 2^52 / q)` serves the
/// IFMA path, which needs `q < 2^50`.
pub fn mul_const(a: &[u64], w: u64, w_shoup52: u64, q: &Modulus, out: &mut [u64]) {
    mul_const_add(a, w, w_shoup52, 0, q, out);
}

/// `out[k] = (a[k] * w + c) mod q`, `w, c < q`: a constant product and offset in one pass.
pub fn mul_const_add(a: &[u64], w: u64, w_shoup52: u64, c: u64, q: &Modulus, out: &mut [u64]) {
    mul_const_add_uninit(a, w, w_shoup52, c, q, as_written(out));
}

/// [`mul_const_add`] into fresh memory: writes every element of `out`.
pub fn mul_const_add_uninit(
    a: &[u64],
    w: u64,
    w_shoup52: u64,
    c: u64,
    q: &Modulus,
    out: &mut [MaybeUninit<u64>],
) {
    assert!(a.len() >= out.len() && c < q.value());
    let (n, dst) = (out.len(), out.as_mut_ptr().cast::<u64>());
    #[cfg(target_arch = "x86_64")]
    if has_ifma() && q.value() < IFMA_MAX_TARGET {
        // SAFETY: IFMA is present, q < 2^50, `a` holds at least `n` residues (asserted) and the
        // kernel only writes `out`.
        unsafe { sub_mul_const_ifma(a.as_ptr(), None, w, w_shoup52, c, q.value(), dst, n) };
        return;
    }
    let _ = w_shoup52;
    let ws = q.shoup(w);
    for (k, &x) in a[..n].iter().enumerate() {
        // SAFETY: k < n, the length of `out`.
        unsafe { dst.add(k).write(q.add(q.mul_shoup(x, w, ws), c)) };
    }
}

/// `x[k] = (x[k] * w + c) mod q` in place, `w, c < q`.
pub fn mul_const_add_in_place(x: &mut [u64], w: u64, w_shoup52: u64, c: u64, q: &Modulus) {
    assert!(c < q.value());
    #[cfg(target_arch = "x86_64")]
    if has_ifma() && q.value() < IFMA_MAX_TARGET {
        let (n, dst) = (x.len(), x.as_mut_ptr());
        // SAFETY: as above; each lane of `x` is read before it is written.
        unsafe { sub_mul_const_ifma(dst as *const u64, None, w, w_shoup52, c, q.value(), dst, n) };
        return;
    }
    let _ = w_shoup52;
    let ws = q.shoup(w);
    for v in x.iter_mut() {
        *v = q.add(q.mul_shoup(*v, w, ws), c);
    }
}

/// Raw-pointer kernel so that `b` may be `out` itself (in-place reverse subtraction):
/// `out = ((a - b) * w + c) mod q`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512ifma,avx512dq")]
#[allow(clippy::too_many_arguments)]
unsafe fn sub_mul_const_ifma(
    a: *const u64,
    b: Option<*const u64>,
    w: u64,
    w_shoup52: u64,
    c: u64,
    q: u64,
    out: *mut u64,
    n: usize,
) {
    use std::arch::x86_64::*;
    let mask52 = _mm512_set1_epi64(((1u64 << 52) - 1) as i64);
    let qv = _mm512_set1_epi64(q as i64);
    let wv = _mm512_set1_epi64(w as i64);
    let wsv = _mm512_set1_epi64(w_shoup52 as i64);
    let cv = _mm512_set1_epi64(c as i64);
    let zero = _mm512_setzero_si512();
    let mut k = 0;
    while k + 8 <= n {
        let mut x = _mm512_loadu_si512(a.add(k) as *const _);
        if let Some(b) = b {
            let y = _mm512_loadu_si512(b.add(k) as *const _);
            // x - y mod q: add q where the difference went negative
            let d = _mm512_sub_epi64(x, y);
            let lt = _mm512_cmplt_epu64_mask(x, y);
            x = _mm512_mask_add_epi64(d, lt, d, qv);
        }
        let quot = _mm512_madd52hi_epu64(zero, x, wsv);
        let lo = _mm512_madd52lo_epu64(zero, x, wv);
        let qt = _mm512_madd52lo_epu64(zero, quot, qv);
        let mut r = _mm512_and_si512(_mm512_sub_epi64(lo, qt), mask52);
        let ge = _mm512_cmpge_epu64_mask(r, qv);
        r = _mm512_mask_sub_epi64(r, ge, r, qv);
        r = _mm512_add_epi64(r, cv);
        let ge = _mm512_cmpge_epu64_mask(r, qv);
        r = _mm512_mask_sub_epi64(r, ge, r, qv);
        _mm512_storeu_si512(out.add(k) as *mut _, r);
        k += 8;
    }
    let m = Modulus::new(q);
    let ws = m.shoup(w);
    for i in k..n {
        let x = match b {
            Some(b) => m.sub(*a.add(i), *b.add(i)),
            None => *a.add(i),
        };
        *out.add(i) = m.add(m.mul_shoup(x, w, ws), c);
    }
}

/// 52-bit Shoup constant `floor(w * 2^52 / q)`.
pub fn shoup52(w: u64, q: u64) -> u64 {
    (((w as u128) << 52) / q as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arith::ntt_primes;

    #[test]
    fn constant_products_match_scalar() {
        for bits in [40u32, 50, 60] {
            let q = Modulus::new(ntt_primes(bits, 1 << 12, 1, &[]).unwrap()[0]);
            let n = 1003;
            let a: Vec<u64> = (0..n as u64)
                .map(|k| (k * 2654435761 + q.value() / 3) % q.value())
                .collect();
            let b: Vec<u64> = (0..n as u64)
                .map(|k| (k * 40503 + q.value() - 7) % q.value())
                .collect();
            let w = q.value() - 12345;
            let mut got = vec![0; n];
            mul_const(&a, w, shoup52(w, q.value()), &q, &mut got);
            for k in 0..n {
                assert_eq!(got[k], q.mul(a[k], w));
            }
            let c = q.value() - 99;
            mul_const_add(&a, w, shoup52(w, q.value()), c, &q, &mut got);
            for k in 0..n {
                assert_eq!(got[k], q.add(q.mul(a[k], w), c));
            }
            // into fresh memory: every element written, the same values
            let mut fresh = vec![MaybeUninit::<u64>::uninit(); n];
            mul_const_add_uninit(&a, w, shoup52(w, q.value()), c, &q, &mut fresh);
            // SAFETY: the kernel writes every element (what this checks).
            let fresh: Vec<u64> = fresh.iter().map(|x| unsafe { x.assume_init() }).collect();
            assert_eq!(fresh, got);
            let mut inplace = b.clone();
            rsub_mul_const_in_place(&a, &mut inplace, w, shoup52(w, q.value()), &q);
            for k in 0..n {
                assert_eq!(inplace[k], q.mul(q.sub(a[k], b[k]), w));
            }
        }
    }

    #[test]
    fn ifma_row_matches_scalar() {
        let n = 1000; // not a multiple of 8: exercises the tail
        let srcs = ntt_primes(50, 1 << 12, 7, &[]).unwrap();
        let t = Modulus::new(ntt_primes(40, 1 << 12, 1, &[]).unwrap()[0]);
        let data: Vec<Vec<u64>> = srcs
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                (0..n as u64)
                    .map(|k| (k * 2654435761 + i as u64 * 97 + (q - 1) * (k % 3) / 2) % q)
                    .collect()
            })
            .collect();
        let src: Vec<&[u64]> = data.iter().map(|v| v.as_slice()).collect();
        let c: Vec<u64> = (0..7)
            .map(|i| (t.value() - 1 - i * 12345) % t.value())
            .collect();
        let cs: Vec<u64> = c
            .iter()
            .map(|&x| (((x as u128) << 52) / t.value() as u128) as u64)
            .collect();
        let mut want = vec![0; n];
        conversion_row_scalar(&src, &c, &t, &mut want);
        for (k, &w) in want.iter().enumerate() {
            let exact = src
                .iter()
                .zip(&c)
                .map(|(s, &ci)| s[k] as u128 * ci as u128)
                .sum::<u128>()
                % t.value() as u128;
            assert_eq!(w as u128, exact);
        }
        let mut got = vec![0; n];
        conversion_row(&src, &c, &cs, &t, has_ifma(), &mut got);
        assert_eq!(got, want);
        for ifma in [false, has_ifma()] {
            let mut fresh = vec![MaybeUninit::<u64>::uninit(); n];
            conversion_row_uninit(&src, &c, &cs, &t, ifma, &mut fresh);
            // SAFETY: the kernel writes every element (what this checks).
            let fresh: Vec<u64> = fresh.iter().map(|x| unsafe { x.assume_init() }).collect();
            assert_eq!(fresh, want);
        }
    }
}
