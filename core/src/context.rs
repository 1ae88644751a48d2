//! Everything precomputed for one parameter set: NTT plans, the bases of every level, the encoder
//! tables, and (built on first use, then shared) the ModUp and ModDown converters of hybrid key
//! switching for each pair of ciphertext level and key layout, and the automorphism permutations.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::encoder::Encoder;
use crate::error::{CkksError, ParamsError};
use crate::ntt::{automorphism_permutation, SubringNtt};
use crate::params::{KeyLayout, Params, SpecialPrimes};
use crate::rns::{BasisConverter, ModDown, RnsBasis};

/// Precomputation for ciphertexts at one level l (primes q0..ql).
pub struct LevelContext {
    /// Q_l.
    pub q: RnsBasis,
}

/// Key switching of a ciphertext at level l with a key of one layout (made at level >= l).
pub struct SwitchContext {
    pub layout: KeyLayout,
    /// Q_l followed by the layout's special primes (called P whichever primes they are).
    pub qp: RnsBasis,
    /// For each digit j: conversion from its primes to the rest of Q_l ++ P.
    pub mod_up: Vec<DigitConverter>,
    pub mod_down: ModDown,
    /// P mod q_i for the limbs of Q_l: what multiplies a ciphertext raised into Q_l ++ P
    /// (`RaisedCiphertext`).
    pub p_mod_q: Vec<u64>,
}

impl SwitchContext {
    fn new(q: &RnsBasis, p: &RnsBasis, level: usize, layout: KeyLayout) -> Self {
        let ql = q.slice(0..level + 1);
        let p = match layout.primes {
            SpecialPrimes::P => p.slice(0..layout.special),
            SpecialPrimes::Q { first } => q.slice(first..first + layout.special),
        };
        let alpha = layout.alpha;
        let mod_up = (0..layout.digits(level))
            .map(|j| {
                let range = j * alpha..((j + 1) * alpha).min(level + 1);
                let rest = ql
                    .slice(0..range.start)
                    .concat(&ql.slice(range.end..level + 1))
                    .concat(&p);
                DigitConverter {
                    conv: BasisConverter::new(&ql.slice(range.clone()), &rest),
                    range,
                }
            })
            .collect();
        let p_mod_q = ql
            .moduli()
            .iter()
            .map(|m| {
                p.moduli()
                    .iter()
                    .fold(1u64, |acc, pk| m.mul(acc, m.reduce(pk.value())))
            })
            .collect();
        Self {
            layout,
            qp: ql.concat(&p),
            mod_down: ModDown::new(&ql, &p),
            mod_up,
            p_mod_q,
        }
    }
}

/// ModUp of one digit: which limbs of Q_l it holds and how to convert it to the others.
pub struct DigitConverter {
    /// The digit's primes are limbs `range` of Q_l.
    pub range: std::ops::Range<usize>,
    /// From the digit's primes to (Q_l without the digit) ++ P, in that order.
    pub conv: BasisConverter,
}

pub struct Context {
    params: Params,
    encoder: Encoder,
    /// q0..qL.
    q: RnsBasis,
    /// p0..p(K-1).
    p: RnsBasis,
    levels: Vec<LevelContext>,
    switches: Mutex<HashMap<(usize, KeyLayout), Arc<SwitchContext>>>,
    perms: Mutex<HashMap<u64, Arc<Vec<u32>>>>,
    /// `subrings[i][t - 1]`: prime q_i's transform of polynomials in X^(2^t), made at first use.
    subrings: Vec<Vec<OnceLock<Option<SubringNtt>>>>,
}

/// The largest t for which plaintexts in X^(2^t) are transformed at 1/2^t of the size (slots
/// repeating every N/32 or more often).
pub const MAX_SUBRING_LOG: u32 = 4;

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("params", &self.params.name())
            .finish()
    }
}

impl Context {
    pub fn new(params: Params) -> Result<Arc<Self>, ParamsError> {
        let n = params.n();
        let q = RnsBasis::new(n, params.q()).ok_or(ParamsError::NoPrimes { bits: 0 })?;
        let p = RnsBasis::new(n, params.p()).ok_or(ParamsError::NoPrimes { bits: 0 })?;
        let levels = (0..=params.max_level())
            .map(|l| LevelContext {
                q: q.slice(0..l + 1),
            })
            .collect();
        let primes = params.q().len();
        Ok(Arc::new(Self {
            encoder: Encoder::new(n),
            params,
            q,
            p,
            levels,
            switches: Mutex::new(HashMap::new()),
            perms: Mutex::new(HashMap::new()),
            subrings: (0..primes)
                .map(|_| (0..MAX_SUBRING_LOG).map(|_| OnceLock::new()).collect())
                .collect(),
        }))
    }

    /// Prime q_i's transform of polynomials in X^(2^t) (1 <= t <= [`MAX_SUBRING_LOG`]), if
    /// there is one.
    pub(crate) fn subring_ntt(&self, i: usize, t: u32) -> Option<&SubringNtt> {
        let cell = self.subrings.get(i)?.get((t as usize).checked_sub(1)?)?;
        cell.get_or_init(|| SubringNtt::new(self.n(), self.q.modulus(i).value(), t, self.q.ntt(i)))
            .as_ref()
    }

    /// A shipped parameter set by name.
    pub fn named(name: &str) -> Result<Arc<Self>, ParamsError> {
        Self::new(Params::named(name)?)
    }

    pub fn params(&self) -> &Params {
        &self.params
    }
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }
    pub fn n(&self) -> usize {
        self.params.n()
    }
    pub fn max_level(&self) -> usize {
        self.params.max_level()
    }
    /// The precomputation of level `l`; an error above the top level.
    pub fn level(&self, l: usize) -> Result<&LevelContext, CkksError> {
        self.check_level(l)?;
        Ok(&self.levels[l])
    }

    /// The precomputation of a level the caller has checked (every public entry point checks the
    /// levels of its operands with [`Context::check_level`] first).
    pub(crate) fn level_ctx(&self, l: usize) -> &LevelContext {
        &self.levels[l]
    }

    /// The one level check: `level` exists in this parameter set.
    pub fn check_level(&self, level: usize) -> Result<(), CkksError> {
        if level > self.max_level() {
            return Err(CkksError::Level {
                wanted: level,
                max: self.max_level(),
            });
        }
        Ok(())
    }
    /// Key switching at ciphertext level `level` (checked by the caller) with a key of `layout`
    /// (made at a level at least `level`; a derived layout's special primes above it); built on
    /// first use.
    pub(crate) fn switch_ctx(&self, level: usize, layout: KeyLayout) -> Arc<SwitchContext> {
        let mut cache = self.switches.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry((level, layout))
            .or_insert_with(|| Arc::new(SwitchContext::new(&self.q, &self.p, level, layout)))
            .clone()
    }

    /// The precomputation of a key switch at `level` with a key made at `key_level`; an error
    /// unless `level <= key_level <= L`.
    pub fn switching(
        &self,
        level: usize,
        key_level: usize,
    ) -> Result<Arc<SwitchContext>, CkksError> {
        self.check_level(key_level)?;
        if level > key_level {
            return Err(CkksError::KeyLevel { key_level, level });
        }
        Ok(self.switch_ctx(level, self.params.key_layout(key_level)))
    }

    /// Q_l followed by the special primes of a key made at level l: a switching key's basis.
    pub fn key_basis(&self, level: usize) -> Result<RnsBasis, CkksError> {
        self.check_level(level)?;
        Ok(self.made_key_ctx(level).qp.clone())
    }

    /// Key switching at `level` (checked by the caller) with a key a client made for `level`.
    pub(crate) fn made_key_ctx(&self, level: usize) -> Arc<SwitchContext> {
        self.switch_ctx(level, self.params.key_layout(level))
    }

    pub fn q_basis(&self) -> &RnsBasis {
        &self.q
    }
    pub fn p_basis(&self) -> &RnsBasis {
        &self.p
    }
    pub fn fingerprint(&self) -> &[u8; 32] {
        self.params.fingerprint()
    }

    /// The Galois element of a left rotation by `r` slots (negative: right): 5^r mod 2N.
    pub fn galois_element(&self, r: i64) -> u64 {
        let slots = self.params.slots() as i64;
        let r = r.rem_euclid(slots) as u64;
        let two_n = 2 * self.n() as u64;
        let mut g = 1u64;
        let mut base = 5u64;
        let mut e = r;
        while e > 0 {
            if e & 1 == 1 {
                g = g * base % two_n;
            }
            base = base * base % two_n;
            e >>= 1;
        }
        g
    }

    /// The Galois element of complex conjugation: 2N - 1.
    pub fn conjugation_element(&self) -> u64 {
        2 * self.n() as u64 - 1
    }

    /// The NTT-domain permutation of `X -> X^g`, cached.
    pub fn permutation(&self, g: u64) -> Arc<Vec<u32>> {
        let mut cache = self.perms.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(g)
            .or_insert_with(|| Arc::new(automorphism_permutation(self.n(), g)))
            .clone()
    }
}
