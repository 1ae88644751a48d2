//! The wire format: a small versioned container for every object that crosses the network.
//!
//! ```text
//! magic "BSCK" | version u8 | kind u8 | flags u8 | reserved u8 | fingerprint [32] | level u16 LE
//! | kind-specific fields | seed [32] if flags & SEEDED | residues, bit-packed
//! ```
//!
//! Residues are packed little-endian at their prime's width (ceil(log2 q) bits), polynomial by
//! polynomial, limb by limb; the bits after the last residue, up to the byte boundary, are zero.
//! The uniform halves of keys and of secret-key ciphertexts are sent as their 32-byte seed and
//! re-expanded (`sampler::expand_uniform`). Parsing takes a size limit and checks it first, then
//! the header, the exact length, and that every residue is below its prime: malformed input gives
//! a typed error, never a panic or an unbounded allocation.
//!
//! The encoding is canonical: an object has exactly one encoding, and whatever parses serializes
//! back to the very bytes it was read from. Every header field is checked against the one value
//! the writer would put there (flags, the reserved byte, the level of a public key or parameter
//! set, the degree of a seeded ciphertext), padding bits must be zero and no byte may follow the
//! object. `fuzz/` holds that property for every object here.

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
        let mut packer = Packer::new(&mut self.out);
        for p in polys {
            for i in 0..basis.len() {
                let w = basis.modulus(i).bits();
                for &v in p.limb(i) {
                    packer.push(v, w);
                }
            }
        }
        packer.finish();
    }
}

/// Appends values of given widths (at most 64 bits each) to a byte vector, little-endian, the
/// last byte padded with zero bits.
struct Packer<'a> {
    out: &'a mut Vec<u8>,
    acc: u128,
    nbits: u32,
}

impl<'a> Packer<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        Self {
            out,
            acc: 0,
            nbits: 0,
        }
    }

    /// Appends the low `w` bits of `v` (`v < 2^w`).
    fn push(&mut self, v: u64, w: u32) {
        debug_assert!(w <= 64 && (w == 64 || v >> w == 0));
        self.acc |= (v as u128) << self.nbits;
        self.nbits += w;
        if self.nbits >= 64 {
            self.out.extend_from_slice(&(self.acc as u64).to_le_bytes());
            self.acc >>= 64;
            self.nbits -= 64;
        }
    }

    /// Writes the bits still held, padded with zeros to a whole byte.
    fn finish(self) {
        let tail = self.nbits.div_ceil(8) as usize;
        self.out.extend_from_slice(&self.acc.to_le_bytes()[..tail]);
    }
}

/// Reads what [`Packer`] wrote: values of given widths from bit-packed bytes.
struct Unpacker<'a> {
    data: &'a [u8],
    /// Bytes read so far.
    read: usize,
    /// Bits read but not yet taken (low bits first); beyond the end of `data` they are zero.
    acc: u128,
    nbits: u32,
    /// Bits taken so far.
    taken: usize,
}

impl<'a> Unpacker<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            read: 0,
            acc: 0,
            nbits: 0,
            taken: 0,
        }
    }

    /// The next `w`-bit value (`w` <= 64); zero bits past the end of the data.
    fn next(&mut self, w: u32) -> u64 {
        if self.nbits < w {
            let mut b = [0u8; 8];
            let end = (self.read + 8).min(self.data.len());
            b[..end - self.read].copy_from_slice(&self.data[self.read..end]);
            self.read = end;
            self.acc |= (u64::from_le_bytes(b) as u128) << self.nbits;
            self.nbits += 64;
        }
        let x = (self.acc & ((1u128 << w) - 1)) as u64;
        self.acc >>= w;
        self.nbits -= w;
        self.taken += w as usize;
        x
    }

    /// After the last value: every byte has been read and the padding bits of the last one are
    /// zero (a set padding bit would be a second encoding of the same object). Polynomials of the
    /// shipped sets end on a byte boundary (N is a multiple of 8), so there are none today; the
    /// check keeps the format to its definition for any N.
    fn finish(self) -> Result<(), WireError> {
        let used = self.taken.div_ceil(8);
        if self.data.len() > used {
            return Err(WireError::Trailing(self.data.len() - used));
        }
        if self.acc != 0 {
            return Err(WireError::Field("padding bits"));
        }
        Ok(())
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
        let mut bits = Unpacker::new(&self.buf[self.pos..]);
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let mut p = basis.zero();
            for i in 0..basis.len() {
                let m = basis.modulus(i);
                let w = m.bits();
                for v in p.limb_mut(i) {
                    let x = bits.next(w);
                    if x >= m.value() {
                        return Err(WireError::Residue { prime_index: i });
                    }
                    *v = x;
                }
            }
            out.push(p);
        }
        bits.finish()?;
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
    let qp = ctx.key_basis(level)?;
    Ok(HEADER + 9 + 32 + packed_len(&qp, ctx.params().digits_at(level)))
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
    /// Sends the `b_j` halves and the seed of the `a_j`. Only keys a client made travel: a key the
    /// server derived has no seed (and no reason to leave the server).
    pub fn to_bytes(&self, ctx: &Context) -> Result<Vec<u8>, WireError> {
        check_owner(ctx, &self.fingerprint)?;
        if self.layout != ctx.params().key_layout(self.level) {
            return Err(WireError::Field("layout (a derived key)"));
        }
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
            &ctx.made_key_ctx(self.level).qp,
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
        let b = r.polys(&ctx.made_key_ctx(level).qp, digits)?;
        Ok(Self {
            kind: key_kind,
            level,
            layout: ctx.params().key_layout(level),
            a: SwitchingKey::expand_a(ctx, level, digits, &seed),
            b,
            seed,
            fingerprint: *ctx.fingerprint(),
        })
    }
}

/// Largest parameter-set object accepted (name and prime lists are small).
pub const PARAMS_LIMIT: usize = 4096;

/// Longest parameter-set name on the wire (its length is one byte).
pub const MAX_NAME_BYTES: usize = 255;

/// `name` cut to at most [`MAX_NAME_BYTES`] bytes at a character boundary.
fn wire_name(name: &str) -> &str {
    let mut end = name.len().min(MAX_NAME_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

impl Params {
    /// The specification and the primes; the receiver rebuilds the set (running the security
    /// check) and compares the primes and fingerprint. A name longer than [`MAX_NAME_BYTES`] is
    /// sent cut to that length at a character boundary (the name is not part of the fingerprint),
    /// so that what is sent always parses.
    pub fn to_bytes(&self) -> Vec<u8> {
        let spec = self.spec();
        let mut w = Writer::new(Kind::Params, 0, self.fingerprint(), self.max_level(), 256);
        let name = wire_name(&spec.name).as_bytes();
        w.bytes(&[name.len() as u8]);
        w.bytes(name);
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

    /// Parses and rebuilds a parameter set. Building searches for primes, so it runs only for a
    /// spec whose sent primes already have the declared sizes and are 1 mod 2N: the search is
    /// then bounded by the security check (at most 3523 bits of primes).
    pub fn from_bytes(buf: &[u8]) -> Result<Self, WireError> {
        let (mut r, flags, level) = Reader::open(buf, PARAMS_LIMIT, Kind::Params, None)?;
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
        if q_bits.is_empty() || level != q_bits.len() - 1 {
            return Err(WireError::Field("level"));
        }
        let two_n = crate::params::max_log_qp_128(log_n)
            .map(|_| 2u64 << log_n)
            .ok_or(WireError::Field("ring degree"))?;
        let shaped = primes
            .iter()
            .zip(q_bits.iter().chain(&p_bits))
            .all(|(&q, &bits)| (1..=64).contains(&bits) && q >> (bits - 1) == 1 && q % two_n == 1);
        if !shaped {
            return Err(WireError::Fingerprint);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> std::sync::Arc<Context> {
        Context::named("N12_TINY").unwrap()
    }

    /// A well-formed object of `kind` at `level` whose residues are all zero: the header, `fields`
    /// (kind-specific, seed included) and `polys` zero polynomials over `basis`.
    fn zero_object(
        ctx: &Context,
        kind: Kind,
        flags: u8,
        level: usize,
        fields: &[u8],
        basis: &RnsBasis,
        polys: usize,
    ) -> Vec<u8> {
        let mut w = Writer::new(kind, flags, ctx.fingerprint(), level, 0);
        w.bytes(fields);
        w.bytes(&vec![0; packed_len(basis, polys)]);
        w.out
    }

    fn ciphertext_fields(scale: f64, count: u8, seed: Option<[u8; 32]>) -> Vec<u8> {
        let mut f = scale.to_bits().to_le_bytes().to_vec();
        f.push(count);
        f.extend(seed.iter().flatten());
        f
    }

    #[test]
    fn packing_pads_with_zero_bits_and_unpacking_checks_them() {
        // four 21-bit values: 84 bits, 11 bytes, the last 4 bits padding
        let values = [1u64, (1 << 21) - 1, 12345, 1 << 20];
        let mut out = Vec::new();
        let mut p = Packer::new(&mut out);
        for &v in &values {
            p.push(v, 21);
        }
        p.finish();
        assert_eq!(out.len(), 11);
        assert_eq!(out[10] >> 4, 0, "padding bits are zero");
        let mut u = Unpacker::new(&out);
        let back: Vec<u64> = values.iter().map(|_| u.next(21)).collect();
        assert_eq!(back, values);
        assert_eq!(u.finish(), Ok(()));
        for bit in 4..8 {
            let mut bad = out.clone();
            bad[10] ^= 1 << bit;
            let mut u = Unpacker::new(&bad);
            let back: Vec<u64> = values.iter().map(|_| u.next(21)).collect();
            assert_eq!(back, values, "the values themselves are unchanged");
            assert_eq!(
                u.finish(),
                Err(WireError::Field("padding bits")),
                "bit {bit}"
            );
        }
        // a byte beyond the packed values is never read: refused
        let mut long = out.clone();
        long.push(0);
        let mut u = Unpacker::new(&long);
        values.iter().for_each(|_| {
            u.next(21);
        });
        assert_eq!(u.finish(), Err(WireError::Trailing(1)));
    }

    #[test]
    fn every_object_refuses_trailing_bytes_and_header_variants() {
        let ctx = tiny();
        let (max, q) = (ctx.max_level(), |l: usize| ctx.level_ctx(l).q.clone());
        let qp = |l: usize| ctx.key_basis(l).unwrap();
        let scale = 2f64.powi(25);
        type Parse = fn(&Context, &[u8], usize) -> Result<(), WireError>;
        let ct: Parse = |c, b, l| Ciphertext::from_bytes(c, b, l).map(|_| ());
        let pt: Parse = |c, b, l| Plaintext::from_bytes(c, b, l).map(|_| ());
        let pk: Parse = |c, b, l| PublicKey::from_bytes(c, b, l).map(|_| ());
        let sk: Parse = |c, b, l| SwitchingKey::from_bytes(c, b, l).map(|_| ());
        let reser: fn(&Context, &[u8]) -> Vec<u8> = |c, b| {
            if let Ok(x) = Ciphertext::from_bytes(c, b, usize::MAX) {
                return x.to_bytes(c).unwrap();
            }
            if let Ok(x) = Plaintext::from_bytes(c, b, usize::MAX) {
                return x.to_bytes(c).unwrap();
            }
            if let Ok(x) = PublicKey::from_bytes(c, b, usize::MAX) {
                return x.to_bytes(c).unwrap();
            }
            SwitchingKey::from_bytes(c, b, usize::MAX)
                .unwrap()
                .to_bytes(c)
                .unwrap()
        };
        let digits = |l| ctx.params().digits_at(l) as u8;
        let mut galois = 5u64.to_le_bytes().to_vec();
        galois.push(digits(0));
        galois.extend([7; 32]);
        let mut relin = 0u64.to_le_bytes().to_vec();
        relin.push(digits(max));
        relin.extend([9; 32]);
        let good: Vec<(&str, Parse, Vec<u8>)> = vec![
            (
                "ciphertext",
                ct,
                zero_object(
                    &ctx,
                    Kind::Ciphertext,
                    0,
                    max,
                    &ciphertext_fields(scale, 2, None),
                    &q(max),
                    2,
                ),
            ),
            (
                "degree-2 ciphertext",
                ct,
                zero_object(
                    &ctx,
                    Kind::Ciphertext,
                    0,
                    0,
                    &ciphertext_fields(scale, 3, None),
                    &q(0),
                    3,
                ),
            ),
            (
                "seeded ciphertext",
                ct,
                zero_object(
                    &ctx,
                    Kind::Ciphertext,
                    FLAG_SEEDED,
                    max,
                    &ciphertext_fields(scale, 2, Some([3; 32])),
                    &q(max),
                    1,
                ),
            ),
            (
                "plaintext",
                pt,
                zero_object(
                    &ctx,
                    Kind::Plaintext,
                    0,
                    0,
                    &scale.to_bits().to_le_bytes(),
                    &q(0),
                    1,
                ),
            ),
            (
                "public key",
                pk,
                zero_object(
                    &ctx,
                    Kind::PublicKey,
                    FLAG_SEEDED,
                    max,
                    &[5; 32],
                    &q(max),
                    1,
                ),
            ),
            (
                "relinearization key",
                sk,
                zero_object(
                    &ctx,
                    Kind::RelinKey,
                    FLAG_SEEDED,
                    max,
                    &relin,
                    &qp(max),
                    digits(max) as usize,
                ),
            ),
            (
                "Galois key",
                sk,
                zero_object(
                    &ctx,
                    Kind::GaloisKey,
                    FLAG_SEEDED,
                    0,
                    &galois,
                    &qp(0),
                    digits(0) as usize,
                ),
            ),
        ];
        for (what, parse, bytes) in good {
            assert_eq!(parse(&ctx, &bytes, bytes.len()), Ok(()), "{what}");
            assert_eq!(reser(&ctx, &bytes), bytes, "{what}: canonical");
            assert_eq!(
                parse(&ctx, &bytes, bytes.len() - 1),
                Err(WireError::TooLarge {
                    len: bytes.len(),
                    limit: bytes.len() - 1
                }),
                "{what}"
            );
            let mut long = bytes.clone();
            long.push(0);
            assert_eq!(
                parse(&ctx, &long, usize::MAX),
                Err(WireError::Trailing(1)),
                "{what}"
            );
            assert!(
                matches!(
                    parse(&ctx, &bytes[..bytes.len() - 1], usize::MAX),
                    Err(WireError::Truncated { .. })
                ),
                "{what}"
            );
            // the reserved byte, unknown flags and the seeded flag toggled: each refused
            for (at, bit) in [(7, 0x01), (6, 0x02), (6, 0x80), (6, FLAG_SEEDED)] {
                let mut bad = bytes.clone();
                bad[at] ^= bit;
                assert!(
                    parse(&ctx, &bad, usize::MAX).is_err(),
                    "{what}: byte {at} ^ {bit:#x}"
                );
            }
            // a residue at its prime (the last limb's prime stands in: every prime is odd, so a
            // first residue of all ones is at least the prime for some limb width)
            let mut bad = bytes.clone();
            let start = bytes.len() - packed_len(&q(0), 1).min(bytes.len() - HEADER - 9);
            bad[start..start + 8].copy_from_slice(&[0xff; 8]);
            assert!(parse(&ctx, &bad, usize::MAX).is_err(), "{what}: residue");
        }
    }

    #[test]
    fn ciphertext_header_must_match_its_contents() {
        let ctx = tiny();
        let (max, q) = (ctx.max_level(), ctx.level_ctx(ctx.max_level()).q.clone());
        let parse = |b: &[u8]| Ciphertext::from_bytes(&ctx, b, usize::MAX).map(|_| ());
        // a seeded ciphertext has degree 1 (count 2) and one sent polynomial
        let three = zero_object(
            &ctx,
            Kind::Ciphertext,
            FLAG_SEEDED,
            max,
            &ciphertext_fields(1.0, 3, Some([0; 32])),
            &q,
            1,
        );
        assert_eq!(parse(&three), Err(WireError::Field("degree")));
        for count in [0, 1, 4, 255] {
            let b = zero_object(
                &ctx,
                Kind::Ciphertext,
                0,
                max,
                &ciphertext_fields(1.0, count, None),
                &q,
                2,
            );
            assert_eq!(parse(&b), Err(WireError::Field("degree")), "count {count}");
        }
        for scale in [0.5, -2.0, f64::NAN, f64::INFINITY, -0.0] {
            let b = zero_object(
                &ctx,
                Kind::Ciphertext,
                0,
                max,
                &ciphertext_fields(scale, 2, None),
                &q,
                2,
            );
            assert_eq!(parse(&b), Err(WireError::Field("scale")), "scale {scale}");
        }
        let b = zero_object(
            &ctx,
            Kind::Ciphertext,
            0,
            max + 1,
            &ciphertext_fields(1.0, 2, None),
            &q,
            2,
        );
        assert_eq!(parse(&b), Err(WireError::Field("level")));
    }

    #[test]
    fn public_key_and_switching_key_headers() {
        let ctx = tiny();
        let q0 = ctx.level_ctx(0).q.clone();
        // a public key is made at the top level only
        let low = zero_object(&ctx, Kind::PublicKey, FLAG_SEEDED, 0, &[0; 32], &q0, 1);
        assert!(PublicKey::from_bytes(&ctx, &low, usize::MAX).is_err());
        // Galois elements are odd and below 2N; a relinearization key has none
        let qp0 = ctx.key_basis(0).unwrap();
        let key = |kind, g: u64| {
            let mut f = g.to_le_bytes().to_vec();
            f.push(ctx.params().digits_at(0) as u8);
            f.extend([0; 32]);
            zero_object(
                &ctx,
                kind,
                FLAG_SEEDED,
                0,
                &f,
                &qp0,
                ctx.params().digits_at(0),
            )
        };
        let two_n = 2 * ctx.n() as u64;
        for (kind, g, ok) in [
            (Kind::GaloisKey, 3, true),
            (Kind::GaloisKey, two_n - 1, true),
            (Kind::GaloisKey, 4, false),
            (Kind::GaloisKey, two_n + 1, false),
            (Kind::RelinKey, 0, true),
            (Kind::RelinKey, 3, false),
        ] {
            let r = SwitchingKey::from_bytes(&ctx, &key(kind, g), usize::MAX);
            assert_eq!(r.is_ok(), ok, "{kind:?} {g}");
        }
    }

    #[test]
    fn params_are_canonical() {
        let params = Params::named("N12_TINY").unwrap();
        let bytes = params.to_bytes();
        assert_eq!(Params::from_bytes(&bytes).unwrap(), params);
        // the level field is the top level, nothing else
        for level in [0u16, 2, 0xffff] {
            let mut bad = bytes.clone();
            bad[40..42].copy_from_slice(&level.to_le_bytes());
            assert_eq!(
                Params::from_bytes(&bad),
                Err(WireError::Field("level")),
                "{level}"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(Params::from_bytes(&long), Err(WireError::Trailing(1)));
        // a prime of another size than declared is refused before any prime search
        let mut bad = bytes.clone();
        let last = bad.len() - 8;
        bad[last + 7] ^= 0x40;
        assert_eq!(Params::from_bytes(&bad), Err(WireError::Fingerprint));
    }

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        let mut spec = ParamSpec::named("N12_TINY").unwrap();
        spec.name = "é".repeat(200); // 400 bytes
        let params = spec.build().unwrap();
        let bytes = params.to_bytes();
        let back = Params::from_bytes(&bytes).unwrap();
        assert_eq!(back.name(), "é".repeat(127));
        assert_eq!(back.fingerprint(), params.fingerprint());
        assert_eq!(back.to_bytes(), bytes);
    }
}
