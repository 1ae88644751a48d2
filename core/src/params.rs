//! CKKS parameter sets: ring degree, the ciphertext modulus chain Q = q0..qL, the special primes P
//! of hybrid key switching, the number of key-switching digits (dnum) and the default scale.
//!
//! Construction refuses any set whose log2(QP) exceeds the 128-bit bound for its ring degree
//! (HE standard, ternary secret, sigma 3.2, as tabulated by OpenFHE). There is no way around the
//! check: insecure sets cannot be built.

use sha2::{Digest, Sha256};

use crate::arith::{ntt_primes, MAX_MODULUS_BITS};
use crate::error::ParamsError;

/// Standard deviation of the error distribution (discrete Gaussian, truncated at 6 sigma).
pub const ERROR_STD_DEV: f64 = 3.2;

/// Largest log2(QP) for 128-bit classical security with a uniform ternary secret.
pub fn max_log_qp_128(log_n: u32) -> Option<f64> {
    Some(match log_n {
        10 => 27.0,
        11 => 54.0,
        12 => 109.0,
        13 => 218.0,
        14 => 438.0,
        15 => 881.0,
        16 => 1747.0,
        17 => 3523.0,
        _ => return None,
    })
}

/// What a parameter set is made of, before primes are chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub log_n: u32,
    /// Bit sizes of q0, q1, ..., qL (q0 is the last prime left before decryption).
    pub q_bits: Vec<u32>,
    /// Bit sizes of the special primes p0..p(K-1).
    pub p_bits: Vec<u32>,
    /// Most digits a key-switching key may have (1..=L+1). Each key level gets the fewest digits
    /// whose largest one the special primes cover (see [`KeyLayout`]); construction fails if some
    /// level would need more than `dnum`.
    pub dnum: usize,
    /// log2 of the default scale Delta.
    pub log_scale: u32,
}

/// The named sets this crate ships. The `N16_D*` sets match the peer benchmarks' Q chains.
pub const NAMED_SETS: &[&str] = &["N12_TINY", "N14_TEST", "N16_D20", "N16_D30", "N16_L39"];

impl ParamSpec {
    /// A shipped set by name.
    pub fn named(name: &str) -> Result<Self, ParamsError> {
        let spec = |log_n, q_bits: Vec<u32>, p_bits: Vec<u32>, dnum, log_scale| Self {
            name: name.to_string(),
            log_n,
            q_bits,
            p_bits,
            dnum,
            log_scale,
        };
        let chain = |first: u32, bits: u32, count: usize| {
            let mut v = vec![first];
            v.extend(std::iter::repeat_n(bits, count));
            v
        };
        Ok(match name {
            // Smallest secure ring: wire-format and property tests (no meaningful depth).
            "N12_TINY" => spec(12, vec![36, 30], vec![42], 2, 25),
            // Fast functional tests: 5 primes of 50 bits carry 10 levels at Delta = 2^25 (two
            // levels per prime) or 5 at 2^50; dnum 3 exercises multi-digit key switching.
            "N14_TEST" => spec(14, chain(60, 50, 5), vec![61, 61], 3, 25),
            // The peers' N16_D20 chain (60 + 20x40 bits); P of 7 IFMA-friendly primes, dnum 3.
            "N16_D20" => spec(16, chain(60, 40, 20), vec![50; 7], 3, 40),
            // The peers' N16_D30 chain (60 + 30x40 bits); dnum 3 leaves 480 bits for P.
            "N16_D30" => spec(16, chain(60, 40, 30), vec![48; 10], 3, 40),
            // ResNet-20 depth: 21 primes of 50 bits (below 2^50 for the IFMA NTT), two levels of
            // Delta = 2^25 per prime: about 40 multiplicative levels; 13 special primes, dnum 2.
            // The tenth and eleventh special primes are small (20 and 42 bits): nine 50-bit
            // primes and the 20-bit one cover a digit of nine primes (levels 16-17) with 19.6
            // bits to spare, the 42-bit one more a digit of ten (18-19) with 11.6, and one 50-bit
            // prime more a digit of eleven (20) with 11.6: 30 or 38 bits less per digit than
            // 50-bit primes, 0.5 or 0.6 MB less per key (the wire format packs residues at each
            // prime's width), and rotations as precise (see SPECIAL_MARGIN_BITS).
            "N16_L39" => spec(16, vec![50; 21], special_n16_l39(), 2, 25),
            _ => return Err(ParamsError::UnknownSet(name.to_string())),
        })
    }

    /// Chooses the primes and checks the set (security bound included).
    pub fn build(&self) -> Result<Params, ParamsError> {
        Params::new(self.clone())
    }
}

/// N16_L39's special primes: nine of 50 bits, one of 20, one of 42, two of 50.
fn special_n16_l39() -> Vec<u32> {
    let mut v = vec![50; 9];
    v.extend([20, 42, 50, 50]);
    v
}

/// The least extra bits of the special modulus over a key's largest digit that a set may have.
/// Measured at N16_L39 (N = 2^16, a rotation at 2^25, 2026-12-07): 5.6 bits spare gave an error
/// of 0.1, 40x ModDown's own rounding (2.4e-3); 9.6 bits 1.7x; 11.6 bits and more no more than
/// the rounding; 10 bits short, 4.5. The shipped product set keeps at least 11.6 bits (its test
/// checks 11); the small test sets rely on the floor.
pub const SPECIAL_MARGIN_BITS: f64 = 5.0;

/// Extra margin of a derived key's special modulus (see [`Params::derived_layout`]): a derived key
/// carries the noise of the rotations that made it (about 2^10 against a fresh key's 2^2), which
/// multiplies its switching noise; 10 more bits keep that noise where a fresh key's is. With
/// 50-bit primes it costs no prime at any level of N16_L39.
pub const DERIVED_MARGIN_BITS: f64 = SPECIAL_MARGIN_BITS + 10.0;

/// Most digits of a derived key, as a multiple of the set's `dnum`. A derived key costs no upload,
/// only server memory and switching time, so it may have more digits than an uploaded one: twice
/// as many reach three levels further up at N16_L39 (13-15, four digits at 15), where the
/// conjugation key of complex packing is still small enough to upload.
pub const DERIVED_DIGITS_PER_DNUM: usize = 2;

/// Where a switching key's special primes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpecialPrimes {
    /// p0..p(special-1): keys the client makes. They must serve the top level, above which Q has
    /// no primes.
    P,
    /// q(first)..q(first+special-1), the primes of Q just above the key's level: keys the server
    /// derives. Such a key lies inside Q, like a ciphertext at level first+special-1, so keys of
    /// that level can rotate it (`derive`).
    Q { first: usize },
}

/// How a switching key made for ciphertext level `l` is built: digits of `alpha` primes of Q_l
/// (by prime index, so the key also serves every lower level) and `special` special primes.
/// Sized per level: a key used only at low levels gets one digit and a special modulus just
/// above Q_l instead of the top level's, which is what makes it smaller and its switches cheaper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyLayout {
    /// Primes of Q per digit (the last digit may be shorter).
    pub alpha: usize,
    /// Number of special primes.
    pub special: usize,
    /// Which primes they are.
    pub primes: SpecialPrimes,
}

impl KeyLayout {
    /// Digits of a decomposition at ciphertext `level` under this layout.
    pub fn digits(&self, level: usize) -> usize {
        (level + 1).div_ceil(self.alpha)
    }

    /// For special primes in Q (a derived key), the level m whose ciphertexts have the key's
    /// shape: it lies over Q_m, so keys serving level m can rotate it.
    pub fn derived_at(&self) -> Option<usize> {
        match self.primes {
            SpecialPrimes::Q { first } => Some(first + self.special - 1),
            SpecialPrimes::P => None,
        }
    }
}

/// A validated parameter set with its primes.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    spec: ParamSpec,
    n: usize,
    q: Vec<u64>,
    p: Vec<u64>,
    log_qp: f64,
    /// The key layout of each level.
    layouts: Vec<KeyLayout>,
    fingerprint: [u8; 32],
}

impl Params {
    fn new(spec: ParamSpec) -> Result<Self, ParamsError> {
        let bound = max_log_qp_128(spec.log_n).ok_or(ParamsError::RingDegree(spec.log_n))?;
        if spec.q_bits.is_empty() || spec.p_bits.is_empty() {
            return Err(ParamsError::EmptyChain);
        }
        let nominal: u32 = spec.q_bits.iter().chain(&spec.p_bits).sum();
        if nominal as f64 > bound + 1.0 {
            return Err(ParamsError::Insecure {
                log_n: spec.log_n,
                log_qp: nominal as f64,
                bound,
            });
        }
        if spec
            .q_bits
            .iter()
            .chain(&spec.p_bits)
            .any(|&b| !(20..=MAX_MODULUS_BITS).contains(&b))
        {
            return Err(ParamsError::PrimeSize);
        }
        if spec.dnum == 0 || spec.dnum > spec.q_bits.len() {
            return Err(ParamsError::Dnum(spec.dnum));
        }
        if spec.log_scale == 0 || spec.log_scale >= 62 {
            return Err(ParamsError::Scale(spec.log_scale));
        }
        let n = 1usize << spec.log_n;
        let two_n = 2 * n as u64;
        // Primes of equal size are drawn in order from one descending list, so that the chain
        // is deterministic and all primes are distinct.
        let mut used: Vec<u64> = Vec::new();
        let mut pick = |bits: u32| -> Result<u64, ParamsError> {
            let p = ntt_primes(bits, two_n, 1, &used).ok_or(ParamsError::NoPrimes { bits })?[0];
            used.push(p);
            Ok(p)
        };
        let q = spec
            .q_bits
            .iter()
            .map(|&b| pick(b))
            .collect::<Result<Vec<_>, _>>()?;
        let p = spec
            .p_bits
            .iter()
            .map(|&b| pick(b))
            .collect::<Result<Vec<_>, _>>()?;
        let log_qp: f64 = q.iter().chain(&p).map(|&x| (x as f64).log2()).sum();
        if log_qp > bound {
            return Err(ParamsError::Insecure {
                log_n: spec.log_n,
                log_qp,
                bound,
            });
        }
        let layouts = (0..q.len())
            .map(|l| {
                key_layout(
                    &q[..=l],
                    &p,
                    spec.dnum,
                    SPECIAL_MARGIN_BITS,
                    SpecialPrimes::P,
                )
                .ok_or(ParamsError::SpecialModulus {
                    level: l,
                    dnum: spec.dnum,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut h = Sha256::new();
        h.update(b"blindsight-ckks-params-v2");
        h.update(spec.log_n.to_le_bytes());
        for k in &layouts {
            h.update((k.alpha as u32).to_le_bytes());
            h.update((k.special as u32).to_le_bytes());
        }
        for list in [&q, &p] {
            h.update((list.len() as u32).to_le_bytes());
            for x in list.iter() {
                h.update(x.to_le_bytes());
            }
        }
        h.update(ERROR_STD_DEV.to_le_bytes());
        let fingerprint = h.finalize().into();
        Ok(Self {
            spec,
            n,
            q,
            p,
            log_qp,
            layouts,
            fingerprint,
        })
    }

    /// A shipped set by name, built.
    pub fn named(name: &str) -> Result<Self, ParamsError> {
        ParamSpec::named(name)?.build()
    }

    pub fn spec(&self) -> &ParamSpec {
        &self.spec
    }
    pub fn name(&self) -> &str {
        &self.spec.name
    }
    /// Ring degree N.
    pub fn n(&self) -> usize {
        self.n
    }
    pub fn log_n(&self) -> u32 {
        self.spec.log_n
    }
    /// Complex slots: N/2.
    pub fn slots(&self) -> usize {
        self.n / 2
    }
    pub fn q(&self) -> &[u64] {
        &self.q
    }
    pub fn p(&self) -> &[u64] {
        &self.p
    }
    /// Highest level L (a fresh ciphertext has L+1 primes).
    pub fn max_level(&self) -> usize {
        self.q.len() - 1
    }
    pub fn log_qp(&self) -> f64 {
        self.log_qp
    }
    /// log2 of the product q0..ql.
    pub fn log_q_at(&self, level: usize) -> f64 {
        self.q[..=level].iter().map(|&x| (x as f64).log2()).sum()
    }
    /// Digits of a top-level key (the most any key has).
    pub fn dnum(&self) -> usize {
        self.digits_at(self.max_level())
    }
    /// The layout of a switching key made for ciphertext level `level` (at most the top level).
    /// Digits are fixed by prime index, so such a key also works at every lower level, under its
    /// own layout.
    pub fn key_layout(&self, level: usize) -> KeyLayout {
        self.layouts[level.min(self.layouts.len() - 1)]
    }
    /// Digits of a key made at `level`.
    pub fn digits_at(&self, level: usize) -> usize {
        self.key_layout(level).digits(level)
    }
    /// The layout of a key for ciphertext `level` that the server derives instead of receiving
    /// it: its special primes are those of Q just above `level` (with [`DERIVED_MARGIN_BITS`]),
    /// so that the key is a pair of polynomials over Q_m, m = level + special, which the keys
    /// uploaded for level m and above can rotate. The fewest digits (at most
    /// [`DERIVED_DIGITS_PER_DNUM`] times the set's `dnum`: more make the key larger and its
    /// switches dearer) that fit below the top level; none where no digit count does (near the
    /// top).
    pub fn derived_layout(&self, level: usize) -> Option<KeyLayout> {
        let q = self.q.get(..=level)?;
        let above = &self.q[level + 1..];
        let primes = SpecialPrimes::Q { first: level + 1 };
        let most = DERIVED_DIGITS_PER_DNUM * self.spec.dnum;
        key_layout(q, above, most, DERIVED_MARGIN_BITS, primes)
    }
    pub fn default_scale(&self) -> f64 {
        (self.spec.log_scale as f64).exp2()
    }
    /// SHA-256 over the primes, ring degree and digit layout: objects carry it so that nothing is
    /// ever combined across parameter sets.
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }
}

/// The smallest digit count (at most `max_digits`) whose largest digit of `q` the candidate
/// special primes `p` cover with `margin` bits to spare, and the fewest leading ones that do.
fn key_layout(
    q: &[u64],
    p: &[u64],
    max_digits: usize,
    margin: f64,
    primes: SpecialPrimes,
) -> Option<KeyLayout> {
    (1..=max_digits.min(q.len())).find_map(|digits| {
        let alpha = q.len().div_ceil(digits);
        let widest = q.chunks(alpha).map(log2_product).fold(0.0, f64::max);
        let special = (1..=p.len()).find(|&k| log2_product(&p[..k]) >= widest + margin)?;
        Some(KeyLayout {
            alpha,
            special,
            primes,
        })
    })
}

/// log2 of a product of primes.
fn log2_product(xs: &[u64]) -> f64 {
    xs.iter().map(|&x| (x as f64).log2()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_sets_are_secure_and_distinct() {
        for name in NAMED_SETS {
            let p = Params::named(name).unwrap();
            assert!(p.log_qp() <= max_log_qp_128(p.log_n()).unwrap(), "{name}");
            let mut all: Vec<u64> = p.q().iter().chain(p.p()).copied().collect();
            all.sort();
            all.dedup();
            assert_eq!(all.len(), p.q().len() + p.p().len());
            for &x in &all {
                assert_eq!(x % (2 * p.n() as u64), 1);
            }
        }
    }

    #[test]
    fn resnet_set_has_room_for_39_levels() {
        let p = Params::named("N16_L39").unwrap();
        // two levels of Delta per prime after q0
        let levels = 2 * p.max_level();
        assert!(levels >= 39, "{levels}");
        assert!(p.q().iter().all(|&q| q < 1 << 50), "IFMA-friendly");
    }

    #[test]
    fn key_layouts_shrink_with_the_level() {
        let p = Params::named("N16_L39").unwrap();
        let bits = |xs: &[u64]| xs.iter().map(|&x| (x as f64).log2()).sum::<f64>();
        let mut last_size = 0;
        for l in 0..=p.max_level() {
            let k = p.key_layout(l);
            // every digit is covered by the special primes with the margin
            let widest = p.q()[..=l].chunks(k.alpha).map(bits).fold(0.0, f64::max);
            assert!(
                bits(&p.p()[..k.special]) >= widest + SPECIAL_MARGIN_BITS,
                "{l}"
            );
            // and one fewer special prime would not be
            assert!(
                bits(&p.p()[..k.special - 1]) < widest + SPECIAL_MARGIN_BITS,
                "{l}"
            );
            let size = k.digits(l) * (l + 1 + k.special);
            assert!(size >= last_size, "keys grow with the level");
            last_size = size;
        }
        // the small special primes (20 and 42 bits) serve every key of levels 16-20, each
        // special modulus at least 11 bits above its digit
        assert!(p.p()[9] < 1 << 20 && p.p()[10] < 1 << 42);
        for l in 0..=p.max_level() {
            let k = p.key_layout(l);
            let widest = p.q()[..=l].chunks(k.alpha).map(bits).fold(0.0, f64::max);
            assert!(bits(&p.p()[..k.special]) >= widest + 11.0, "{l}");
        }
        assert_eq!(p.p().iter().filter(|&&x| x < 1 << 49).count(), 2);
        for (l, special) in [(16, 10), (17, 10), (18, 11), (19, 11), (20, 12)] {
            assert_eq!(p.key_layout(l).special, special, "{l}");
        }
        // two digits at the top (the bound leaves no room for one), one below level 12
        assert_eq!(
            p.key_layout(20),
            KeyLayout {
                alpha: 11,
                special: 12,
                primes: SpecialPrimes::P,
            }
        );
        assert_eq!(p.dnum(), 2);
        assert_eq!(
            p.key_layout(12),
            KeyLayout {
                alpha: 7,
                special: 8,
                primes: SpecialPrimes::P,
            }
        );
        assert_eq!(
            p.key_layout(6),
            KeyLayout {
                alpha: 7,
                special: 8,
                primes: SpecialPrimes::P,
            }
        );
        assert_eq!(
            p.key_layout(1),
            KeyLayout {
                alpha: 2,
                special: 3,
                primes: SpecialPrimes::P,
            }
        );
        // derived keys: special primes from Q above the level, two digits at 11 (one would
        // need 13 primes above it), four at 15, none above (six digits of three primes)
        let derived = |l| p.derived_layout(l);
        for l in 0..=p.max_level() {
            let Some(k) = derived(l) else { continue };
            let SpecialPrimes::Q { first } = k.primes else {
                panic!("{l}")
            };
            assert_eq!(first, l + 1);
            assert!(first + k.special <= p.q().len(), "{l}");
            let widest = p.q()[..=l].chunks(k.alpha).map(bits).fold(0.0, f64::max);
            let special = bits(&p.q()[first..first + k.special]);
            assert!(special >= widest + DERIVED_MARGIN_BITS, "{l}");
        }
        let q_from = |first| SpecialPrimes::Q { first };
        assert_eq!(derived(20), None);
        assert_eq!(derived(16), None, "six digits of 3 primes");
        assert_eq!(
            derived(15),
            Some(KeyLayout {
                alpha: 4,
                special: 5,
                primes: q_from(16)
            })
        );
        assert_eq!(derived(13).map(|k| k.digits(13)), Some(3));
        assert_eq!(
            derived(12),
            Some(KeyLayout {
                alpha: 7,
                special: 8,
                primes: q_from(13)
            })
        );
        assert_eq!(
            derived(11),
            Some(KeyLayout {
                alpha: 6,
                special: 7,
                primes: q_from(12)
            })
        );
        assert_eq!(
            derived(6),
            Some(KeyLayout {
                alpha: 7,
                special: 8,
                primes: q_from(7)
            })
        );
        // too few special primes for any digit count allowed
        let mut spec = ParamSpec::named("N14_TEST").unwrap();
        spec.dnum = 2;
        assert!(matches!(
            spec.build(),
            Err(ParamsError::SpecialModulus { .. })
        ));
    }

    #[test]
    fn insecure_sets_are_refused() {
        // PAPER's ResNet parameters: N = 2^15 with 906 bits.
        let mut q_bits = vec![22];
        q_bits.extend(std::iter::repeat_n(42, 20));
        let spec = ParamSpec {
            name: "paper".into(),
            log_n: 15,
            q_bits,
            p_bits: vec![44],
            dnum: 21,
            log_scale: 21,
        };
        assert!(matches!(spec.build(), Err(ParamsError::Insecure { .. })));
        let mut big = ParamSpec::named("N16_D20").unwrap();
        big.p_bits = vec![60; 15];
        assert!(matches!(big.build(), Err(ParamsError::Insecure { .. })));
        let mut odd = ParamSpec::named("N14_TEST").unwrap();
        odd.log_n = 9;
        assert!(matches!(odd.build(), Err(ParamsError::RingDegree(9))));
    }

    #[test]
    fn fingerprint_depends_on_primes() {
        let a = Params::named("N14_TEST").unwrap();
        let mut spec = a.spec().clone();
        spec.q_bits[1] = 49;
        let b = spec.build().unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(
            a.fingerprint(),
            Params::named("N14_TEST").unwrap().fingerprint()
        );
    }
}
