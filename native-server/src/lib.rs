//! Blindsight server library: model loading ([`model`]), the f64 plaintext reference forward pass
//! ([`plain`]), image decoding into the model's input ([`image_input`]), the homomorphic network
//! ([`he`]), the client contract made from its plan ([`contract`]), and the HTTP API over them
//! ([`api`]). The network code knows nothing of HTTP.
//!
//! With the default feature `client`, also the benchmark pipeline ([`bench`]), which runs the
//! client half in the same process, a native client of the API ([`remote`]) and a load
//! generator over it ([`load`]). Without it nothing here can name a secret key: that is the
//! build the serving code is checked in.

pub mod api;
#[cfg(feature = "client")]
pub mod bench;
pub mod cifar;
pub mod contract;
pub mod he;
pub mod image_input;
#[cfg(feature = "client")]
pub mod load;
pub mod model;
pub mod plain;
#[cfg(feature = "client")]
pub mod remote;
