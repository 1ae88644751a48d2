//! Randomness: OS entropy through `getrandom`, ChaCha20 as the CSPRNG, and the one fixed expansion
//! of a 32-byte seed into a uniform polynomial that native and wasm builds must agree on (the
//! uniform halves of keys and symmetric ciphertexts travel as seeds).
//!
//! Everything sampled here for secrets (ternary keys and encryption randomness, Gaussian errors,
//! their residues) comes back in a zeroizing type, and the CSPRNG that produced it is wiped when
//! dropped: see [`SecretPoly`].

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use zeroize::{Zeroize, Zeroizing};

use crate::params::ERROR_STD_DEV;
use crate::rns::{RnsBasis, RnsPoly};

/// A polynomial from which the secret key can be recovered: a copy of `s` or of `s^2`, `s(X^g)`,
/// `-s`, a product `a*s`, an error or encryption randomness before it is hidden in a public value.
/// Wiped when dropped, which also happens on a `?` return and while a panic unwinds.
///
/// An operation that replaces the polynomial behind a `&mut` (`RnsBasis::mul_assign` does
/// `*a = a * b`) frees the old buffer unwiped: on a `SecretPoly` use the in-place operations
/// (`add_assign`, `sub_assign`, `neg_assign`, `mul_add_assign`) or the allocating `RnsBasis::mul`
/// and wrap its result. [`declassify`] takes out a value that has become public.
pub type SecretPoly = Zeroizing<RnsPoly>;

/// The polynomial out of a [`SecretPoly`] whose value is now public (`b = -a*s + e` once complete),
/// without a copy: the wrapper is left empty, with nothing to wipe.
pub fn declassify(mut p: SecretPoly) -> RnsPoly {
    let n = p.n();
    std::mem::replace(&mut *p, RnsPoly::zero(n, 0))
}

/// ChaCha20 whose state (key, counter and buffered output) is wiped on drop: the state replays
/// every value drawn from it, so the generator that drew a secret key or an error is as secret
/// as they are.
pub struct SecretRng(ChaCha20Rng);

// `zeroize_flat_type` below needs plain data: no heap, no drop glue, all-zero bits valid.
// `ChaCha20Rng` is arrays of words and an index; a change to that fails here.
const _: () = assert!(!std::mem::needs_drop::<ChaCha20Rng>());

impl Drop for SecretRng {
    fn drop(&mut self) {
        // SAFETY: `ChaCha20Rng` owns only integer arrays and an index (no references, pointers
        // or drop glue, checked above), for which all-zero bytes are valid; it is not used again.
        unsafe { zeroize::zeroize_flat_type(&mut self.0) }
    }
}

impl RngCore for SecretRng {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.0.fill_bytes(dst)
    }
}

/// 32 bytes from the operating system (browser: `crypto.getRandomValues`).
pub fn os_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("the operating system's random source failed");
    seed
}

/// A CSPRNG seeded from the OS; the seed is wiped once the generator holds it, the generator when
/// dropped.
pub fn secure_rng() -> SecretRng {
    let mut seed = os_seed();
    let rng = SecretRng(ChaCha20Rng::from_seed(seed));
    seed.zeroize();
    rng
}

/// The uniform polynomial a seed stands for: ChaCha20 keyed by the seed, stream `stream` (one per
/// key digit), limb by limb in basis order, each residue by rejection sampling on the prime's bit
/// width. The values are taken as NTT-domain residues (uniform either way).
pub fn expand_uniform(basis: &RnsBasis, seed: &[u8; 32], stream: u64) -> RnsPoly {
    let mut rng = ChaCha20Rng::from_seed(*seed);
    rng.set_stream(stream);
    let mut out = basis.zero();
    for i in 0..basis.len() {
        let q = basis.modulus(i).value();
        let mask = u64::MAX >> q.leading_zeros();
        for x in out.limb_mut(i) {
            *x = loop {
                let v = rng.next_u64() & mask;
                if v < q {
                    break v;
                }
            };
        }
    }
    out
}

/// Uniform ternary coefficients in {-1, 0, 1} (allocated once at their final size, wiped on drop).
pub fn ternary(rng: &mut impl RngCore, n: usize) -> Zeroizing<Vec<i8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(n));
    let mut buf = [0u8; 64];
    while out.len() < n {
        rng.fill_bytes(&mut buf);
        for &b in &buf {
            // 255 is rejected so that 0..=254 maps evenly onto three values
            if b < 255 && out.len() < n {
                out.push((b % 3) as i8 - 1);
            }
        }
    }
    buf.zeroize();
    out
}

/// Rounded Gaussian of standard deviation 3.2, truncated at 6 sigma (allocated once at their final
/// size, wiped on drop).
pub fn gaussian(rng: &mut impl RngCore, n: usize) -> Zeroizing<Vec<i64>> {
    let bound = (6.0 * ERROR_STD_DEV).ceil();
    let unit = |rng: &mut dyn RngCore| ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let mut out = Zeroizing::new(Vec::with_capacity(n));
    while out.len() < n {
        let (u1, u2) = (unit(rng), unit(rng));
        let r = (-2.0 * u1.ln()).sqrt() * ERROR_STD_DEV;
        let t = 2.0 * std::f64::consts::PI * u2;
        for z in [r * t.cos(), r * t.sin()] {
            let z = z.round();
            if z.abs() <= bound && out.len() < n {
                out.push(z as i64);
            }
        }
    }
    out
}

/// Residues of small signed coefficients over a basis, in coefficient form. The coefficients are
/// always secret here (a key, an error, encryption randomness), so are their residues.
pub fn small_to_rns<T: Copy + Into<i64>>(basis: &RnsBasis, coeffs: &[T]) -> SecretPoly {
    let mut out = SecretPoly::new(basis.zero());
    for i in 0..basis.len() {
        let m = *basis.modulus(i);
        for (x, &c) in out.limb_mut(i).iter_mut().zip(coeffs) {
            *x = m.from_i64(c.into());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ternary_and_gaussian_statistics() {
        let mut rng = ChaCha20Rng::from_seed([7; 32]);
        let t = ternary(&mut rng, 30000);
        let counts = [-1i8, 0, 1].map(|v| t.iter().filter(|&&x| x == v).count());
        for c in counts {
            assert!((9000..11000).contains(&c), "{counts:?}");
        }
        let g = gaussian(&mut rng, 30000);
        let var = g.iter().map(|&x| (x * x) as f64).sum::<f64>() / g.len() as f64;
        assert!(
            (var - 3.2f64.powi(2) - 1.0 / 12.0).abs() < 0.6,
            "variance {var}"
        );
        assert!(g.iter().all(|x| x.abs() <= 20));
    }

    #[test]
    fn os_seeds_differ() {
        assert_ne!(os_seed(), os_seed());
    }
}
