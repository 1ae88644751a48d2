//! Loading and validation: parses the manifest, reads the safetensors weights, and builds the graph
//! once, checking every name, attribute, shape and tensor, so that a [`Model`] that exists is one the
//! forward passes can run without further checks. Nothing here panics on input: every defect is a
//! [`ModelError`].

use std::collections::HashMap;
use std::path::Path;

use blindsight_core::layout::Normalization;
use safetensors::{Dtype, SafeTensorError, SafeTensors};

use super::manifest::{Header, Manifest, RawNode};
use super::{
    Conv2d, Linear, Metadata, Model, ModelError, Node, Op, Shape, Source, FORMAT, MANIFEST_FILE,
    MAX_NODE_VALUES, VERSION, WEIGHTS_FILE,
};

/// The default model, built into the binary so that the server runs without any files.
static EMBEDDED_MANIFEST: &[u8] = include_bytes!("../../../model/resnet20/manifest.json");
static EMBEDDED_WEIGHTS: &[u8] = include_bytes!("../../../model/resnet20/weights.safetensors");

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
