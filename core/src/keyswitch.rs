//! Hybrid key switching (dnum digits, special modulus P), split into its three steps so that
//! rotations can share the expensive first one:
//!
//! 1. `Decomposition::new`: the polynomial's digits, each raised from its own primes to Q_l ++ P
//!    (ModUp) and put in NTT form. Done once per ciphertext however many rotations follow
//!    ("hoisting": automorphisms commute with the digit-wise basis extension).
//! 2. `Decomposition::inner_product`: `sum_j sigma(d_j) * key_j` over Q_l ++ P, where the
//!    automorphism sigma is a gather folded into the product.
//! 3. `mod_down`: division by P back to Q_l.
//!
//! Relinearization and rotations share this one gadget product.

use crate::context::Context;
use crate::keys::SwitchingKey;
use crate::par;
use crate::rns::{ConvInput, RnsPoly};

/// The ModUp'ed digits of one polynomial at one level, NTT form over Q_l ++ P.
pub struct Decomposition {
    pub level: usize,
    pub digits: Vec<RnsPoly>,
}

impl Decomposition {
    /// `c` is in NTT form over Q_level.
    pub fn new(ctx: &Context, level: usize, c: &RnsPoly) -> Self {
        let lc = ctx.level(level);
        let nq = level + 1;
        let n = ctx.n();
        // the conversion folds in the 1/N
        let coeff = RnsPoly::from_limbs(n, nq, |i, limb| {
            limb.copy_from_slice(c.limb(i));
            lc.q.ntt(i).inverse_unnormalized(limb);
        });
        let digits = par::map_range(lc.mod_up.len(), |j| {
            let dc = &lc.mod_up[j];
            let r = dc.range.clone();
            // The digit's own limbs are c itself (exact, already NTT); the others are converted
            // in place and transformed while in cache.
            let mut out = RnsPoly::from_limbs(n, nq + ctx.p_basis().len(), |i, limb| {
                if r.contains(&i) {
                    limb.copy_from_slice(c.limb(i));
                }
            });
            let others: Vec<&mut [u64]> = out
                .data_mut()
                .chunks_mut(n)
                .enumerate()
                .filter(|(i, _)| !r.contains(i))
                .map(|(_, limb)| limb)
                .collect();
            let to = dc.conv.to();
            let how = ConvInput {
                unnormalized: true,
                offset: None,
            };
            dc.conv
                .convert_into(&coeff.slice_limbs(r), how, false, others, |t, row| {
                    to.ntt(t).forward(row)
                });
            out
        });
        Self { level, digits }
    }

    /// `(sum_j d_j * b_j, sum_j d_j * a_j)` over Q_l ++ P. The key may be made for a higher
    /// level: its limbs for q0..ql and P are used.
    pub fn inner_product(&self, ctx: &Context, key: &SwitchingKey) -> (RnsPoly, RnsPoly) {
        let l = self.level;
        let lc = ctx.level(l);
        let basis = &lc.qp;
        let n = ctx.n();
        let nq = l + 1;
        let key_nq = key.level + 1;
        // limb i of Q_l ++ P -> limb of the key's Q_k ++ P
        let key_limb = |i: usize| if i < nq { i } else { key_nq + (i - nq) };
        RnsPoly::pair_from_limbs(n, basis.len(), |i, out_b, out_a| {
            let ntt = basis.ntt(i);
            let ki = key_limb(i);
            for (j, d) in self.digits.iter().enumerate() {
                ntt.mul_accumulate(out_b, d.limb(i), key.b[j].limb(ki));
                ntt.mul_accumulate(out_a, d.limb(i), key.a[j].limb(ki));
            }
        })
    }
}

/// Division by P: Q_l ++ P (NTT form) to Q_l (NTT form).
pub fn mod_down(ctx: &Context, level: usize, x: &RnsPoly) -> RnsPoly {
    ctx.level(level).mod_down.apply(x)
}

/// Full key switch of `c` (NTT form over Q_level): returns `(u0, u1)` over Q_level with
/// `u0 + u1*s ~ c * s'`.
pub fn switch_key(
    ctx: &Context,
    level: usize,
    c: &RnsPoly,
    key: &SwitchingKey,
) -> (RnsPoly, RnsPoly) {
    let dec = Decomposition::new(ctx, level, c);
    let (b, a) = dec.inner_product(ctx, key);
    let (u0, u1) = par::join(|| mod_down(ctx, level, &b), || mod_down(ctx, level, &a));
    (u0, u1)
}
