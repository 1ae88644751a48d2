//! Typed errors: every check on parameters, operands and wire input fails with one of these,
//! never with a panic.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum ParamsError {
    #[error("unknown parameter set {0:?}")]
    UnknownSet(String),
    #[error("ring degree 2^{0} has no 128-bit security bound (supported: 2^10..2^17)")]
    RingDegree(u32),
    #[error("insecure parameters: log2(QP) = {log_qp:.1} exceeds the 128-bit bound {bound} for N = 2^{log_n}")]
    Insecure { log_n: u32, log_qp: f64, bound: f64 },
    #[error("the modulus chain and the special primes must both be non-empty")]
    EmptyChain,
    #[error("prime sizes must be between 20 and 62 bits")]
    PrimeSize,
    #[error("dnum {0} must be between 1 and the number of Q primes")]
    Dnum(usize),
    #[error("the special primes cannot cover a key-switching digit of level {level} with at most {dnum} digits")]
    SpecialModulus { level: usize, dnum: usize },
    #[error("log2 of the scale {0} must be between 1 and 61")]
    Scale(u32),
    #[error("not enough NTT-friendly primes of {bits} bits")]
    NoPrimes { bits: u32 },
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum CkksError {
    #[error("operands belong to different parameter sets")]
    ParamsMismatch,
    #[error("level mismatch: {0} vs {1}")]
    LevelMismatch(usize, usize),
    #[error("scale mismatch: 2^{0:.4} vs 2^{1:.4}")]
    ScaleMismatch(f64, f64),
    #[error("level {wanted} is out of range (at most {max})")]
    Level { wanted: usize, max: usize },
    #[error("cannot rescale at level 0")]
    RescaleAtLevelZero,
    #[error("scale 2^{scale_bits:.1} leaves no headroom below the modulus of level {level} (2^{log_q:.1})")]
    ScaleOverflow {
        scale_bits: f64,
        level: usize,
        log_q: f64,
    },
    #[error("{given} values given for {slots} slots")]
    TooManyValues { given: usize, slots: usize },
    #[error("value {0} is not finite")]
    NotFinite(f64),
    #[error("no key for Galois element {0} (rotation or conjugation not in the key set)")]
    MissingGaloisKey(u64),
    #[error("the key covers levels up to {key_level}, the ciphertext is at level {level}")]
    KeyLevel { key_level: usize, level: usize },
    #[error("no relinearization key")]
    MissingRelinKey,
    #[error("a key for level {level} cannot be derived (too few primes of Q above it)")]
    NotDerivable { level: usize },
    #[error("the keys held do not compose to Galois element {galois_element} at the level a key for level {level} is derived at")]
    NoDerivation { galois_element: u64, level: usize },
    #[error("ciphertext of degree {0} where degree 1 is required")]
    Degree(usize),
    #[error("rotation-and-sum needs a power-of-two count, got {0}")]
    Count(usize),
    #[error("tensor does not fit its slot layout: {0}")]
    Layout(String),
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WireError {
    #[error("input of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("input truncated: {needed} bytes needed, {len} given")]
    Truncated { needed: usize, len: usize },
    #[error("{0} trailing bytes after the object")]
    Trailing(usize),
    #[error("not a Blindsight object (bad magic)")]
    Magic,
    #[error("unsupported format version {0}")]
    Version(u8),
    #[error("expected a {expected}, found object kind {found}")]
    Kind { expected: &'static str, found: u8 },
    #[error("object was made for other parameters (fingerprint mismatch)")]
    Fingerprint,
    #[error("invalid field: {0}")]
    Field(&'static str),
    #[error("residue out of range for prime {prime_index}")]
    Residue { prime_index: usize },
}
