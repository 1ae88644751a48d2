//! The validated graph the forward passes run: node shapes, where each node reads from, and the ops
//! with their weights. Everything here has been checked by the loader, so the evaluators (plaintext
//! and homomorphic) need no shape or presence checks of their own.

use std::fmt;

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
