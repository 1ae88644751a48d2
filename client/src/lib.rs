//! The client side of Blindsight, shared by the browser (through `wasm-client`), `blindsight bench`
//! and `blindsight classify`, so that all of them run the very same code:
//!
//! - [`contract`]: the client contract, everything a client needs to talk to a server (parameter
//!   set and fingerprint, image size and normalization, input and output layouts, the evaluation
//!   keys to make, sizes, class names, plan hash); the server makes it from its plan;
//! - [`image`]: RGBA pixels of any size to the model's input size (composite over white, center
//!   crop, antialiased resize), the step before normalization;
//! - [`client`] (feature `secret-key`): the secret key, the evaluation keys one at a time, the
//!   encrypted image, the decrypted prediction.
//!
//! Without the `secret-key` feature this crate is the contract alone: that is what the server links.

#[cfg(feature = "secret-key")]
pub mod client;
pub mod contract;
pub mod error;
pub mod image;

#[cfg(feature = "secret-key")]
pub use client::{Client, Prediction};
pub use contract::{BatchSpec, ClientContract, KeySpec, CONTRACT_VERSION};
pub use error::ClientError;

/// Class probabilities from logits (numerically stable: the largest logit is subtracted first).
pub fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

/// Index of the largest value (the last on ties); 0 for an empty slice.
pub fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// Lower-case hexadecimal, for fingerprints and hashes in JSON.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
