//! ModDown: division with rounding by the product of the special primes, which brings the result
//! of a key switch from `Q ++ P` back to `Q`.

use crate::arith::Modulus;
use crate::kernels;

use super::{BasisConverter, ConvInput, RnsBasis, RnsPoly};

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
        // copy and inverse transform limb by limb in parallel
        let xp = RnsPoly::from_fresh_limbs(n, p.len(), |j, fresh| {
            let limb = fresh.copy_of(x.limb(nq + j));
            p.ntt(j).inverse_unnormalized(limb);
            limb
        });
        // row i: t = [x + h]_P - h in coefficient form, then NTT, then (x_i - t) / P; the 1/N of
        // the inverse NTT and the offset h enter the conversion's first product
        let how = ConvInput {
            unnormalized: true,
            offset: Some(&self.half_p),
        };
        self.conv.convert_with(&xp, how, true, |i, row| {
            let m = q.modulus(i);
            for v in row.iter_mut() {
                *v = m.sub(*v, self.half_q[i]);
            }
            q.ntt(i).forward(row);
            let w = self.p_inv[i].0;
            kernels::rsub_mul_const_in_place(x.limb(i), row, w, kernels::shoup52(w, m.value()), m);
        })
    }
}
