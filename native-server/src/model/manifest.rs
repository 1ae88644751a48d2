//! The manifest's serde schema, exactly as `model/export.py` writes it. These types are the raw,
//! unvalidated file contents; the loader turns them into the graph. [`InputSpec`] and [`Training`]
//! are kept as written and exposed through [`Model`](super::Model).

use std::collections::BTreeMap;

use serde::Deserialize;

/// The model input as the manifest describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct InputSpec {
    pub name: String,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// How the model was trained, as recorded by the export.
#[derive(Debug, Clone, Deserialize)]
pub struct Training {
    pub epochs_done: u32,
    pub epochs_planned: u32,
    pub recipe: String,
    pub command: String,
    pub log_tail: Vec<serde_json::Value>,
}

/// Read first, so that a file of another format or version is named as such rather than reported as
/// whatever field it happens to lack.
#[derive(Deserialize)]
pub(super) struct Header {
    pub(super) format: String,
    pub(super) version: u32,
}

/// The whole manifest, once its header has been accepted.
#[derive(Deserialize)]
pub(super) struct Manifest {
    pub(super) name: String,
    pub(super) architecture: String,
    pub(super) dataset: String,
    pub(super) input: InputSpec,
    pub(super) classes: Vec<String>,
    pub(super) clip: f64,
    pub(super) nodes: Vec<RawNode>,
    pub(super) output: String,
    pub(super) accuracy: BTreeMap<String, f64>,
    pub(super) activation_max_abs: BTreeMap<String, f64>,
    pub(super) training: Training,
}

/// A node as written; which attributes an op needs is checked when it is built.
#[derive(Deserialize)]
pub(super) struct RawNode {
    pub(super) name: String,
    pub(super) op: String,
    pub(super) inputs: Vec<String>,
    pub(super) weight: Option<String>,
    pub(super) bias: Option<String>,
    pub(super) in_channels: Option<usize>,
    pub(super) out_channels: Option<usize>,
    pub(super) kernel: Option<usize>,
    pub(super) stride: Option<usize>,
    pub(super) padding: Option<usize>,
    pub(super) coefficients: Option<Vec<f64>>,
    pub(super) in_features: Option<usize>,
    pub(super) out_features: Option<usize>,
}
