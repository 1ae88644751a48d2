//! Everything precomputed for one parameter set: NTT plans, the bases of every level with and
//! without the special primes, the ModUp and ModDown converters of hybrid key switching, the
//! encoder tables and the automorphism permutations (built on first use, then shared).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::encoder::Encoder;
use crate::error::{CkksError, ParamsError};
use crate::ntt::automorphism_permutation;
use crate::params::Params;
use crate::rns::{BasisConverter, ModDown, RnsBasis};

/// Precomputation for ciphertexts at one level l (primes q0..ql).
pub struct LevelContext {
    /// Q_l.
    pub q: RnsBasis,
    /// Q_l followed by P.
    pub qp: RnsBasis,
    /// For each digit j: conversion from its primes to the rest of Q_l ++ P.
    pub mod_up: Vec<DigitConverter>,
    pub mod_down: ModDown,
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
    perms: Mutex<HashMap<u64, Arc<Vec<u32>>>>,
}

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
        let alpha = params.alpha();
        let levels = (0..=params.max_level())
            .map(|l| {
                let ql = q.slice(0..l + 1);
                let qp = ql.concat(&p);
                let mod_up = (0..params.digits_at(l))
                    .map(|j| {
                        let range = j * alpha..((j + 1) * alpha).min(l + 1);
                        let rest = ql
                            .slice(0..range.start)
                            .concat(&ql.slice(range.end..l + 1))
                            .concat(&p);
                        DigitConverter {
                            conv: BasisConverter::new(&ql.slice(range.clone()), &rest),
                            range,
                        }
                    })
                    .collect();
                LevelContext {
                    mod_down: ModDown::new(&ql, &p),
                    q: ql,
                    qp,
                    mod_up,
                }
            })
            .collect();
        Ok(Arc::new(Self {
            encoder: Encoder::new(n),
            params,
            q,
            p,
            levels,
            perms: Mutex::new(HashMap::new()),
        }))
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
