//! Model loading: a JSON manifest (the layer graph and its metadata, written by `model/export.py`) and
//! safetensors weights, validated once into a graph that the forward passes run without further checks.
//!
//! This file holds the validated [`Model`] and its accessors; the pieces live beside it, one concept
//! each: [`ModelError`] (`error.rs`), the graph types (`graph.rs`), the manifest's serde schema
//! (`manifest.rs`) and the loader that checks one against the other (`loader.rs`). Everything is
//! re-exported here, so callers name `crate::model::X` whatever file `X` lives in.
//!
//! Model files may come from anywhere on disk, so nothing here panics on input: every defect is a
//! typed [`ModelError`] that carries its cause in its message.

use std::collections::BTreeMap;

use blindsight_core::layout::Normalization;

mod error;
mod graph;
mod loader;
mod manifest;
#[cfg(test)]
pub(crate) mod tests;

pub use error::ModelError;
pub use graph::{Conv2d, Linear, Node, Op, Shape, Source};
pub use manifest::{InputSpec, Training};

/// The manifest's `format` field.
pub const FORMAT: &str = "blindsight-model";
/// The manifest version this build reads.
pub const VERSION: u32 = 1;
/// File names inside a model directory.
pub const MANIFEST_FILE: &str = "manifest.json";
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// Largest number of values any node may produce: a bound on the forward pass's memory, so that a
/// manifest with absurd sizes is refused at load time instead of exhausting memory at run time.
pub const MAX_NODE_VALUES: usize = 1 << 26;

/// Descriptive fields of the manifest.
#[derive(Debug, Clone)]
pub struct Metadata {
    pub name: String,
    pub architecture: String,
    pub dataset: String,
    /// Class names, in the order of the output logits.
    pub classes: Vec<String>,
    /// The range [-clip, clip] the activations were fit and trained for.
    pub clip: f64,
    /// Top-1 accuracies (fractions) measured by the export on named test sets.
    pub accuracy: BTreeMap<String, f64>,
    /// Largest |input| of each activation node over the export's test set.
    pub activation_max_abs: BTreeMap<String, f64>,
    pub training: Training,
}

/// A validated model: every node's inputs are earlier nodes or the model input, every shape fits, and
/// every tensor is present with the right shape.
#[derive(Debug, Clone)]
pub struct Model {
    metadata: Metadata,
    input: InputSpec,
    normalization: Normalization,
    nodes: Vec<Node>,
    output: usize,
}

impl Model {
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    pub fn input(&self) -> &InputSpec {
        &self.input
    }

    /// The input normalization, shared with the browser through `blindsight_core::layout`.
    pub fn normalization(&self) -> &Normalization {
        &self.normalization
    }

    /// The nodes in evaluation order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Index of the node whose output is the model's output (the class logits).
    pub fn output(&self) -> usize {
        self.output
    }

    /// Shape of the model input.
    pub fn input_shape(&self) -> Shape {
        Shape::Map {
            channels: self.input.channels,
            height: self.input.height,
            width: self.input.width,
        }
    }
}
