//! A CKKS ciphertext: polynomials (c0, c1[, c2]) over Q_l in NTT form that decrypt to
//! `c0 + c1*s (+ c2*s^2)`, with the level and the exact scale of the message they carry.
//!
//! The fields are private to the crate: a ciphertext is made only by encryption, the wire format
//! and the evaluator, so its level always matches its polynomials, its scale is the bookkeeping of
//! the operations that made it, and a seed is never kept once `c1` has changed.

use crate::error::CkksError;
use crate::rns::RnsPoly;

#[derive(Clone, Debug, PartialEq)]
pub struct Ciphertext {
    /// Two polynomials, or three after a multiplication without relinearization.
    pub(crate) c: Vec<RnsPoly>,
    pub(crate) level: usize,
    pub(crate) scale: f64,
    pub(crate) fingerprint: [u8; 32],
    /// Set while `c[1]` is still the expansion of this seed (a fresh secret-key encryption), so
    /// that the wire format can send 32 bytes instead of the polynomial.
    pub(crate) seed: Option<[u8; 32]>,
}

impl Ciphertext {
    /// 1 for a normal ciphertext, 2 after a multiplication without relinearization.
    pub fn degree(&self) -> usize {
        self.c.len() - 1
    }

    /// Index of the last prime of Q_l the ciphertext is defined over.
    pub fn level(&self) -> usize {
        self.level
    }

    /// The exact scale of the encrypted message.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The fingerprint of the parameter set the ciphertext belongs to.
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    /// The polynomials (NTT form over Q_level).
    pub fn parts(&self) -> &[RnsPoly] {
        &self.c
    }

    /// Whether `c1` is still the expansion of a seed (and travels as 32 bytes).
    pub fn is_seeded(&self) -> bool {
        self.seed.is_some()
    }

    /// Replaces the scale by `scale` when the two are equal within [`crate::scale::SCALE_TOLERANCE`]:
    /// pins floating-point bookkeeping to the planned value it equals. A different value is an
    /// error, never a silent change of the message.
    pub fn pin_scale(&mut self, scale: f64) -> Result<(), CkksError> {
        crate::scale::check_scales(self.scale, scale)?;
        self.scale = scale;
        Ok(())
    }
}
