//! A CKKS ciphertext: polynomials (c0, c1[, c2]) over Q_l in NTT form that decrypt to
//! `c0 + c1*s (+ c2*s^2)`, with the level and the exact scale of the message they carry.

use crate::rns::RnsPoly;

#[derive(Clone, Debug, PartialEq)]
pub struct Ciphertext {
    /// Two polynomials, or three after a multiplication without relinearization.
    pub c: Vec<RnsPoly>,
    pub level: usize,
    pub scale: f64,
    pub fingerprint: [u8; 32],
    /// Set while `c[1]` is still the expansion of this seed (a fresh secret-key encryption), so
    /// that the wire format can send 32 bytes instead of the polynomial.
    pub seed: Option<[u8; 32]>,
}

impl Ciphertext {
    /// 1 for a normal ciphertext, 2 after a multiplication without relinearization.
    pub fn degree(&self) -> usize {
        self.c.len() - 1
    }
}
