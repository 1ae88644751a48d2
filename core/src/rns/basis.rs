//! An ordered list of NTT-friendly primes (an RNS basis) and the ring operations on polynomials
//! over it: limb-wise addition, multiplication, NTTs, automorphism permutations, centered lifting,
//! and exact division with rounding by the last prime (the ring half of a CKKS rescale).

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::arith::Modulus;
use crate::ntt::{NttBackend, TfheNtt};
use crate::par;

use super::RnsPoly;

/// An ordered list of primes with their NTT plans; limb `i` of a polynomial over this basis holds
/// residues modulo `modulus(i)`.
#[derive(Clone)]
pub struct RnsBasis {
    pub(super) n: usize,
    pub(super) moduli: Vec<Modulus>,
    pub(super) ntts: Vec<Arc<dyn NttBackend>>,
}

impl std::fmt::Debug for RnsBasis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RnsBasis")
            .field("n", &self.n)
            .field(
                "moduli",
                &self.moduli.iter().map(|m| m.value()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl RnsBasis {
    /// Builds NTT plans for every prime; None if one of them admits no negacyclic NTT of size n.
    pub fn new(n: usize, primes: &[u64]) -> Option<Self> {
        let mut ntts: Vec<Arc<dyn NttBackend>> = Vec::with_capacity(primes.len());
        for &q in primes {
            ntts.push(Arc::new(TfheNtt::new(n, q)?));
        }
        Some(Self {
            n,
            moduli: primes.iter().map(|&q| Modulus::new(q)).collect(),
            ntts,
        })
    }

    /// The basis of the limbs `range` of this one (plans are shared).
    pub fn slice(&self, range: std::ops::Range<usize>) -> Self {
        Self {
            n: self.n,
            moduli: self.moduli[range.clone()].to_vec(),
            ntts: self.ntts[range].to_vec(),
        }
    }

    /// This basis followed by `other`.
    pub fn concat(&self, other: &Self) -> Self {
        assert_eq!(self.n, other.n);
        let mut out = self.clone();
        out.moduli.extend_from_slice(&other.moduli);
        out.ntts.extend(other.ntts.iter().cloned());
        out
    }

    #[inline]
    pub fn n(&self) -> usize {
        self.n
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.moduli.len()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.moduli.is_empty()
    }

    #[inline]
    pub fn modulus(&self, i: usize) -> &Modulus {
        &self.moduli[i]
    }

    #[inline]
    pub fn moduli(&self) -> &[Modulus] {
        &self.moduli
    }

    #[inline]
    pub fn ntt(&self, i: usize) -> &dyn NttBackend {
        &*self.ntts[i]
    }

    pub fn zero(&self) -> RnsPoly {
        RnsPoly::zero(self.n, self.len())
    }

    fn check(&self, p: &RnsPoly) {
        debug_assert_eq!(p.n, self.n);
        debug_assert_eq!(p.num_limbs(), self.len(), "polynomial and basis disagree");
    }

    pub fn forward(&self, p: &mut RnsPoly) {
        self.check(p);
        par::for_each_limb(&mut p.data, self.n, |i, limb| self.ntts[i].forward(limb));
    }

    pub fn inverse(&self, p: &mut RnsPoly) {
        self.check(p);
        par::for_each_limb(&mut p.data, self.n, |i, limb| self.ntts[i].inverse(limb));
    }

    /// `N` times the inverse NTT (see [`NttBackend::inverse_unnormalized`]).
    pub fn inverse_unnormalized(&self, p: &mut RnsPoly) {
        self.check(p);
        par::for_each_limb(&mut p.data, self.n, |i, limb| {
            self.ntts[i].inverse_unnormalized(limb)
        });
    }

    pub fn add_assign(&self, a: &mut RnsPoly, b: &RnsPoly) {
        self.check(a);
        self.check(b);
        par::for_each_limb(&mut a.data, self.n, |i, limb| {
            let m = self.moduli[i];
            for (x, &y) in limb.iter_mut().zip(b.limb(i)) {
                *x = m.add(*x, y);
            }
        });
    }

    pub fn sub_assign(&self, a: &mut RnsPoly, b: &RnsPoly) {
        self.check(a);
        self.check(b);
        par::for_each_limb(&mut a.data, self.n, |i, limb| {
            let m = self.moduli[i];
            for (x, &y) in limb.iter_mut().zip(b.limb(i)) {
                *x = m.sub(*x, y);
            }
        });
    }

    pub fn neg_assign(&self, a: &mut RnsPoly) {
        self.check(a);
        par::for_each_limb(&mut a.data, self.n, |i, limb| {
            let m = self.moduli[i];
            for x in limb.iter_mut() {
                *x = m.neg(*x);
            }
        });
    }

    /// Pointwise product (NTT form): `a *= b`.
    pub fn mul_assign(&self, a: &mut RnsPoly, b: &RnsPoly) {
        *a = self.mul(a, b);
    }

    /// Pointwise product (NTT form) into a new polynomial, through the backend's vectorized
    /// modular multiply-accumulate.
    pub fn mul(&self, a: &RnsPoly, b: &RnsPoly) -> RnsPoly {
        self.check(a);
        self.check(b);
        RnsPoly::from_limbs(self.n, self.len(), |i, limb| {
            self.ntts[i].mul_accumulate(limb, a.limb(i), b.limb(i));
        })
    }

    /// `acc += a * b` pointwise (NTT form).
    pub fn mul_add_assign(&self, acc: &mut RnsPoly, a: &RnsPoly, b: &RnsPoly) {
        self.check(acc);
        self.check(a);
        self.check(b);
        par::for_each_limb(&mut acc.data, self.n, |i, limb| {
            self.ntts[i].mul_accumulate(limb, a.limb(i), b.limb(i));
        });
    }

    /// Multiplies limb `i` by the residue `scalars[i]` (a constant given in RNS form).
    pub fn mul_scalar_assign(&self, a: &mut RnsPoly, scalars: &[u64]) {
        self.check(a);
        par::for_each_limb(&mut a.data, self.n, |i, limb| {
            let m = self.moduli[i];
            let (w, ws) = (scalars[i], m.shoup(scalars[i]));
            for x in limb.iter_mut() {
                *x = m.mul_shoup(*x, w, ws);
            }
        });
    }

    /// Adds the constant polynomial with residues `scalars` (in NTT form a constant is the same in
    /// every slot, so this is valid in both representations only for the NTT form).
    pub fn add_scalar_ntt_assign(&self, a: &mut RnsPoly, scalars: &[u64]) {
        self.check(a);
        par::for_each_limb(&mut a.data, self.n, |i, limb| {
            let m = self.moduli[i];
            for x in limb.iter_mut() {
                *x = m.add(*x, scalars[i]);
            }
        });
    }

    /// Applies the NTT-domain permutation of an automorphism (see `ntt::automorphism_permutation`).
    pub fn permute(&self, a: &RnsPoly, perm: &[u32]) -> RnsPoly {
        self.check(a);
        RnsPoly::from_fresh_limbs(self.n, self.len(), |i, fresh| fresh.gather(a.limb(i), perm))
    }

    /// The residues of the integer `x` (given by its residues modulo `self`) are already here;
    /// this maps a signed small integer to every limb.
    pub fn from_i64(&self, x: i64) -> Vec<u64> {
        self.moduli.iter().map(|m| m.from_i64(x)).collect()
    }

    /// Exact CRT reconstruction of a coefficient-form polynomial to centered values in (-Q/2, Q/2],
    /// as f64 (Garner's mixed radix: exact digits, one rounding at the end).
    pub fn to_centered_f64(&self, p: &RnsPoly) -> Zeroizing<Vec<f64>> {
        self.check(p);
        self.garner(p, self.len(), None).expect("no check limb")
    }

    /// Reconstruction from the first `k` limbs only, verified against limb `k`: None if any
    /// coefficient's centered value does not fit below q0..q(k-1) (then more limbs are needed).
    /// Decoding needs only as many limbs as the message is wide, not the whole chain.
    pub fn to_centered_f64_checked(&self, p: &RnsPoly, k: usize) -> Option<Zeroizing<Vec<f64>>> {
        assert!(k < self.len() && p.num_limbs() > k);
        self.garner(p, k, Some(k))
    }

    /// The exact centered coefficients of a decryption give away the secret key with the
    /// ciphertext (`c1*s = m - c0`), so they and the digits are held in wiped buffers.
    fn garner(&self, p: &RnsPoly, k: usize, check: Option<usize>) -> Option<Zeroizing<Vec<f64>>> {
        let m = &self.moduli;
        // inv[i][j] = q_j^-1 mod q_i for j < i
        let inv: Vec<Vec<u64>> = (0..k)
            .map(|i| {
                (0..i)
                    .map(|j| m[i].inv(m[i].reduce(m[j].value())).expect("distinct"))
                    .collect()
            })
            .collect();
        // mixed-radix digits of floor(Q/2) (Q = q0..q(k-1)), to decide the sign
        let half_digits = {
            let mut digits = vec![0u64; k];
            let mut rem = 0u128;
            for i in (0..k).rev() {
                let cur = rem * m[i].value() as u128 + (m[i].value() - 1) as u128;
                digits[i] = (cur / 2) as u64;
                rem = cur % 2;
            }
            digits
        };
        let check_q = check.map(|c| {
            let mc = m[c];
            let q_mod = m[..k]
                .iter()
                .fold(1u64, |acc, qi| mc.mul(acc, mc.reduce(qi.value())));
            (mc, q_mod, p.limb(c))
        });
        let mut v = Zeroizing::new(vec![0u64; k]);
        let mut out = Zeroizing::new(Vec::with_capacity(self.n));
        for c in 0..self.n {
            for i in 0..k {
                let mut x = p.limb(i)[c];
                for j in 0..i {
                    x = m[i].mul(m[i].sub(x, m[i].reduce(v[j])), inv[i][j]);
                }
                v[i] = x;
            }
            let negative = (0..k)
                .rev()
                .find(|&i| v[i] != half_digits[i])
                .is_some_and(|i| v[i] > half_digits[i]);
            if let Some((mc, q_mod, limb)) = &check_q {
                // x mod q_check from the digits, minus Q if the centered value is negative
                let mut r = 0u64;
                for i in (0..k).rev() {
                    r = mc.add(mc.mul(r, mc.reduce(m[i].value())), mc.reduce(v[i]));
                }
                if negative {
                    r = mc.sub(r, *q_mod);
                }
                if r != limb[c] {
                    return None;
                }
            }
            if negative {
                // Q - x in mixed radix: digit-wise complement with borrow
                let mut borrow = 0u64;
                for i in 0..k {
                    let sub = v[i] + borrow;
                    if sub == 0 {
                        v[i] = 0;
                        borrow = 0;
                    } else {
                        v[i] = m[i].value() - sub;
                        borrow = 1;
                    }
                }
            }
            let mut val = 0f64;
            for i in (0..k).rev() {
                val = val * m[i].value() as f64 + v[i] as f64;
            }
            out.push(if negative { -val } else { val });
        }
        Some(out)
    }

    /// Rounds `p / q_last` and drops the last limb (`p` in NTT form, result in NTT form over the
    /// basis without its last prime). The rescaling of CKKS.
    pub fn divide_round_by_last(&self, p: &mut RnsPoly) {
        self.check(p);
        let l = self.len() - 1;
        let ql = self.moduli[l];
        let half = ql.value() >> 1;
        let mut last = p.limb(l).to_vec();
        self.ntts[l].inverse(&mut last);
        for x in last.iter_mut() {
            *x = ql.add(*x, half);
        }
        p.truncate_limbs(l);
        par::for_each_limb(&mut p.data, self.n, |i, limb| {
            let m = self.moduli[i];
            let inv = m.inv(ql.value() % m.value()).expect("distinct primes");
            let inv_s = m.shoup(inv);
            let half_i = m.reduce(half);
            let mut t: Vec<u64> = last.iter().map(|&x| m.sub(m.reduce(x), half_i)).collect();
            self.ntts[i].forward(&mut t);
            for (x, &y) in limb.iter_mut().zip(&t) {
                *x = m.mul_shoup(m.sub(*x, y), inv, inv_s);
            }
        });
    }
}
