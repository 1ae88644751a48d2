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
//! Relinearization and rotations share this one gadget product. The digits and the special modulus
//! are the key's (its [`KeyLayout`](crate::params::KeyLayout), chosen by the level it was made
//! for), so one decomposition serves every key of the same layout.

use std::sync::Arc;

use crate::context::{Context, SwitchContext};
use crate::keys::SwitchingKey;
use crate::par;
use crate::params::KeyLayout;
use crate::rns::{ConvInput, RnsPoly};

/// The ModUp'ed digits of one polynomial at one level, NTT form over Q_l ++ P, all digits in
/// one limb-major buffer (digit j is limbs `j * |Q_l ++ P|..`).
pub struct Decomposition {
    pub level: usize,
    sw: Arc<SwitchContext>,
    digits: RnsPoly,
    count: usize,
}

impl Decomposition {
    /// `c` is in NTT form over Q_level.
    ///
    /// Two parallel passes over the whole decomposition rather than one per digit: (1) every
    /// limb of `c` is inverse-transformed and scaled into its digit's source term; (2) every
    /// limb of every digit is either copied from `c` (the digit's own primes, exact and already
    /// NTT) or converted from the digit's terms and transformed while in cache. With dnum = 3
    /// digits on two threads, a pass per digit left one thread idle for a third of each
    /// decomposition and synchronized ten times instead of twice.
    ///
    /// `layout` is that of the keys to be used (made for `level` or above): it fixes the digits
    /// and the special primes.
    pub fn new(ctx: &Context, level: usize, layout: KeyLayout, c: &RnsPoly) -> Self {
        let sw = ctx.switch_ctx(level, layout);
        let lc = &*sw;
        let nq = level + 1;
        let n = ctx.n();
        let width = lc.qp.len();
        let count = lc.mod_up.len();
        let digit_of = |i: usize| {
            lc.mod_up
                .iter()
                .position(|d| d.range.contains(&i))
                .expect("the digits cover Q_l")
        };
        // the conversion folds in the 1/N of the unnormalized inverse NTT
        let how = ConvInput {
            unnormalized: true,
            offset: None,
        };
        let source = |i: usize| {
            let d = &lc.mod_up[digit_of(i)];
            (d, i - d.range.start)
        };
        let mut terms = RnsPoly::from_fresh_limbs(n, nq, |i, fresh| {
            let limb = fresh.copy_of(c.limb(i));
            lc.qp.ntt(i).inverse_unnormalized(limb);
            let (d, s) = source(i);
            d.conv.source_term_in_place(s, how, limb);
            limb
        });
        // High parts of the sources too wide for 52-bit products (60-bit primes; none in the
        // ResNet set), split off as `convert_into` does.
        let highs: Vec<Vec<u64>> = (0..nq)
            .map(|i| {
                let (d, s) = source(i);
                if d.conv.is_split(s) {
                    d.conv.split_term(terms.limb_mut(i))
                } else {
                    Vec::new()
                }
            })
            .collect();
        // each digit's terms in its converter's order: low part, then high part if split
        let digit_terms: Vec<Vec<&[u64]>> = lc
            .mod_up
            .iter()
            .map(|d| {
                d.range
                    .clone()
                    .flat_map(|i| {
                        std::iter::once(terms.limb(i))
                            .chain((!highs[i].is_empty()).then_some(highs[i].as_slice()))
                    })
                    .collect()
            })
            .collect();
        let digits = RnsPoly::from_fresh_limbs(n, count * width, |k, fresh| {
            let (j, i) = (k / width, k % width);
            let d = &lc.mod_up[j];
            if d.range.contains(&i) {
                return fresh.copy_of(c.limb(i));
            }
            // row of the converter's target basis (Q_l without the digit) ++ P
            let row = if i < d.range.start {
                i
            } else {
                i - d.range.len()
            };
            let terms = &digit_terms[j];
            // SAFETY: a conversion row writes every element of its output.
            let limb = unsafe { fresh.written_by(|o| d.conv.row_from_terms(terms, false, row, o)) };
            d.conv.to().ntt(row).forward(limb);
            limb
        });
        Self {
            level,
            sw,
            digits,
            count,
        }
    }

    /// The switching context of its level and layout.
    pub(crate) fn switch_ctx(&self) -> &Arc<SwitchContext> {
        &self.sw
    }

    /// Whether a key can be used with this decomposition (made with the same layout).
    pub fn fits(&self, key: &SwitchingKey) -> bool {
        key.level >= self.level && key.layout == self.sw.layout
    }

    /// Limb `i` of Q_l ++ P of digit `j`.
    fn digit_limb(&self, j: usize, i: usize) -> &[u64] {
        let width = self.digits.num_limbs() / self.count;
        self.digits.limb(j * width + i)
    }

    /// `(sum_j d_j * b_j, sum_j d_j * a_j)` over Q_l ++ P. The key may be made for a higher
    /// level (of the same layout, see [`Decomposition::fits`]): its limbs for q0..ql and P are
    /// used.
    pub fn inner_product(&self, ctx: &Context, key: &SwitchingKey) -> (RnsPoly, RnsPoly) {
        debug_assert!(self.fits(key));
        let l = self.level;
        let basis = &self.sw.qp;
        let n = ctx.n();
        let nq = l + 1;
        let key_nq = key.level + 1;
        // limb i of Q_l ++ P -> limb of the key's Q_k ++ P
        let key_limb = |i: usize| if i < nq { i } else { key_nq + (i - nq) };
        RnsPoly::pair_from_limbs(n, basis.len(), |i, out_b, out_a| {
            let ntt = basis.ntt(i);
            let ki = key_limb(i);
            for j in 0..self.count {
                let d = self.digit_limb(j, i);
                ntt.mul_accumulate(out_b, d, key.b[j].limb(ki));
                ntt.mul_accumulate(out_a, d, key.a[j].limb(ki));
            }
        })
    }
}

impl Decomposition {
    /// Division by P: an inner product's Q_l ++ P (NTT form) back to Q_l (NTT form).
    pub fn mod_down(&self, x: &RnsPoly) -> RnsPoly {
        self.sw.mod_down.apply(x)
    }
}

/// Full key switch of `c` (NTT form over Q_level): returns `(u0, u1)` over Q_level with
/// `u0 + u1*s ~ c * s'`.
pub fn switch_key(
    ctx: &Context,
    level: usize,
    c: &RnsPoly,
    key: &SwitchingKey,
) -> (RnsPoly, RnsPoly) {
    let dec = Decomposition::new(ctx, level, key.layout, c);
    let (b, a) = dec.inner_product(ctx, key);
    let (u0, u1) = par::join(|| dec.mod_down(&b), || dec.mod_down(&a));
    (u0, u1)
}

/// A ciphertext times the special modulus P of one key layout, over Q_l ++ P (NTT form): the
/// state of a chain of rotations that divides by P once, at its end, instead of after every
/// rotation. Rotating it divides only `c1` by P (its digits must come from Q_l) and adds the
/// inner product to `c0` undivided, so each rotation pays one polynomial's ModDown instead of
/// two. Horner's rule over the giant steps of a linear layer is such a chain (the lazy ModDown of
/// Bossuat et al.'s double hoisting, for the giant steps only).
///
/// Rounding: dividing `c1` leaves its residue mod P behind, which multiplies `s` as a ModDown's
/// rounding does; the final division adds one more rounding. The error is that of the same
/// rotations done one by one.
pub struct RaisedCiphertext {
    pub(crate) c0: RnsPoly,
    pub(crate) c1: RnsPoly,
    pub(crate) level: usize,
    pub(crate) scale: f64,
    pub(crate) sw: Arc<SwitchContext>,
}

impl RaisedCiphertext {
    pub fn level(&self) -> usize {
        self.level
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The layout of the keys that may rotate it (the one whose P it carries).
    pub fn layout(&self) -> KeyLayout {
        self.sw.layout
    }

    /// `(c0, c1) += P * (a0, a1)` for `(a0, a1)` over Q_l (`a1` absent: zero): the Q_l limbs
    /// gain the product, the P limbs nothing (P * a is 0 mod P).
    pub(crate) fn add_times_p(&mut self, a0: &RnsPoly, a1: Option<&RnsPoly>) {
        let n = self.sw.qp.n();
        let nq = self.level + 1;
        let qp = &self.sw.qp;
        let p_mod_q = &self.sw.p_mod_q;
        let halves = [(&mut self.c0, Some(a0)), (&mut self.c1, a1)];
        for (x, y) in halves.into_iter().filter_map(|(x, y)| Some((x, y?))) {
            par::for_each_limb(&mut x.data_mut()[..nq * n], n, |i, limb| {
                let m = qp.modulus(i);
                let (w, ws) = (p_mod_q[i], m.shoup(p_mod_q[i]));
                for (v, &z) in limb.iter_mut().zip(y.limb(i)) {
                    *v = m.add(*v, m.mul_shoup(z, w, ws));
                }
            });
        }
    }
}
