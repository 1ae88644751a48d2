//! An encoded message: a polynomial over Q_l in NTT form, with its level and exact scale.

use crate::context::Context;
use crate::encoder::Complex;
use crate::error::CkksError;
use crate::rns::RnsPoly;

#[derive(Clone, Debug, PartialEq)]
pub struct Plaintext {
    /// NTT form over q0..q_level.
    pub poly: RnsPoly,
    pub level: usize,
    pub scale: f64,
    pub fingerprint: [u8; 32],
}

impl Plaintext {
    /// Encodes up to N/2 complex values at `level` and `scale`. Errors if a value is not finite or
    /// the scaled coefficients would not fit below Q_level.
    pub fn encode(
        ctx: &Context,
        values: &[Complex],
        level: usize,
        scale: f64,
    ) -> Result<Self, CkksError> {
        check_level(ctx, level)?;
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
        let basis = &ctx.level(level).q;
        let mut poly = basis.zero();
        // Coefficients below every prime (the usual case: weights and images at ~2^25) are rounded
        // once; each limb is then a sign fix-up. Larger ones (Delta^3 scales) reduce exactly.
        let min_q = (0..=level)
            .map(|i| basis.modulus(i).value())
            .min()
            .unwrap_or(0);
        if max < min_q as f64 / 2.0 {
            let rounded: Vec<i64> = coeffs.iter().map(|&c| c.round() as i64).collect();
            crate::par::for_each_limb(poly.data_mut(), ctx.n(), |i, limb| {
                let q = basis.modulus(i).value() as i64;
                for (x, &c) in limb.iter_mut().zip(&rounded) {
                    *x = (c + (q & (c >> 63))) as u64;
                }
                basis.ntt(i).forward(limb);
            });
        } else {
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

    /// Encodes real values.
    pub fn encode_real(
        ctx: &Context,
        values: &[f64],
        level: usize,
        scale: f64,
    ) -> Result<Self, CkksError> {
        let v: Vec<Complex> = values.iter().map(|&x| Complex::from(x)).collect();
        Self::encode(ctx, &v, level, scale)
    }

    /// The N/2 slot values. Only as many limbs as the message is wide are transformed and
    /// reconstructed (verified against one more limb, all of them if that check fails).
    pub fn decode(&self, ctx: &Context) -> Result<Vec<Complex>, CkksError> {
        if &self.fingerprint != ctx.fingerprint() {
            return Err(CkksError::ParamsMismatch);
        }
        check_level(ctx, self.level)?;
        let basis = &ctx.level(self.level).q;
        let wanted_bits = self.scale.log2() + DECODE_HEADROOM_BITS;
        let k = (1..=self.level).find(|&k| ctx.params().log_q_at(k - 1) >= wanted_bits);
        if let Some(k) = k {
            let sub = basis.slice(0..k + 1);
            let mut coeff = self.poly.slice_limbs(0..k + 1);
            sub.inverse(&mut coeff);
            if let Some(centered) = sub.to_centered_f64_checked(&coeff, k) {
                return Ok(ctx.encoder().coeffs_to_slots(&centered, self.scale));
            }
        }
        let mut coeff = self.poly.clone();
        basis.inverse(&mut coeff);
        let centered = basis.to_centered_f64(&coeff);
        Ok(ctx.encoder().coeffs_to_slots(&centered, self.scale))
    }
}

/// Bits above the scale that a decoded value may use before decoding takes more limbs.
const DECODE_HEADROOM_BITS: f64 = 40.0;

pub(crate) fn check_level(ctx: &Context, level: usize) -> Result<(), CkksError> {
    if level > ctx.max_level() {
        return Err(CkksError::Level {
            wanted: level,
            max: ctx.max_level(),
        });
    }
    Ok(())
}
