//! Homomorphic operations on ciphertexts, with exact scale bookkeeping and checked operands:
//! mismatched parameters, levels or scales are errors, never panics.
//!
//! Scales: every object carries its exact scale (a product of the scales multiplied in, divided by
//! the primes rescaled away). Multiplications may be chained without rescaling (Delta^2, Delta^3)
//! as long as the scale stays below the level's modulus, and one rescale by a prime of about twice
//! the scale's bits then brings Delta^3 back to Delta: two levels per prime.

use std::sync::Arc;

use crate::ciphertext::Ciphertext;
use crate::context::Context;
use crate::error::CkksError;
use crate::keys::{EvaluationKeys, SwitchingKey};
use crate::keyswitch::{switch_key, Decomposition, RaisedCiphertext};
use crate::par;
use crate::plaintext::{Plaintext, SmallPlaintext};
use crate::rns::RnsPoly;
use crate::scale::check_scales;

pub struct Evaluator {
    ctx: Arc<Context>,
}

impl Evaluator {
    pub fn new(ctx: &Arc<Context>) -> Self {
        Self { ctx: ctx.clone() }
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    fn check(&self, ct: &Ciphertext) -> Result<(), CkksError> {
        if &ct.fingerprint != self.ctx.fingerprint() {
            return Err(CkksError::ParamsMismatch);
        }
        self.ctx.check_level(ct.level)
    }

    fn check_pt(&self, ct: &Ciphertext, pt: &Plaintext) -> Result<(), CkksError> {
        self.check(ct)?;
        if &pt.fingerprint != self.ctx.fingerprint() {
            return Err(CkksError::ParamsMismatch);
        }
        if pt.level < ct.level {
            return Err(CkksError::LevelMismatch(ct.level, pt.level));
        }
        Ok(())
    }

    fn check_pair(&self, a: &Ciphertext, b: &Ciphertext) -> Result<(), CkksError> {
        self.check(a)?;
        self.check(b)?;
        if a.level != b.level {
            return Err(CkksError::LevelMismatch(a.level, b.level));
        }
        check_scales(a.scale, b.scale)
    }

    fn check_headroom(&self, scale: f64, level: usize) -> Result<(), CkksError> {
        let log_q = self.ctx.params().log_q_at(level);
        if scale.log2() >= log_q - 1.0 {
            return Err(CkksError::ScaleOverflow {
                scale_bits: scale.log2(),
                level,
                log_q,
            });
        }
        Ok(())
    }

    fn basis(&self, level: usize) -> &crate::rns::RnsBasis {
        &self.ctx.level_ctx(level).q
    }

    /// The plaintext's polynomial restricted to the ciphertext's level.
    fn pt_poly(pt: &Plaintext, level: usize) -> std::borrow::Cow<'_, RnsPoly> {
        if pt.level == level {
            std::borrow::Cow::Borrowed(&pt.poly)
        } else {
            std::borrow::Cow::Owned(pt.poly.slice_limbs(0..level + 1))
        }
    }

    fn derived(&self, c: Vec<RnsPoly>, level: usize, scale: f64) -> Ciphertext {
        Ciphertext {
            c,
            level,
            scale,
            fingerprint: *self.ctx.fingerprint(),
            seed: None,
        }
    }

    pub fn add(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext, CkksError> {
        self.check_pair(a, b)?;
        let (long, short) = if a.c.len() >= b.c.len() {
            (a, b)
        } else {
            (b, a)
        };
        let mut c = long.c.clone();
        let basis = self.basis(a.level);
        for (x, y) in c.iter_mut().zip(&short.c) {
            basis.add_assign(x, y);
        }
        Ok(self.derived(c, a.level, a.scale))
    }

    /// `acc += b` in place (same level and scale).
    pub fn add_assign(&self, acc: &mut Ciphertext, b: &Ciphertext) -> Result<(), CkksError> {
        self.check_pair(acc, b)?;
        let basis = self.basis(acc.level);
        while acc.c.len() < b.c.len() {
            acc.c.push(basis.zero());
        }
        for (x, y) in acc.c.iter_mut().zip(&b.c) {
            basis.add_assign(x, y);
        }
        acc.seed = None;
        Ok(())
    }

    pub fn sub(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext, CkksError> {
        let nb = self.neg(b)?;
        self.add(a, &nb)
    }

    pub fn neg(&self, a: &Ciphertext) -> Result<Ciphertext, CkksError> {
        self.check(a)?;
        let basis = self.basis(a.level);
        let mut c = a.c.clone();
        for x in c.iter_mut() {
            basis.neg_assign(x);
        }
        Ok(self.derived(c, a.level, a.scale))
    }

    pub fn add_plain(&self, a: &Ciphertext, pt: &Plaintext) -> Result<Ciphertext, CkksError> {
        let mut out = a.clone();
        self.add_plain_assign(&mut out, pt)?;
        out.seed = None;
        Ok(out)
    }

    pub fn sub_plain(&self, a: &Ciphertext, pt: &Plaintext) -> Result<Ciphertext, CkksError> {
        self.check_pt(a, pt)?;
        check_scales(a.scale, pt.scale)?;
        let mut c = a.c.clone();
        self.basis(a.level)
            .sub_assign(&mut c[0], &Self::pt_poly(pt, a.level));
        Ok(self.derived(c, a.level, a.scale))
    }

    /// Slot-wise product with a plaintext; the scales multiply.
    pub fn mul_plain(&self, a: &Ciphertext, pt: &Plaintext) -> Result<Ciphertext, CkksError> {
        self.check_pt(a, pt)?;
        let scale = a.scale * pt.scale;
        self.check_headroom(scale, a.level)?;
        let basis = self.basis(a.level);
        let p = Self::pt_poly(pt, a.level);
        let c = a.c.iter().map(|x| basis.mul(x, &p)).collect();
        Ok(self.derived(c, a.level, scale))
    }

    /// Adds the real constant `x` to every slot (the constant is encoded at the ciphertext's scale).
    pub fn add_const(&self, a: &Ciphertext, x: f64) -> Result<Ciphertext, CkksError> {
        self.check(a)?;
        let v = finite(x)? * a.scale;
        let basis = self.basis(a.level);
        let residues: Vec<u64> = basis.moduli().iter().map(|m| m.from_f64(v)).collect();
        let mut c = a.c.clone();
        basis.add_scalar_ntt_assign(&mut c[0], &residues);
        Ok(self.derived(c, a.level, a.scale))
    }

    /// Multiplies every slot by the real constant `x`, encoded as the integer `round(x * const_scale)`
    /// without a full plaintext; the result's scale is `a.scale * const_scale`. Choosing
    /// `const_scale = q_level` makes the following rescale leave the scale unchanged.
    pub fn mul_const(
        &self,
        a: &Ciphertext,
        x: f64,
        const_scale: f64,
    ) -> Result<Ciphertext, CkksError> {
        self.check(a)?;
        let v = finite(x)? * finite(const_scale)?;
        let scale = a.scale * const_scale;
        self.check_headroom(scale, a.level)?;
        let basis = self.basis(a.level);
        let residues: Vec<u64> = basis.moduli().iter().map(|m| m.from_f64(v)).collect();
        let mut c = a.c.clone();
        for x in c.iter_mut() {
            basis.mul_scalar_assign(x, &residues);
        }
        Ok(self.derived(c, a.level, scale))
    }

    /// Multiplies by an integer exactly; the scale is unchanged.
    pub fn mul_int(&self, a: &Ciphertext, k: i64) -> Result<Ciphertext, CkksError> {
        self.check(a)?;
        let basis = self.basis(a.level);
        let residues = basis.from_i64(k);
        let mut c = a.c.clone();
        for x in c.iter_mut() {
            basis.mul_scalar_assign(x, &residues);
        }
        Ok(self.derived(c, a.level, a.scale))
    }

    /// Multiplies every slot by the imaginary unit, exactly and without a level: `i` is
    /// `X^(N/2)` at every evaluation point, so this is a product with that monomial (in NTT form,
    /// one transform per limb for its table). A real value and another times `i` share a
    /// ciphertext as real and imaginary parts.
    pub fn mul_imag(&self, a: &Ciphertext) -> Result<Ciphertext, CkksError> {
        self.check(a)?;
        let basis = self.basis(a.level);
        let n = self.ctx.n();
        let mut monomial = basis.zero();
        for i in 0..basis.len() {
            monomial.limb_mut(i)[n / 2] = 1;
        }
        basis.forward(&mut monomial);
        let c = a.c.iter().map(|x| basis.mul(x, &monomial)).collect();
        Ok(self.derived(c, a.level, a.scale))
    }

    /// Tensor product without relinearization: a degree-2 ciphertext whose scale is the product.
    pub fn mul(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext, CkksError> {
        self.check(a)?;
        self.check(b)?;
        if a.level != b.level {
            return Err(CkksError::LevelMismatch(a.level, b.level));
        }
        for d in [a.degree(), b.degree()] {
            if d != 1 {
                return Err(CkksError::Degree(d));
            }
        }
        let scale = a.scale * b.scale;
        self.check_headroom(scale, a.level)?;
        let basis = self.basis(a.level);
        let d0 = basis.mul(&a.c[0], &b.c[0]);
        let mut d1 = basis.mul(&a.c[0], &b.c[1]);
        basis.mul_add_assign(&mut d1, &a.c[1], &b.c[0]);
        let d2 = basis.mul(&a.c[1], &b.c[1]);
        Ok(self.derived(vec![d0, d1, d2], a.level, scale))
    }

    /// Back to degree 1 with the relinearization key.
    pub fn relinearize(
        &self,
        a: &Ciphertext,
        keys: &EvaluationKeys,
    ) -> Result<Ciphertext, CkksError> {
        self.check(a)?;
        match a.degree() {
            1 => return Ok(a.clone()),
            2 => {}
            d => return Err(CkksError::Degree(d)),
        }
        let key = keys.relin_at(a.level)?;
        self.check_key(key, a.level)?;
        let (mut u0, mut u1) = switch_key(&self.ctx, a.level, &a.c[2], key);
        let basis = self.basis(a.level);
        basis.add_assign(&mut u0, &a.c[0]);
        basis.add_assign(&mut u1, &a.c[1]);
        Ok(self.derived(vec![u0, u1], a.level, a.scale))
    }

    pub fn mul_relin(
        &self,
        a: &Ciphertext,
        b: &Ciphertext,
        keys: &EvaluationKeys,
    ) -> Result<Ciphertext, CkksError> {
        self.relinearize(&self.mul(a, b)?, keys)
    }

    pub fn square_relin(
        &self,
        a: &Ciphertext,
        keys: &EvaluationKeys,
    ) -> Result<Ciphertext, CkksError> {
        self.mul_relin(a, a, keys)
    }

    /// Divides by the last prime q_level (rounding) and drops it; the scale is divided by q_level.
    pub fn rescale(&self, a: &Ciphertext) -> Result<Ciphertext, CkksError> {
        let mut out = a.clone();
        self.rescale_assign(&mut out)?;
        Ok(out)
    }

    /// [`Evaluator::rescale`] in place: no copy of the operand, which is the largest object alive
    /// at the end of every layer.
    pub fn rescale_assign(&self, a: &mut Ciphertext) -> Result<(), CkksError> {
        self.check(a)?;
        if a.level == 0 {
            return Err(CkksError::RescaleAtLevelZero);
        }
        let basis = self.basis(a.level);
        let q_last = basis.modulus(a.level).value() as f64;
        par::for_each_mut(&mut a.c, |_, x| basis.divide_round_by_last(x));
        a.level -= 1;
        a.scale /= q_last;
        a.seed = None;
        Ok(())
    }

    /// Drops primes down to `level` without dividing (the message and scale are unchanged).
    pub fn drop_level(&self, a: &Ciphertext, level: usize) -> Result<Ciphertext, CkksError> {
        self.check(a)?;
        if level > a.level {
            return Err(CkksError::LevelMismatch(a.level, level));
        }
        let c = a.c.iter().map(|x| x.slice_limbs(0..level + 1)).collect();
        Ok(self.derived(c, level, a.scale))
    }

    /// [`Evaluator::drop_level`] in place: truncates the limbs, copies nothing.
    pub fn drop_level_assign(&self, a: &mut Ciphertext, level: usize) -> Result<(), CkksError> {
        self.check(a)?;
        if level > a.level {
            return Err(CkksError::LevelMismatch(a.level, level));
        }
        for x in a.c.iter_mut() {
            x.truncate_limbs(level + 1);
        }
        a.level = level;
        a.seed = None;
        Ok(())
    }

    /// An encryption of zero with no noise at `level` and `scale`: the neutral element of a sum
    /// whose terms all vanished.
    pub fn zero(&self, level: usize, scale: f64) -> Result<Ciphertext, CkksError> {
        self.ctx.check_level(level)?;
        let scale = finite(scale)?;
        self.check_headroom(scale, level)?;
        let basis = self.basis(level);
        Ok(self.derived(vec![basis.zero(), basis.zero()], level, scale))
    }

    /// `a += pt` in place (same scale).
    pub fn add_plain_assign(&self, a: &mut Ciphertext, pt: &Plaintext) -> Result<(), CkksError> {
        self.check_pt(a, pt)?;
        check_scales(a.scale, pt.scale)?;
        self.basis(a.level)
            .add_assign(&mut a.c[0], &Self::pt_poly(pt, a.level));
        Ok(())
    }

    fn check_key(&self, key: &SwitchingKey, level: usize) -> Result<(), CkksError> {
        if &key.fingerprint != self.ctx.fingerprint() {
            return Err(CkksError::ParamsMismatch);
        }
        if key.level < level {
            return Err(CkksError::KeyLevel {
                key_level: key.level,
                level,
            });
        }
        Ok(())
    }

    fn check_degree1(a: &Ciphertext) -> Result<(), CkksError> {
        if a.degree() != 1 {
            return Err(CkksError::Degree(a.degree()));
        }
        Ok(())
    }

    /// `sum_j cts[j] * pts[j]`, limb by limb: each output limb stays in cache while every term
    /// is added into it, and each plaintext limb is transformed once and used for both halves.
    /// All operands at one level, with equal product scales; errors on an empty sum.
    pub fn dot_small_plain(
        &self,
        cts: &[&Ciphertext],
        pts: &[SmallPlaintext],
    ) -> Result<Ciphertext, CkksError> {
        let (Some(first), Some(p0)) = (cts.first(), pts.first()) else {
            return Err(CkksError::Count(0));
        };
        if cts.len() != pts.len() {
            return Err(CkksError::Count(pts.len()));
        }
        let (level, scale) = (first.level, first.scale * p0.scale);
        for (ct, pt) in cts.iter().zip(pts) {
            self.check(ct)?;
            Self::check_degree1(ct)?;
            if &pt.fingerprint != self.ctx.fingerprint() {
                return Err(CkksError::ParamsMismatch);
            }
            if ct.level != level || pt.level != level {
                return Err(CkksError::LevelMismatch(level, ct.level.max(pt.level)));
            }
            check_scales(ct.scale * pt.scale, scale)?;
        }
        let n = self.ctx.n();
        let basis = self.basis(level);
        let (c0, c1) = RnsPoly::pair_from_limbs(n, basis.len(), |i, l0, l1| {
            let ntt = basis.ntt(i);
            let (mut m, mut scratch) = (vec![0u64; n], Vec::with_capacity(n / 2));
            for (ct, pt) in cts.iter().zip(pts) {
                pt.limb_into(&self.ctx, i, &mut m, &mut scratch);
                ntt.mul_accumulate(l0, ct.c[0].limb(i), &m);
                ntt.mul_accumulate(l1, ct.c[1].limb(i), &m);
            }
        });
        Ok(self.derived(vec![c0, c1], level, scale))
    }

    /// Applies `X -> X^g` with the matching Galois key.
    pub fn apply_galois(
        &self,
        a: &Ciphertext,
        g: u64,
        keys: &EvaluationKeys,
    ) -> Result<Ciphertext, CkksError> {
        self.check(a)?;
        Self::check_degree1(a)?;
        let key = self.galois_key(g, a.level, keys)?;
        let dec = Decomposition::new(&self.ctx, a.level, key.layout, &a.c[1]);
        Ok(self.galois_from_decomposition(a, &dec, g, key))
    }

    /// With the key stored as sigma^-1(key) (see `EvaluationKeys::insert`),
    /// `sum_j sigma(d_j) key_j = sigma(sum_j d_j sigma^-1(key_j))`, and ModDown commutes with
    /// sigma: the result is `(sigma(c0 + u0), sigma(u1))`, two permutations in all.
    fn galois_from_decomposition(
        &self,
        a: &Ciphertext,
        dec: &Decomposition,
        g: u64,
        key: &SwitchingKey,
    ) -> Ciphertext {
        let perm = self.ctx.permutation(g);
        let (b, k) = dec.inner_product(&self.ctx, key);
        let (mut u0, u1) = par::join(|| dec.mod_down(&b), || dec.mod_down(&k));
        let basis = self.basis(a.level);
        basis.add_assign(&mut u0, &a.c[0]);
        let (c0, c1) = par::join(|| basis.permute(&u0, &perm), || basis.permute(&u1, &perm));
        self.derived(vec![c0, c1], a.level, a.scale)
    }

    /// The key of Galois element `g` for `level`, checked.
    fn galois_key<'k>(
        &self,
        g: u64,
        level: usize,
        keys: &'k EvaluationKeys,
    ) -> Result<&'k SwitchingKey, CkksError> {
        let key = keys.galois_at(g, level)?;
        self.check_key(key, level)?;
        Ok(key)
    }

    /// Left rotation of `a` by `r`, multiplied by the key's special modulus P (see
    /// [`RaisedCiphertext`]): the first rotation of a chain, without its ModDown.
    pub fn rotate_raising(
        &self,
        a: &Ciphertext,
        r: i64,
        keys: &EvaluationKeys,
    ) -> Result<RaisedCiphertext, CkksError> {
        self.check(a)?;
        Self::check_degree1(a)?;
        let g = self.ctx.galois_element(r);
        let key = self.galois_key(g, a.level, keys)?;
        let dec = Decomposition::new(&self.ctx, a.level, key.layout, &a.c[1]);
        let (b, k) = dec.inner_product(&self.ctx, key);
        let mut x = RaisedCiphertext {
            c0: b,
            c1: k,
            level: a.level,
            scale: a.scale,
            sw: dec.switch_ctx().clone(),
        };
        // (P*c0 + b, k): c1's part is in the inner product
        x.add_times_p(&a.c[0], None);
        Ok(self.permute_raised(x, g))
    }

    /// Left rotation of a raised ciphertext by `r`, with a key of its layout.
    pub fn rotate_raised(
        &self,
        x: &RaisedCiphertext,
        r: i64,
        keys: &EvaluationKeys,
    ) -> Result<RaisedCiphertext, CkksError> {
        let g = self.ctx.galois_element(r);
        let key = self.galois_key(g, x.level, keys)?;
        if key.layout != x.sw.layout {
            return Err(CkksError::Layout(format!(
                "a key of layout {:?} for a ciphertext raised by {:?}",
                key.layout, x.sw.layout
            )));
        }
        let c1 = x.sw.mod_down.apply(&x.c1);
        let dec = Decomposition::new(&self.ctx, x.level, key.layout, &c1);
        let (mut b, k) = dec.inner_product(&self.ctx, key);
        x.sw.qp.add_assign(&mut b, &x.c0);
        let y = RaisedCiphertext {
            c0: b,
            c1: k,
            level: x.level,
            scale: x.scale,
            sw: x.sw.clone(),
        };
        Ok(self.permute_raised(y, g))
    }

    /// `sigma_g` on both halves over Q_l ++ P (the keys are stored as sigma^-1(key), see
    /// [`Evaluator::galois_from_decomposition`]).
    fn permute_raised(&self, x: RaisedCiphertext, g: u64) -> RaisedCiphertext {
        let perm = self.ctx.permutation(g);
        let qp = &x.sw.qp;
        let (c0, c1) = par::join(|| qp.permute(&x.c0, &perm), || qp.permute(&x.c1, &perm));
        RaisedCiphertext { c0, c1, ..x }
    }

    /// `x += P * a` (`a` at x's level and scale).
    pub fn add_raised(&self, x: &mut RaisedCiphertext, a: &Ciphertext) -> Result<(), CkksError> {
        self.check(a)?;
        Self::check_degree1(a)?;
        if a.level != x.level {
            return Err(CkksError::LevelMismatch(x.level, a.level));
        }
        check_scales(x.scale, a.scale)?;
        x.add_times_p(&a.c[0], Some(&a.c[1]));
        Ok(())
    }

    /// `x / P`, rounded: the chain's one ModDown of both halves.
    pub fn lower(&self, x: &RaisedCiphertext) -> Ciphertext {
        let md = &x.sw.mod_down;
        let (c0, c1) = par::join(|| md.apply(&x.c0), || md.apply(&x.c1));
        self.derived(vec![c0, c1], x.level, x.scale)
    }

    /// The real part of every slot, `a + conj(a)`: twice the value, recorded as twice the scale
    /// (no level spent, no rounding but the key switch's). Clears an imaginary part that
    /// carries another value or accumulated noise.
    pub fn real_part(
        &self,
        a: &Ciphertext,
        keys: &EvaluationKeys,
    ) -> Result<Ciphertext, CkksError> {
        let mut sum = self.conjugate(a, keys)?;
        self.add_assign(&mut sum, a)?;
        sum.scale *= 2.0;
        Ok(sum)
    }

    /// The real and the imaginary part of every slot as two ciphertexts, `(a + conj(a))/2` and
    /// `(a - conj(a))/2i`, each recorded at twice the scale (one conjugation, no level): two
    /// values that shared a ciphertext as its real and imaginary parts, apart again.
    pub fn real_imag(
        &self,
        a: &Ciphertext,
        keys: &EvaluationKeys,
    ) -> Result<(Ciphertext, Ciphertext), CkksError> {
        let conj = self.conjugate(a, keys)?;
        let mut re = self.add(a, &conj)?;
        re.scale *= 2.0;
        // (a - conj(a)) / 2i = i * (conj(a) - a) / 2
        let mut im = self.mul_imag(&self.sub(&conj, a)?)?;
        im.scale *= 2.0;
        Ok((re, im))
    }

    /// Left rotation of the slots by `r` (negative: right).
    pub fn rotate(
        &self,
        a: &Ciphertext,
        r: i64,
        keys: &EvaluationKeys,
    ) -> Result<Ciphertext, CkksError> {
        self.apply_galois(a, self.ctx.galois_element(r), keys)
    }

    /// Complex conjugation of every slot.
    pub fn conjugate(
        &self,
        a: &Ciphertext,
        keys: &EvaluationKeys,
    ) -> Result<Ciphertext, CkksError> {
        self.apply_galois(a, self.ctx.conjugation_element(), keys)
    }

    /// Several rotations of one ciphertext sharing a decomposition (hoisting): the ModUp is paid
    /// once per key layout among the keys (once when they were made for the same level), each
    /// amount then costs an inner product and a ModDown.
    pub fn rotate_hoisted(
        &self,
        a: &Ciphertext,
        amounts: &[i64],
        keys: &EvaluationKeys,
    ) -> Result<Vec<Ciphertext>, CkksError> {
        self.check(a)?;
        Self::check_degree1(a)?;
        let gs: Vec<u64> = amounts
            .iter()
            .map(|&r| self.ctx.galois_element(r))
            .collect();
        let mut ks = Vec::with_capacity(gs.len());
        for &g in &gs {
            ks.push(self.galois_key(g, a.level, keys)?);
        }
        // one decomposition per distinct key layout, made for the first key of that layout
        let mut decs: Vec<Decomposition> = Vec::new();
        let mut dec_of = Vec::with_capacity(ks.len());
        for (&g, key) in gs.iter().zip(&ks) {
            if g == 1 {
                dec_of.push(usize::MAX);
                continue;
            }
            let i = match decs.iter().position(|d| d.fits(key)) {
                Some(i) => i,
                None => {
                    decs.push(Decomposition::new(&self.ctx, a.level, key.layout, &a.c[1]));
                    decs.len() - 1
                }
            };
            dec_of.push(i);
        }
        // the amounts are independent: in parallel they scale better than one key switch's limbs
        Ok(par::map_range(gs.len(), |i| {
            if gs[i] == 1 {
                a.clone()
            } else {
                self.galois_from_decomposition(a, &decs[dec_of[i]], gs[i], ks[i])
            }
        }))
    }

    /// `sum_{i < count} rotate(a, i*step)` in log2(count) rotations (keys for step * 2^k needed).
    pub fn rotate_and_sum(
        &self,
        a: &Ciphertext,
        step: i64,
        count: usize,
        keys: &EvaluationKeys,
    ) -> Result<Ciphertext, CkksError> {
        if !count.is_power_of_two() {
            return Err(CkksError::Count(count));
        }
        let mut acc = a.clone();
        let mut shift = step;
        let mut k = 1;
        while k < count {
            let r = self.rotate(&acc, shift, keys)?;
            self.add_assign(&mut acc, &r)?;
            shift *= 2;
            k *= 2;
        }
        Ok(acc)
    }
}

fn finite(x: f64) -> Result<f64, CkksError> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err(CkksError::NotFinite(x))
    }
}
