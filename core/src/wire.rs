//! The wire format: a small versioned container for every object that crosses the network.
//!
//! ```text
//! magic "BSCK" | version u8 | kind u8 | flags u8 | reserved u8 | fingerprint [32] | level u16 LE
//! | kind-specific fields | seed [32] if flags & SEEDED | residues, bit-packed
//! ```
//!
//! Residues are packed little-endian at their prime's width (ceil(log2 q) bits), polynomial by
//! polynomial, limb by limb. The uniform halves of keys and of secret-key ciphertexts are sent as
//! their 32-byte seed and re-expanded (`sampler::expand_uniform`). Parsing takes a size limit and
//! checks it first, then the header, the exact length, and that every residue is below its prime:
//! malformed input gives a typed error, never a panic or an unbounded allocation.

use crate::ciphertext::Ciphertext;
use crate::context::Context;
use crate::error::{CkksError, WireError};
use crate::keys::{KeyKind, PublicKey, SwitchingKey};
use crate::params::{ParamSpec, Params};
use crate::plaintext::Plaintext;
use crate::rns::{RnsBasis, RnsPoly};
use crate::sampler::expand_uniform;

pub const MAGIC: [u8; 4] = *b"BSCK";
pub const VERSION: u8 = 1;
const FLAG_SEEDED: u8 = 1;
/// Bytes before the kind-specific fields.
const HEADER: usize = 4 + 1 + 1 + 1 + 1 + 32 + 2;

/// Object kinds, as the header's kind byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Ciphertext = 1,
    Plaintext = 2,
    PublicKey = 3,
    RelinKey = 4,
    GaloisKey = 5,
    Params = 6,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ciphertext => "ciphertext",
            Kind::Plaintext => "plaintext",
            Kind::PublicKey => "public key",
            Kind::RelinKey => "relinearization key",
            Kind::GaloisKey => "Galois key",
            Kind::Params => "parameter set",
        }
    }
}

/// Bytes of `polys` polynomials over `basis`, bit-packed.
fn packed_len(basis: &RnsBasis, polys: usize) -> usize {
    let bits: usize = basis
        .moduli()
        .iter()
        .map(|m| m.bits() as usize)
        .sum::<usize>()
        * basis.n()
        * polys;
    bits.div_ceil(8)
}

struct Writer {
    out: Vec<u8>,
}

impl Writer {
    fn new(kind: Kind, flags: u8, fingerprint: &[u8; 32], level: usize, capacity: usize) -> Self {
        let mut out = Vec::with_capacity(capacity);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[VERSION, kind as u8, flags, 0]);
        out.extend_from_slice(fingerprint);
        out.extend_from_slice(&(level as u16).to_le_bytes());
        Self { out }
    }

    fn bytes(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }

    /// Appends the polynomials bit-packed, each limb at its prime's width.
    fn polys(&mut self, basis: &RnsBasis, polys: &[&RnsPoly]) {
        let mut acc: u128 = 0;
        let mut nbits = 0u32;
        for p in polys {
            for i in 0..basis.len() {
                let w = basis.modulus(i).bits();
                for &v in p.limb(i) {
                    acc |= (v as u128) << nbits;
                    nbits += w;
                    if nbits >= 64 {
                        self.out.extend_from_slice(&(acc as u64).to_le_bytes());
                        acc >>= 64;
                        nbits -= 64;
                    }
                }
            }
        }
        let tail = nbits.div_ceil(8) as usize;
        self.out.extend_from_slice(&acc.to_le_bytes()[..tail]);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Checks the limit, magic, version, kind and fingerprint; returns the reader after the common
    /// header with the flags and level.
    fn open(
        buf: &'a [u8],
        limit: usize,
        kind: Kind,
        fingerprint: Option<&[u8; 32]>,
    ) -> Result<(Self, u8, usize), WireError> {
        if buf.len() > limit {
            return Err(WireError::TooLarge {
                len: buf.len(),
                limit,
            });
        }
        let mut r = Self { buf, pos: 0 };
        if r.take(4)? != MAGIC {
            return Err(WireError::Magic);
        }
        let head = r.take(4)?;
        if head[0] != VERSION {
            return Err(WireError::Version(head[0]));
        }
        if head[1] != kind as u8 {
            return Err(WireError::Kind {
                expected: kind.name(),
                found: head[1],
            });
        }
        let flags = head[2];
        if flags & !FLAG_SEEDED != 0 || head[3] != 0 {
            return Err(WireError::Field("flags"));
        }
        let fp = r.take(32)?;
        if let Some(want) = fingerprint {
            if fp != want {
                return Err(WireError::Fingerprint);
            }
        }
        let level = u16::from_le_bytes(r.take(2)?.try_into().unwrap()) as usize;
        Ok((r, flags, level))
    }

    fn take(&mut self, k: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(k).ok_or(WireError::Field("length"))?;
        if end > self.buf.len() {
            return Err(WireError::Truncated {
                needed: end,
                len: self.buf.len(),
            });
        }
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn f64(&mut self) -> Result<f64, WireError> {
        Ok(f64::from_bits(self.u64()?))
    }

    fn seed(&mut self) -> Result<[u8; 32], WireError> {
        Ok(self.take(32)?.try_into().unwrap())
    }

    /// Checks that exactly the packed polynomials remain, then unpacks them.
    fn polys(&mut self, basis: &RnsBasis, count: usize) -> Result<Vec<RnsPoly>, WireError> {
        let need = packed_len(basis, count);
        let remaining = self.buf.len() - self.pos;
        if remaining < need {
            return Err(WireError::Truncated {
                needed: self.pos + need,
                len: self.buf.len(),
            });
        }
        if remaining > need {
            return Err(WireError::Trailing(remaining - need));
        }
        let data = &self.buf[self.pos..];
        let mut word = 0usize;
        let mut acc: u128 = 0;
        let mut nbits = 0u32;
        let mut next_word = |acc: &mut u128, nbits: &mut u32| {
            let mut b = [0u8; 8];
            let end = (word + 8).min(data.len());
            b[..end - word].copy_from_slice(&data[word..end]);
            word = end;
            *acc |= (u64::from_le_bytes(b) as u128) << *nbits;
            *nbits += 64;
        };
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let mut p = basis.zero();
            for i in 0..basis.len() {
                let m = basis.modulus(i);
                let w = m.bits();
                let mask = (1u128 << w) - 1;
                for v in p.limb_mut(i) {
                    if nbits < w {
                        next_word(&mut acc, &mut nbits);
                    }
                    let x = (acc & mask) as u64;
                    acc >>= w;
                    nbits -= w;
                    if x >= m.value() {
                        return Err(WireError::Residue { prime_index: i });
                    }
                    *v = x;
                }
            }
            out.push(p);
        }
        self.pos = self.buf.len();
        Ok(out)
    }

    fn finish(&self) -> Result<(), WireError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            k => Err(WireError::Trailing(k)),
        }
    }
}

/// Serializing an object with another parameter set's context would write a wrong header: refused.
fn check_owner(ctx: &Context, fingerprint: &[u8; 32]) -> Result<(), WireError> {
    if fingerprint != ctx.fingerprint() {
        return Err(WireError::Fingerprint);
    }
    Ok(())
}

fn check_level(ctx: &Context, level: usize) -> Result<(), WireError> {
    ctx.check_level(level)
        .map_err(|_| WireError::Field("level"))
}

fn check_scale(scale: f64) -> Result<(), WireError> {
    if !(scale.is_finite() && scale >= 1.0) {
        return Err(WireError::Field("scale"));
    }
    Ok(())
}

/// Serialized size of a ciphertext: what upload limits are computed from.
/// An error for a level the parameter set does not have.
pub fn ciphertext_size(
    ctx: &Context,
    level: usize,
    degree: usize,
    seeded: bool,
) -> Result<usize, CkksError> {
    let polys = if seeded { 1 } else { degree + 1 };
    let q = &ctx.level(level)?.q;
    Ok(HEADER + 9 + if seeded { 32 } else { 0 } + packed_len(q, polys))
}

/// Serialized size of a switching key made at `level`.
/// An error for a level the parameter set does not have.
pub fn switching_key_size(ctx: &Context, level: usize) -> Result<usize, CkksError> {
    let qp = &ctx.level(level)?.qp;
    Ok(HEADER + 9 + 32 + packed_len(qp, ctx.params().digits_at(level)))
}

/// Serialized size of the public key.
pub fn public_key_size(ctx: &Context) -> usize {
    HEADER + 32 + packed_len(&ctx.level_ctx(ctx.max_level()).q, 1)
}

impl Ciphertext {
    /// Seeded ciphertexts (fresh secret-key encryptions) send `c0` and the seed.
    pub fn to_bytes(&self, ctx: &Context) -> Result<Vec<u8>, WireError> {
        check_owner(ctx, &self.fingerprint)?;
        let seeded = self.seed.is_some() && self.degree() == 1;
        let basis = &ctx.level_ctx(self.level).q;
        let mut w = Writer::new(
            Kind::Ciphertext,
            if seeded { FLAG_SEEDED } else { 0 },
            &self.fingerprint,
            self.level,
            ciphertext_size(ctx, self.level, self.degree(), seeded)
                .map_err(|_| WireError::Field("level"))?,
        );
        w.bytes(&self.scale.to_bits().to_le_bytes());
        w.bytes(&[self.c.len() as u8]);
        if let (true, Some(seed)) = (seeded, &self.seed) {
            w.bytes(seed);
            w.polys(basis, &[&self.c[0]]);
        } else {
            w.polys(basis, &self.c.iter().collect::<Vec<_>>());
        }
        Ok(w.out)
    }

    pub fn from_bytes(ctx: &Context, buf: &[u8], limit: usize) -> Result<Self, WireError> {
        let (mut r, flags, level) =
            Reader::open(buf, limit, Kind::Ciphertext, Some(ctx.fingerprint()))?;
        check_level(ctx, level)?;
        let scale = r.f64()?;
        check_scale(scale)?;
        let count = r.u8()? as usize;
        if !(2..=3).contains(&count) {
            return Err(WireError::Field("degree"));
        }
        let basis = &ctx.level_ctx(level).q;
        let (c, seed) = if flags & FLAG_SEEDED != 0 {
            if count != 2 {
                return Err(WireError::Field("degree"));
            }
            let seed = r.seed()?;
            let mut c = r.polys(basis, 1)?;
            c.push(expand_uniform(basis, &seed, 0));
            (c, Some(seed))
        } else {
            (r.polys(basis, count)?, None)
        };
        Ok(Self {
            c,
            level,
            scale,
            fingerprint: *ctx.fingerprint(),
            seed,
        })
    }
}

impl Plaintext {
    pub fn to_bytes(&self, ctx: &Context) -> Result<Vec<u8>, WireError> {
        check_owner(ctx, &self.fingerprint)?;
        let basis = &ctx.level_ctx(self.level).q;
        let mut w = Writer::new(
            Kind::Plaintext,
            0,
            &self.fingerprint,
            self.level,
            HEADER + 8 + packed_len(basis, 1),
        );
        w.bytes(&self.scale.to_bits().to_le_bytes());
        w.polys(basis, &[&self.poly]);
        Ok(w.out)
    }

    pub fn from_bytes(ctx: &Context, buf: &[u8], limit: usize) -> Result<Self, WireError> {
        let (mut r, flags, level) =
            Reader::open(buf, limit, Kind::Plaintext, Some(ctx.fingerprint()))?;
        if flags != 0 {
            return Err(WireError::Field("flags"));
        }
        check_level(ctx, level)?;
        let scale = r.f64()?;
        check_scale(scale)?;
        let poly = r
            .polys(&ctx.level_ctx(level).q, 1)?
            .pop()
            .expect("one polynomial");
        Ok(Self {
            poly,
            level,
            scale,
            fingerprint: *ctx.fingerprint(),
        })
    }
}

impl PublicKey {
    pub fn to_bytes(&self, ctx: &Context) -> Result<Vec<u8>, WireError> {
        check_owner(ctx, &self.fingerprint)?;
        let level = ctx.max_level();
        let mut w = Writer::new(
            Kind::PublicKey,
            FLAG_SEEDED,
            &self.fingerprint,
            level,
            public_key_size(ctx),
        );
        w.bytes(&self.seed);
        w.polys(&ctx.level_ctx(level).q, &[&self.b]);
        Ok(w.out)
    }

    pub fn from_bytes(ctx: &Context, buf: &[u8], limit: usize) -> Result<Self, WireError> {
        let (mut r, flags, level) =
            Reader::open(buf, limit, Kind::PublicKey, Some(ctx.fingerprint()))?;
        if flags != FLAG_SEEDED || level != ctx.max_level() {
            return Err(WireError::Field("public key header"));
        }
        let seed = r.seed()?;
        let basis = &ctx.level_ctx(level).q;
        let b = r.polys(basis, 1)?.pop().expect("one polynomial");
        Ok(Self {
            b,
            a: expand_uniform(basis, &seed, 0),
            seed,
            fingerprint: *ctx.fingerprint(),
        })
    }
}

impl SwitchingKey {
    /// Sends the `b_j` halves and the seed of the `a_j`.
    pub fn to_bytes(&self, ctx: &Context) -> Result<Vec<u8>, WireError> {
        check_owner(ctx, &self.fingerprint)?;
        let (kind, g) = match self.kind {
            KeyKind::Relin => (Kind::RelinKey, 0),
            KeyKind::Galois(g) => (Kind::GaloisKey, g),
        };
        let mut w = Writer::new(
            kind,
            FLAG_SEEDED,
            &self.fingerprint,
            self.level,
            switching_key_size(ctx, self.level).map_err(|_| WireError::Field("level"))?,
        );
        w.bytes(&g.to_le_bytes());
        w.bytes(&[self.b.len() as u8]);
        w.bytes(&self.seed);
        w.polys(
            &ctx.level_ctx(self.level).qp,
            &self.b.iter().collect::<Vec<_>>(),
        );
        Ok(w.out)
    }

    /// Parses a relinearization or Galois key (whichever the header says).
    pub fn from_bytes(ctx: &Context, buf: &[u8], limit: usize) -> Result<Self, WireError> {
        let kind = match buf.get(5) {
            Some(&k) if k == Kind::GaloisKey as u8 => Kind::GaloisKey,
            _ => Kind::RelinKey,
        };
        let (mut r, flags, level) = Reader::open(buf, limit, kind, Some(ctx.fingerprint()))?;
        if flags != FLAG_SEEDED {
            return Err(WireError::Field("flags"));
        }
        check_level(ctx, level)?;
        let g = r.u64()?;
        let key_kind = match kind {
            Kind::RelinKey if g == 0 => KeyKind::Relin,
            Kind::GaloisKey if g % 2 == 1 && g < 2 * ctx.n() as u64 => KeyKind::Galois(g),
            _ => return Err(WireError::Field("Galois element")),
        };
        let digits = r.u8()? as usize;
        if digits != ctx.params().digits_at(level) {
            return Err(WireError::Field("digits"));
        }
        let seed = r.seed()?;
        let b = r.polys(&ctx.level_ctx(level).qp, digits)?;
        Ok(Self {
            kind: key_kind,
            level,
            a: SwitchingKey::expand_a(ctx, level, digits, &seed),
            b,
            seed,
            fingerprint: *ctx.fingerprint(),
        })
    }
}

/// Largest parameter-set object accepted (name and prime lists are small).
pub const PARAMS_LIMIT: usize = 4096;

impl Params {
    /// The specification and the primes; the receiver rebuilds the set (running the security
    /// check) and compares the primes and fingerprint.
    pub fn to_bytes(&self) -> Vec<u8> {
        let spec = self.spec();
        let mut w = Writer::new(Kind::Params, 0, self.fingerprint(), self.max_level(), 256);
        let name = spec.name.as_bytes();
        w.bytes(&[name.len().min(255) as u8]);
        w.bytes(&name[..name.len().min(255)]);
        w.bytes(&[spec.log_n as u8, spec.dnum as u8, spec.log_scale as u8]);
        for list in [&spec.q_bits, &spec.p_bits] {
            w.bytes(&[list.len() as u8]);
            w.bytes(&list.iter().map(|&b| b as u8).collect::<Vec<_>>());
        }
        for &q in self.q().iter().chain(self.p()) {
            w.bytes(&q.to_le_bytes());
        }
        w.out
    }

    pub fn from_bytes(buf: &[u8]) -> Result<Self, WireError> {
        let (mut r, flags, _level) = Reader::open(buf, PARAMS_LIMIT, Kind::Params, None)?;
        if flags != 0 {
            return Err(WireError::Field("flags"));
        }
        let fp: [u8; 32] = buf[8..40].try_into().unwrap();
        let name_len = r.u8()? as usize;
        let name =
            String::from_utf8(r.take(name_len)?.to_vec()).map_err(|_| WireError::Field("name"))?;
        let head = r.take(3)?;
        let (log_n, dnum, log_scale) = (head[0] as u32, head[1] as usize, head[2] as u32);
        let mut lists = [Vec::new(), Vec::new()];
        for list in lists.iter_mut() {
            let k = r.u8()? as usize;
            *list = r.take(k)?.iter().map(|&b| b as u32).collect();
        }
        let [q_bits, p_bits] = lists;
        let total = q_bits.len() + p_bits.len();
        let primes: Vec<u64> = (0..total).map(|_| r.u64()).collect::<Result<_, _>>()?;
        r.finish()?;
        let spec = ParamSpec {
            name,
            log_n,
            q_bits,
            p_bits,
            dnum,
            log_scale,
        };
        let params = spec
            .build()
            .map_err(|_| WireError::Field("parameters rejected (insecure or invalid)"))?;
        let ours: Vec<u64> = params.q().iter().chain(params.p()).copied().collect();
        if ours != primes || params.fingerprint() != &fp {
            return Err(WireError::Fingerprint);
        }
        Ok(params)
    }
}

/// The seed-expansion test vector: SHA-256 of the little-endian residues of
/// `expand_uniform(N12_TINY's Q, seed = 0..32, stream 3)`. Native and wasm tests both check it.
pub fn seed_expansion_digest(ctx: &Context) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let seed: [u8; 32] = core::array::from_fn(|i| i as u8);
    let poly = expand_uniform(ctx.q_basis(), &seed, 3);
    let mut h = Sha256::new();
    for &x in poly.data() {
        h.update(x.to_le_bytes());
    }
    h.finalize().into()
}
