//! Fast basis conversion (the "ModUp" of hybrid key switching): from one RNS basis to another on
//! coefficient-form polynomials, approximately (`x + u*B`) or exactly with an overflow correction.

use std::mem::MaybeUninit;

use crate::arith::Modulus;
use crate::kernels;
use crate::par;

use super::{RnsBasis, RnsPoly};

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
    pub(super) from: RnsBasis,
    pub(super) to: RnsBasis,
    /// `(B/b_i)^-1 mod b_i`, and the same times `N^-1` (for unnormalized input).
    pub(super) inv_punctured: Vec<u64>,
    pub(super) inv_punctured_n: Vec<u64>,
    /// `1 / b_i`, for the overflow count of the exact conversion.
    pub(super) inv_from_f64: Vec<f64>,
    /// Which sources enter split in two (too wide for 52-bit products).
    pub(super) split: Vec<bool>,
    /// Per target row: the constants of every (split) source term, their 52-bit Shoup
    /// constants, and whether the IFMA kernel may run the row.
    pub(super) row_consts: Vec<Vec<u64>>,
    pub(super) shoup52: Vec<Vec<u64>>,
    /// The same with the overflow term of the exact conversion appended.
    pub(super) row_consts_exact: Vec<Vec<u64>>,
    pub(super) shoup52_exact: Vec<Vec<u64>>,
    pub(super) row_ifma: Vec<bool>,
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
        self.convert_with(input, ConvInput::default(), false, |_, _| {})
    }

    /// The conversion over T: target row j is written (coefficient form) into fresh memory and
    /// then `post(j, row)` runs on it while it is still in cache (callers put the NTT or the
    /// ModDown combine there), which spares intermediate polynomials on the key-switching hot
    /// path.
    ///
    /// `exact`: for `x in [0, B)`, also subtract the overflow count `u = floor(sum_i y_i / b_i)`
    /// (recovered in floating point, entering the kernel as one more term). Where the result is
    /// divided by B afterwards (ModDown), the approximate `u` would leave a bias of about |B|/2 in
    /// every coefficient, which decryption multiplies by the secret key into structured error of
    /// order N*|B|: at a 2^25 scale that costs several bits.
    pub fn convert_with<F>(&self, input: &RnsPoly, how: ConvInput, exact: bool, post: F) -> RnsPoly
    where
        F: Fn(usize, &mut [u64]) + Sync + Send,
    {
        let n = self.from.n();
        assert_eq!(input.num_limbs(), self.from.len());
        if let Some(h) = how.offset {
            assert_eq!(h.len(), self.from.len());
        }
        let mut y = RnsPoly::from_fresh_limbs(n, self.from.len(), |i, fresh| {
            let (w, c) = self.source_consts(i, how);
            let m = self.from.modulus(i);
            let ws = kernels::shoup52(w, m.value());
            // SAFETY: the kernel writes every element.
            unsafe {
                fresh.written_by(|o| kernels::mul_const_add_uninit(input.limb(i), w, ws, c, m, o))
            }
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
        RnsPoly::from_fresh_limbs(n, self.to.len(), |j, fresh| {
            // SAFETY: a conversion row writes every element of its output.
            let limb = unsafe { fresh.written_by(|o| self.row_from_terms(&src, exact, j, o)) };
            post(j, limb);
            limb
        })
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
    /// `exact`. Writes every element of `out` (fresh memory: see [`crate::rns::FreshLimb`]).
    pub fn row_from_terms(
        &self,
        terms: &[&[u64]],
        exact: bool,
        j: usize,
        out: &mut [MaybeUninit<u64>],
    ) {
        let (consts, shoup) = if exact {
            (&self.row_consts_exact[j], &self.shoup52_exact[j])
        } else {
            (&self.row_consts[j], &self.shoup52[j])
        };
        assert_eq!(terms.len(), consts.len());
        let t = self.to.modulus(j);
        kernels::conversion_row_uninit(terms, consts, shoup, t, self.row_ifma[j], out);
    }
}
