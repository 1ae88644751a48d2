//! Scale bookkeeping shared by every CKKS object: when two scales count as equal. Written once so
//! that the evaluator, the wire format and the network planner agree on the tolerance.

use crate::error::CkksError;

/// Relative difference below which two scales count as equal (the products and quotients of
/// primes that make a scale carry about 1e-16 of rounding per operation).
pub const SCALE_TOLERANCE: f64 = 1e-9;

/// Whether `a` and `b` are the same scale up to [`SCALE_TOLERANCE`].
pub fn scales_equal(a: f64, b: f64) -> bool {
    (a / b - 1.0).abs() <= SCALE_TOLERANCE
}

/// [`scales_equal`] as a `Result`, naming both scales in bits.
pub fn check_scales(a: f64, b: f64) -> Result<(), CkksError> {
    if !scales_equal(a, b) {
        return Err(CkksError::ScaleMismatch(a.log2(), b.log2()));
    }
    Ok(())
}
