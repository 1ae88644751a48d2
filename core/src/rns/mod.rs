//! Polynomials of Z_Q[X]/(X^N + 1) in residue-number-system form and the basis operations key
//! switching and rescaling are built from. One concept per file:
//!
//! - [`basis`]: an ordered list of primes and the limb-wise ring operations over it;
//! - [`poly`]: the limb-major polynomial itself;
//! - [`conversion`]: fast basis conversion (ModUp);
//! - [`mod_down`]: division with rounding by the special primes (ModDown).
//!
//! This module knows rings, not CKKS: scales, levels and keys live above it.

mod basis;
mod conversion;
mod mod_down;
mod poly;

pub use basis::RnsBasis;
pub use conversion::{BasisConverter, ConvInput};
pub use mod_down::ModDown;
pub use poly::{FreshLimb, RnsPoly};

#[cfg(test)]
mod tests;
