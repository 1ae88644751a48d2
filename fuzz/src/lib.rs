//! The fuzz harnesses: one function per parser that sees untrusted bytes, each asserting what
//! must hold for every input, not only that nothing panics:
//!
//! - the wire objects (`wire_*`, at N12_TINY): whatever parses serializes back to exactly the
//!   bytes it came from (one encoding per object), has the size the size functions announce, and
//!   is refused under a limit one byte short;
//! - the client contract (`contract`): a contract that parses round-trips through its JSON, and
//!   the checks against a context and the client built on it never panic;
//! - the model (`model`, manifest and safetensors weights): a model that loads runs its plaintext
//!   forward pass without error;
//! - image decoding (`image`): the server's decoding and model input, and the client's resize of
//!   raw RGBA pixels, give the sizes they promise;
//! - the HTTP routes (`http`): any method, path, headers and body get an answer within a time
//!   limit, of bounded size, never a 500.
//!
//! `fuzz_targets/*.rs` wrap each in `libfuzzer_sys::fuzz_target!`; `tests/corpus.rs` runs each
//! over its committed corpus and regressions under plain `cargo test`.

use std::sync::{Arc, OnceLock};

use blindsight_core::wire::{ciphertext_size, public_key_size, switching_key_size};
use blindsight_core::{Ciphertext, Context, Params, Plaintext, PublicKey, SwitchingKey, WireError};
use blindsight_server::model::Model;

mod http;
pub use http::{http, parse_request};

/// A harness: takes any bytes, panics only on a bug.
pub type Harness = fn(&[u8]);

/// Every target by name, as in `Cargo.toml`'s `[[bin]]`s, `corpus/` and `regressions/`.
pub const TARGETS: &[(&str, Harness)] = &[
    ("wire_ciphertext", wire_ciphertext),
    ("wire_plaintext", wire_plaintext),
    ("wire_public_key", wire_public_key),
    ("wire_switching_key", wire_switching_key),
    ("wire_params", wire_params),
    ("contract", contract),
    ("model", model),
    ("image", image),
    ("http", http),
];

/// The size limit the wire harnesses parse under (above every N12_TINY object).
pub const WIRE_LIMIT: usize = 1 << 20;

/// The parameter set of the wire harnesses: the smallest secure one, so that an execution is
/// microseconds.
pub const WIRE_PARAMS: &str = "N12_TINY";

/// The context of [`WIRE_PARAMS`], built once.
pub fn tiny() -> &'static Arc<Context> {
    static CTX: OnceLock<Arc<Context>> = OnceLock::new();
    CTX.get_or_init(|| Context::named(WIRE_PARAMS).expect("a shipped parameter set"))
}

/// The context of the server the HTTP harness runs (and of its contract), built once.
pub fn test_ctx() -> &'static Arc<Context> {
    static CTX: OnceLock<Arc<Context>> = OnceLock::new();
    CTX.get_or_init(|| Context::named(http::SERVER_PARAMS).expect("a shipped parameter set"))
}

/// `parsed` must be refused by the same parser under a limit one byte short of the input.
fn refused_when_short<T>(data: &[u8], parse: impl Fn(usize) -> Result<T, WireError>) {
    assert!(
        matches!(parse(data.len() - 1), Err(WireError::TooLarge { .. })),
        "the size limit is checked"
    );
}

pub fn wire_ciphertext(data: &[u8]) {
    let ctx = tiny();
    let Ok(ct) = Ciphertext::from_bytes(ctx, data, WIRE_LIMIT) else {
        return;
    };
    assert_eq!(
        ct.to_bytes(ctx).expect("a parsed ciphertext serializes"),
        data,
        "one encoding per ciphertext"
    );
    let size = ciphertext_size(ctx, ct.level(), ct.degree(), ct.is_seeded()).unwrap();
    assert_eq!(data.len(), size, "ciphertext_size");
    refused_when_short(data, |limit| Ciphertext::from_bytes(ctx, data, limit));
}

pub fn wire_plaintext(data: &[u8]) {
    let ctx = tiny();
    let Ok(pt) = Plaintext::from_bytes(ctx, data, WIRE_LIMIT) else {
        return;
    };
    assert_eq!(
        pt.to_bytes(ctx).expect("a parsed plaintext serializes"),
        data,
        "one encoding per plaintext"
    );
    assert!(pt.level() <= ctx.max_level());
    refused_when_short(data, |limit| Plaintext::from_bytes(ctx, data, limit));
}

pub fn wire_public_key(data: &[u8]) {
    let ctx = tiny();
    let Ok(pk) = PublicKey::from_bytes(ctx, data, WIRE_LIMIT) else {
        return;
    };
    assert_eq!(
        pk.to_bytes(ctx).expect("a parsed public key serializes"),
        data,
        "one encoding per public key"
    );
    assert_eq!(data.len(), public_key_size(ctx), "public_key_size");
    refused_when_short(data, |limit| PublicKey::from_bytes(ctx, data, limit));
}

/// Relinearization and Galois keys: one parser, the header says which.
pub fn wire_switching_key(data: &[u8]) {
    let ctx = tiny();
    let Ok(key) = SwitchingKey::from_bytes(ctx, data, WIRE_LIMIT) else {
        return;
    };
    assert_eq!(
        key.to_bytes(ctx).expect("a parsed key serializes"),
        data,
        "one encoding per switching key"
    );
    let size = switching_key_size(ctx, key.level()).unwrap();
    assert_eq!(data.len(), size, "switching_key_size");
    refused_when_short(data, |limit| SwitchingKey::from_bytes(ctx, data, limit));
}

pub fn wire_params(data: &[u8]) {
    let Ok(params) = Params::from_bytes(data) else {
        return;
    };
    assert_eq!(params.to_bytes(), data, "one encoding per parameter set");
}

/// The model the image and HTTP harnesses use: the reduced test network
/// (`native-server/tests/fixtures/mini_resnet`), built into the harness.
pub fn mini_model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        Model::from_bytes(MINI_MANIFEST, MINI_WEIGHTS).expect("the test network loads")
    })
}

pub static MINI_MANIFEST: &[u8] =
    include_bytes!("../../native-server/tests/fixtures/mini_resnet/manifest.json");
pub static MINI_WEIGHTS: &[u8] =
    include_bytes!("../../native-server/tests/fixtures/mini_resnet/weights.safetensors");

/// The client contract, as a client reads it from a server: parse, then everything a client does
/// with it before any key exists (the checks, the client, its image tensor and slot placement).
pub fn contract(data: &[u8]) {
    use blindsight_client::{Client, ClientContract};
    let Ok(c) = ClientContract::from_json(data) else {
        return;
    };
    let json = c.to_json();
    if json.len() > blindsight_client::contract::MAX_CONTRACT_BYTES {
        return; // pretty-printed, a compact contract near the limit may not fit it again
    }
    let again = ClientContract::from_json(json.as_bytes()).expect("a contract's own JSON parses");
    // exactly, floats included (serde_json's `float_roundtrip`, which the client crate enables:
    // without it, fuzzing found `1.1258999068426887e+106` coming back one ULP off)
    assert!(again == c, "the JSON round trip keeps the contract");
    // Contexts are built only for the two small sets (an N = 2^16 context is a few hundred
    // milliseconds of tables): `context()` for N12_TINY, `check` against a built one for N14_TEST.
    let ctx = match c.params.name.as_str() {
        "N12_TINY" => match c.context() {
            Ok(ctx) => ctx,
            Err(_) => return,
        },
        name if name == http::SERVER_PARAMS => {
            let ctx = test_ctx().clone();
            if c.check(&ctx).is_err() {
                return;
            }
            ctx
        }
        _ => return,
    };
    // a contract that passed its checks is one a client can use without a panic
    let _ = c.key_bytes();
    for k in 0..c.keys.len() {
        let key = c.key(k).expect("listed");
        assert_eq!(key.index, k);
        let _ = key.kind();
    }
    let (input, image) = (c.input.clone(), c.image.clone());
    let Ok(client) = Client::with_context(ctx, c) else {
        return;
    };
    // a small image of every size class: square, wide, tall
    for (w, h) in [(4u32, 4u32), (9, 2), (1, 7)] {
        let px: Vec<u8> = (0..w * h * 4).map(|i| (i * 37 % 251) as u8).collect();
        if let Ok(tensor) = client.image_tensor(&px, w, h) {
            assert_eq!(tensor.len(), image.channels * image.height * image.width);
            let slots = input
                .layout
                .place(&tensor)
                .expect("the layout holds the image");
            assert_eq!(slots.len(), input.layout.slots());
        }
    }
}

/// The first four bytes (little-endian) are the manifest's length; the manifest follows, then
/// the weights file.
pub fn split_model_input(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<4>() else {
        return (data, &[]);
    };
    let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
    rest.split_at(len)
}

/// The inverse of [`split_model_input`].
pub fn join_model_input(manifest: &[u8], weights: &[u8]) -> Vec<u8> {
    let mut out = (manifest.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(manifest);
    out.extend_from_slice(weights);
    out
}

/// Largest model the harness runs forward (values over all nodes), to keep executions short.
const MAX_FORWARD_VALUES: usize = 1 << 18;

/// A model manifest and its weights: a model that loads is one the forward pass runs.
pub fn model(data: &[u8]) {
    let (manifest, weights) = split_model_input(data);
    let Ok(model) = Model::from_bytes(manifest, weights) else {
        return;
    };
    let values: usize = model
        .nodes()
        .iter()
        .map(|n| n.shape.size())
        .fold(model.input_shape().size(), usize::saturating_add);
    if values > MAX_FORWARD_VALUES {
        return;
    }
    let input = vec![0.25; model.input_shape().size()];
    let logits = blindsight_server::plain::forward(&model, &input)
        .expect("a loaded model runs on an input of its shape");
    assert_eq!(logits.len(), model.metadata().classes.len());
}

/// Largest decoded image the harness also resizes (the decoding itself is limited by
/// `image_input`'s limits; resizing megapixels would only slow the fuzzer down).
const MAX_RESIZED_PIXELS: u64 = 1 << 16;

/// Image files, as the server decodes them, and raw RGBA pixels, as the client resizes them. The
/// first four bytes also give the raw image's size and the target size (each 0..=63).
pub fn image(data: &[u8]) {
    use blindsight_client::image::{center_crop, fit_rgba};
    use blindsight_server::image_input::{decode_rgba, model_input, MAX_PIXELS, MAX_SIDE};

    if let Ok(rgba) = decode_rgba(data) {
        let (w, h) = rgba.dimensions();
        assert!(w > 0 && h > 0 && w <= MAX_SIDE && h <= MAX_SIDE);
        assert!(u64::from(w) * u64::from(h) <= MAX_PIXELS);
        if u64::from(w) * u64::from(h) <= MAX_RESIZED_PIXELS {
            let model = mini_model();
            let x = model_input(data, model).expect("a decodable image is a model input");
            assert_eq!(x.len(), model.input_shape().size());
            let out = fit_rgba(rgba.as_raw(), w, h, 8, 8).expect("decoded pixels fit");
            assert_eq!(out.dimensions(), (8, 8));
        }
    } else {
        let _ = model_input(data, mini_model());
    }

    // the client's code on raw pixels: any sizes, the buffer cut or cycled to fit
    let Some((&[w, h, tw, th], px)) = data.split_first_chunk::<4>() else {
        return;
    };
    let (w, h, tw, th) = (
        u32::from(w % 64),
        u32::from(h % 64),
        u32::from(tw % 64),
        u32::from(th % 64),
    );
    let _ = fit_rgba(px, w, h, tw, th);
    if px.is_empty() {
        return;
    }
    let need = (w * h * 4) as usize;
    let exact: Vec<u8> = px.iter().copied().cycle().take(need).collect();
    match fit_rgba(&exact, w, h, tw, th) {
        Ok(out) => assert_eq!(out.dimensions(), (tw, th)),
        Err(_) => assert!(w == 0 || h == 0 || tw == 0 || th == 0),
    }
    if w > 0 && h > 0 {
        let (x, y, cw, ch) = center_crop((w, h), (tw, th));
        assert!(
            cw > 0 && ch > 0 && x + cw <= w && y + ch <= h,
            "crop inside"
        );
    }
}
