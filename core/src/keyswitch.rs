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
use crate::rns::RnsPoly;

/// The ModUp'ed digits of one polynomial at one level, NTT form over Q_l ++ P.
pub struct Decomposition {
    pub level: usize,
    pub digits: Vec<RnsPoly>,
}

impl Decomposition {
    /// `c` is in NTT form over Q_level.
    pub fn new(ctx: &Context, level: usize, c: &RnsPoly) -> Self {
        let lc = ctx.level(level);
        let mut coeff = c.clone();
        lc.q.inverse(&mut coeff);
        let nq = level + 1;
        let digits = par::map_range(lc.mod_up.len(), |j| {
            let dc = &lc.mod_up[j];
            let r = dc.range.clone();
            let mut ext = dc.conv.convert(&coeff.slice_limbs(r.clone()));
            dc.conv.to().forward(&mut ext);
            // Assemble Q_l ++ P in order: the digit's own limbs are c itself (exact, already NTT).
            let mut out = RnsPoly::zero(ctx.n(), nq + ctx.p_basis().len());
            let mut src = 0;
            for i in 0..out.num_limbs() {
                if r.contains(&i) {
                    out.limb_mut(i).copy_from_slice(c.limb(i));
                } else {
                    out.limb_mut(i).copy_from_slice(ext.limb(src));
                    src += 1;
                }
            }
            out
        });
        Self { level, digits }
    }

    /// `(sum_j sigma(d_j) * b_j, sum_j sigma(d_j) * a_j)` over Q_l ++ P, where sigma is the
    /// NTT-domain permutation `perm` (identity if None). The key may be made for a higher level:
    /// its limbs for q0..ql and P are used.
    pub fn inner_product(
        &self,
        ctx: &Context,
        key: &SwitchingKey,
        perm: Option<&[u32]>,
    ) -> (RnsPoly, RnsPoly) {
        let l = self.level;
        let lc = ctx.level(l);
        let basis = &lc.qp;
        let n = ctx.n();
        let nq = l + 1;
        let key_nq = key.level + 1;
        // limb i of Q_l ++ P -> limb of the key's Q_k ++ P
        let key_limb = |i: usize| if i < nq { i } else { key_nq + (i - nq) };
        let mut out = RnsPoly::zero(n, 2 * basis.len());
        par::for_each_limb(out.data_mut(), n, |idx, limb| {
            let (half, i) = (idx / basis.len(), idx % basis.len());
            let m = basis.modulus(i);
            let keys = if half == 0 { &key.b } else { &key.a };
            let mut acc = vec![0u128; n];
            for (d, k) in self.digits.iter().zip(keys) {
                let d = d.limb(i);
                let k = k.limb(key_limb(i));
                match perm {
                    None => {
                        for ((a, &x), &y) in acc.iter_mut().zip(d).zip(k) {
                            *a += x as u128 * y as u128;
                        }
                    }
                    Some(p) => {
                        for ((a, &j), &y) in acc.iter_mut().zip(p).zip(k) {
                            *a += d[j as usize] as u128 * y as u128;
                        }
                    }
                }
            }
            for (o, &a) in limb.iter_mut().zip(&acc) {
                *o = m.reduce_u128(a);
            }
        });
        let b = out.slice_limbs(0..basis.len());
        let a = out.slice_limbs(basis.len()..2 * basis.len());
        (b, a)
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
    let (b, a) = dec.inner_product(ctx, key, None);
    let (u0, u1) = par::join(|| mod_down(ctx, level, &b), || mod_down(ctx, level, &a));
    (u0, u1)
}
