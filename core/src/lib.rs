//! Blindsight's CKKS library: RNS-CKKS with hybrid key switching, secure parameter sets and a compact
//! wire format. Builds for native targets and for `wasm32-unknown-unknown` (no threads, clocks or files).

pub mod layout;
