//! Blindsight's CKKS library: RNS-CKKS with hybrid key switching, secure parameter sets and a compact
//! wire format. Builds for native targets and for `wasm32-unknown-unknown` (no threads, clocks or files).
//!
//! Layers, bottom up: `arith` (word-sized modular arithmetic) and `ntt` know integers; `rns` knows
//! polynomial rings; everything from `params` up knows CKKS; `layout` maps images to slots.

pub mod arith;
pub mod ciphertext;
pub mod context;
pub mod encoder;
pub mod encryption;
pub mod error;
pub mod evaluator;
pub mod kernels;
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
pub mod wire;

pub use ciphertext::Ciphertext;
pub use context::Context;
pub use encoder::Complex;
pub use encryption::{decrypt, Encryptor};
pub use error::{CkksError, ParamsError, WireError};
pub use evaluator::Evaluator;
pub use keys::{EvaluationKeys, KeyGenerator, KeyKind, PublicKey, SecretKey, SwitchingKey};
pub use params::{ParamSpec, Params};
pub use plaintext::{Plaintext, SmallPlaintext};
