//! Blindsight's CKKS library: RNS-CKKS with hybrid key switching, secure parameter sets and a compact
//! wire format. Builds for native targets and for `wasm32-unknown-unknown` (no threads, clocks or files).
//!
//! The secret key, the key generator, secret-key encryption and decryption are behind the feature
//! `secret-key` (on by default): the server builds this crate without it, so its code cannot
//! name a secret key or decrypt.
//!
//! Layers, bottom up: `arith` (word-sized modular arithmetic) and `ntt` know integers; `rns` knows
//! polynomial rings; everything from `params` up knows CKKS; `layout` maps images to slots.

pub mod arith;
pub mod ciphertext;
pub mod context;
pub mod derive;
pub mod encoder;
pub mod encryption;
pub mod error;
pub mod evaluator;
pub mod kernels;
#[cfg(feature = "secret-key")]
pub mod keygen;
pub mod keys;
pub mod keyswitch;
pub mod layout;
pub mod memory;
pub mod ntt;
pub mod par;
pub mod params;
pub mod plaintext;
pub mod rns;
pub mod sampler;
pub mod scale;
#[cfg(feature = "secret-key")]
pub mod secret_key;
pub mod wire;

pub use ciphertext::Ciphertext;
pub use context::Context;
pub use encoder::Complex;
#[cfg(feature = "secret-key")]
pub use encryption::decrypt;
pub use encryption::Encryptor;
pub use error::{CkksError, ParamsError, WireError};
pub use evaluator::Evaluator;
#[cfg(feature = "secret-key")]
pub use keygen::KeyGenerator;
pub use keys::{EvaluationKeys, KeyKind, PublicKey, SwitchingKey};
pub use keyswitch::RaisedCiphertext;
pub use params::{ParamSpec, Params};
pub use plaintext::{Plaintext, SmallPlaintext};
pub use scale::{scales_equal, SCALE_TOLERANCE};
#[cfg(feature = "secret-key")]
pub use secret_key::SecretKey;
