//! The plaintext forward pass in f64: the reference that the export's logits check and that the
//! encrypted evaluation is measured against. Straight loops over the validated graph; each node's output
//! is freed after its last use.

use crate::model::{Conv2d, Linear, Model, Op, Shape, Source};

/// The input tensor does not have the model's input size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("input has {found} values, the model expects {expected} ({shape})")]
pub struct InputSizeError {
    pub expected: usize,
    pub found: usize,
    pub shape: Shape,
}

/// Runs the model on a normalized CHW input and returns the output node's values (the logits).
pub fn forward(model: &Model, input: &[f64]) -> Result<Vec<f64>, InputSizeError> {
    let mut values = run(model, input, false)?;
    Ok(std::mem::take(&mut values[model.output()]))
}

/// Every node's output, in node order: the reference for checking intermediate values.
pub fn forward_all(model: &Model, input: &[f64]) -> Result<Vec<Vec<f64>>, InputSizeError> {
    run(model, input, true)
}

fn run(model: &Model, input: &[f64], keep: bool) -> Result<Vec<Vec<f64>>, InputSizeError> {
    let input_shape = model.input_shape();
    if input.len() != input_shape.size() {
        return Err(InputSizeError {
            expected: input_shape.size(),
            found: input.len(),
            shape: input_shape,
        });
    }
    let nodes = model.nodes();
    // last_use[j]: the last node reading node j's output, after which it is dropped.
    let mut last_use: Vec<usize> = (0..nodes.len()).collect();
    for (i, node) in nodes.iter().enumerate() {
        for src in &node.inputs {
            if let Source::Node(j) = *src {
                last_use[j] = i;
            }
        }
    }
    last_use[model.output()] = usize::MAX;

    let mut values: Vec<Vec<f64>> = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        let args: Vec<&[f64]> = node
            .inputs
            .iter()
            .map(|src| match *src {
                Source::Input => input,
                Source::Node(j) => values[j].as_slice(),
            })
            .collect();
        let out = match &node.op {
            Op::Conv2d(conv) => conv2d(conv, args[0]),
            Op::Quadratic { a, b, c } => args[0].iter().map(|&x| (a * x + b) * x + c).collect(),
            Op::Relu => args[0].iter().map(|&x| x.max(0.0)).collect(),
            Op::Add => args[0].iter().zip(args[1]).map(|(x, y)| x + y).collect(),
            Op::GlobalAvgPool => global_avg_pool(args[0], node.shape.size()),
            Op::Linear(linear) => linear_layer(linear, args[0]),
        };
        values.push(out);
        for src in &node.inputs {
            if let Source::Node(j) = *src {
                if last_use[j] == i && !keep {
                    values[j] = Vec::new();
                }
            }
        }
    }
    Ok(values)
}

/// Class probabilities from logits: the client's function, so both sides agree.
pub use blindsight_client::softmax;

fn conv2d(conv: &Conv2d, x: &[f64]) -> Vec<f64> {
    let (height, width) = (conv.in_height, conv.in_width);
    let (oh, ow) = (conv.out_height, conv.out_width);
    let (k, s, p, ci) = (conv.kernel, conv.stride, conv.padding, conv.in_channels);
    let mut out = vec![0.0; conv.out_channels * oh * ow];
    for (o, out_plane) in out.chunks_exact_mut(oh * ow).enumerate() {
        out_plane.fill(conv.bias[o]);
        for (i, in_plane) in x.chunks_exact(height * width).enumerate() {
            let taps = &conv.weight[(o * ci + i) * k * k..(o * ci + i + 1) * k * k];
            for ky in 0..k {
                let rows = valid_outputs(ky, p, s, height, oh);
                for kx in 0..k {
                    let w = taps[ky * k + kx];
                    let cols = valid_outputs(kx, p, s, width, ow);
                    if cols.is_empty() {
                        continue;
                    }
                    // First input column read: cols.start * s + kx - p, never negative by construction.
                    let ix0 = cols.start * s + kx - p;
                    for oy in rows.clone() {
                        let iy = oy * s + ky - p;
                        let src = in_plane[iy * width + ix0..(iy + 1) * width]
                            .iter()
                            .step_by(s);
                        let dst = &mut out_plane[oy * ow + cols.start..oy * ow + cols.end];
                        for (d, v) in dst.iter_mut().zip(src) {
                            *d += w * v;
                        }
                    }
                }
            }
        }
    }
    out
}

/// Output positions whose input position `o * stride + offset - pad` falls inside `0..n_in`: the
/// others read zero padding and contribute nothing.
fn valid_outputs(
    offset: usize,
    pad: usize,
    stride: usize,
    n_in: usize,
    n_out: usize,
) -> std::ops::Range<usize> {
    let start = pad.saturating_sub(offset).div_ceil(stride).min(n_out);
    let end = (n_in + pad)
        .saturating_sub(offset)
        .div_ceil(stride)
        .clamp(start, n_out);
    start..end
}

fn global_avg_pool(x: &[f64], channels: usize) -> Vec<f64> {
    let plane = x.len() / channels;
    x.chunks_exact(plane)
        .map(|c| c.iter().sum::<f64>() / plane as f64)
        .collect()
}

fn linear_layer(linear: &Linear, x: &[f64]) -> Vec<f64> {
    linear
        .weight
        .chunks_exact(linear.in_features)
        .zip(&linear.bias)
        .map(|(row, b)| b + row.iter().zip(x).map(|(w, v)| w * v).sum::<f64>())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::{load, tiny};
    use serde::Deserialize;
    use std::path::{Path, PathBuf};

    /// Direct convolution with explicit zero padding: obviously correct, slow.
    fn naive_conv(x: &[f64], (ci, h, w): (usize, usize, usize), conv: &Conv2d) -> Vec<f64> {
        let (k, s, p) = (conv.kernel as i64, conv.stride as i64, conv.padding as i64);
        let oh = (h as i64 + 2 * p - k) / s + 1;
        let ow = (w as i64 + 2 * p - k) / s + 1;
        let mut out = Vec::new();
        for o in 0..conv.out_channels {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = conv.bias[o];
                    for i in 0..ci {
                        for ky in 0..k {
                            for kx in 0..k {
                                let (iy, ix) = (oy * s + ky - p, ox * s + kx - p);
                                if iy < 0 || ix < 0 || iy >= h as i64 || ix >= w as i64 {
                                    continue;
                                }
                                let wi = ((o * ci + i) as i64 * k + ky) * k + kx;
                                acc += conv.weight[wi as usize]
                                    * x[(i * h + iy as usize) * w + ix as usize];
                            }
                        }
                    }
                    out.push(acc);
                }
            }
        }
        out
    }

    #[test]
    fn conv_matches_naive_for_strides_and_paddings() {
        for (k, s, p, h, w) in [
            (3, 1, 1, 5, 7),
            (3, 2, 1, 6, 5),
            (1, 2, 0, 5, 5),
            (3, 3, 2, 7, 4),
            (2, 2, 0, 4, 6),
        ] {
            let (ci, co) = (2, 3);
            let oh = (h + 2 * p - k) / s + 1;
            let ow = (w + 2 * p - k) / s + 1;
            let conv = Conv2d {
                in_channels: ci,
                out_channels: co,
                kernel: k,
                stride: s,
                padding: p,
                in_height: h,
                in_width: w,
                out_height: oh,
                out_width: ow,
                weight: (0..co * ci * k * k)
                    .map(|i| ((i * 7 % 11) as f64 - 5.0) / 4.0)
                    .collect(),
                bias: vec![0.5, -1.0, 0.25],
            };
            let x: Vec<f64> = (0..ci * h * w)
                .map(|i| ((i * 13 % 17) as f64 - 8.0) / 3.0)
                .collect();
            let got = conv2d(&conv, &x);
            let want = naive_conv(&x, (ci, h, w), &conv);
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-12, "k{k} s{s} p{p}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn tiny_model_forward_by_hand() {
        let (manifest, tensors) = tiny();
        let model = load(&manifest, &tensors).unwrap();
        let x: Vec<f64> = (0..32).map(|i| (i as f64 - 16.0) / 8.0).collect();
        let got = forward(&model, &x).unwrap();

        let op = |name: &str| &model.nodes().iter().find(|n| n.name == name).unwrap().op;
        let (Op::Conv2d(c1), Op::Conv2d(sc), Op::Linear(fc)) = (op("c1"), op("sc"), op("fc"))
        else {
            panic!("unexpected tiny model layout");
        };
        let r1: Vec<f64> = naive_conv(&x, (2, 4, 4), c1)
            .iter()
            .map(|v| v.max(0.0))
            .collect();
        let sum: Vec<f64> = r1
            .iter()
            .zip(naive_conv(&x, (2, 4, 4), sc))
            .map(|(a, b)| a + b)
            .collect();
        let q: Vec<f64> = sum.iter().map(|v| 0.25 * v * v + 0.5 * v + 0.125).collect();
        let pool: Vec<f64> = q.chunks(4).map(|c| c.iter().sum::<f64>() / 4.0).collect();
        let want: Vec<f64> = (0..2)
            .map(|o| fc.bias[o] + (0..3).map(|i| fc.weight[o * 3 + i] * pool[i]).sum::<f64>())
            .collect();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-12, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn wrong_input_size_is_refused() {
        let (manifest, tensors) = tiny();
        let model = load(&manifest, &tensors).unwrap();
        let err = forward(&model, &[0.0; 31]).unwrap_err();
        assert_eq!((err.expected, err.found), (32, 31));
    }

    #[test]
    fn softmax_is_stable_and_normalized() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p[0] - 0.5).abs() < 1e-12 && (p[1] - 0.5).abs() < 1e-12 && p[2] == 0.0);
        let p = softmax(&[0.1, 2.0, -0.5, 0.3]);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(p[1] > p[3] && p[3] > p[0] && p[0] > p[2]);
    }

    #[derive(Deserialize)]
    struct Fixture {
        tolerance: f64,
        synthetic: Vec<Synthetic>,
        records: Vec<Record>,
    }

    #[derive(Deserialize)]
    struct Synthetic {
        input: Vec<f64>,
        logits: Vec<f64>,
    }

    #[derive(Deserialize)]
    struct Record {
        file: String,
        index: usize,
        label: u8,
        logits: Vec<f64>,
    }

    /// The CIFAR-10 data directory: `BLINDSIGHT_DATA`, or `shared/data/cifar10` beside the repository.
    fn data_dir() -> PathBuf {
        std::env::var_os("BLINDSIGHT_DATA")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/cifar10")
            })
    }

    fn assert_close(what: &str, got: &[f64], want: &[f64], tolerance: f64) {
        assert_eq!(got.len(), want.len(), "{what}: logit count");
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(want)
            .fold(0.0f64, |m, (g, w)| m.max((g - w).abs()));
        assert!(
            err <= tolerance * scale,
            "{what}: max |diff| {err:e} > {tolerance} * {scale}\n got {got:?}\nwant {want:?}"
        );
    }

    #[test]
    fn forward_matches_exported_reference_logits() {
        use crate::cifar::{Record, RECORD};
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/resnet20");
        let model = crate::model::Model::from_dir(&dir).unwrap();
        let text = std::fs::read_to_string(dir.join("reference_logits.json")).unwrap();
        let fixture: Fixture = serde_json::from_str(&text).unwrap();
        assert!(!fixture.synthetic.is_empty() && !fixture.records.is_empty());

        for (i, case) in fixture.synthetic.iter().enumerate() {
            let got = forward(&model, &case.input).unwrap();
            assert_close(
                &format!("synthetic {i}"),
                &got,
                &case.logits,
                fixture.tolerance,
            );
        }

        let data = data_dir();
        for case in &fixture.records {
            let path = data.join(&case.file);
            let bytes = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (set BLINDSIGHT_DATA to the cifar10 data directory)",
                    path.display()
                )
            });
            let record = &bytes[case.index * RECORD..(case.index + 1) * RECORD];
            assert_eq!(
                record[0], case.label,
                "{} record {}: label",
                case.file, case.index
            );
            let input = Record {
                label: record[0].into(),
                pixels: record[1..].to_vec(),
            }
            .model_input(&model)
            .unwrap();
            let got = forward(&model, &input).unwrap();
            assert_close(
                &format!("{} record {}", case.file, case.index),
                &got,
                &case.logits,
                fixture.tolerance,
            );
        }
    }
}
