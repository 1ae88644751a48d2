//! Negacyclic number-theoretic transforms behind a small trait, so that another backend (an own
//! implementation, a GPU) can sit beside the `tfhe-ntt` one.
//!
//! Convention: `forward` maps coefficients to evaluations at the odd powers of a primitive 2N-th
//! root, in bit-reversed order (slot `i` holds the evaluation at `psi^(2*bitrev(i)+1)`);
//! `inverse` is normalized (includes the factor 1/N). Automorphisms in the NTT domain rely on this
//! order; a test checks it for every prime a parameter set uses.

/// A negacyclic NTT modulo one prime.
pub trait NttBackend: Send + Sync {
    fn forward(&self, a: &mut [u64]);
    /// Normalized inverse: `inverse(forward(a)) == a`.
    fn inverse(&self, a: &mut [u64]);
    /// The inverse without the factor 1/N (`N * inverse`): for callers that fold 1/N into a
    /// constant product they do anyway (basis conversion), sparing a pass over the limb.
    fn inverse_unnormalized(&self, a: &mut [u64]);
    /// `acc = acc + a * b` pointwise modulo the prime (inputs reduced): the gadget inner product
    /// of key switching, where the backend's vectorized modular product pays off.
    fn mul_accumulate(&self, acc: &mut [u64], a: &[u64], b: &[u64]);
}

/// `tfhe-ntt`'s prime-modulus plan (AVX-512 IFMA for primes below 2^50, AVX-512/AVX2 otherwise).
pub struct TfheNtt {
    plan: tfhe_ntt::prime64::Plan,
}

impl TfheNtt {
    /// None if `q` is not a prime with a primitive 2n-th root of unity.
    pub fn new(n: usize, q: u64) -> Option<Self> {
        tfhe_ntt::prime64::Plan::try_new(n, q).map(|plan| Self { plan })
    }
}

impl NttBackend for TfheNtt {
    #[inline]
    fn forward(&self, a: &mut [u64]) {
        self.plan.fwd(a);
    }

    #[inline]
    fn inverse(&self, a: &mut [u64]) {
        self.plan.inv(a);
        self.plan.normalize(a);
    }

    #[inline]
    fn inverse_unnormalized(&self, a: &mut [u64]) {
        self.plan.inv(a);
    }

    #[inline]
    fn mul_accumulate(&self, acc: &mut [u64], a: &[u64], b: &[u64]) {
        self.plan.mul_accumulate(acc, a, b);
    }
}

/// The forward NTT of polynomials in `X^(2^t)` at 1/2^t of the size: `f(X) = g(X^(2^t))`
/// evaluated at a primitive 2N-th root's odd power is `g` at a primitive 2N/2^t-th root's, so the
/// N evaluations of `f` are the N/2^t of `g`, each repeated 2^t times. Such polynomials are what
/// slot vectors repeating with period N/2^(t+1) encode to: the replicated layouts of a network's
/// early layers. Where each of `g`'s values goes is found once, by matching the two plans'
/// transforms of `X^(2^t)` (the plans' roots are their own, so the order is not known a priori).
pub struct SubringNtt {
    small: TfheNtt,
    /// `forward_n(f)[k] = forward_small(g)[spread[k]]`.
    spread: Vec<u32>,
}

impl SubringNtt {
    /// None if `t` is 0, leaves fewer than 16 coefficients, or `q` admits no plan.
    pub fn new(n: usize, q: u64, t: u32, big: &dyn NttBackend) -> Option<Self> {
        let m = n.checked_shr(t)?;
        if t == 0 || m < 16 {
            return None;
        }
        let small = TfheNtt::new(m, q)?;
        let mut y = vec![0u64; m];
        y[1] = 1;
        small.forward(&mut y);
        let index: std::collections::HashMap<u64, u32> =
            y.iter().enumerate().map(|(j, &v)| (v, j as u32)).collect();
        let mut x = vec![0u64; n];
        x[1 << t] = 1;
        big.forward(&mut x);
        let spread = x
            .iter()
            .map(|v| index.get(v).copied())
            .collect::<Option<Vec<u32>>>()?;
        Some(Self { small, spread })
    }

    /// Coefficients in the subring's polynomial size (N/2^t).
    pub fn size(&self) -> usize {
        self.small.plan.ntt_size()
    }

    /// `out` = the size-N NTT of `g(X^(2^t))`, given `g`'s coefficients in `g` (transformed in
    /// place).
    pub fn forward_spread(&self, g: &mut [u64], out: &mut [u64]) {
        self.small.forward(g);
        for (o, &j) in out.iter_mut().zip(&self.spread) {
            *o = g[j as usize];
        }
    }
}

/// The permutation that applies the automorphism `X -> X^g` (g odd) to a polynomial in NTT form:
/// `out[i] = in[perm[i]]`. Slot `i` holds `a(psi^e)` with `e = 2*bitrev(i)+1`, and
/// `a(X^g)(psi^e) = a(psi^(g*e))`.
pub fn automorphism_permutation(n: usize, g: u64) -> Vec<u32> {
    assert!(n.is_power_of_two() && g % 2 == 1);
    let log_n = n.trailing_zeros();
    let mask = 2 * n as u64 - 1;
    (0..n)
        .map(|i| {
            let e = 2 * bit_reverse(i as u64, log_n) + 1;
            let ge = (e * (g & mask)) & mask;
            bit_reverse((ge - 1) / 2, log_n) as u32
        })
        .collect()
}

#[inline]
fn bit_reverse(x: u64, bits: u32) -> u64 {
    if bits == 0 {
        0
    } else {
        x.reverse_bits() >> (64 - bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arith::{ntt_primes, Modulus};

    /// `X -> X^g` on a polynomial in coefficient form (signed permutation, negacyclic wrap).
    fn automorphism_coeff(a: &[u64], g: u64, q: u64, out: &mut [u64]) {
        let n = a.len();
        let two_n = 2 * n as u64;
        for (i, &c) in a.iter().enumerate() {
            let j = (i as u64 * g) % two_n;
            if j < n as u64 {
                out[j as usize] = c;
            } else {
                out[(j - n as u64) as usize] = if c == 0 { 0 } else { q - c };
            }
        }
    }

    fn negacyclic_mul(a: &[u64], b: &[u64], m: &Modulus) -> Vec<u64> {
        let n = a.len();
        let mut out = vec![0u64; n];
        for i in 0..n {
            for j in 0..n {
                let p = m.mul(a[i], b[j]);
                if i + j < n {
                    out[i + j] = m.add(out[i + j], p);
                } else {
                    out[i + j - n] = m.sub(out[i + j - n], p);
                }
            }
        }
        out
    }

    #[test]
    fn roundtrip_and_convolution() {
        let n = 64;
        for bits in [40, 50, 60] {
            let q = ntt_primes(bits, 2 * n as u64, 1, &[]).unwrap()[0];
            let m = Modulus::new(q);
            let ntt = TfheNtt::new(n, q).unwrap();
            let a: Vec<u64> = (0..n as u64).map(|i| (i * 7919 + 3) % q).collect();
            let b: Vec<u64> = (0..n as u64).map(|i| (i * i * 31 + 11) % q).collect();
            let want = negacyclic_mul(&a, &b, &m);
            let (mut fa, mut fb) = (a.clone(), b.clone());
            ntt.forward(&mut fa);
            ntt.forward(&mut fb);
            let mut prod: Vec<u64> = fa.iter().zip(&fb).map(|(&x, &y)| m.mul(x, y)).collect();
            ntt.inverse(&mut prod);
            assert_eq!(prod, want);
            ntt.inverse(&mut fa);
            assert_eq!(fa, a);
        }
    }

    #[test]
    fn mul_accumulate_is_fully_reduced() {
        let n = 256;
        for bits in [40, 50, 60] {
            let q = ntt_primes(bits, 2 * n as u64, 1, &[]).unwrap()[0];
            let m = Modulus::new(q);
            let ntt = TfheNtt::new(n, q).unwrap();
            let a: Vec<u64> = (0..n as u64).map(|i| q - 1 - i * 3).collect();
            let b: Vec<u64> = (0..n as u64).map(|i| q - 2 - i * 5).collect();
            let mut acc: Vec<u64> = (0..n as u64).map(|i| q - 1 - i).collect();
            let want: Vec<u64> = acc
                .iter()
                .zip(&a)
                .zip(&b)
                .map(|((&c, &x), &y)| m.add(c, m.mul(x, y)))
                .collect();
            ntt.mul_accumulate(&mut acc, &a, &b);
            assert_eq!(acc, want, "bits {bits}");
        }
    }

    /// A polynomial in X^(2^t) transformed at size N/2^t equals its size-N transform.
    #[test]
    fn subring_transform_matches_the_full_one() {
        let n = 256;
        for bits in [40, 50, 60] {
            let q = ntt_primes(bits, 2 * n as u64, 1, &[]).unwrap()[0];
            let big = TfheNtt::new(n, q).unwrap();
            for t in 1..=4 {
                let sub = SubringNtt::new(n, q, t, &big).unwrap();
                assert_eq!(sub.size(), n >> t);
                let g: Vec<u64> = (0..n as u64 >> t).map(|i| (i * 7919 + 5) % q).collect();
                let mut f = vec![0u64; n];
                for (j, &c) in g.iter().enumerate() {
                    f[j << t] = c;
                }
                big.forward(&mut f);
                let (mut g, mut out) = (g, vec![0u64; n]);
                sub.forward_spread(&mut g, &mut out);
                assert_eq!(out, f, "t = {t}, bits = {bits}");
            }
            assert!(SubringNtt::new(n, q, 0, &big).is_none());
            assert!(
                SubringNtt::new(n, q, 5, &big).is_none(),
                "fewer than 16 coefficients"
            );
        }
    }

    #[test]
    fn automorphism_in_ntt_domain_matches_coefficients() {
        let n = 256;
        for bits in [40, 50, 60] {
            let q = ntt_primes(bits, 2 * n as u64, 1, &[]).unwrap()[0];
            let ntt = TfheNtt::new(n, q).unwrap();
            let a: Vec<u64> = (0..n as u64).map(|i| (i * 104729 + 17) % q).collect();
            for g in [5u64, 25, 2 * n as u64 - 1, 3] {
                let mut want = vec![0; n];
                automorphism_coeff(&a, g, q, &mut want);
                ntt.forward(&mut want);
                let mut fa = a.clone();
                ntt.forward(&mut fa);
                let perm = automorphism_permutation(n, g);
                let got: Vec<u64> = perm.iter().map(|&j| fa[j as usize]).collect();
                assert_eq!(got, want, "g = {g}, bits = {bits}");
            }
        }
    }
}
