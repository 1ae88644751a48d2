//! The secret key: ternary coefficients from the OS-seeded CSPRNG, never serialized by the wire
//! format. Only the client side builds this module (feature `secret-key`): the server's code cannot
//! name it.
//!
//! The key and every copy made of it (its residues at a level, with or without P) live in
//! zeroizing types ([`SecretPoly`]), allocated once at their final size, so each is wiped when
//! dropped, on every path: normal returns, `?` returns and unwinding panics.

use zeroize::Zeroizing;

use crate::context::Context;
use crate::error::CkksError;
use crate::rns::RnsPoly;
use crate::sampler::{secure_rng, small_to_rns, ternary, SecretPoly};

/// The secret key: ternary coefficients, and their NTT form over every prime (Q then P). Both are
/// wiped on drop.
pub struct SecretKey {
    coeffs: Zeroizing<Vec<i8>>,
    /// NTT form over q0..qL, p0..p(K-1).
    ntt: SecretPoly,
    fingerprint: [u8; 32],
}

impl SecretKey {
    /// A fresh secret key from the OS-seeded CSPRNG.
    pub fn generate(ctx: &Context) -> Self {
        let mut rng = secure_rng();
        Self::from_coeffs(ctx, ternary(&mut rng, ctx.n()))
    }

    /// NTT form over q0..q_level (no P).
    pub(crate) fn at_q(&self, level: usize) -> SecretPoly {
        SecretPoly::new(self.ntt.slice_limbs(0..level + 1))
    }

    /// NTT form over q0..q_level followed by the special primes of a key made at `level`, copied
    /// once into a buffer of its final size.
    pub(crate) fn at_qp(&self, ctx: &Context, level: usize) -> SecretPoly {
        let nq = level + 1;
        let p_start = ctx.max_level() + 1;
        let limbs = nq + ctx.params().key_layout(level).special;
        SecretPoly::new(RnsPoly::from_limbs(ctx.n(), limbs, |i, limb| {
            let src = if i < nq { i } else { p_start + i - nq };
            limb.copy_from_slice(self.ntt.limb(src));
        }))
    }

    /// Hamming weight (for tests of the distribution).
    pub fn hamming_weight(&self) -> usize {
        self.coeffs.iter().filter(|&&c| c != 0).count()
    }

    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    /// The key as bytes for the client's own storage (the browser's IndexedDB, so that a reload
    /// can resume a session): the fingerprint, then one byte per coefficient. Zeroized on drop;
    /// never sent anywhere by this library.
    pub fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(32 + self.coeffs.len()));
        out.extend_from_slice(&self.fingerprint);
        out.extend(self.coeffs.iter().map(|&c| c as u8));
        out
    }

    /// The inverse of [`SecretKey::to_secret_bytes`]: checks the fingerprint, the length and that
    /// every coefficient is ternary. `bytes` stay the caller's to wipe.
    pub fn from_secret_bytes(ctx: &Context, bytes: &[u8]) -> Result<Self, CkksError> {
        if bytes.len() != 32 + ctx.n() {
            return Err(CkksError::Layout(format!(
                "a secret key for this parameter set is {} bytes, got {}",
                32 + ctx.n(),
                bytes.len()
            )));
        }
        if &bytes[..32] != ctx.fingerprint() {
            return Err(CkksError::ParamsMismatch);
        }
        // exact size (a slice's iterator), so no reallocation leaves a copy behind
        let coeffs: Zeroizing<Vec<i8>> =
            Zeroizing::new(bytes[32..].iter().map(|&b| b as i8).collect());
        if coeffs.iter().any(|c| !(-1..=1).contains(c)) {
            return Err(CkksError::Layout(
                "secret key coefficients must be ternary".into(),
            ));
        }
        Ok(Self::from_coeffs(ctx, coeffs))
    }

    fn from_coeffs(ctx: &Context, coeffs: Zeroizing<Vec<i8>>) -> Self {
        let all = ctx.q_basis().concat(ctx.p_basis());
        let mut ntt = small_to_rns(&all, &coeffs);
        all.forward(&mut ntt);
        Self {
            coeffs,
            ntt,
            fingerprint: *ctx.fingerprint(),
        }
    }
}
