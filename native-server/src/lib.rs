//! Blindsight server library: model loading ([`model`]), the f64 plaintext reference forward pass
//! ([`plain`]) and image decoding into the model's input ([`image_input`]). The network code knows
//! nothing of HTTP; the binary (`blindsight`) wires it to a command line.

pub mod bench;
pub mod cifar;
pub mod he;
pub mod image_input;
pub mod model;
pub mod plain;
