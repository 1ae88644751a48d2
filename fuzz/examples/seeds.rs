//! Writes the seed corpus: `cargo run -p blindsight-fuzz --example seeds [-- DIR]` (default:
//! `fuzz/corpus`), one folder per target. Deterministic: the same files on every run.
//!
//! Wire objects are made from their definition (header, fields, residues packed at their primes'
//! widths) with pseudo-random residues below each prime: a parser cannot tell them from real
//! encryptions, and no randomness of the OS is involved. Each seed is checked to parse (and so to
//! reach the round-trip assertions of its harness) before it is written.

use std::path::{Path, PathBuf};

use blindsight_client::ClientContract;
use blindsight_core::wire::{self, Kind};
use blindsight_core::{Ciphertext, Context, ParamSpec, Params, Plaintext, PublicKey, SwitchingKey};
use blindsight_fuzz::{join_model_input, mini_model, test_ctx, tiny, MINI_MANIFEST, MINI_WEIGHTS};
use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgb, Rgba};

/// SplitMix64: the residues' deterministic source.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// An object: the common header (`kind`, `flags`, `level`), `fields`, then `polys` polynomials over
/// `primes` (bit-packed, pseudo-random residues below each prime).
fn object(
    ctx: &Context,
    (kind, flags, level): (Kind, u8, usize),
    fields: &[u8],
    primes: &[u64],
    polys: usize,
    seed: u64,
) -> Vec<u8> {
    let mut out = wire::MAGIC.to_vec();
    out.extend_from_slice(&[wire::VERSION, kind as u8, flags, 0]);
    out.extend_from_slice(ctx.fingerprint());
    out.extend_from_slice(&(level as u16).to_le_bytes());
    out.extend_from_slice(fields);
    let mut rng = Rng(seed);
    let (mut acc, mut nbits) = (0u128, 0u32);
    for _ in 0..polys {
        for &q in primes {
            let w = 64 - q.leading_zeros();
            for _ in 0..ctx.n() {
                acc |= ((rng.next() % q) as u128) << nbits;
                nbits += w;
                if nbits >= 64 {
                    out.extend_from_slice(&(acc as u64).to_le_bytes());
                    acc >>= 64;
                    nbits -= 64;
                }
            }
        }
    }
    out.extend_from_slice(&acc.to_le_bytes()[..nbits.div_ceil(8) as usize]);
    out
}

fn q_primes(ctx: &Context, level: usize) -> Vec<u64> {
    ctx.params().q()[..=level].to_vec()
}

fn qp_primes(ctx: &Context, level: usize) -> Vec<u64> {
    let mut v = q_primes(ctx, level);
    v.extend_from_slice(&ctx.params().p()[..ctx.params().key_layout(level).special]);
    v
}

fn ciphertext(ctx: &Context, level: usize, degree: usize, seeded: bool, seed: u64) -> Vec<u8> {
    let mut fields = 2f64.powi(25).to_bits().to_le_bytes().to_vec();
    fields.push(degree as u8 + 1);
    if seeded {
        fields.extend(1..=32u8);
    }
    let polys = if seeded { 1 } else { degree + 1 };
    let flags = u8::from(seeded);
    object(
        ctx,
        (Kind::Ciphertext, flags, level),
        &fields,
        &q_primes(ctx, level),
        polys,
        seed,
    )
}

fn switching_key(ctx: &Context, galois: u64, level: usize, seed: u64) -> Vec<u8> {
    let digits = ctx.params().digits_at(level);
    let mut fields = galois.to_le_bytes().to_vec();
    fields.push(digits as u8);
    fields.extend(32..64u8);
    let kind = if galois == 0 {
        Kind::RelinKey
    } else {
        Kind::GaloisKey
    };
    object(
        ctx,
        (kind, 1, level),
        &fields,
        &qp_primes(ctx, level),
        digits,
        seed,
    )
}

struct Out {
    root: PathBuf,
    written: usize,
    bytes: usize,
}

impl Out {
    fn put(&mut self, target: &str, name: &str, data: &[u8]) {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
        self.written += 1;
        self.bytes += data.len();
    }
}

fn encode(img: impl Into<DynamicImage>, format: ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.into().write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A JPEG with an EXIF block (APP1) whose orientation tag says `orientation`.
fn jpeg_with_orientation(orientation: u16) -> Vec<u8> {
    let jpeg = encode(
        ImageBuffer::from_fn(6, 3, |x, y| Rgb([(x * 40) as u8, (y * 80) as u8, 128])),
        ImageFormat::Jpeg,
    );
    // TIFF header (little-endian), one IFD entry: tag 0x0112 (orientation), SHORT, count 1
    let mut tiff = b"II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec(); // SOI
    out.extend_from_slice(&[0xff, 0xe1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn palette_png() -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut enc = png::Encoder::new(&mut bytes, 5, 4);
    enc.set_color(png::ColorType::Indexed);
    enc.set_depth(png::BitDepth::Four);
    enc.set_palette(vec![10, 20, 30, 200, 150, 100, 0, 255, 0]);
    enc.set_trns(vec![255, 128]);
    let mut writer = enc.write_header().unwrap();
    writer
        .write_image_data(&[
            0x01, 0x20, 0x12, 0x01, 0x20, 0x12, 0x01, 0x20, 0x12, 0x00, 0x00, 0x00,
        ])
        .unwrap();
    drop(writer);
    bytes
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let mut out = Out {
        root,
        written: 0,
        bytes: 0,
    };
    let ctx = tiny();
    let max = ctx.max_level();
    let parse_ok = |ok: bool, what: &str| assert!(ok, "seed {what} does not parse");

    // ciphertexts: seeded (fresh secret-key encryption) at both levels, full, degree 2
    for (name, level, degree, seeded) in [
        ("seeded-top", max, 1, true),
        ("seeded-0", 0, 1, true),
        ("full-0", 0, 1, false),
        ("degree2-0", 0, 2, false),
    ] {
        let b = ciphertext(ctx, level, degree, seeded, 1 + level as u64);
        parse_ok(Ciphertext::from_bytes(ctx, &b, usize::MAX).is_ok(), name);
        out.put("wire_ciphertext", name, &b);
    }
    // plaintexts
    let scale = 2f64.powi(30).to_bits().to_le_bytes();
    let b = object(
        ctx,
        (Kind::Plaintext, 0, 0),
        &scale,
        &q_primes(ctx, 0),
        1,
        7,
    );
    parse_ok(
        Plaintext::from_bytes(ctx, &b, usize::MAX).is_ok(),
        "plaintext",
    );
    out.put("wire_plaintext", "level-0", &b);
    // the public key
    let b = object(
        ctx,
        (Kind::PublicKey, 1, max),
        &[42; 32],
        &q_primes(ctx, max),
        1,
        8,
    );
    parse_ok(
        PublicKey::from_bytes(ctx, &b, usize::MAX).is_ok(),
        "public key",
    );
    out.put("wire_public_key", "top", &b);
    // switching keys: relinearization, a rotation, the conjugation (level 0: one digit)
    let two_n = 2 * ctx.n() as u64;
    for (name, g) in [
        ("relin-0", 0),
        ("rotation-1-0", ctx.galois_element(1)),
        ("conjugation-0", two_n - 1),
    ] {
        let b = switching_key(ctx, g, 0, 9 + g);
        parse_ok(SwitchingKey::from_bytes(ctx, &b, usize::MAX).is_ok(), name);
        out.put("wire_switching_key", name, &b);
    }
    // parameter sets: every shipped one, and a custom one with a long non-ASCII name
    for name in blindsight_core::params::NAMED_SETS {
        out.put(
            "wire_params",
            name,
            &Params::named(name).unwrap().to_bytes(),
        );
    }
    let mut spec = ParamSpec::named("N12_TINY").unwrap();
    spec.name = "ß-custom-".repeat(20);
    spec.q_bits = vec![30, 25];
    spec.p_bits = vec![40];
    spec.dnum = 1;
    let b = spec.build().unwrap().to_bytes();
    parse_ok(Params::from_bytes(&b).is_ok(), "custom params");
    out.put("wire_params", "custom-long-name", &b);

    // the client contract of the test server (the mini network at N14_TEST), and one for N12_TINY
    let model = mini_model();
    let plan = blindsight_server::he::plan::Plan::new(model, test_ctx()).unwrap();
    let contract = blindsight_server::contract::client_contract(model, &plan, test_ctx()).unwrap();
    let json = contract.to_json();
    contract.check(test_ctx()).unwrap();
    out.put("contract", "mini-n14", json.as_bytes());
    let compact = serde_json::to_vec(&contract).unwrap();
    out.put("contract", "mini-n14-compact", &compact);
    if let Ok(plan) = blindsight_server::he::plan::Plan::new(model, ctx) {
        if let Ok(c) = blindsight_server::contract::client_contract(model, &plan, ctx) {
            c.check(ctx).unwrap();
            out.put("contract", "mini-n12", c.to_json().as_bytes());
        }
    }
    let mut one_key: ClientContract = contract.clone();
    one_key.keys.truncate(1);
    out.put("contract", "one-key", one_key.to_json().as_bytes());

    // the model: the test network, and with ReLU activations instead of polynomials
    out.put(
        "model",
        "mini",
        &join_model_input(MINI_MANIFEST, MINI_WEIGHTS),
    );
    let relu = String::from_utf8(MINI_MANIFEST.to_vec())
        .unwrap()
        .replace("\"quadratic\"", "\"relu\"");
    out.put(
        "model",
        "mini-relu",
        &join_model_input(relu.as_bytes(), MINI_WEIGHTS),
    );

    // images: PNG of each colour type and depth, JPEG colour and gray, EXIF orientation
    let rgb = ImageBuffer::from_fn(5, 3, |x, y| Rgb([(x * 50) as u8, (y * 90) as u8, 77]));
    out.put("image", "rgb8.png", &encode(rgb.clone(), ImageFormat::Png));
    let rgba16 = ImageBuffer::from_fn(3, 3, |x, y| {
        Rgba([x as u16 * 20000, y as u16 * 30000, 5, 40000])
    });
    out.put("image", "rgba16.png", &encode(rgba16, ImageFormat::Png));
    let gray = ImageBuffer::from_fn(4, 4, |x, y| Luma([(x * 60 + y) as u8]));
    out.put("image", "gray.png", &encode(gray.clone(), ImageFormat::Png));
    out.put("image", "palette-trns.png", &palette_png());
    out.put("image", "rgb.jpg", &encode(rgb, ImageFormat::Jpeg));
    out.put("image", "gray.jpg", &encode(gray, ImageFormat::Jpeg));
    out.put("image", "exif-rotated.jpg", &jpeg_with_orientation(6));
    // raw pixels for the client's resize: 3x2 to 2x5, RGBA
    let mut raw = vec![3, 2, 2, 5];
    raw.extend((0..3 * 2 * 4).map(|i| (i * 21) as u8));
    out.put("image", "raw-3x2-to-2x5", &raw);

    // HTTP requests: every route, with the session `{S}` and bodies that pass the first checks
    let big = test_ctx();
    let key0 = &contract.keys[0];
    let galois = match key0.kind() {
        blindsight_core::KeyKind::Relin => 0,
        blindsight_core::KeyKind::Galois(g) => g,
    };
    let mut key_head = switching_key(big, galois, key0.level, 3);
    key_head.truncate(120);
    let mut ct_head = ciphertext(big, contract.input.level, 1, true, 4);
    ct_head.truncate(120);
    let requests: Vec<(&str, Vec<u8>)> = vec![
        ("health", b"GET /api/health HTTP/1.1\n".to_vec()),
        ("contract", b"GET /api/contract HTTP/1.1\nAccept-Encoding: gzip\n".to_vec()),
        ("create", b"POST /api/sessions HTTP/1.1\nContent-Length: 0\n".to_vec()),
        ("status", b"GET /api/sessions/{S} HTTP/1.1\n".to_vec()),
        ("delete", b"DELETE /api/sessions/{S} HTTP/1.1\n".to_vec()),
        ("key-bad-index", b"PUT /api/sessions/{S}/keys/99 HTTP/1.1\nContent-Length: 3\n\nabc".to_vec()),
        ("key", [&b"PUT /api/sessions/{S}/keys/0 HTTP/1.1\nContent-Type: application/octet-stream\nContent-Length: 1\n\n"[..], &key_head].concat()),
        ("job", [&b"POST /api/sessions/{S}/jobs HTTP/1.1\nContent-Length: 1\n\n"[..], &ct_head].concat()),
        ("events", b"GET /api/jobs/0123456789abcdef0123456789abcdef/events HTTP/1.1\nAccept: text/event-stream\n".to_vec()),
        ("result", b"GET /api/jobs/nope/result HTTP/1.1\n".to_vec()),
        ("metrics", b"GET /metrics HTTP/1.1\n".to_vec()),
        ("method", b"PATCH /api/sessions HTTP/1.1\n".to_vec()),
        ("traversal", b"GET /api/sessions/..%2F..%2Fetc HTTP/1.1\n".to_vec()),
        ("unknown", b"GET /index.html?x=1 HTTP/1.1\n".to_vec()),
    ];
    for (name, req) in requests {
        assert!(
            blindsight_fuzz::parse_request(&req, "0123").is_some(),
            "{name}"
        );
        out.put("http", name, &req);
    }
    println!(
        "{} seeds, {} bytes, in {}",
        out.written,
        out.bytes,
        out.root.display()
    );
}
