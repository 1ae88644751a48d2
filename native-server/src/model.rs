//! Model loading: a JSON manifest (the layer graph and its metadata, written by `model/export.py`) and
//! safetensors weights, validated once into a graph that the forward passes run without further checks.
//!
//! Model files may come from anywhere on disk, so every defect is a typed [`ModelError`] that names the
//! node or tensor at fault; nothing here panics on input. Error messages carry their cause inline (no
//! `source` chain), so one `to_string()` tells the whole story, on the command line or in an HTTP reply.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use blindsight_core::layout::{LayoutError, Normalization};
use safetensors::{Dtype, SafeTensorError, SafeTensors};
use serde::Deserialize;

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

/// The default model, built into the binary so that the server runs without any files.
static EMBEDDED_MANIFEST: &[u8] = include_bytes!("../../model/resnet20/manifest.json");
static EMBEDDED_WEIGHTS: &[u8] = include_bytes!("../../model/resnet20/weights.safetensors");

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

/// The shape of a node's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Feature maps, stored channel-major (CHW).
    Map {
        channels: usize,
        height: usize,
        width: usize,
    },
    /// A flat vector of features.
    Vector(usize),
}

impl Shape {
    /// Number of values.
    pub fn size(&self) -> usize {
        match *self {
            Shape::Map {
                channels,
                height,
                width,
            } => channels * height * width,
            Shape::Vector(n) => n,
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shape::Map {
                channels,
                height,
                width,
            } => write!(f, "{channels}x{height}x{width}"),
            Shape::Vector(n) => write!(f, "vector of {n}"),
        }
    }
}

/// Where a node reads a value from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The model input.
    Input,
    /// The output of the node at this index (always an earlier node).
    Node(usize),
}

/// A 2-D convolution with bias (BatchNorm already folded in). Weights are `[out][in][kernel][kernel]`.
/// Map sizes are resolved at load time, so the evaluators need no shape logic of their own.
#[derive(Debug, Clone)]
pub struct Conv2d {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub in_height: usize,
    pub in_width: usize,
    pub out_height: usize,
    pub out_width: usize,
    pub weight: Vec<f64>,
    pub bias: Vec<f64>,
}

/// A fully connected layer. Weights are `[out][in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub in_features: usize,
    pub out_features: usize,
    pub weight: Vec<f64>,
    pub bias: Vec<f64>,
}

/// What a node computes. Weights are held in f64 (exactly the exported f32 values).
#[derive(Debug, Clone)]
pub enum Op {
    Conv2d(Conv2d),
    /// `a*x^2 + b*x + c`, elementwise.
    Quadratic {
        a: f64,
        b: f64,
        c: f64,
    },
    Relu,
    /// Elementwise sum of two inputs of the same shape.
    Add,
    /// Mean over each channel's map: a map becomes a vector.
    GlobalAvgPool,
    Linear(Linear),
}

/// One validated node of the graph.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub inputs: Vec<Source>,
    pub op: Op,
    /// Shape of this node's output.
    pub shape: Shape,
}

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

/// Read first, so that a file of another format or version is named as such rather than reported as
/// whatever field it happens to lack.
#[derive(Deserialize)]
struct Header {
    format: String,
    version: u32,
}

#[derive(Deserialize)]
struct Manifest {
    name: String,
    architecture: String,
    dataset: String,
    input: InputSpec,
    classes: Vec<String>,
    clip: f64,
    nodes: Vec<RawNode>,
    output: String,
    accuracy: BTreeMap<String, f64>,
    activation_max_abs: BTreeMap<String, f64>,
    training: Training,
}

/// A node as written; which attributes an op needs is checked when it is built.
#[derive(Deserialize)]
struct RawNode {
    name: String,
    op: String,
    inputs: Vec<String>,
    weight: Option<String>,
    bias: Option<String>,
    in_channels: Option<usize>,
    out_channels: Option<usize>,
    kernel: Option<usize>,
    stride: Option<usize>,
    padding: Option<usize>,
    coefficients: Option<Vec<f64>>,
    in_features: Option<usize>,
    out_features: Option<usize>,
}

impl Model {
    /// Loads `manifest.json` and `weights.safetensors` from a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let read = |file: &str| {
            let path = dir.join(file);
            std::fs::read(&path).map_err(|error| ModelError::Io { path, error })
        };
        Self::from_bytes(&read(MANIFEST_FILE)?, &read(WEIGHTS_FILE)?)
    }

    /// Loads a model from the bytes of its manifest and weights files.
    pub fn from_bytes(manifest: &[u8], weights: &[u8]) -> Result<Self, ModelError> {
        let header: Header = serde_json::from_slice(manifest).map_err(ModelError::Json)?;
        if header.format != FORMAT {
            return Err(ModelError::Format {
                found: header.format,
            });
        }
        if header.version != VERSION {
            return Err(ModelError::Version {
                found: header.version,
            });
        }
        let manifest: Manifest = serde_json::from_slice(manifest).map_err(ModelError::Json)?;
        let weights = SafeTensors::deserialize(weights).map_err(ModelError::Weights)?;
        build(manifest, &weights)
    }

    /// The default model built into the binary.
    pub fn embedded() -> Result<Self, ModelError> {
        Self::from_bytes(EMBEDDED_MANIFEST, EMBEDDED_WEIGHTS)
    }

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

fn build(manifest: Manifest, weights: &SafeTensors) -> Result<Model, ModelError> {
    let input = manifest.input;
    let normalization =
        Normalization::new(&input.mean, &input.std).map_err(ModelError::Normalization)?;
    if normalization.channels() != input.channels {
        return Err(ModelError::Invalid {
            field: "input",
            detail: format!(
                "{} channels but {} mean/std values",
                input.channels,
                normalization.channels()
            ),
        });
    }
    let input_shape = Shape::Map {
        channels: input.channels,
        height: input.height,
        width: input.width,
    };
    check_size(input_shape).map_err(|detail| ModelError::Invalid {
        field: "input",
        detail,
    })?;
    if manifest.classes.is_empty() {
        return Err(ModelError::Invalid {
            field: "classes",
            detail: "no class names".into(),
        });
    }
    if !(manifest.clip.is_finite() && manifest.clip > 0.0) {
        return Err(ModelError::Invalid {
            field: "clip",
            detail: format!("{} is not a positive number", manifest.clip),
        });
    }

    // Every name's position, so that a forward reference is told apart from a dangling one.
    let mut position: HashMap<&str, usize> = HashMap::new();
    for (i, raw) in manifest.nodes.iter().enumerate() {
        if raw.name == input.name || position.insert(&raw.name, i).is_some() {
            return Err(ModelError::DuplicateNode {
                node: raw.name.clone(),
            });
        }
    }

    let mut nodes: Vec<Node> = Vec::with_capacity(manifest.nodes.len());
    for (i, raw) in manifest.nodes.iter().enumerate() {
        let inputs = raw
            .inputs
            .iter()
            .map(|name| match position.get(name.as_str()) {
                _ if *name == input.name => Ok(Source::Input),
                Some(&j) if j < i => Ok(Source::Node(j)),
                Some(_) => Err(ModelError::NotTopological {
                    node: raw.name.clone(),
                    input: name.clone(),
                }),
                None => Err(ModelError::UnknownInput {
                    node: raw.name.clone(),
                    input: name.clone(),
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let shapes: Vec<Shape> = inputs
            .iter()
            .map(|s| match *s {
                Source::Input => input_shape,
                Source::Node(j) => nodes[j].shape,
            })
            .collect();
        let (op, shape) = build_op(raw, &shapes, weights)?;
        check_size(shape).map_err(|detail| ModelError::ShapeMismatch {
            node: raw.name.clone(),
            detail,
        })?;
        nodes.push(Node {
            name: raw.name.clone(),
            inputs,
            op,
            shape,
        });
    }

    let output =
        *position
            .get(manifest.output.as_str())
            .ok_or_else(|| ModelError::UnknownOutput {
                output: manifest.output.clone(),
            })?;
    let classes = manifest.classes.len();
    if nodes[output].shape != Shape::Vector(classes) {
        return Err(ModelError::OutputShape {
            output: manifest.output,
            shape: nodes[output].shape,
            classes,
        });
    }
    for name in manifest.activation_max_abs.keys() {
        let is_activation = position
            .get(name.as_str())
            .is_some_and(|&i| matches!(nodes[i].op, Op::Quadratic { .. } | Op::Relu));
        if !is_activation {
            return Err(ModelError::UnknownActivation { name: name.clone() });
        }
    }

    Ok(Model {
        metadata: Metadata {
            name: manifest.name,
            architecture: manifest.architecture,
            dataset: manifest.dataset,
            classes: manifest.classes,
            clip: manifest.clip,
            accuracy: manifest.accuracy,
            activation_max_abs: manifest.activation_max_abs,
            training: manifest.training,
        },
        input,
        normalization,
        nodes,
        output,
    })
}

/// A node's output must hold at least one and at most [`MAX_NODE_VALUES`] values.
fn check_size(shape: Shape) -> Result<(), String> {
    let len = match shape {
        Shape::Map {
            channels,
            height,
            width,
        } => channels
            .checked_mul(height)
            .and_then(|n| n.checked_mul(width)),
        Shape::Vector(n) => Some(n),
    };
    match len {
        Some(n) if n > 0 && n <= MAX_NODE_VALUES => Ok(()),
        _ => Err(format!(
            "shape {shape} is empty or holds more than {MAX_NODE_VALUES} values"
        )),
    }
}

/// Builds one node's op from its attributes and weights; returns it with its output shape.
fn build_op(
    raw: &RawNode,
    shapes: &[Shape],
    weights: &SafeTensors,
) -> Result<(Op, Shape), ModelError> {
    let node = || raw.name.clone();
    let arity = |op: &'static str, expected: usize| {
        if shapes.len() == expected {
            Ok(())
        } else {
            Err(ModelError::Arity {
                node: node(),
                op,
                expected,
                found: shapes.len(),
            })
        }
    };
    let mismatch = |detail: String| ModelError::ShapeMismatch {
        node: node(),
        detail,
    };
    let invalid = |detail: String| ModelError::InvalidAttribute {
        node: node(),
        detail,
    };
    match raw.op.as_str() {
        "conv2d" => {
            arity("conv2d", 1)?;
            let in_channels = attr(raw, raw.in_channels, "in_channels")?;
            let out_channels = attr(raw, raw.out_channels, "out_channels")?;
            let kernel = attr(raw, raw.kernel, "kernel")?;
            let stride = attr(raw, raw.stride, "stride")?;
            let padding = attr(raw, raw.padding, "padding")?;
            if kernel == 0 || stride == 0 {
                return Err(invalid(format!(
                    "kernel {kernel} and stride {stride} must be positive"
                )));
            }
            let Shape::Map {
                channels,
                height,
                width,
            } = shapes[0]
            else {
                return Err(mismatch(format!(
                    "conv2d needs feature maps, its input is a {}",
                    shapes[0]
                )));
            };
            if channels != in_channels {
                return Err(mismatch(format!(
                    "in_channels is {in_channels} but the input has {channels} channels"
                )));
            }
            let out_dim = |n: usize| {
                n.checked_add(padding.checked_mul(2)?)?
                    .checked_sub(kernel)
                    .map(|span| span / stride + 1)
            };
            let (Some(out_h), Some(out_w)) = (out_dim(height), out_dim(width)) else {
                return Err(mismatch(format!(
                    "a {kernel}x{kernel} kernel with padding {padding} does not fit a {height}x{width} map"
                )));
            };
            let weight = tensor(
                raw,
                &raw.weight,
                "weight",
                weights,
                &[out_channels, in_channels, kernel, kernel],
            )?;
            let bias = tensor(raw, &raw.bias, "bias", weights, &[out_channels])?;
            let conv = Conv2d {
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
                in_height: height,
                in_width: width,
                out_height: out_h,
                out_width: out_w,
                weight,
                bias,
            };
            let shape = Shape::Map {
                channels: out_channels,
                height: out_h,
                width: out_w,
            };
            Ok((Op::Conv2d(conv), shape))
        }
        "quadratic" => {
            arity("quadratic", 1)?;
            let coefficients =
                raw.coefficients
                    .as_deref()
                    .ok_or_else(|| ModelError::MissingAttribute {
                        node: node(),
                        attribute: "coefficients",
                    })?;
            match *coefficients {
                [a, b, c] if coefficients.iter().all(|x| x.is_finite()) => {
                    Ok((Op::Quadratic { a, b, c }, shapes[0]))
                }
                _ => Err(invalid(format!(
                    "coefficients must be three finite numbers [a, b, c], got {coefficients:?}"
                ))),
            }
        }
        "relu" => {
            arity("relu", 1)?;
            Ok((Op::Relu, shapes[0]))
        }
        "add" => {
            arity("add", 2)?;
            if shapes[0] != shapes[1] {
                return Err(mismatch(format!(
                    "add of different shapes {} and {}",
                    shapes[0], shapes[1]
                )));
            }
            Ok((Op::Add, shapes[0]))
        }
        "global_avg_pool" => {
            arity("global_avg_pool", 1)?;
            match shapes[0] {
                Shape::Map { channels, .. } => Ok((Op::GlobalAvgPool, Shape::Vector(channels))),
                other => Err(mismatch(format!(
                    "global_avg_pool needs feature maps, its input is a {other}"
                ))),
            }
        }
        "linear" => {
            arity("linear", 1)?;
            let in_features = attr(raw, raw.in_features, "in_features")?;
            let out_features = attr(raw, raw.out_features, "out_features")?;
            if shapes[0] != Shape::Vector(in_features) {
                return Err(mismatch(format!(
                    "linear with in_features {in_features} cannot take a {}",
                    shapes[0]
                )));
            }
            let weight = tensor(
                raw,
                &raw.weight,
                "weight",
                weights,
                &[out_features, in_features],
            )?;
            let bias = tensor(raw, &raw.bias, "bias", weights, &[out_features])?;
            let linear = Linear {
                in_features,
                out_features,
                weight,
                bias,
            };
            Ok((Op::Linear(linear), Shape::Vector(out_features)))
        }
        other => Err(ModelError::UnknownOp {
            node: node(),
            op: other.to_string(),
        }),
    }
}

fn attr<T>(raw: &RawNode, value: Option<T>, attribute: &'static str) -> Result<T, ModelError> {
    value.ok_or_else(|| ModelError::MissingAttribute {
        node: raw.name.clone(),
        attribute,
    })
}

/// The tensor a node's attribute names, checked for dtype, shape and finiteness, widened to f64.
fn tensor(
    raw: &RawNode,
    name: &Option<String>,
    attribute: &'static str,
    weights: &SafeTensors,
    shape: &[usize],
) -> Result<Vec<f64>, ModelError> {
    let name = attr(raw, name.as_ref(), attribute)?;
    let view = weights.tensor(name).map_err(|e| match e {
        SafeTensorError::TensorNotFound(_) => ModelError::MissingTensor {
            node: raw.name.clone(),
            tensor: name.clone(),
        },
        other => ModelError::Weights(other),
    })?;
    if view.dtype() != Dtype::F32 {
        return Err(ModelError::TensorDtype {
            tensor: name.clone(),
            found: format!("{:?}", view.dtype()),
        });
    }
    if view.shape() != shape {
        return Err(ModelError::TensorShape {
            tensor: name.clone(),
            expected: shape.to_vec(),
            found: view.shape().to_vec(),
        });
    }
    let values: Vec<f64> = view
        .data()
        .chunks_exact(4)
        .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        .collect();
    if values.iter().any(|v| !v.is_finite()) {
        return Err(ModelError::NonFinite {
            tensor: name.clone(),
        });
    }
    Ok(values)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use safetensors::tensor::TensorView;
    use serde_json::{json, Value};

    /// Named tensors: (name, shape, values).
    pub(crate) type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

    /// A small valid model: 2x4x4 input, conv 2->3 (3x3, stride 2, pad 1), relu, a 1x1 conv
    /// shortcut, add, quadratic, pool, linear 3->2.
    pub(crate) fn tiny() -> (Value, Tensors) {
        let manifest = json!({
            "format": FORMAT, "version": VERSION, "name": "tiny", "architecture": "test", "dataset": "none",
            "input": {"name": "input", "channels": 2, "height": 4, "width": 4, "mean": [0.5, 0.25], "std": [0.5, 2.0]},
            "classes": ["a", "b"],
            "clip": 2.0,
            "nodes": [
                {"name": "c1", "op": "conv2d", "inputs": ["input"], "weight": "c1.weight", "bias": "c1.bias",
                 "in_channels": 2, "out_channels": 3, "kernel": 3, "stride": 2, "padding": 1},
                {"name": "r1", "op": "relu", "inputs": ["c1"]},
                {"name": "sc", "op": "conv2d", "inputs": ["input"], "weight": "sc.weight", "bias": "sc.bias",
                 "in_channels": 2, "out_channels": 3, "kernel": 1, "stride": 2, "padding": 0},
                {"name": "sum", "op": "add", "inputs": ["r1", "sc"]},
                {"name": "q", "op": "quadratic", "inputs": ["sum"], "coefficients": [0.25, 0.5, 0.125]},
                {"name": "pool", "op": "global_avg_pool", "inputs": ["q"]},
                {"name": "fc", "op": "linear", "inputs": ["pool"], "weight": "fc.weight", "bias": "fc.bias",
                 "in_features": 3, "out_features": 2}
            ],
            "output": "fc",
            "accuracy": {"test": 0.5},
            "activation_max_abs": {"r1": 1.0, "q": 1.5},
            "training": {"epochs_done": 1, "epochs_planned": 1, "recipe": "none", "command": "none", "log_tail": []}
        });
        let ramp = |n: usize, scale: f32| {
            (0..n)
                .map(|i| (i as f32 - n as f32 / 2.0) * scale)
                .collect()
        };
        let tensors = vec![
            ("c1.weight".into(), vec![3, 2, 3, 3], ramp(54, 0.03)),
            ("c1.bias".into(), vec![3], vec![0.1, -0.2, 0.3]),
            ("sc.weight".into(), vec![3, 2, 1, 1], ramp(6, 0.2)),
            ("sc.bias".into(), vec![3], vec![0.0, 0.5, -0.5]),
            ("fc.weight".into(), vec![2, 3], ramp(6, 0.5)),
            ("fc.bias".into(), vec![2], vec![1.0, -1.0]),
        ];
        (manifest, tensors)
    }

    pub(crate) fn weights_bytes(tensors: &Tensors) -> Vec<u8> {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, s, v)| {
                (
                    n.clone(),
                    s.clone(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views = bytes.iter().map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        });
        safetensors::serialize(views, None).unwrap()
    }

    pub(crate) fn load(manifest: &Value, tensors: &Tensors) -> Result<Model, ModelError> {
        Model::from_bytes(manifest.to_string().as_bytes(), &weights_bytes(tensors))
    }

    /// Loads the tiny model after `edit` changed its manifest.
    fn load_edited(edit: impl FnOnce(&mut Value)) -> Result<Model, ModelError> {
        let (mut manifest, tensors) = tiny();
        edit(&mut manifest);
        load(&manifest, &tensors)
    }

    fn repo_model_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/resnet20")
    }

    #[test]
    fn embedded_model_loads() {
        let model = Model::embedded().unwrap();
        let meta = model.metadata();
        assert_eq!(meta.classes.len(), 10);
        assert_eq!(meta.classes[0], "airplane");
        assert_eq!(
            model.input_shape(),
            Shape::Map {
                channels: 3,
                height: 32,
                width: 32
            }
        );
        assert_eq!(model.nodes()[model.output()].shape, Shape::Vector(10));
        assert_eq!(model.nodes()[model.output()].name, "fc");
        let convs = model
            .nodes()
            .iter()
            .filter(|n| matches!(n.op, Op::Conv2d(_)))
            .count();
        let acts = model
            .nodes()
            .iter()
            .filter(|n| matches!(n.op, Op::Quadratic { .. } | Op::Relu))
            .count();
        let depth: usize = meta
            .architecture
            .trim_start_matches("resnet")
            .parse()
            .unwrap();
        // A CIFAR ResNet-(6n+2) has 6n+1 3x3 convolutions, 2 shortcut convolutions and 6n+1 activations.
        assert_eq!(convs, depth - 1 + 2);
        assert_eq!(acts, depth - 1);
        assert_eq!(meta.activation_max_abs.len(), acts);
        assert!(meta.training.epochs_done >= 1);
    }

    #[test]
    fn directory_and_embedded_models_agree() {
        let from_dir = Model::from_dir(&repo_model_dir()).unwrap();
        let embedded = Model::embedded().unwrap();
        assert_eq!(from_dir.metadata().name, embedded.metadata().name);
        assert_eq!(from_dir.nodes().len(), embedded.nodes().len());
    }

    #[test]
    fn tiny_model_loads_with_shapes() {
        let (manifest, tensors) = tiny();
        let model = load(&manifest, &tensors).unwrap();
        let shapes: Vec<String> = model.nodes().iter().map(|n| n.shape.to_string()).collect();
        assert_eq!(
            shapes,
            [
                "3x2x2",
                "3x2x2",
                "3x2x2",
                "3x2x2",
                "3x2x2",
                "vector of 3",
                "vector of 2"
            ]
        );
        assert_eq!(model.nodes()[3].inputs, [Source::Node(1), Source::Node(2)]);
        assert_eq!(model.nodes()[0].inputs, [Source::Input]);
    }

    #[test]
    fn missing_files_name_the_path() {
        let dir = std::env::temp_dir().join("blindsight-no-such-model");
        match Model::from_dir(&dir) {
            Err(ModelError::Io { path, .. }) => assert_eq!(path, dir.join(MANIFEST_FILE)),
            other => panic!("expected Io, got {other:?}"),
        }
    }

    #[test]
    fn bad_json_format_and_version_are_refused() {
        let (_, tensors) = tiny();
        let weights = weights_bytes(&tensors);
        assert!(matches!(
            Model::from_bytes(b"{\"format\": ", &weights),
            Err(ModelError::Json(_))
        ));
        assert!(matches!(
            Model::from_bytes(b"[]", &weights),
            Err(ModelError::Json(_))
        ));
        let err = load_edited(|m| m["format"] = json!("onnx")).unwrap_err();
        assert!(
            matches!(err, ModelError::Format { ref found } if found == "onnx"),
            "{err}"
        );
        let err = load_edited(|m| m["version"] = json!(2)).unwrap_err();
        assert!(matches!(err, ModelError::Version { found: 2 }), "{err}");
        let err = load_edited(|m| drop(m.as_object_mut().unwrap().remove("nodes"))).unwrap_err();
        assert!(err.to_string().contains("nodes"), "{err}");
    }

    #[test]
    fn graph_errors_are_typed() {
        let err = load_edited(|m| m["nodes"][1]["op"] = json!("gelu")).unwrap_err();
        assert!(
            matches!(err, ModelError::UnknownOp { ref node, ref op } if node == "r1" && op == "gelu"),
            "{err}"
        );

        let err = load_edited(|m| m["nodes"][1]["inputs"] = json!(["nowhere"])).unwrap_err();
        assert!(
            matches!(err, ModelError::UnknownInput { ref input, .. } if input == "nowhere"),
            "{err}"
        );

        let err = load_edited(|m| m["nodes"][1]["inputs"] = json!(["q"])).unwrap_err();
        assert!(
            matches!(err, ModelError::NotTopological { ref node, ref input } if node == "r1" && input == "q"),
            "{err}"
        );

        let err = load_edited(|m| m["nodes"][2]["name"] = json!("c1")).unwrap_err();
        assert!(
            matches!(err, ModelError::DuplicateNode { ref node } if node == "c1"),
            "{err}"
        );
        let err = load_edited(|m| m["nodes"][2]["name"] = json!("input")).unwrap_err();
        assert!(matches!(err, ModelError::DuplicateNode { .. }), "{err}");

        let err = load_edited(|m| m["nodes"][3]["inputs"] = json!(["r1"])).unwrap_err();
        assert!(
            matches!(
                err,
                ModelError::Arity {
                    expected: 2,
                    found: 1,
                    ..
                }
            ),
            "{err}"
        );

        let err = load_edited(|m| drop(m["nodes"][0].as_object_mut().unwrap().remove("kernel")))
            .unwrap_err();
        assert!(
            matches!(
                err,
                ModelError::MissingAttribute {
                    attribute: "kernel",
                    ..
                }
            ),
            "{err}"
        );

        let err = load_edited(|m| m["nodes"][4]["coefficients"] = json!([1.0, 2.0])).unwrap_err();
        assert!(matches!(err, ModelError::InvalidAttribute { .. }), "{err}");

        let err = load_edited(|m| m["nodes"][0]["stride"] = json!(0)).unwrap_err();
        assert!(matches!(err, ModelError::InvalidAttribute { .. }), "{err}");

        let err = load_edited(|m| m["output"] = json!("logits")).unwrap_err();
        assert!(matches!(err, ModelError::UnknownOutput { .. }), "{err}");

        let err = load_edited(|m| m["output"] = json!("pool")).unwrap_err();
        assert!(
            matches!(err, ModelError::OutputShape { classes: 2, .. }),
            "{err}"
        );

        let err = load_edited(|m| m["activation_max_abs"]["fc"] = json!(3.0)).unwrap_err();
        assert!(
            matches!(err, ModelError::UnknownActivation { ref name } if name == "fc"),
            "{err}"
        );
    }

    #[test]
    fn shape_errors_are_typed() {
        // Input channel count does not match the convolution.
        let err = load_edited(|m| {
            m["input"]["channels"] = json!(3);
            m["input"]["mean"] = json!([0.5, 0.5, 0.5]);
            m["input"]["std"] = json!([0.5, 0.5, 0.5]);
        })
        .unwrap_err();
        assert!(
            matches!(err, ModelError::ShapeMismatch { ref node, .. } if node == "c1"),
            "{err}"
        );

        // The shortcut no longer downsamples, so the add sees 3x2x2 and 3x4x4.
        let err = load_edited(|m| m["nodes"][2]["stride"] = json!(1)).unwrap_err();
        assert!(
            matches!(err, ModelError::ShapeMismatch { ref node, .. } if node == "sum"),
            "{err}"
        );

        // Linear fed a map.
        let err = load_edited(|m| m["nodes"][6]["inputs"] = json!(["q"])).unwrap_err();
        assert!(
            matches!(err, ModelError::ShapeMismatch { ref node, .. } if node == "fc"),
            "{err}"
        );

        // Kernel larger than the padded input.
        let err = load_edited(|m| m["nodes"][2]["kernel"] = json!(5)).unwrap_err();
        assert!(
            matches!(err, ModelError::ShapeMismatch { ref node, .. } if node == "sc"),
            "{err}"
        );

        // Padding so large the output could not be held in memory.
        let err = load_edited(|m| m["nodes"][2]["padding"] = json!(1usize << 40)).unwrap_err();
        assert!(
            matches!(err, ModelError::ShapeMismatch { ref node, .. } if node == "sc"),
            "{err}"
        );

        let err = load_edited(|m| m["input"]["std"] = json!([0.5, 0.0])).unwrap_err();
        assert!(matches!(err, ModelError::Normalization(_)), "{err}");
        let err = load_edited(|m| m["input"]["height"] = json!(0)).unwrap_err();
        assert!(
            matches!(err, ModelError::Invalid { field: "input", .. }),
            "{err}"
        );
        let err = load_edited(|m| m["classes"] = json!([])).unwrap_err();
        assert!(
            matches!(
                err,
                ModelError::Invalid {
                    field: "classes",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn tensor_errors_are_typed() {
        let (manifest, mut tensors) = tiny();
        tensors.retain(|(n, _, _)| n != "fc.bias");
        let err = load(&manifest, &tensors).unwrap_err();
        assert!(
            matches!(err, ModelError::MissingTensor { ref tensor, .. } if tensor == "fc.bias"),
            "{err}"
        );

        let (manifest, mut tensors) = tiny();
        tensors[0].1 = vec![3, 2, 9];
        let err = load(&manifest, &tensors).unwrap_err();
        assert!(
            matches!(err, ModelError::TensorShape { ref expected, ref found, .. } if expected == &[3, 2, 3, 3] && found == &[3, 2, 9]),
            "{err}"
        );

        let (manifest, mut tensors) = tiny();
        tensors[1].2[1] = f32::NAN;
        let err = load(&manifest, &tensors).unwrap_err();
        assert!(
            matches!(err, ModelError::NonFinite { ref tensor } if tensor == "c1.bias"),
            "{err}"
        );

        let (manifest, _) = tiny();
        let err =
            Model::from_bytes(manifest.to_string().as_bytes(), b"not safetensors").unwrap_err();
        assert!(matches!(err, ModelError::Weights(_)), "{err}");

        // A tensor stored as f16 instead of f32.
        let (manifest, tensors) = tiny();
        let mut bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .into_iter()
            .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
            .collect();
        bytes[1].2.truncate(2 * 3);
        let views = bytes.iter().enumerate().map(|(i, (n, s, b))| {
            let dtype = if i == 1 { Dtype::F16 } else { Dtype::F32 };
            (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap())
        });
        let weights = safetensors::serialize(views, None).unwrap();
        let err = Model::from_bytes(manifest.to_string().as_bytes(), &weights).unwrap_err();
        assert!(
            matches!(err, ModelError::TensorDtype { ref tensor, .. } if tensor == "c1.bias"),
            "{err}"
        );
    }
}
