//! Secrets leave no trace (issue 31): every value from which the secret key can be recovered is
//! wiped before its memory goes back to the allocator, on every path (returns, `?` errors, panics).
//!
//! This binary's global allocator, while recording, does not free a block: it keeps it allocated
//! and notes its address and size in a fixed static table (nothing is allocated inside the
//! allocator), so the bytes a buffer held when it was dropped stay readable. `realloc` is the
//! trait's default (alloc, copy, dealloc), so a buffer left behind when a `Vec` grows is recorded
//! too. The test records while the secret key is made, then while a client does all it does with
//! it (public key, relinearization, rotation and conjugation keys, a re-import of the exported
//! key, encryption both ways, decryption of degree 1 and 2, error paths, a panic with secrets
//! alive) and drops everything; then it looks through every recorded block for
//!
//! - the key's coefficient bytes (any 32-byte window);
//! - `s` as i64 words and its residues modulo every prime, coefficient form (32-word windows);
//! - `s`, `-s`, `s^2` and `s(X^g)` in NTT form over every prime, Q and P (8-word runs);
//! - `a*s` for the public key's, every switching key's and the symmetric ciphertext's `a`, the
//!   degree-2 partial sum `c2*s + c1`, and the errors `e = b + a*s (- P*g_j*s')` and
//!   `e = c0 + c1*s - m`, in NTT form (8-word runs) and as coefficients (i64 words and residues
//!   modulo every prime, 32-word windows), all recomputed outside the recording from the public
//!   polynomials and a reference copy of the key;
//! - words drawn from a CSPRNG kept on the heap (its state and output buffer are wiped on drop);
//! - and, without a reference, anything shaped like a secret sample: a run of 64 or more ternary
//!   bytes, or of small signed words, or of small residues modulo one prime, with many values of
//!   both signs (the public-key encryption's `u`, `e0`, `e1`, the errors of keys made inside the
//!   panicking closure).
//!
//! The reference copies are made and dropped with the recording off. A positive control first
//! checks that each search finds what it looks for in a live buffer the library made.
//!
//! - the output of `decrypt`, `m' = c0 + c1*s`, which with the (public) ciphertext gives `c1*s`
//!   and so `s`: in NTT form, as coefficient residues, as the centered coefficients decoding
//!   reconstructs (i64 and f64), and as the decoded slots (all of them are an invertible
//!   transform of the coefficients): `Plaintext` wipes itself on drop, and decoding's buffers and
//!   the returned slots are zeroizing.
//!
//! Not searched: what only lives on the stack (the CSPRNG's state where it was moved from, local
//! samples).

#![cfg(all(feature = "secret-key", not(target_arch = "wasm32")))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Instant;

use blindsight_core::arith::Modulus;
use blindsight_core::keygen::inspect::{public_key_parts, switching_key_parts};
use blindsight_core::ntt::NttBackend;
use blindsight_core::rns::RnsPoly;
use blindsight_core::sampler::{gaussian, secure_rng, small_to_rns, ternary};
use blindsight_core::*;
use rand_core::RngCore;

// ---------------------------------------------------------------------------------------------
// The allocator that keeps freed blocks.

/// Capacity of the table of kept blocks; a free beyond it is a real free, counted in `OVERFLOW`
/// (and the test fails: it could have hidden a leak).
const SLOTS: usize = 1 << 20;

static RECORDING: AtomicBool = AtomicBool::new(false);
static NEXT: AtomicUsize = AtomicUsize::new(0);
static OVERFLOW: AtomicUsize = AtomicUsize::new(0);
static BLOCK_ADDR: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static BLOCK_LEN: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];

struct KeepFreed;

// SAFETY: every block comes from `System` and goes back to it with the same layout, or is never
// freed at all (kept for inspection; the process ends soon after).
unsafe impl GlobalAlloc for KeepFreed {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if RECORDING.load(SeqCst) {
            let i = NEXT.fetch_add(1, SeqCst);
            if i < SLOTS {
                BLOCK_LEN[i].store(layout.size(), SeqCst);
                BLOCK_ADDR[i].store(ptr as usize, SeqCst);
                return;
            }
            OVERFLOW.fetch_add(1, SeqCst);
        }
        unsafe { System.dealloc(ptr, layout) }
    }

    // `realloc` is the trait's default: alloc, copy, dealloc (recorded above).
}

#[global_allocator]
static ALLOCATOR: KeepFreed = KeepFreed;

/// Runs `f` with every free kept and recorded.
fn recorded<T>(f: impl FnOnce() -> T) -> T {
    RECORDING.store(true, SeqCst);
    let out = f();
    RECORDING.store(false, SeqCst);
    out
}

/// The blocks freed while recording: their contents as bytes.
fn freed_blocks() -> Vec<&'static [u8]> {
    let count = NEXT.load(SeqCst).min(SLOTS);
    (0..count)
        .filter_map(|i| {
            let (addr, len) = (BLOCK_ADDR[i].load(SeqCst), BLOCK_LEN[i].load(SeqCst));
            // SAFETY: the block was allocated with this size and is never freed (bytes a buffer
            // never wrote are whatever the allocator left there; only compared, never trusted).
            (addr != 0 && len > 0)
                .then(|| unsafe { std::slice::from_raw_parts(addr as *const u8, len) })
        })
        .collect()
}

/// The 8-aligned words of a block.
fn words(block: &[u8]) -> &[u64] {
    // SAFETY: u64 has no invalid bit patterns; align_to gives the aligned middle only.
    let (_, mid, _) = unsafe { block.align_to::<u64>() };
    mid
}

// ---------------------------------------------------------------------------------------------
// Searches.

/// Finds runs of `run` consecutive elements equal to a run of one of the patterns. Candidates come
/// from a hash of the first `key` elements; keys `indexable` rejects (too common: zeros, small
/// words) are not indexed, and a buffer holding a whole pattern has many other starts.
struct Finder<T> {
    run: usize,
    key: usize,
    indexable: fn(&[T]) -> bool,
    names: Vec<String>,
    data: Vec<Vec<T>>,
    index: HashMap<Vec<T>, Vec<(u32, u32)>>,
}

impl<T: Copy + Eq + Hash> Finder<T> {
    fn new(run: usize, key: usize, indexable: fn(&[T]) -> bool) -> Self {
        Self {
            run,
            key,
            indexable,
            names: Vec::new(),
            data: Vec::new(),
            index: HashMap::new(),
        }
    }

    fn add(&mut self, name: String, data: Vec<T>) {
        let id = self.names.len() as u32;
        for k in 0..data.len().saturating_sub(self.run - 1) {
            let key = &data[k..k + self.key];
            if (self.indexable)(key) {
                self.index
                    .entry(key.to_vec())
                    .or_default()
                    .push((id, k as u32));
            }
        }
        self.names.push(name);
        self.data.push(data);
    }

    /// Calls `found(pattern name, offset)` for each match in `mem` (offsets in elements).
    fn scan(&self, mem: &[T], found: &mut dyn FnMut(&str, usize)) {
        for j in 0..mem.len().saturating_sub(self.run - 1) {
            let key = &mem[j..j + self.key];
            if !(self.indexable)(key) {
                continue;
            }
            if let Some(candidates) = self.index.get(key) {
                for &(id, k) in candidates {
                    let (id, k) = (id as usize, k as usize);
                    if mem[j..j + self.run] == self.data[id][k..k + self.run] {
                        found(&self.names[id], j);
                    }
                }
            }
        }
    }
}

/// Shortest run a shape search reports, and how many values of each sign it must hold.
const SHAPE_RUN: usize = 64;
const SHAPE_EACH_SIGN: usize = 12;
/// Largest magnitude of a sampled error (6 sigma of 3.2, rounded up).
const SMALL: u64 = 20;

/// Maximal runs of elements that `class` maps to Some(sign) (-1, 0 or 1), at least `SHAPE_RUN`
/// long with `SHAPE_EACH_SIGN` values of each sign: shaped like a ternary or Gaussian sample.
fn shaped_runs<T: Copy>(mem: &[T], class: impl Fn(T) -> Option<i8>) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let (mut start, mut pos, mut neg) = (0, 0, 0);
    // one step past the end closes the last run
    for j in 0..=mem.len() {
        match mem.get(j).and_then(|&x| class(x)) {
            Some(s) => {
                pos += usize::from(s > 0);
                neg += usize::from(s < 0);
            }
            None => {
                if j - start >= SHAPE_RUN && pos >= SHAPE_EACH_SIGN && neg >= SHAPE_EACH_SIGN {
                    out.push((start, j - start));
                }
                (start, pos, neg) = (j + 1, 0, 0);
            }
        }
    }
    out
}

fn ternary_byte(b: u8) -> Option<i8> {
    match b {
        0 => Some(0),
        1 => Some(1),
        255 => Some(-1),
        _ => None,
    }
}

fn small_signed_word(w: u64) -> Option<i8> {
    let v = w as i64;
    (v.unsigned_abs() <= SMALL).then_some(v.signum() as i8)
}

fn small_residue(q: u64) -> impl Fn(u64) -> Option<i8> {
    move |w| match w {
        0 => Some(0),
        w if w <= SMALL => Some(1),
        w if w < q && w >= q - SMALL => Some(-1),
        _ => None,
    }
}

/// Everything searched for, by family.
struct Searches {
    /// Coefficient bytes (32-byte windows).
    bytes: Finder<u8>,
    /// Small values: i64 words and residues in coefficient form (32-word windows).
    small: Finder<u64>,
    /// NTT-form residues (8-word runs).
    ntt: Finder<u64>,
    /// Every prime, Q then P, for the shape search.
    primes: Vec<u64>,
}

impl Searches {
    fn new(primes: Vec<u64>) -> Self {
        Self {
            bytes: Finder::new(32, 8, |k| k.iter().any(|&b| b != 0)),
            small: Finder::new(32, 4, |k| k.iter().any(|&w| w != 0)),
            ntt: Finder::new(8, 1, |k| k[0] >= 1 << 16),
            primes,
        }
    }

    /// A small signed vector (an error, the key's coefficients) in the forms the code holds it:
    /// i64 words and residues modulo every prime.
    fn add_small(&mut self, name: &str, v: &[i64]) {
        self.small.add(
            format!("{name} as i64"),
            v.iter().map(|&x| x as u64).collect(),
        );
        for (k, &q) in self.primes.clone().iter().enumerate() {
            let m = Modulus::new(q);
            self.small.add(
                format!("{name} mod prime {k} (coefficients)"),
                v.iter().map(|&x| m.from_i64(x)).collect(),
            );
        }
    }

    fn patterns(&self) -> usize {
        self.bytes.names.len() + self.small.names.len() + self.ntt.names.len()
    }

    /// Findings in one block, as (what, offset in bytes).
    fn scan(&self, block: &[u8]) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        let mut found = |what: &str, at: usize| out.push((what.to_string(), at));
        self.bytes.scan(block, &mut found);
        let w = words(block);
        let base = w.as_ptr() as usize - block.as_ptr() as usize;
        let mut found_w = |what: &str, at: usize| out.push((what.to_string(), base + 8 * at));
        self.small.scan(w, &mut found_w);
        self.ntt.scan(w, &mut found_w);
        for (at, len) in shaped_runs(block, ternary_byte) {
            out.push((format!("{len} ternary-shaped bytes"), at));
        }
        for (at, len) in shaped_runs(w, small_signed_word) {
            out.push((format!("{len} small signed words"), base + 8 * at));
        }
        for (k, &q) in self.primes.iter().enumerate() {
            for (at, len) in shaped_runs(w, small_residue(q)) {
                out.push((format!("{len} small residues mod prime {k}"), base + 8 * at));
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Reference values, computed with the recording off.

/// The key's residues in NTT form, by prime index (Q then P), and the basis facts to use them.
struct Reference {
    ctx: Arc<Context>,
    coeffs: Vec<i64>,
    s: Vec<Vec<u64>>,
    moduli: Vec<Modulus>,
}

impl Reference {
    fn new(ctx: &Arc<Context>, sk: &SecretKey) -> Self {
        let bytes = sk.to_secret_bytes();
        let coeffs: Vec<i64> = bytes[32..].iter().map(|&b| b as i8 as i64).collect();
        let all = ctx.q_basis().concat(ctx.p_basis());
        let mut s = small_to_rns(&all, &coeffs);
        all.forward(&mut s);
        Self {
            ctx: ctx.clone(),
            s: (0..all.len()).map(|k| s.limb(k).to_vec()).collect(),
            moduli: all.moduli().to_vec(),
            coeffs,
        }
    }

    /// Prime index of limb `i` of a polynomial over Q_level (++ P).
    fn prime(&self, level: usize, i: usize) -> usize {
        if i <= level {
            i
        } else {
            self.ctx.max_level() + 1 + (i - level - 1)
        }
    }

    fn ntt(&self, k: usize) -> &dyn NttBackend {
        let nq = self.ctx.max_level() + 1;
        if k < nq {
            self.ctx.q_basis().ntt(k)
        } else {
            self.ctx.p_basis().ntt(k - nq)
        }
    }

    /// `s(X^g)` in NTT form modulo prime k.
    fn s_galois(&self, g: u64, k: usize) -> Vec<u64> {
        let perm = self.ctx.permutation(g);
        perm.iter().map(|&j| self.s[k][j as usize]).collect()
    }

    /// The centered coefficients of an error given in NTT form modulo prime k, checked to be
    /// small (which also checks the `a*s` and gadget terms it was recomputed with).
    fn error_coeffs(&self, k: usize, ntt_form: &[u64]) -> Vec<i64> {
        let mut c = ntt_form.to_vec();
        self.ntt(k).inverse(&mut c);
        let e: Vec<i64> = c.iter().map(|&x| self.moduli[k].center(x)).collect();
        assert!(
            e.iter().all(|x| x.unsigned_abs() <= SMALL) && e.iter().any(|&x| x != 0),
            "a recomputed error is not a Gaussian sample: the reference is wrong"
        );
        e
    }
}

/// Pointwise `x*y + z` modulo `m`.
fn mul_add(m: &Modulus, x: &[u64], y: &[u64], z: &[u64]) -> Vec<u64> {
    x.iter()
        .zip(y)
        .zip(z)
        .map(|((&a, &b), &c)| m.add(m.mul(a, b), c))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// What a client does, recorded.

/// Copies of public polynomials, to recompute the secret-derived values outside the recording.
struct PublicCopies {
    pk: (RnsPoly, RnsPoly),
    /// (kind, level, b_j, a_j) of every switching key made outside the panicking closure.
    keys: Vec<(KeyKind, usize, Vec<RnsPoly>, Vec<RnsPoly>)>,
    /// The symmetric encryption: c0, c1, the plaintext polynomial, the level.
    sym: (RnsPoly, RnsPoly, RnsPoly, usize),
    /// The symmetric ciphertext itself, to decrypt again outside the recording.
    sym_ct: Ciphertext,
    /// A degree-2 product of it.
    square: Vec<RnsPoly>,
    /// Words drawn from a CSPRNG that lived on the heap (its buffered output block holds them).
    drawn: [u32; 16],
}

fn values(n: usize) -> Vec<f64> {
    (0..n).map(|i| 0.5 * ((i as f64) * 0.37).sin()).collect()
}

fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() < tol)
}

/// Everything a client does with its key; the key is dropped at the end.
fn client_work(ctx: &Arc<Context>, sk: SecretKey) -> PublicCopies {
    let top = ctx.max_level();
    let mut kg = KeyGenerator::new(ctx, &sk);
    let pk = kg.public_key();
    // (the server keeps one key per kind: the last inserted, so the top-level one comes last)
    let mut made = vec![kg.relin_key(0).unwrap(), kg.relin_key(top).unwrap()];
    for (r, level) in [(1, top), (2, top), (-1, 0), (7, 0)] {
        made.push(kg.rotation_key(r, level).unwrap());
    }
    made.push(kg.conjugation_key(top).unwrap());

    // error paths of the key generator
    assert!(kg.galois_key(2, top).is_err(), "an even Galois element");
    assert!(
        kg.rotation_key(1, top + 1).is_err(),
        "a level beyond the chain"
    );
    assert!(kg.relin_key(top + 3).is_err(), "a level beyond the chain");

    // the keys go over the wire and into a server's key set
    let mut keys = EvaluationKeys::new(ctx);
    for key in &made {
        let bytes = key.to_bytes(ctx).unwrap();
        keys.insert(SwitchingKey::from_bytes(ctx, &bytes, bytes.len()).unwrap())
            .unwrap();
    }
    let pk_bytes = pk.to_bytes(ctx).unwrap();
    let pk = PublicKey::from_bytes(ctx, &pk_bytes, pk_bytes.len()).unwrap();

    // encryption both ways, evaluation, decryption of degree 1 and 2
    let x = values(ctx.params().slots());
    let scale = ctx.params().default_scale();
    let pt = Plaintext::encode_real(ctx, &x, top, scale).unwrap();
    let mut enc = Encryptor::new(ctx);
    let sym = enc.encrypt_sk(&pt, &sk).unwrap();
    let asym = enc.encrypt_pk(&pt, &pk).unwrap();
    let ev = Evaluator::new(ctx);
    let square = ev.mul(&sym, &sym).unwrap();
    let rotated = ev.rotate(&asym, 1, &keys).unwrap();
    let relin = ev.relinearize(&square, &keys).unwrap();
    // (the real parts are as secret as the slots they come from: wiped too)
    let decoded = |ct: &Ciphertext| -> zeroize::Zeroizing<Vec<f64>> {
        zeroize::Zeroizing::new(
            decrypt(ctx, ct, &sk)
                .unwrap()
                .decode(ctx)
                .unwrap()
                .iter()
                .map(|c| c.re)
                .collect(),
        )
    };
    let x2: Vec<f64> = x.iter().map(|v| v * v).collect();
    let mut x_rot = x.clone();
    x_rot.rotate_left(1);
    assert!(close(&decoded(&sym), &x, 1e-3));
    assert!(close(&decoded(&asym), &x, 1e-2)); // public-key noise is larger
    assert!(close(&decoded(&square), &x2, 1e-2));
    assert!(close(&decoded(&relin), &x2, 1e-2));
    assert!(close(&decoded(&rotated), &x_rot, 1e-2));
    let wire = sym.to_bytes(ctx).unwrap();
    assert!(Ciphertext::from_bytes(ctx, &wire, wire.len()).is_ok());

    // the key exported for the page's storage and read back; bad bytes; decryption errors
    let exported = sk.to_secret_bytes();
    let again = SecretKey::from_secret_bytes(ctx, &exported).unwrap();
    let mut kg2 = KeyGenerator::new(ctx, &again);
    let extra = kg2.rotation_key(3, top).unwrap();
    assert!(close(
        &decoded(&Encryptor::new(ctx).encrypt_sk(&pt, &again).unwrap()),
        &x,
        1e-3
    ));
    drop((kg2, extra));
    drop(again);
    let mut bad = exported.clone();
    bad[32 + ctx.n() / 2] = 7;
    assert!(
        SecretKey::from_secret_bytes(ctx, &bad).is_err(),
        "a non-ternary coefficient"
    );
    assert!(SecretKey::from_secret_bytes(ctx, &exported[..exported.len() - 1]).is_err());
    bad[0] ^= 1;
    assert!(
        SecretKey::from_secret_bytes(ctx, &bad).is_err(),
        "another fingerprint"
    );
    drop(bad);

    // a CSPRNG on the heap (as in a struct a caller boxes): its state and buffered output go too
    let mut rng = Box::new(secure_rng());
    let drawn: [u32; 16] = std::array::from_fn(|_| rng.next_u32());
    drop(rng);

    // a panic while secrets are alive: they are wiped as it unwinds
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let caught = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let sk2 = SecretKey::from_secret_bytes(ctx, &exported).unwrap();
        let mut kg = KeyGenerator::new(ctx, &sk2);
        let key = kg.relin_key(top).unwrap();
        let ct = Encryptor::new(ctx).encrypt_sk(&pt, &sk2).unwrap();
        let bytes = sk2.to_secret_bytes();
        panic!(
            "a deliberate panic with a key of {} digits, a ciphertext of degree {} and {} key bytes alive",
            key.digits(),
            ct.degree(),
            bytes.len()
        );
    }));
    std::panic::set_hook(hook);
    assert!(caught.is_err());
    drop(exported);

    let copies = PublicCopies {
        pk: {
            let (b, a) = public_key_parts(&pk);
            (b.clone(), a.clone())
        },
        keys: made
            .iter()
            .map(|k| {
                let (b, a) = switching_key_parts(k);
                (k.kind(), k.level(), b.to_vec(), a.to_vec())
            })
            .collect(),
        sym: (
            sym.parts()[0].clone(),
            sym.parts()[1].clone(),
            pt.poly().clone(),
            sym.level(),
        ),
        sym_ct: sym.clone(),
        square: square.parts().to_vec(),
        drawn,
    };
    drop((kg, made, keys, pk, enc, sym, asym, square, rotated, relin));
    drop(sk);
    copies
}

// ---------------------------------------------------------------------------------------------
// The secret-derived values, from the public copies and the reference.

fn add_derived(s: &mut Searches, r: &Reference, public: &PublicCopies) {
    s.bytes.add(
        "CSPRNG output".into(),
        public.drawn.iter().flat_map(|w| w.to_le_bytes()).collect(),
    );
    let top = r.ctx.max_level();
    let n_primes = r.moduli.len();
    // s, -s, s^2, s(X^g) in NTT form, every prime
    let galois: Vec<u64> = public
        .keys
        .iter()
        .filter_map(|k| match k.0 {
            KeyKind::Galois(g) => Some(g),
            KeyKind::Relin => None,
        })
        .collect();
    for k in 0..n_primes {
        let m = &r.moduli[k];
        s.ntt.add(format!("s NTT mod prime {k}"), r.s[k].clone());
        s.ntt.add(
            format!("-s NTT mod prime {k}"),
            r.s[k].iter().map(|&x| m.neg(x)).collect(),
        );
        s.ntt.add(
            format!("s^2 NTT mod prime {k}"),
            r.s[k].iter().map(|&x| m.mul(x, x)).collect(),
        );
        for &g in &galois {
            s.ntt
                .add(format!("s(X^{g}) NTT mod prime {k}"), r.s_galois(g, k));
        }
    }
    // the public key: a*s and e = b + a*s
    let (b, a) = &public.pk;
    for i in 0..=top {
        let m = &r.moduli[i];
        let zero = vec![0; r.ctx.n()];
        s.ntt.add(
            format!("pk a*s mod prime {i}"),
            mul_add(m, a.limb(i), &r.s[i], &zero),
        );
        let e = mul_add(m, a.limb(i), &r.s[i], b.limb(i));
        if i == 0 {
            s.add_small("pk error", &r.error_coeffs(i, &e));
        }
        s.ntt.add(format!("pk error NTT mod prime {i}"), e);
    }
    // switching keys: a_j*s and e_j = b_j + a_j*s - P*g_j*s_new
    for (kind, level, bs, as_) in &public.keys {
        let layout = r.ctx.params().key_layout(*level);
        for (j, (b_j, a_j)) in bs.iter().zip(as_).enumerate() {
            for i in 0..b_j.num_limbs() {
                let k = r.prime(*level, i);
                let m = &r.moduli[k];
                let zero = vec![0; r.ctx.n()];
                let name = format!("{kind:?} key (level {level}) digit {j}");
                s.ntt.add(
                    format!("{name} a*s mod prime {k}"),
                    mul_add(m, a_j.limb(i), &r.s[k], &zero),
                );
                let mut e = mul_add(m, a_j.limb(i), &r.s[k], b_j.limb(i));
                if i <= *level && i / layout.alpha == j {
                    let p_mod_q = r.ctx.p_basis().moduli()[..layout.special]
                        .iter()
                        .fold(1u64, |acc, p| m.mul(acc, m.reduce(p.value())));
                    let s_new = match kind {
                        KeyKind::Relin => r.s[k].iter().map(|&x| m.mul(x, x)).collect(),
                        KeyKind::Galois(g) => r.s_galois(*g, k),
                    };
                    for (x, &v) in e.iter_mut().zip(&s_new) {
                        *x = m.sub(*x, m.mul(v, p_mod_q));
                    }
                }
                if i == 0 {
                    s.add_small(&format!("{name} error"), &r.error_coeffs(k, &e));
                }
                s.ntt.add(format!("{name} error NTT mod prime {k}"), e);
            }
        }
    }
    // the symmetric ciphertext: c1*s (= a*s) and e = c0 + c1*s - m; the degree-2 partial sum
    let (c0, c1, pt, level) = &public.sym;
    for i in 0..=*level {
        let m = &r.moduli[i];
        let zero = vec![0; r.ctx.n()];
        s.ntt.add(
            format!("ciphertext c1*s mod prime {i}"),
            mul_add(m, c1.limb(i), &r.s[i], &zero),
        );
        let mut e = mul_add(m, c1.limb(i), &r.s[i], c0.limb(i));
        for (x, &v) in e.iter_mut().zip(pt.limb(i)) {
            *x = m.sub(*x, v);
        }
        if i == 0 {
            s.add_small("encryption error", &r.error_coeffs(i, &e));
        }
        s.ntt.add(format!("encryption error NTT mod prime {i}"), e);
        let sq = &public.square;
        s.ntt.add(
            format!("c2*s + c1 mod prime {i}"),
            mul_add(m, sq[2].limb(i), &r.s[i], sq[1].limb(i)),
        );
        // its decryption m' = c0 + c1*s (with the ciphertext, it gives c1*s and so s), in NTT
        // form and as coefficient residues
        let decrypted = mul_add(m, c1.limb(i), &r.s[i], c0.limb(i));
        let mut coeffs = decrypted.clone();
        r.ntt(i).inverse(&mut coeffs);
        if i == 0 {
            // the centered coefficients decoding reconstructs, as i64 and as f64
            let centered: Vec<i64> = coeffs.iter().map(|&x| m.center(x)).collect();
            s.small.add(
                "decryption centered coefficients as f64".into(),
                centered.iter().map(|&x| (x as f64).to_bits()).collect(),
            );
            s.small.add(
                "decryption centered coefficients as i64".into(),
                centered.iter().map(|&x| x as u64).collect(),
            );
        }
        s.small
            .add(format!("decryption coefficients mod prime {i}"), coeffs);
        s.ntt
            .add(format!("decryption NTT mod prime {i}"), decrypted);
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn secrets_leave_no_trace_in_freed_memory() {
    let ctx = Context::named("N12_TINY").unwrap();
    let primes: Vec<u64> = ctx
        .params()
        .q()
        .iter()
        .chain(ctx.params().p())
        .copied()
        .collect();

    let sk = recorded(|| SecretKey::generate(&ctx));
    let reference = Reference::new(&ctx, &sk);
    let mut searches = Searches::new(primes);
    searches.bytes.add(
        "secret key coefficient bytes".into(),
        reference.coeffs.iter().map(|&c| c as i8 as u8).collect(),
    );
    searches.add_small("s", &reference.coeffs.clone());

    let started = Instant::now();
    let public = recorded(|| client_work(&ctx, sk));
    let client_time = started.elapsed();
    add_derived(&mut searches, &reference, &public);

    // The decoded slots of the symmetric ciphertext: every slot (re, im) and the real parts
    // alone, as decoding computes them (decrypted again here with a re-imported key).
    {
        let again = SecretKey::from_secret_bytes(&ctx, &{
            let mut b = ctx.fingerprint().to_vec();
            b.extend(reference.coeffs.iter().map(|&c| c as i8 as u8));
            b
        })
        .unwrap();
        let slots = decrypt(&ctx, &public.sym_ct, &again)
            .unwrap()
            .decode(&ctx)
            .unwrap();
        searches.small.add(
            "decoded slots (re, im)".into(),
            slots
                .iter()
                .flat_map(|c| [c.re.to_bits(), c.im.to_bits()])
                .collect(),
        );
        searches.small.add(
            "decoded slots (re)".into(),
            slots.iter().map(|c| c.re.to_bits()).collect(),
        );
    }

    // Positive control: each search finds its target in live buffers the library made.
    {
        let again = SecretKey::from_secret_bytes(&ctx, &{
            let mut b = ctx.fingerprint().to_vec();
            b.extend(reference.coeffs.iter().map(|&c| c as i8 as u8));
            b
        })
        .unwrap();
        let exported = again.to_secret_bytes();
        let all = ctx.q_basis().concat(ctx.p_basis());
        let mut s_rns = small_to_rns(&all, &reference.coeffs);
        let coeff_bytes: Vec<u8> = s_rns.data().iter().flat_map(|w| w.to_le_bytes()).collect();
        all.forward(&mut s_rns);
        let ntt_bytes: Vec<u8> = s_rns.data().iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut rng = secure_rng();
        let e = gaussian(&mut rng, ctx.n());
        let e_bytes: Vec<u8> = e.iter().flat_map(|w| w.to_le_bytes()).collect();
        let t: Vec<u8> = ternary(&mut rng, ctx.n())
            .iter()
            .map(|&x| x as u8)
            .collect();
        for (what, buf, expect) in [
            ("exported key", &exported[..], "coefficient bytes"),
            ("s residues", &coeff_bytes[..], "(coefficients)"),
            ("s NTT", &ntt_bytes[..], "s NTT"),
            ("a Gaussian sample", &e_bytes[..], "small signed words"),
            ("a ternary sample", &t[..], "ternary-shaped bytes"),
        ] {
            // (each buffer starts a heap block, so its words are 8-aligned as a freed one's)
            let hits = searches.scan(buf);
            assert!(
                hits.iter().any(|(name, _)| name.contains(expect)),
                "the control found nothing in {what} (wanted {expect:?}): {hits:?}"
            );
        }
    }

    let blocks = freed_blocks();
    assert_eq!(
        OVERFLOW.load(SeqCst),
        0,
        "more frees than the table holds: raise SLOTS"
    );
    let scan_started = Instant::now();
    let mut leaks: BTreeMap<String, Vec<(usize, usize, usize)>> = BTreeMap::new();
    let mut scanned = 0usize;
    for (b, block) in blocks.iter().enumerate() {
        scanned += block.len();
        for (what, at) in searches.scan(block) {
            leaks.entry(what).or_default().push((b, block.len(), at));
        }
    }
    println!(
        "client work {:.2} s; scanned {} freed blocks, {} bytes, for {} patterns and 3 shapes in {:.2} s",
        client_time.as_secs_f64(),
        blocks.len(),
        scanned,
        searches.patterns(),
        scan_started.elapsed().as_secs_f64()
    );
    let report: Vec<String> = leaks
        .iter()
        .map(|(what, places)| {
            let (b, len, at) = places[0];
            format!(
                "{what}: {} place(s), first in freed block #{b} ({len} bytes) at byte {at}",
                places.len()
            )
        })
        .collect();
    assert!(
        leaks.is_empty(),
        "secret values found in freed memory:\n{}",
        report.join("\n")
    );
    drop(public);
    drop(reference);
}
