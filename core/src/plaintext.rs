//! An encoded message: a polynomial over Q_l in NTT form, with its level and exact scale.

use zeroize::Zeroizing;

use crate::context::{Context, MAX_SUBRING_LOG};
use crate::encoder::Complex;
use crate::error::CkksError;
use crate::rns::RnsPoly;

#[derive(Clone, Debug, PartialEq)]
pub struct Plaintext {
    /// NTT form over q0..q_level.
    pub(crate) poly: RnsPoly,
    pub(crate) level: usize,
    pub(crate) scale: f64,
    pub(crate) fingerprint: [u8; 32],
}

/// A decryption's plaintext gives away the secret key together with its ciphertext
/// (`c1*s = m - c0`): every plaintext is wiped when dropped (a memset, small beside the NTTs that
/// made it).
impl Drop for Plaintext {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.poly);
    }
}

impl Plaintext {
    /// NTT form over q0..q_level.
    pub fn poly(&self) -> &RnsPoly {
        &self.poly
    }

    pub fn level(&self) -> usize {
        self.level
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Encodes up to N/2 complex values at `level` and `scale`. Errors if a value is not finite or
    /// the scaled coefficients would not fit below Q_level.
    pub fn encode(
        ctx: &Context,
        values: &[Complex],
        level: usize,
        scale: f64,
    ) -> Result<Self, CkksError> {
        let (coeffs, max) = scaled_coefficients(ctx, values, level, scale)?;
        let basis = &ctx.level_ctx(level).q;
        let mut poly = basis.zero();
        if let Ok(small) = SmallPlaintext::round(ctx, &coeffs, max, level, scale) {
            crate::par::for_each_limb(poly.data_mut(), ctx.n(), |i, limb| {
                small.limb_into(ctx, i, limb, &mut Vec::new())
            });
        } else {
            // coefficients beyond the smallest prime (Delta^3 scales) reduce exactly
            crate::par::for_each_limb(poly.data_mut(), ctx.n(), |i, limb| {
                let m = basis.modulus(i);
                for (x, &c) in limb.iter_mut().zip(&coeffs) {
                    *x = m.from_f64(c);
                }
                basis.ntt(i).forward(limb);
            });
        }
        Ok(Self {
            poly,
            level,
            scale,
            fingerprint: *ctx.fingerprint(),
        })
    }

    pub fn encode_real(
        ctx: &Context,
        values: &[f64],
        level: usize,
        scale: f64,
    ) -> Result<Self, CkksError> {
        Self::encode(ctx, &complex(values), level, scale)
    }

    /// The N/2 slot values. Only as many limbs as the message is wide are transformed and
    /// reconstructed (verified against one more limb, all of them if that check fails).
    /// The slots are wiped when dropped (see `Encoder::coeffs_to_slots`), and so is every
    /// intermediate form.
    pub fn decode(&self, ctx: &Context) -> Result<Zeroizing<Vec<Complex>>, CkksError> {
        if &self.fingerprint != ctx.fingerprint() {
            return Err(CkksError::ParamsMismatch);
        }
        ctx.check_level(self.level)?;
        let basis = &ctx.level_ctx(self.level).q;
        let wanted_bits = self.scale.log2() + DECODE_HEADROOM_BITS;
        let k = (1..=self.level).find(|&k| ctx.params().log_q_at(k - 1) >= wanted_bits);
        if let Some(k) = k {
            let sub = basis.slice(0..k + 1);
            let mut coeff = Zeroizing::new(self.poly.slice_limbs(0..k + 1));
            sub.inverse(&mut coeff);
            if let Some(centered) = sub.to_centered_f64_checked(&coeff, k) {
                return Ok(ctx.encoder().coeffs_to_slots(&centered, self.scale));
            }
        }
        let mut coeff = Zeroizing::new(self.poly.clone());
        basis.inverse(&mut coeff);
        let centered = basis.to_centered_f64(&coeff);
        Ok(ctx.encoder().coeffs_to_slots(&centered, self.scale))
    }
}

/// Bits above the scale that a decoded value may use before decoding takes more limbs.
const DECODE_HEADROOM_BITS: f64 = 40.0;

fn complex(values: &[f64]) -> Vec<Complex> {
    values.iter().map(|&x| Complex::from(x)).collect()
}

/// `re * scale_re + i * im * scale_im`, slot by slot (missing entries zero).
fn zip_complex(re: &[f64], scale_re: f64, im: &[f64], scale_im: f64) -> Vec<Complex> {
    (0..re.len().max(im.len()))
        .map(|j| {
            let x = re.get(j).copied().unwrap_or(0.0) * scale_re;
            let y = im.get(j).copied().unwrap_or(0.0) * scale_im;
            Complex::new(x, y)
        })
        .collect()
}

/// The checked, scaled, unrounded coefficients of `values` and their largest magnitude.
fn scaled_coefficients(
    ctx: &Context,
    values: &[Complex],
    level: usize,
    scale: f64,
) -> Result<(Vec<f64>, f64), CkksError> {
    ctx.check_level(level)?;
    if values.len() > ctx.params().slots() {
        return Err(CkksError::TooManyValues {
            given: values.len(),
            slots: ctx.params().slots(),
        });
    }
    if let Some(v) = values
        .iter()
        .find(|v| !v.re.is_finite() || !v.im.is_finite())
    {
        return Err(CkksError::NotFinite(if v.re.is_finite() {
            v.im
        } else {
            v.re
        }));
    }
    if !(scale.is_finite() && scale >= 1.0) {
        return Err(CkksError::NotFinite(scale));
    }
    let coeffs = ctx.encoder().slots_to_coeffs(values, scale);
    let max = coeffs.iter().fold(0f64, |m, c| m.max(c.abs()));
    let log_q = ctx.params().log_q_at(level);
    if max >= 1.0 && max.log2() >= log_q - 1.0 {
        return Err(CkksError::ScaleOverflow {
            scale_bits: max.log2(),
            level,
            log_q,
        });
    }
    Ok((coeffs, max))
}

/// A plaintext kept as its rounded integer coefficients, each below half of every prime of its
/// level, so that its residues are the coefficients themselves up to sign. Each limb's NTT form
/// is made where it is used and never stored: a linear layer multiplies by thousands of such
/// plaintexts, and this spares the full-size polynomial of every one (see
/// `Evaluator::dot_small_plain`).
#[derive(Clone, Debug, PartialEq)]
pub struct SmallPlaintext {
    pub(crate) coeffs: Vec<i64>,
    /// t where the polynomial is one in X^(2^t) (at most [`MAX_SUBRING_LOG`]): its limbs are
    /// transformed at 1/2^t of the size. Replicated slot layouts make such plaintexts.
    pub(crate) subring: u32,
    pub(crate) level: usize,
    pub(crate) scale: f64,
    pub(crate) fingerprint: [u8; 32],
}

impl SmallPlaintext {
    /// The rounded integer coefficients.
    pub fn coeffs(&self) -> &[i64] {
        &self.coeffs
    }

    pub fn level(&self) -> usize {
        self.level
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Encodes real slot values; errors as `Plaintext::encode` does, and also if a coefficient
    /// is too large for this form (the scale is too large for the level's smallest prime).
    pub fn encode_real(
        ctx: &Context,
        values: &[f64],
        level: usize,
        scale: f64,
    ) -> Result<Self, CkksError> {
        let (coeffs, max) = scaled_coefficients(ctx, &complex(values), level, scale)?;
        Self::round(ctx, &coeffs, max, level, scale)
    }

    /// Encodes complex slot values `re + i*im` (missing entries zero); errors as
    /// [`SmallPlaintext::encode_real`] does.
    pub fn encode_complex(
        ctx: &Context,
        re: &[f64],
        im: &[f64],
        level: usize,
        scale: f64,
    ) -> Result<Self, CkksError> {
        let z = zip_complex(re, 1.0, im, 1.0);
        let (coeffs, max) = scaled_coefficients(ctx, &z, level, scale)?;
        Self::round(ctx, &coeffs, max, level, scale)
    }

    /// Encodes two real slot vectors, `a` at `scale_a` and `b` at `scale_b`, with one transform:
    /// the slots `a + i*b` encode to `m_a + X^(N/2) m_b` (multiplying every slot by i is
    /// multiplying by X^(N/2), which is i at every evaluation point), and a polynomial with real
    /// slots satisfies `m[N-k] = -m[k]`, `m[N/2] = 0`, which separates the two halves again. A
    /// linear layer encodes thousands of real diagonals per image; this halves their FFTs.
    pub fn encode_real_pair(
        ctx: &Context,
        a: &[f64],
        scale_a: f64,
        b: &[f64],
        scale_b: f64,
        level: usize,
    ) -> Result<(Self, Self), CkksError> {
        for s in [scale_a, scale_b] {
            if !(s.is_finite() && s >= 1.0) {
                return Err(CkksError::NotFinite(s));
            }
        }
        let z = zip_complex(a, scale_a, b, scale_b);
        let (c, _) = scaled_coefficients(ctx, &z, level, 1.0)?;
        let n = c.len();
        let h = n / 2;
        let (mut ma, mut mb) = (vec![0.0; n], vec![0.0; n]);
        ma[0] = c[0];
        mb[0] = c[h];
        for k in 1..h {
            // c[k] = ma[k] + mb[h-k] and c[n-k] = -ma[k] + mb[h-k]
            let (p, q) = (c[k], c[n - k]);
            ma[k] = (p - q) / 2.0;
            ma[n - k] = -ma[k];
            mb[h - k] = (p + q) / 2.0;
            mb[h + k] = -mb[h - k];
        }
        let one = |m: &[f64], scale: f64| {
            let max = m.iter().fold(0f64, |acc, x| acc.max(x.abs()));
            Self::round(ctx, m, max, level, scale)
        };
        Ok((one(&ma, scale_a)?, one(&mb, scale_b)?))
    }

    /// Rounds `coeffs` (largest magnitude `max`); errors if one would not stay below half of
    /// every prime of the level.
    fn round(
        ctx: &Context,
        coeffs: &[f64],
        max: f64,
        level: usize,
        scale: f64,
    ) -> Result<Self, CkksError> {
        let basis = &ctx.level_ctx(level).q;
        let min_q = basis.moduli().iter().map(|m| m.value()).min().unwrap_or(0);
        let overflow = CkksError::ScaleOverflow {
            scale_bits: max.log2(),
            level,
            log_q: ctx.params().log_q_at(0),
        };
        if max >= min_q as f64 / 2.0 {
            return Err(overflow);
        }
        let coeffs: Vec<i64> = coeffs.iter().map(|&c| c.round() as i64).collect();
        // the trailing zeros shared by the indices of all nonzero coefficients
        let used = coeffs
            .iter()
            .enumerate()
            .filter(|&(_, &c)| c != 0)
            .fold(0usize, |acc, (j, _)| acc | j);
        let subring = used.trailing_zeros().min(MAX_SUBRING_LOG);
        Ok(Self {
            coeffs,
            subring,
            level,
            scale,
            fingerprint: *ctx.fingerprint(),
        })
    }

    /// t where the polynomial is one in X^(2^t) (see the field).
    pub fn subring(&self) -> u32 {
        self.subring
    }

    /// Limb `i` (of q0..q_level) in NTT form, written into `out`; `scratch` holds the subring's
    /// coefficients where the polynomial is one in X^(2^t) (kept by the caller across calls).
    pub fn limb_into(&self, ctx: &Context, i: usize, out: &mut [u64], scratch: &mut Vec<u64>) {
        let basis = &ctx.level_ctx(self.level).q;
        let q = basis.modulus(i).value() as i64;
        let reduce = |c: i64| (c + (q & (c >> 63))) as u64;
        if let Some(sub) = ctx.subring_ntt(i, self.subring) {
            scratch.clear();
            let stride = 1 << self.subring;
            scratch.extend(self.coeffs.iter().step_by(stride).map(|&c| reduce(c)));
            sub.forward_spread(scratch, out);
            return;
        }
        for (x, &c) in out.iter_mut().zip(&self.coeffs) {
            *x = reduce(c);
        }
        basis.ntt(i).forward(out);
    }
}
