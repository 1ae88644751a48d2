//! Word-sized modular arithmetic: Barrett reduction for general products, Shoup multiplication for
//! products with a fixed operand, and NTT-friendly prime generation.
//!
//! Every modulus is below 2^62 so that sums of two residues and lazy values below 4q fit in a u64.

/// A prime modulus below 2^62 with its Barrett constant `floor(2^128 / q)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modulus {
    value: u64,
    ratio_lo: u64,
    ratio_hi: u64,
    bits: u32,
}

/// The largest modulus width supported (two residues and a lazy 4q bound must fit in a u64).
pub const MAX_MODULUS_BITS: u32 = 62;

impl Modulus {
    /// Panics if `q < 2` or `q >= 2^62`; parameter construction checks this before calling.
    pub fn new(q: u64) -> Self {
        assert!(
            (2..1u64 << MAX_MODULUS_BITS).contains(&q),
            "modulus out of range"
        );
        // floor((2^128 - 1) / q): equals floor(2^128 / q) unless q is a power of two, where it is
        // one less; Barrett stays correct either way as the final correction subtracts q twice.
        let ratio = u128::MAX / q as u128;
        Self {
            value: q,
            ratio_lo: ratio as u64,
            ratio_hi: (ratio >> 64) as u64,
            bits: 64 - q.leading_zeros(),
        }
    }

    #[inline(always)]
    pub fn value(&self) -> u64 {
        self.value
    }

    /// Number of bits of q (ceil(log2(q+1))): the width of a residue on the wire.
    #[inline(always)]
    pub fn bits(&self) -> u32 {
        self.bits
    }

    #[inline(always)]
    pub fn add(&self, a: u64, b: u64) -> u64 {
        let s = a + b;
        s.min(s.wrapping_sub(self.value))
    }

    #[inline(always)]
    pub fn sub(&self, a: u64, b: u64) -> u64 {
        let d = a.wrapping_sub(b);
        d.min(d.wrapping_add(self.value))
    }

    #[inline(always)]
    pub fn neg(&self, a: u64) -> u64 {
        if a == 0 {
            0
        } else {
            self.value - a
        }
    }

    /// Reduces any 128-bit value modulo q.
    #[inline(always)]
    pub fn reduce_u128(&self, x: u128) -> u64 {
        let x_lo = x as u64;
        let x_hi = (x >> 64) as u64;
        // floor(x * ratio / 2^128), up to an error of 2 (the low partial product is dropped).
        let lo_hi = ((x_lo as u128 * self.ratio_lo as u128) >> 64) as u64;
        let mid1 = x_lo as u128 * self.ratio_hi as u128;
        let mid2 = x_hi as u128 * self.ratio_lo as u128;
        let mid = (mid1 as u64 as u128) + (mid2 as u64 as u128) + lo_hi as u128;
        let carry = (mid >> 64) as u64;
        let quot = x_hi
            .wrapping_mul(self.ratio_hi)
            .wrapping_add((mid1 >> 64) as u64)
            .wrapping_add((mid2 >> 64) as u64)
            .wrapping_add(carry);
        let mut r = x_lo.wrapping_sub(quot.wrapping_mul(self.value));
        r = r.min(r.wrapping_sub(self.value));
        r.min(r.wrapping_sub(self.value))
    }

    #[inline(always)]
    pub fn reduce(&self, a: u64) -> u64 {
        self.reduce_u128(a as u128)
    }

    #[inline(always)]
    pub fn mul(&self, a: u64, b: u64) -> u64 {
        self.reduce_u128(a as u128 * b as u128)
    }

    /// `floor(w * 2^64 / q)` for Shoup multiplication by the fixed operand `w < q`.
    #[inline]
    pub fn shoup(&self, w: u64) -> u64 {
        (((w as u128) << 64) / self.value as u128) as u64
    }

    /// `a * w mod q` with `w_shoup = self.shoup(w)`; `a` may be any u64.
    #[inline(always)]
    pub fn mul_shoup(&self, a: u64, w: u64, w_shoup: u64) -> u64 {
        let r = self.mul_shoup_lazy(a, w, w_shoup);
        r.min(r.wrapping_sub(self.value))
    }

    /// `a * w mod q` in [0, 2q).
    #[inline(always)]
    pub fn mul_shoup_lazy(&self, a: u64, w: u64, w_shoup: u64) -> u64 {
        let quot = ((a as u128 * w_shoup as u128) >> 64) as u64;
        a.wrapping_mul(w)
            .wrapping_sub(quot.wrapping_mul(self.value))
    }

    pub fn pow(&self, mut base: u64, mut exp: u64) -> u64 {
        let mut acc = 1 % self.value;
        base %= self.value;
        while exp > 0 {
            if exp & 1 == 1 {
                acc = self.mul(acc, base);
            }
            base = self.mul(base, base);
            exp >>= 1;
        }
        acc
    }

    /// Inverse of `a` modulo the prime q (None for a = 0 mod q).
    pub fn inv(&self, a: u64) -> Option<u64> {
        let a = a % self.value;
        (a != 0).then(|| self.pow(a, self.value - 2))
    }

    /// The residue of a signed integer.
    #[inline(always)]
    pub fn from_i64(&self, a: i64) -> u64 {
        let r = self.reduce(a.unsigned_abs());
        if a < 0 {
            self.neg(r)
        } else {
            r
        }
    }

    /// The residue of `round(x)` for any finite f64, exactly (values beyond 2^63 are split into
    /// mantissa and power of two, so large scales such as Delta^3 encode without loss).
    pub fn from_f64(&self, x: f64) -> u64 {
        let r = x.round();
        if r.abs() < 9.2e18 {
            return self.from_i64(r as i64);
        }
        let bits = r.abs().to_bits();
        let exp = ((bits >> 52) & 0x7ff) as i64 - 1075;
        let mant = (bits & ((1u64 << 52) - 1)) | (1u64 << 52);
        let v = self.mul(self.reduce(mant), self.pow(2, exp as u64));
        if r < 0.0 {
            self.neg(v)
        } else {
            v
        }
    }

    /// Centered representative of a residue, as i64 (|result| <= q/2).
    #[inline(always)]
    pub fn center(&self, a: u64) -> i64 {
        if a > self.value >> 1 {
            a as i64 - self.value as i64
        } else {
            a as i64
        }
    }
}

/// Deterministic Miller-Rabin for 64-bit integers.
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    for p in [2u64, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] {
        if n.is_multiple_of(p) {
            return n == p;
        }
    }
    let mut d = n - 1;
    let mut s = 0;
    while d.is_multiple_of(2) {
        d /= 2;
        s += 1;
    }
    let mulmod = |a: u64, b: u64| ((a as u128 * b as u128) % n as u128) as u64;
    let powmod = |mut b: u64, mut e: u64| {
        let mut acc = 1u64;
        while e > 0 {
            if e & 1 == 1 {
                acc = mulmod(acc, b);
            }
            b = mulmod(b, b);
            e >>= 1;
        }
        acc
    };
    'witness: for a in [2u64, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] {
        let mut x = powmod(a, d);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = mulmod(x, x);
            if x == n - 1 {
                continue 'witness;
            }
        }
        return false;
    }
    true
}

/// `count` primes `q = 1 mod two_n` of exactly `bits` bits, searched downwards from `2^bits` (so they
/// sit just below a power of two and scales stay close to powers of two), skipping any in `exclude`.
/// Returns None if the bit size cannot hold `count` such primes.
pub fn ntt_primes(bits: u32, two_n: u64, count: usize, exclude: &[u64]) -> Option<Vec<u64>> {
    if !(2..=MAX_MODULUS_BITS).contains(&bits) || two_n == 0 {
        return None;
    }
    let top = 1u64 << bits;
    let lowest = 1u64 << (bits - 1);
    let mut q = (top - 1) / two_n * two_n + 1;
    if q >= top {
        q = q.checked_sub(two_n)?;
    }
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        if q < lowest {
            return None;
        }
        if is_prime(q) && !exclude.contains(&q) && !out.contains(&q) {
            out.push(q);
        }
        q = q.checked_sub(two_n)?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const QS: [u64; 4] = [
        (1 << 61) - 1,
        1125899906826241, // 50-bit, 1 mod 2^17
        65537,
        1099511480321, // 40-bit
    ];

    proptest! {
        #[test]
        fn barrett_matches_u128(a in any::<u64>(), b in any::<u64>(), i in 0usize..4) {
            let m = Modulus::new(QS[i]);
            let (a, b) = (a % QS[i], b % QS[i]);
            prop_assert_eq!(m.mul(a, b), ((a as u128 * b as u128) % QS[i] as u128) as u64);
        }

        #[test]
        fn reduce_any_u128(x in any::<u128>(), i in 0usize..4) {
            let m = Modulus::new(QS[i]);
            prop_assert_eq!(m.reduce_u128(x), (x % QS[i] as u128) as u64);
        }

        #[test]
        fn shoup_matches(a in any::<u64>(), w in any::<u64>(), i in 0usize..4) {
            let m = Modulus::new(QS[i]);
            let w = w % QS[i];
            prop_assert_eq!(m.mul_shoup(a, w, m.shoup(w)), ((a as u128 * w as u128) % QS[i] as u128) as u64);
        }

        #[test]
        fn from_f64_exact(x in -1e30f64..1e30, i in 0usize..4) {
            let m = Modulus::new(QS[i]);
            let r = x.round();
            // reference through i128 (exact for |r| < 2^127)
            let want = (r as i128).rem_euclid(QS[i] as i128) as u64;
            prop_assert_eq!(m.from_f64(x), want);
        }
    }

    #[test]
    fn ntt_primes_are_ntt_friendly() {
        let ps = ntt_primes(50, 1 << 17, 5, &[]).unwrap();
        for &p in &ps {
            assert!(is_prime(p) && p % (1 << 17) == 1 && (1 << 49..1 << 50).contains(&p));
        }
        let mut sorted = ps.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), 5);
        assert!(ntt_primes(20, 1 << 17, 100, &[]).is_none());
    }

    #[test]
    fn inverse_and_center() {
        let m = Modulus::new(QS[1]);
        for a in [1u64, 2, 12345, QS[1] - 1] {
            assert_eq!(m.mul(a, m.inv(a).unwrap()), 1);
        }
        assert_eq!(m.inv(0), None);
        assert_eq!(m.center(QS[1] - 1), -1);
        assert_eq!(m.from_i64(-5), QS[1] - 5);
    }
}
