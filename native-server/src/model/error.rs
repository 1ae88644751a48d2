//! [`ModelError`]: every way a model file can be refused. Model files may come from anywhere on disk,
//! so each defect names the node or tensor at fault, and each message carries its cause inline (no
//! `source` chain): one `to_string()` tells the whole story, on the command line or in an HTTP reply.

use std::path::PathBuf;

use blindsight_core::layout::LayoutError;
use safetensors::SafeTensorError;

use super::{Shape, FORMAT, VERSION};

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("manifest: {0}")]
    Json(serde_json::Error),
    #[error("manifest format is {found:?}, expected {FORMAT:?}")]
    Format { found: String },
    #[error("manifest version {found} is not supported; this build reads version {VERSION}")]
    Version { found: u32 },
    #[error("manifest field {field}: {detail}")]
    Invalid { field: &'static str, detail: String },
    #[error("input normalization: {0}")]
    Normalization(LayoutError),
    #[error("weights: {0}")]
    Weights(SafeTensorError),
    #[error("node {node:?}: the name is used twice (or is the model input's name)")]
    DuplicateNode { node: String },
    #[error("node {node:?}: unknown op {op:?}")]
    UnknownOp { node: String, op: String },
    #[error("node {node:?}: missing attribute {attribute:?}")]
    MissingAttribute {
        node: String,
        attribute: &'static str,
    },
    #[error("node {node:?}: {detail}")]
    InvalidAttribute { node: String, detail: String },
    #[error("node {node:?}: op {op} takes {expected} input(s), got {found}")]
    Arity {
        node: String,
        op: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("node {node:?}: input {input:?} is neither the model input nor a node")]
    UnknownInput { node: String, input: String },
    #[error("node {node:?}: input {input:?} is defined later; nodes must be in topological order")]
    NotTopological { node: String, input: String },
    #[error("node {node:?}: {detail}")]
    ShapeMismatch { node: String, detail: String },
    #[error("node {node:?}: tensor {tensor:?} is not in the weights file")]
    MissingTensor { node: String, tensor: String },
    #[error("tensor {tensor:?} has dtype {found}, expected F32")]
    TensorDtype { tensor: String, found: String },
    #[error("tensor {tensor:?} has shape {found:?}, expected {expected:?}")]
    TensorShape {
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor {tensor:?} contains a non-finite value")]
    NonFinite { tensor: String },
    #[error("output {output:?} is not a node")]
    UnknownOutput { output: String },
    #[error("output {output:?} has shape {shape}, expected a vector of {classes} class scores")]
    OutputShape {
        output: String,
        shape: Shape,
        classes: usize,
    },
    #[error("activation_max_abs names {name:?}, which is not an activation node")]
    UnknownActivation { name: String },
}
