//! Loader tests, plus the small hand-built model ([`tiny`]) and the loading helpers ([`load`],
//! [`Tensors`]) that the plaintext and homomorphic evaluators' tests reuse through
//! `crate::model::tests`.

use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};

use super::{Model, ModelError, Op, Shape, Source, FORMAT, MANIFEST_FILE, VERSION};

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

    let err =
        load_edited(|m| drop(m["nodes"][0].as_object_mut().unwrap().remove("kernel"))).unwrap_err();
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
    let err = Model::from_bytes(manifest.to_string().as_bytes(), b"not safetensors").unwrap_err();
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
