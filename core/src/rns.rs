//! Polynomials of Z_Q[X]/(X^N + 1) in residue-number-system form, stored limb-major (one contiguous
//! `[u64; N]` per prime), and the basis operations key switching and rescaling are built from:
//! fast basis conversion, and exact division (with rounding) by the last prime or by a whole basis.
//!
//! This module knows rings, not CKKS: scales, levels and keys live above it.

use std::mem::MaybeUninit;
use std::sync::Arc;

use crate::arith::Modulus;
use crate::kernels;
use crate::ntt::{NttBackend, TfheNtt};
use crate::par;

/// An ordered list of primes with their NTT plans; limb `i` of a polynomial over this basis holds
/// residues modulo `modulus(i)`.
#[derive(Clone)]
pub struct RnsBasis {
    n: usize,
    moduli: Vec<Modulus>,
    ntts: Vec<Arc<dyn NttBackend>>,
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
        RnsPoly::from_limbs(self.n, self.len(), |i, limb| {
            let src = a.limb(i);
            for (o, &j) in limb.iter_mut().zip(perm) {
                *o = src[j as usize];
            }
        })
    }

    /// The residues of the integer `x` (given by its residues modulo `self`) are already here;
    /// this maps a signed small integer to every limb.
    pub fn from_i64(&self, x: i64) -> Vec<u64> {
        self.moduli.iter().map(|m| m.from_i64(x)).collect()
    }

    /// Exact CRT reconstruction of a coefficient-form polynomial to centered values in (-Q/2, Q/2],
    /// as f64 (Garner's mixed radix: exact digits, one rounding at the end).
    pub fn to_centered_f64(&self, p: &RnsPoly) -> Vec<f64> {
        self.check(p);
        self.garner(p, self.len(), None).expect("no check limb")
    }

    /// Reconstruction from the first `k` limbs only, verified against limb `k`: None if any
    /// coefficient's centered value does not fit below q0..q(k-1) (then more limbs are needed).
    /// Decoding needs only as many limbs as the message is wide, not the whole chain.
    pub fn to_centered_f64_checked(&self, p: &RnsPoly, k: usize) -> Option<Vec<f64>> {
        assert!(k < self.len() && p.num_limbs() > k);
        self.garner(p, k, Some(k))
    }

    fn garner(&self, p: &RnsPoly, k: usize, check: Option<usize>) -> Option<Vec<f64>> {
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
        let mut v = vec![0u64; k];
        let mut out = Vec::with_capacity(self.n);
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

/// A polynomial in RNS form: `num_limbs` contiguous limbs of `n` residues each. Whether it holds
/// coefficients or NTT values, and over which basis, is the owner's bookkeeping.
#[derive(Clone, PartialEq, Eq)]
pub struct RnsPoly {
    n: usize,
    data: Vec<u64>,
}

impl std::fmt::Debug for RnsPoly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RnsPoly(n={}, limbs={})", self.n, self.num_limbs())
    }
}

/// Zeroes a limb of fresh memory and hands it out initialized.
fn zeroed(limb: &mut [MaybeUninit<u64>]) -> &mut [u64] {
    for x in limb.iter_mut() {
        x.write(0);
    }
    // SAFETY: every element was just written, and MaybeUninit<u64> has the layout of u64.
    unsafe { &mut *(limb as *mut [MaybeUninit<u64>] as *mut [u64]) }
}

impl RnsPoly {
    pub fn zero(n: usize, limbs: usize) -> Self {
        Self {
            n,
            data: vec![0; n * limbs],
        }
    }

    /// `limbs` limbs computed by `f(i, limb)` in parallel, each limb zeroed inside its own job
    /// first. `zero` followed by a parallel loop clears the whole buffer on one thread (a
    /// `calloc` of up to 20 MB per key-switching product), which showed as 5-10% of an
    /// encrypted ResNet's profile and held back the second thread; here the clearing is spread
    /// over the threads and done just before the limb is used, while it is in cache.
    pub fn from_limbs<F>(n: usize, limbs: usize, f: F) -> Self
    where
        F: Fn(usize, &mut [u64]) + Sync + Send,
    {
        let len = n * limbs;
        let mut data: Vec<u64> = Vec::with_capacity(len);
        par::for_each_limb(&mut data.spare_capacity_mut()[..len], n, |i, limb| {
            f(i, zeroed(limb))
        });
        // SAFETY: the jobs above initialized all `len` elements (every limb, zeroed first).
        unsafe { data.set_len(len) };
        Self { n, data }
    }

    /// Two polynomials of `limbs` limbs computed limb by limb by `f(i, limb_a, limb_b)`, in
    /// parallel, as in [`RnsPoly::from_limbs`].
    pub fn pair_from_limbs<F>(n: usize, limbs: usize, f: F) -> (Self, Self)
    where
        F: Fn(usize, &mut [u64], &mut [u64]) + Sync + Send,
    {
        let len = n * limbs;
        let mut a: Vec<u64> = Vec::with_capacity(len);
        let mut b: Vec<u64> = Vec::with_capacity(len);
        par::for_each_limb_pair(
            &mut a.spare_capacity_mut()[..len],
            &mut b.spare_capacity_mut()[..len],
            n,
            |i, x, y| f(i, zeroed(x), zeroed(y)),
        );
        // SAFETY: the jobs above initialized all `len` elements of both (zeroed first).
        unsafe {
            a.set_len(len);
            b.set_len(len);
        }
        (Self { n, data: a }, Self { n, data: b })
    }

    #[inline]
    pub fn n(&self) -> usize {
        self.n
    }

    #[inline]
    pub fn num_limbs(&self) -> usize {
        self.data.len() / self.n
    }

    #[inline]
    pub fn limb(&self, i: usize) -> &[u64] {
        &self.data[i * self.n..(i + 1) * self.n]
    }

    #[inline]
    pub fn limb_mut(&mut self, i: usize) -> &mut [u64] {
        &mut self.data[i * self.n..(i + 1) * self.n]
    }

    #[inline]
    pub fn data(&self) -> &[u64] {
        &self.data
    }

    #[inline]
    pub fn data_mut(&mut self) -> &mut [u64] {
        &mut self.data
    }

    /// Keeps the first `limbs` limbs.
    pub fn truncate_limbs(&mut self, limbs: usize) {
        self.data.truncate(limbs * self.n);
    }

    /// Copy of the limbs `range`.
    pub fn slice_limbs(&self, range: std::ops::Range<usize>) -> Self {
        Self {
            n: self.n,
            data: self.data[range.start * self.n..range.end * self.n].to_vec(),
        }
    }

    /// Appends the limbs of `other`.
    pub fn extend_limbs(&mut self, other: &RnsPoly) {
        assert_eq!(self.n, other.n);
        self.data.extend_from_slice(&other.data);
    }
}

impl zeroize::Zeroize for RnsPoly {
    fn zeroize(&mut self) {
        self.data.zeroize();
    }
}

/// How a conversion's input arrives: as is, or as `N` times the coefficients (an unnormalized
/// inverse NTT, whose 1/N the conversion folds into its first product), optionally with a
/// per-limb constant to add to every coefficient first.
#[derive(Clone, Copy, Default)]
pub struct ConvInput<'a> {
    pub unnormalized: bool,
    pub offset: Option<&'a [u64]>,
}

/// Fast (approximate) basis conversion from basis B to basis T on polynomials in coefficient
/// form: computes `sum_i [x_i * (B/b_i)^-1]_{b_i} * (B/b_i) mod t`, which equals `x + u*B` for a
/// small `0 <= u < |B|`. Hybrid key switching and ModDown tolerate that `u*B` term.
pub struct BasisConverter {
    from: RnsBasis,
    to: RnsBasis,
    /// `(B/b_i)^-1 mod b_i`, and the same times `N^-1` (for unnormalized input).
    inv_punctured: Vec<u64>,
    inv_punctured_n: Vec<u64>,
    /// `1 / b_i`, for the overflow count of the exact conversion.
    inv_from_f64: Vec<f64>,
    /// Which sources enter split in two (too wide for 52-bit products).
    split: Vec<bool>,
    /// Per target row: the constants of every (split) source term, their 52-bit Shoup
    /// constants, and whether the IFMA kernel may run the row.
    row_consts: Vec<Vec<u64>>,
    shoup52: Vec<Vec<u64>>,
    /// The same with the overflow term of the exact conversion appended.
    row_consts_exact: Vec<Vec<u64>>,
    shoup52_exact: Vec<Vec<u64>>,
    row_ifma: Vec<bool>,
}

/// Low bits of a split source term.
const SPLIT_BITS: u32 = 26;

impl BasisConverter {
    pub fn new(from: &RnsBasis, to: &RnsBasis) -> Self {
        let inv_punctured = (0..from.len())
            .map(|i| {
                let m = from.modulus(i);
                let mut prod = 1u64;
                for (j, mj) in from.moduli().iter().enumerate() {
                    if j != i {
                        prod = m.mul(prod, m.reduce(mj.value()));
                    }
                }
                m.inv(prod).expect("distinct primes")
            })
            .collect::<Vec<u64>>();
        let inv_punctured_n = inv_punctured
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let m = from.modulus(i);
                m.mul(w, m.inv(m.reduce(from.n() as u64)).expect("N < b_i"))
            })
            .collect();
        // (B/b_i) mod t_j, row j
        let punctured_mod_to: Vec<Vec<u64>> = to
            .moduli()
            .iter()
            .map(|t| {
                (0..from.len())
                    .map(|i| {
                        let mut prod = 1u64;
                        for (j, mj) in from.moduli().iter().enumerate() {
                            if j != i {
                                prod = t.mul(prod, t.reduce(mj.value()));
                            }
                        }
                        prod
                    })
                    .collect()
            })
            .collect();
        // Sources wider than the IFMA kernel takes enter as two terms, y mod 2^26 and y >> 26,
        // with constants c and c * 2^26 mod t.
        let split: Vec<bool> = from
            .moduli()
            .iter()
            .map(|m| m.value() >= kernels::IFMA_MAX_SOURCE)
            .collect();
        let row_consts: Vec<Vec<u64>> = to
            .moduli()
            .iter()
            .zip(&punctured_mod_to)
            .map(|(t, row): (&Modulus, &Vec<u64>)| {
                let two26 = t.reduce(1 << SPLIT_BITS);
                row.iter()
                    .zip(&split)
                    .flat_map(|(&c, &sp)| {
                        if sp {
                            vec![c, t.mul(c, two26)]
                        } else {
                            vec![c]
                        }
                    })
                    .collect()
            })
            .collect();
        let row_ifma = to
            .moduli()
            .iter()
            .map(|t| kernels::has_ifma() && t.value() < kernels::IFMA_MAX_TARGET)
            .collect();
        let shoup52 = to
            .moduli()
            .iter()
            .zip(&row_consts)
            .map(|(t, row): (&Modulus, &Vec<u64>)| {
                row.iter()
                    .map(|&c| (((c as u128) << 52) / t.value() as u128) as u64)
                    .collect()
            })
            .collect();
        // Exact conversion: one more term per row, the overflow count times -B mod t.
        let row_consts_exact: Vec<Vec<u64>> = to
            .moduli()
            .iter()
            .zip(&row_consts)
            .map(|(t, row): (&Modulus, &Vec<u64>)| {
                let b = from
                    .moduli()
                    .iter()
                    .fold(1u64, |acc, m| t.mul(acc, t.reduce(m.value())));
                let mut r = row.clone();
                r.push(t.neg(b));
                r
            })
            .collect();
        let shoup_of = |rows: &Vec<Vec<u64>>| -> Vec<Vec<u64>> {
            to.moduli()
                .iter()
                .zip(rows)
                .map(|(t, row)| {
                    row.iter()
                        .map(|&c| (((c as u128) << 52) / t.value() as u128) as u64)
                        .collect()
                })
                .collect()
        };
        let shoup52_exact = shoup_of(&row_consts_exact);
        Self {
            split,
            row_consts,
            row_consts_exact,
            shoup52_exact,
            shoup52,
            row_ifma,
            inv_from_f64: from
                .moduli()
                .iter()
                .map(|m| 1.0 / m.value() as f64)
                .collect(),
            from: from.clone(),
            to: to.clone(),
            inv_punctured,
            inv_punctured_n,
        }
    }

    pub fn from(&self) -> &RnsBasis {
        &self.from
    }

    pub fn to(&self) -> &RnsBasis {
        &self.to
    }

    /// `input` over B in coefficient form; returns the conversion over T in coefficient form
    /// (approximate: `x + u*B` with `0 <= u < |B|`).
    pub fn convert(&self, input: &RnsPoly) -> RnsPoly {
        let mut out = self.to.zero();
        let n = self.to.n();
        self.convert_into(
            input,
            ConvInput::default(),
            false,
            out.data.chunks_mut(n).collect(),
            |_, _| {},
        );
        out
    }

    /// Writes target row j into `outs[j]` (coefficient form) and then calls `post(j, row)` on it
    /// while it is still in cache (callers put the NTT or the ModDown combine there). Writing in
    /// place spares the intermediate polynomials of the key-switching hot path.
    ///
    /// `exact`: for `x in [0, B)`, also subtract the overflow count `u = floor(sum_i y_i / b_i)`
    /// (recovered in floating point, entering the kernel as one more term). Where the result is
    /// divided by B afterwards (ModDown), the approximate `u` would leave a bias of about |B|/2 in
    /// every coefficient, which decryption multiplies by the secret key into structured error of
    /// order N*|B|: at a 2^25 scale that costs several bits.
    pub fn convert_into<F>(
        &self,
        input: &RnsPoly,
        how: ConvInput,
        exact: bool,
        mut outs: Vec<&mut [u64]>,
        post: F,
    ) where
        F: Fn(usize, &mut [u64]) + Sync + Send,
    {
        let n = self.from.n();
        assert_eq!(input.num_limbs(), self.from.len());
        assert_eq!(outs.len(), self.to.len());
        if let Some(h) = how.offset {
            assert_eq!(h.len(), self.from.len());
        }
        let mut y = RnsPoly::from_limbs(n, self.from.len(), |i, limb| {
            let (w, c) = self.source_consts(i, how);
            let m = self.from.modulus(i);
            kernels::mul_const_add(input.limb(i), w, kernels::shoup52(w, m.value()), c, m, limb);
        });
        // The exact conversion's overflow count enters as one more term, with constant -B mod t.
        let overflow: Vec<u64> = if exact {
            // in parallel chunks: on the two-thread relinearization path this loop was serial
            const CHUNK: usize = 4096;
            let mut u = vec![0u64; n];
            par::for_each_limb(&mut u, CHUNK.min(n), |c, out| {
                let start = c * CHUNK.min(n);
                // limb by limb, so that the loops vectorize; the sum is >= 0, so truncation
                // is the floor
                let mut acc = vec![0f64; out.len()];
                for i in 0..self.from.len() {
                    let inv = self.inv_from_f64[i];
                    let src = &y.limb(i)[start..start + out.len()];
                    for (a, &v) in acc.iter_mut().zip(src) {
                        *a += v as f64 * inv;
                    }
                }
                for (o, a) in out.iter_mut().zip(&acc) {
                    *o = *a as u64;
                }
            });
            u
        } else {
            Vec::new()
        };
        let highs: Vec<Vec<u64>> = (0..self.from.len())
            .filter(|&i| self.split[i])
            .map(|i| self.split_term(y.limb_mut(i)))
            .collect();
        let mut src: Vec<&[u64]> =
            Vec::with_capacity(self.row_consts.first().map_or(0, Vec::len) + 1);
        let mut next_high = highs.iter();
        for i in 0..self.from.len() {
            src.push(y.limb(i));
            if self.split[i] {
                src.push(next_high.next().expect("one high part per split source"));
            }
        }
        if exact {
            src.push(&overflow);
        }
        par::for_each_mut(&mut outs, |j, limb| {
            self.row_from_terms(&src, exact, j, limb);
            post(j, limb);
        });
    }

    /// `(w, c)` of source `i`'s term `y_i = (x_i * s + h_i) * inv_i = x_i * w + c`, where
    /// `inv_i = (B/b_i)^-1 mod b_i` and `s` is 1 or 1/N.
    fn source_consts(&self, i: usize, how: ConvInput) -> (u64, u64) {
        let m = self.from.modulus(i);
        let w = if how.unnormalized {
            self.inv_punctured_n[i]
        } else {
            self.inv_punctured[i]
        };
        let c = how.offset.map_or(0, |h| m.mul(h[i], self.inv_punctured[i]));
        (w, c)
    }

    /// Whether source `i` enters the rows as two terms (its low and high bits).
    pub fn is_split(&self, i: usize) -> bool {
        self.split[i]
    }

    /// Source `i`'s term, in place over its coefficient-form limb. Callers that prepare the
    /// terms themselves (in one parallel pass with other work) split the wide ones with
    /// [`BasisConverter::split_term`] and then call [`BasisConverter::row_from_terms`] per row.
    pub fn source_term_in_place(&self, i: usize, how: ConvInput, limb: &mut [u64]) {
        let (w, c) = self.source_consts(i, how);
        let m = self.from.modulus(i);
        kernels::mul_const_add_in_place(limb, w, kernels::shoup52(w, m.value()), c, m);
    }

    /// Splits the term of a split source: returns its high bits (`y >> 26`) and keeps the low
    /// ones in `term`.
    pub fn split_term(&self, term: &mut [u64]) -> Vec<u64> {
        term.iter_mut()
            .map(|v| {
                let hi = *v >> SPLIT_BITS;
                *v &= (1 << SPLIT_BITS) - 1;
                hi
            })
            .collect()
    }

    /// Target row `j` (coefficient form) from the source terms in order: each source's term, a
    /// split source's high part right after its low part, and the overflow count last if
    /// `exact`.
    pub fn row_from_terms(&self, terms: &[&[u64]], exact: bool, j: usize, out: &mut [u64]) {
        let (consts, shoup) = if exact {
            (&self.row_consts_exact[j], &self.shoup52_exact[j])
        } else {
            (&self.row_consts[j], &self.shoup52[j])
        };
        assert_eq!(terms.len(), consts.len());
        let t = self.to.modulus(j);
        kernels::conversion_row(terms, consts, shoup, t, self.row_ifma[j], out);
    }
}

/// Division with rounding by the product P of a trailing sub-basis: maps a polynomial over
/// `Q ++ P` (NTT form) to `round(x / P)` over Q (NTT form). ModDown of hybrid key switching.
pub struct ModDown {
    /// P -> Q conversion.
    conv: BasisConverter,
    /// `P^-1 mod q_i` with Shoup constants.
    p_inv: Vec<(u64, u64)>,
    /// `floor(P/2) mod p_j` and `mod q_i`: the rounding offset.
    half_p: Vec<u64>,
    half_q: Vec<u64>,
}

impl ModDown {
    pub fn new(q: &RnsBasis, p: &RnsBasis) -> Self {
        let p_inv = q
            .moduli()
            .iter()
            .map(|m| {
                let prod = p
                    .moduli()
                    .iter()
                    .fold(1u64, |acc, pj| m.mul(acc, m.reduce(pj.value())));
                let inv = m.inv(prod).expect("distinct primes");
                (inv, m.shoup(inv))
            })
            .collect();
        // floor(P/2) = (P-1)/2 for odd P; its residue mod p_j is (p_j... ) computed as (P - 1) * 2^-1.
        let half_mod = |m: &Modulus| {
            let prod = p
                .moduli()
                .iter()
                .fold(1u64, |acc, pj| m.mul(acc, m.reduce(pj.value())));
            m.mul(m.sub(prod, 1), m.inv(2).expect("odd modulus"))
        };
        Self {
            conv: BasisConverter::new(p, q),
            p_inv,
            half_p: p.moduli().iter().map(half_mod).collect(),
            half_q: q.moduli().iter().map(half_mod).collect(),
        }
    }

    /// `x` holds `|Q|` limbs then `|P|` limbs, NTT form; returns round(x/P) over Q, NTT form.
    ///
    /// With `h = floor(P/2)` and `t = [x + h]_P - h` (the centered residue of x mod P, per
    /// coefficient, so the offset is applied in coefficient form), `(x - t) / P` is exact.
    pub fn apply(&self, x: &RnsPoly) -> RnsPoly {
        let q = self.conv.to();
        let p = self.conv.from();
        let nq = q.len();
        let n = q.n();
        // copy, inverse transform and (below) the output's clearing run limb by limb in parallel
        let xp = RnsPoly::from_limbs(n, p.len(), |j, limb| {
            limb.copy_from_slice(x.limb(nq + j));
            p.ntt(j).inverse_unnormalized(limb);
        });
        let mut out = RnsPoly::from_limbs(n, nq, |_, _| {});
        // row i: t = [x + h]_P - h in coefficient form, then NTT, then (x_i - t) / P; the 1/N of
        // the inverse NTT and the offset h enter the conversion's first product
        let how = ConvInput {
            unnormalized: true,
            offset: Some(&self.half_p),
        };
        self.conv.convert_into(
            &xp,
            how,
            true,
            out.data.chunks_mut(n).collect(),
            |i, row| {
                let m = q.modulus(i);
                for v in row.iter_mut() {
                    *v = m.sub(*v, self.half_q[i]);
                }
                q.ntt(i).forward(row);
                let w = self.p_inv[i].0;
                kernels::rsub_mul_const_in_place(
                    x.limb(i),
                    row,
                    w,
                    kernels::shoup52(w, m.value()),
                    m,
                );
            },
        );
        out
    }
}

#[cfg(test)]
mod tests {
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
}
