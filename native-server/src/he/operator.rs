//! The linear operator a layer applies, read from the model's weights: which input elements and
//! weights make each output element. The planner and the diagonal builder see a layer only
//! through this, so they know nothing of convolution arithmetic.

use crate::model::{Model, Op};

/// The linear operator a step applies, by model node.
#[derive(Debug, Clone, PartialEq)]
pub enum Operator {
    /// A `Conv2d` node.
    Conv(usize),
    /// A `Linear` node reading a pooled vector.
    Dense(usize),
    /// The identity (moving a value to another layout, level or multiplier).
    Identity,
}

impl Operator {
    /// Calls `f(input_element, weight)` for every term of output element `out` (flat CHW indices).
    pub fn terms(&self, model: &Model, out: usize, mut f: impl FnMut(usize, f64)) {
        match *self {
            Operator::Conv(node) => {
                let Op::Conv2d(c) = &model.nodes()[node].op else {
                    unreachable!("planner checked the node kind")
                };
                let plane = c.out_height * c.out_width;
                let (o, y, x) = (out / plane, (out % plane) / c.out_width, out % c.out_width);
                let k = c.kernel;
                for i in 0..c.in_channels {
                    for ky in 0..k {
                        let iy = (y * c.stride + ky) as isize - c.padding as isize;
                        if iy < 0 || iy >= c.in_height as isize {
                            continue;
                        }
                        for kx in 0..k {
                            let ix = (x * c.stride + kx) as isize - c.padding as isize;
                            if ix < 0 || ix >= c.in_width as isize {
                                continue;
                            }
                            let w = c.weight[((o * c.in_channels + i) * k + ky) * k + kx];
                            if w != 0.0 {
                                f(
                                    (i * c.in_height + iy as usize) * c.in_width + ix as usize,
                                    w,
                                );
                            }
                        }
                    }
                }
            }
            Operator::Dense(node) => {
                let Op::Linear(l) = &model.nodes()[node].op else {
                    unreachable!("planner checked the node kind")
                };
                for i in 0..l.in_features {
                    let w = l.weight[out * l.in_features + i];
                    if w != 0.0 {
                        f(i, w);
                    }
                }
            }
            Operator::Identity => f(out, 1.0),
        }
    }

    /// The operator's bias (zero for the identity).
    pub fn bias(&self, model: &Model, out: usize) -> f64 {
        match *self {
            Operator::Conv(node) => match &model.nodes()[node].op {
                Op::Conv2d(c) => c.bias[out / (c.out_height * c.out_width)],
                _ => 0.0,
            },
            Operator::Dense(node) => match &model.nodes()[node].op {
                Op::Linear(l) => l.bias[out],
                _ => 0.0,
            },
            Operator::Identity => 0.0,
        }
    }

    /// The operator applied to a plaintext tensor, bias included: how constants travel through it.
    pub fn apply_plain(&self, model: &Model, input: &[f64], outputs: usize) -> Vec<f64> {
        (0..outputs)
            .map(|o| {
                let mut acc = self.bias(model, o);
                self.terms(model, o, |i, w| acc += w * input[i]);
                acc
            })
            .collect()
    }
}
