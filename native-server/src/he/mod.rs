//! The homomorphic network, one concept per module:
//!
//! - [`plan`]: from a model and a parameter set to the layout, level and scale of every value and
//!   the evaluation keys (the contract both sides follow);
//! - [`operator`]: a linear layer's weights, as terms of output elements;
//! - [`bsgs`]: the baby-step / giant-step plan of one linear layer;
//! - [`diagonal`]: its pre-rotated, run-compressed diagonals;
//! - [`linear`]: evaluating planned linear layers on ciphertexts;
//! - [`infer`]: the server-side evaluation of a whole plan (no secret key);
//! - [`keys`]: which rotation keys the client uploads and which the server derives;

pub mod bsgs;
pub mod diagonal;
pub mod infer;
pub mod keys;
pub mod linear;
pub mod operator;
pub mod plan;
pub mod replicas;

#[cfg(all(test, feature = "client"))]
pub(crate) mod tests {
    use std::sync::Arc;

    use blindsight_client::Client;
    use blindsight_core::{Context, Evaluator};
    use serde_json::{json, Value};

    use super::infer::evaluate;
    use super::plan::{Lanes, Plan, PlanError, Step, StepKind};
    use crate::contract::client_contract;
    use crate::model::tests::{load, Tensors};
    use crate::model::Model;
    use crate::plain;

    fn node(name: &str, op: &str, inputs: &[&str]) -> Value {
        json!({"name": name, "op": op, "inputs": inputs})
    }

    fn conv(name: &str, input: &str, ci: usize, co: usize, k: usize, stride: usize) -> Value {
        let mut v = node(name, "conv2d", &[input]);
        let o = v.as_object_mut().unwrap();
        o.insert("weight".into(), json!(format!("{name}.weight")));
        o.insert("bias".into(), json!(format!("{name}.bias")));
        for (key, val) in [
            ("in_channels", ci),
            ("out_channels", co),
            ("kernel", k),
            ("stride", stride),
            ("padding", k / 2),
        ] {
            o.insert(key.into(), json!(val));
        }
        v
    }

    fn quad(name: &str, input: &str) -> Value {
        let mut v = node(name, "quadratic", &[input]);
        v.as_object_mut()
            .unwrap()
            .insert("coefficients".into(), json!([0.234375, 0.5, 0.1875]));
        v
    }

    /// Deterministic pseudo-random weights in [-amp, amp].
    pub(crate) fn weights(n: usize, seed: u64, amp: f32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0) * amp
            })
            .collect()
    }

    /// A small CIFAR-shaped ResNet: 3x8x8 input, conv 3->4, then either an identity block or a
    /// downsampling block (stride-2 conv 4->8 with a 1x1 stride-2 shortcut), pool, linear 8->3.
    pub(crate) fn mini_resnet(downsample: bool) -> Model {
        let (manifest, tensors) = mini_resnet_files(downsample);
        load(&manifest, &tensors).unwrap()
    }

    /// A test ResNet whose block works on maps that leave sub-positions of each gap cell idle
    /// at N14_TEST (3x32x32 input, a stride-2 conv 3->8 into 16x16 maps at gap 2, filling all
    /// 8192 slots once), so that its layers take replicas: an identity block at gap 2, or a
    /// downsampling block into 8x8 maps at gap 4.
    fn replica_resnet(downsample: bool) -> Model {
        let (manifest, tensors) = resnet_files(32, 8, 2, downsample);
        load(&manifest, &tensors).unwrap()
    }

    /// The mini ResNet's manifest and weights.
    fn mini_resnet_files(downsample: bool) -> (Value, Tensors) {
        resnet_files(8, 4, 1, downsample)
    }

    /// A one-block ResNet on 3 x `side` x `side` images: conv 3->`c1` (stride `stride1`), an
    /// identity block or a downsampling one (to 2 * `c1` channels), pool, linear to 3.
    fn resnet_files(side: usize, c1: usize, stride1: usize, downsample: bool) -> (Value, Tensors) {
        let (c2, stride) = if downsample { (2 * c1, 2) } else { (c1, 1) };
        let mut nodes = vec![
            conv("conv1", "input", 3, c1, 3, stride1),
            quad("act1", "conv1"),
            conv("b.conv1", "act1", c1, c2, 3, stride),
            quad("b.act1", "b.conv1"),
            conv("b.conv2", "b.act1", c2, c2, 3, 1),
        ];
        let mut tensors: Tensors = Vec::new();
        let mut add_conv = |name: &str, ci: usize, co: usize, k: usize, seed: u64| {
            let fan = (ci * k * k) as f32;
            tensors.push((
                format!("{name}.weight"),
                vec![co, ci, k, k],
                weights(co * ci * k * k, seed, 1.5 / fan.sqrt()),
            ));
            tensors.push((
                format!("{name}.bias"),
                vec![co],
                weights(co, seed + 100, 0.2),
            ));
        };
        add_conv("conv1", 3, c1, 3, 1);
        add_conv("b.conv1", c1, c2, 3, 2);
        add_conv("b.conv2", c2, c2, 3, 3);
        if downsample {
            nodes.push(conv("b.shortcut", "act1", c1, c2, 1, 2));
            add_conv("b.shortcut", c1, c2, 1, 4);
            nodes.push(node("b.add", "add", &["b.conv2", "b.shortcut"]));
        } else {
            nodes.push(node("b.add", "add", &["b.conv2", "act1"]));
        }
        nodes.push(quad("b.act2", "b.add"));
        nodes.push(node("pool", "global_avg_pool", &["b.act2"]));
        let mut fc = node("fc", "linear", &["pool"]);
        let o = fc.as_object_mut().unwrap();
        o.insert("weight".into(), json!("fc.weight"));
        o.insert("bias".into(), json!("fc.bias"));
        o.insert("in_features".into(), json!(c2));
        o.insert("out_features".into(), json!(3));
        nodes.push(fc);
        tensors.push(("fc.weight".into(), vec![3, c2], weights(3 * c2, 9, 0.8)));
        tensors.push(("fc.bias".into(), vec![3], vec![0.1, -0.1, 0.05]));
        let manifest = json!({
            "format": "blindsight-model", "version": 1, "name": "mini", "architecture": "test",
            "dataset": "none",
            "input": {"name": "input", "channels": 3, "height": side, "width": side,
                      "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
            "classes": ["a", "b", "c"], "clip": 2.0, "nodes": nodes, "output": "fc",
            "accuracy": {}, "activation_max_abs": {},
            "training": {"epochs_done": 0, "epochs_planned": 0, "recipe": "", "command": "",
                         "log_tail": []}
        });
        (manifest, tensors)
    }

    /// The reduced test network on disk (`tests/fixtures/mini_resnet/`, the downsampling variant),
    /// which the wasm client's round trip uses: the files must be what this code makes
    /// (`BLESS=1` rewrites them).
    #[test]
    fn mini_resnet_fixture_is_current() {
        let (manifest, tensors) = mini_resnet_files(true);
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mini_resnet");
        let files = [
            (
                "manifest.json",
                serde_json::to_vec_pretty(&manifest).unwrap(),
            ),
            (
                "weights.safetensors",
                crate::model::tests::weights_bytes(&tensors),
            ),
        ];
        for (name, bytes) in files {
            let path = dir.join(name);
            if std::env::var_os("BLESS").is_some_and(|v| v == "1") {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            }
            let stored = std::fs::read(&path).unwrap_or_default();
            assert!(
                stored == bytes,
                "{} is stale: rerun with BLESS=1",
                path.display()
            );
        }
        Model::from_dir(&dir).unwrap();
    }

    /// Every step's decrypted value (mult * slots + offset) against the plaintext node output, and
    /// the logits against the plaintext logits.
    fn check_against_plaintext(model: &Model, ctx: &Arc<Context>, tolerance: f64) {
        check_plan_against_plaintext(model, &Plan::new(model, ctx).unwrap(), ctx, tolerance);
    }

    fn check_plan_against_plaintext(
        model: &Model,
        plan: &Plan,
        ctx: &Arc<Context>,
        tolerance: f64,
    ) {
        let client =
            Client::with_context(ctx.clone(), client_contract(model, plan, ctx).unwrap()).unwrap();
        let mut keys = client.evaluation_keys().unwrap();
        plan.keys.derive(&Evaluator::new(ctx), &mut keys).unwrap();
        let input: Vec<f64> = weights(model.input_shape().size(), 77, 1.8)
            .into_iter()
            .map(f64::from)
            .collect();
        let reference = plain::forward_all(model, &input).unwrap();
        let ct = client.encrypt_tensor(&input).unwrap();
        let ev = Evaluator::new(ctx);
        let mut worst = Vec::new();
        let (out, _) = evaluate(plan, &ev, &keys, &ct, |i, _, value| {
            let step = &plan.steps[i - 1];
            if step.name.ends_with(".shortcut") {
                return;
            }
            let slots = client.decrypt_slots(value).unwrap();
            let err = step
                .value_error(&slots, &reference)
                .unwrap_or_else(|| panic!("{}: not the node's value", step.name));
            worst.push((step.name.clone(), err));
        })
        .unwrap();
        for (name, err) in &worst {
            assert!(*err < tolerance, "{name}: error {err:.3e} (all: {worst:?})");
        }
        let logits = client.decrypt_logits(&out).unwrap();
        let want = &reference[model.output()];
        for (g, w) in logits.iter().zip(want) {
            assert!((g - w).abs() < tolerance, "logits {logits:?} vs {want:?}");
        }
    }

    /// Largest allowed error of any decrypted layer value at Delta = 2^25. Over 150 runs with
    /// fresh keys the worst layer error had median 4.3e-4, 99th percentile 6.6e-4 and maximum
    /// 7.6e-4, with an exponential tail (scale ~5e-5: the key multiplies rounding errors slot-wise),
    /// so 2e-3 fails a correct evaluator with negligible probability; a mis-scaled step errs by O(1).
    const LAYER_TOLERANCE: f64 = 2e-3;

    #[test]
    fn identity_block_matches_plaintext_layer_by_layer() {
        let ctx = Context::named("N14_TEST").unwrap();
        check_against_plaintext(&mini_resnet(false), &ctx, LAYER_TOLERANCE);
    }

    #[test]
    fn downsampling_block_matches_plaintext_layer_by_layer() {
        let ctx = Context::named("N14_TEST").unwrap();
        check_against_plaintext(&mini_resnet(true), &ctx, LAYER_TOLERANCE);
    }

    /// The kinds of linear layer a plan at `levels` (derived keys to, pairs and conjugation
    /// key to) has: real, complex, complex with split Horner steps, complex with the real part
    /// after the rescale. Checks each layer against the rules of [`Plan`]'s packing.
    fn layer_kinds(plan: &Plan, ctx: &Context, levels: Option<(usize, usize)>) -> [bool; 4] {
        use super::bsgs::LinearPlan;
        let (derived_to, pair_to) = levels.unwrap_or_else(|| {
            let p = ctx.params();
            let d = (0..=p.max_level())
                .rev()
                .find(|&l| p.derived_layout(l).is_some());
            (d.unwrap(), plan.conj_level.unwrap())
        });
        let lins: Vec<&LinearPlan> = plan
            .steps
            .iter()
            .flat_map(|s| s.kind.linear_plans())
            .collect();
        let mut kinds = [false; 4];
        for l in &lins {
            // one image packs complex up to one level above the conjugation key
            assert_eq!(l.complex, l.level <= pair_to + 1, "level {}", l.level);
            assert!(l.conjugation_level() <= plan.conj_level);
            assert_eq!(l.split_step, l.complex && l.level > derived_to);
            assert_eq!(l.real_after_rescale, l.complex && l.level > pair_to);
            // the Horner chain's key: 2G only where the server derives it
            if l.horner_terms() > 1 {
                let keyed = l.rotation_amounts().contains(&(2 * l.giant));
                assert_eq!(keyed, l.complex && !l.split_step, "level {}", l.level);
            }
            kinds[0] |= !l.complex;
            kinds[1] |= l.complex && !l.split_step && !l.real_after_rescale;
            kinds[2] |= l.split_step;
            kinds[3] |= l.real_after_rescale;
            assert_eq!(l.horner_terms(), l.giants.div_ceil(l.fold()));
            assert!(l.diags().iter().all(|d| d.giant < l.horner_terms()));
            // odd giant steps ride in imaginary parts, and only there
            let imag = l.diags().iter().any(|d| !d.imag.is_empty());
            assert_eq!(imag, l.complex && l.giants > 1, "level {}", l.level);
        }
        kinds
    }

    /// With the set's own levels every layer of the mini ResNet packs complex, the highest
    /// with split Horner steps (the evaluations above run this plan).
    #[test]
    fn complex_packing_follows_the_keys() {
        let ctx = Context::named("N14_TEST").unwrap();
        let plan = Plan::new(&mini_resnet(true), &ctx).unwrap();
        let [_, complex, split, _] = layer_kinds(&plan, &ctx, None);
        assert!(complex && split);
    }

    /// Lower packing levels give the other kinds (real layers, the real part after the
    /// rescale), each evaluated against the plaintext model.
    #[test]
    fn every_kind_of_linear_layer_matches_plaintext() {
        let ctx = Context::named("N14_TEST").unwrap();
        let model = mini_resnet(true);
        let mut seen = [false; 4];
        for (derived_to, pair_to) in [(2, 3), (1, 1)] {
            let plan = Plan::with_packing_levels(&model, &ctx, 1, derived_to, pair_to).unwrap();
            let kinds = layer_kinds(&plan, &ctx, Some((derived_to, pair_to)));
            for (s, k) in seen.iter_mut().zip(kinds) {
                *s |= k;
            }
            check_plan_against_plaintext(&model, &plan, &ctx, LAYER_TOLERANCE);
        }
        assert_eq!(seen, [true; 4]);
    }

    /// Layers whose layouts leave sub-positions idle take replicas (one product for two giant
    /// steps), each at a shift where it reads none of the partial sums its inputs carry: the
    /// block's sum reads its first convolution's, so it takes another shift. Evaluated against
    /// the plaintext model layer by layer; a shift that read them errs by O(1).
    #[test]
    fn replicas_match_plaintext_layer_by_layer() {
        let ctx = Context::named("N14_TEST").unwrap();
        for downsample in [false, true] {
            let model = replica_resnet(downsample);
            let plan = Plan::new(&model, &ctx).unwrap();
            let mut shifts = std::collections::BTreeMap::new();
            for st in &plan.steps {
                for l in st.kind.linear_plans() {
                    if let Some(r) = l.replicas {
                        // the copy takes the giant steps of the second half period
                        assert_eq!(2 * r.half, l.input.slots());
                        assert!(l.giants * l.giant <= r.half, "{}", st.name);
                        shifts.entry(st.name.clone()).or_insert(r.shift);
                    }
                }
            }
            let names: Vec<&str> = shifts.keys().map(String::as_str).collect();
            assert_eq!(names, ["b.add", "b.conv1"], "downsample {downsample}");
            assert_ne!(shifts["b.add"], shifts["b.conv1"]);
            check_plan_against_plaintext(&model, &plan, &ctx, LAYER_TOLERANCE);
            // a batch fills the idle sub-positions with its images instead
            let batch = Plan::batched(&model, &ctx, 2).unwrap();
            assert!(batch
                .steps
                .iter()
                .flat_map(|s| s.kind.linear_plans())
                .all(|l| l.replicas.is_none()));
        }
    }

    #[test]
    fn residual_sums_of_linear_layers_share_one_chain() {
        use super::bsgs::sum_rotation_count;
        let ctx = Context::named("N14_TEST").unwrap();
        for downsample in [false, true] {
            let plan = Plan::new(&mini_resnet(downsample), &ctx).unwrap();
            let sums: Vec<_> = plan
                .steps
                .iter()
                .filter_map(|st| match &st.kind {
                    StepKind::LinearSum { terms } => Some((st, terms)),
                    _ => None,
                })
                .collect();
            assert_eq!(sums.len(), 1, "downsample {downsample}");
            let (st, terms) = sums[0];
            assert_eq!((st.name.as_str(), terms.len()), ("b.add", 2));
            // the summed layers are gone as steps, and every reference points backwards
            assert!(!plan.steps.iter().any(|s| s.name == "b.conv2"));
            for (i, s) in plan.steps.iter().enumerate() {
                for r in s.kind.refs() {
                    if let super::plan::Ref::Step(j) = r {
                        assert!(j < i, "{} reads step {j}", s.name);
                    }
                }
            }
            let plans: Vec<_> = terms.iter().map(|(_, l)| l).collect();
            let separate: usize = plans.iter().map(|l| l.rotation_count()).sum();
            if downsample {
                // the shortcut's giant chain is saved
                assert!(sum_rotation_count(&plans) < separate);
            }
        }
    }

    /// A client with the keys of `plan` (derived ones included) and `count` test images
    /// (seeds from `seed`), each encrypted.
    fn encrypted_images(
        model: &Model,
        ctx: &Arc<Context>,
        plan: &Plan,
        count: usize,
        seed: u64,
    ) -> (
        Client,
        blindsight_core::EvaluationKeys,
        Vec<Vec<f64>>,
        Vec<blindsight_core::Ciphertext>,
    ) {
        let client =
            Client::with_context(ctx.clone(), client_contract(model, plan, ctx).unwrap()).unwrap();
        let mut keys = client.evaluation_keys().unwrap();
        plan.keys.derive(&Evaluator::new(ctx), &mut keys).unwrap();
        let images: Vec<Vec<f64>> = (0..count as u64)
            .map(|j| {
                weights(model.input_shape().size(), seed + j, 1.8)
                    .into_iter()
                    .map(f64::from)
                    .collect()
            })
            .collect();
        let cts = images
            .iter()
            .map(|x| client.encrypt_tensor(x).unwrap())
            .collect();
        (client, keys, images, cts)
    }

    /// A batch shares ciphertexts where the layouts leave room (here the stride-2 stage holds
    /// four images per ciphertext), and every image's logits still match the plaintext model.
    /// Five images: one full group and one with a single image.
    #[test]
    fn batched_images_match_plaintext_and_share_ciphertexts() {
        use super::infer::evaluate_batch;
        let ctx = Context::named("N14_TEST").unwrap();
        let model = mini_resnet(true);
        let batch = 5;
        let plan = Plan::batched(&model, &ctx, batch).unwrap();
        let single = Plan::new(&model, &ctx).unwrap();
        // the strided stage packs images at shifts; the stage before it pairs them (real and
        // imaginary parts) where it may, or keeps one per ciphertext
        let caps: Vec<(String, usize, usize)> = plan
            .steps
            .iter()
            .filter(|s| s.group == 0)
            .map(|s| {
                (
                    s.name.clone(),
                    s.value.capacity(),
                    plan.steps.iter().filter(|t| t.name == s.name).count(),
                )
            })
            .collect();
        assert!(
            caps.iter()
                .any(|(n, c, g)| n == "conv1" && *c <= 2 && *g == batch.div_ceil(*c)),
            "{caps:?}"
        );
        assert!(
            caps.iter()
                .any(|(n, c, g)| n == "fc" && *c >= 4 && *g < batch),
            "{caps:?}"
        );
        // the batch needs no key the single image does not
        assert!(plan.keys_covered_by(&single));
        let (client, keys, images, cts) = encrypted_images(&model, &ctx, &plan, batch, 300);
        let ev = Evaluator::new(&ctx);
        let (outs, _) = evaluate_batch(&plan, &ev, &keys, &cts, |_, _, _, _| {}).unwrap();
        assert_eq!(outs.len(), plan.outputs.len());
        let out = plan.output_value();
        // one image's logits, read at its shift, against the plaintext model's (returned)
        let check_image = |slots: &[f64], shift: usize, image: &[f64], what: &str| {
            let got = out.layout.extract_shifted(slots, shift).unwrap();
            let want = plain::forward(&model, image).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() < LAYER_TOLERANCE,
                    "{what}: {got:?} vs {want:?}"
                );
            }
            want
        };
        let mut wants = Vec::new();
        for (j, image) in images.iter().enumerate() {
            let (group, shift) = out.place_of(j);
            let slots = client.decrypt_slots(&outs[group]).unwrap();
            wants.push(check_image(&slots, shift, image, &format!("image {j}")));
        }
        // the images' logits differ by far more than the tolerance: a mix-up would not pass
        for j in 1..batch {
            let d = wants[j]
                .iter()
                .zip(&wants[0])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                d > 10.0 * LAYER_TOLERANCE,
                "images 0 and {j} too alike: {d}"
            );
        }
        // the plan serves a smaller batch too, skipping the missing images' work
        let (part, reports) =
            evaluate_batch(&plan, &ev, &keys, &cts[..2], |_, _, _, _| {}).unwrap();
        assert_eq!(part.len(), 1);
        let (_, all_reports) = evaluate_batch(&plan, &ev, &keys, &cts, |_, _, _, _| {}).unwrap();
        assert!(reports.len() < all_reports.len());
        let slots = client.decrypt_slots(&part[0]).unwrap();
        for (j, image) in images[..2].iter().enumerate() {
            let (_, shift) = out.place_of(j);
            check_image(&slots, shift, image, &format!("image {j} of 2"));
        }
        // no inputs, or more than the plan's batch, are refused
        assert!(evaluate_batch(&plan, &ev, &keys, &[], |_, _, _, _| {}).is_err());
        let six: Vec<_> = cts.iter().chain(&cts[..1]).cloned().collect();
        assert!(evaluate_batch(&plan, &ev, &keys, &six, |_, _, _, _| {}).is_err());
    }

    /// Where a layout has no idle slots, a batch pairs its images as the real and imaginary
    /// parts of one ciphertext: a linear layer merges them (the second image's weights times
    /// `i`), real weights then serve both, and an activation parts them again before the
    /// layouts that have room for shifts. The single image's keys serve it.
    #[test]
    fn batches_pair_images_where_slots_are_not_idle() {
        let ctx = Context::named("N14_TEST").unwrap();
        let model = mini_resnet(true);
        let plan = Plan::batched(&model, &ctx, 4).unwrap();
        let paired: Vec<&Step> = plan.steps.iter().filter(|s| s.value.lanes == 2).collect();
        assert!(!paired.is_empty());
        for s in &paired {
            assert_eq!(
                (s.value.room.len(), s.value.capacity()),
                (1, 2),
                "{}",
                s.name
            );
            for l in s.kind.linear_plans() {
                assert!(
                    !l.complex,
                    "{}: a pair leaves no imaginary part to pack",
                    s.name
                );
            }
        }
        let merges = plan
            .steps
            .iter()
            .flat_map(|s| s.kind.linear_plans())
            .filter(|l| l.imag)
            .count();
        assert!(merges > 0);
        let taken: Vec<&Step> = plan
            .steps
            .iter()
            .filter(|s| {
                matches!(
                    s.kind,
                    StepKind::Activation {
                        lanes: Lanes::Take(_),
                        ..
                    }
                )
            })
            .collect();
        assert!(!taken.is_empty() && taken.iter().all(|s| s.value.lanes == 1));
        // every paired activation is covered by the conjugation key of one image's plan
        let single = Plan::new(&model, &ctx).unwrap();
        let top = plan
            .steps
            .iter()
            .filter(|s| matches!(s.kind, StepKind::Activation { lanes, .. } if lanes != Lanes::One))
            .map(|s| s.value.level)
            .max();
        assert!(top.is_some() && single.conj_level >= top);
        assert!(plan.keys_covered_by(&single));
        // one image never pairs
        assert!(single.steps.iter().all(|s| s.value.lanes == 1));
    }

    /// A batch that fills a strided stage's shifts twice over pairs there too (8 images in one
    /// ciphertext of 4 shifts), and parting the pairs before the next stage reorders the
    /// images: each still reads back at its own place and matches the plaintext model.
    #[test]
    fn pairs_at_shifts_part_into_whole_ciphertexts() {
        use super::infer::evaluate_batch;
        let ctx = Context::named("N14_TEST").unwrap();
        let model = mini_resnet(true);
        let batch = 8;
        let plan = Plan::batched(&model, &ctx, batch).unwrap();
        let shifted_pairs = plan
            .steps
            .iter()
            .filter(|s| s.value.lanes == 2 && s.value.shifts.len() > 1)
            .count();
        assert!(shifted_pairs > 0);
        let out = plan.output_value();
        assert_ne!(
            out.images,
            (0..batch).collect::<Vec<_>>(),
            "parting reorders"
        );
        let mut places: Vec<(usize, usize)> = (0..batch).map(|j| out.place_of(j)).collect();
        places.sort_unstable();
        places.dedup();
        assert_eq!(places.len(), batch, "one place per image");
        let single = Plan::new(&model, &ctx).unwrap();
        assert!(plan.keys_covered_by(&single));
        let (client, keys, images, cts) = encrypted_images(&model, &ctx, &single, batch, 500);
        let ev = Evaluator::new(&ctx);
        let (outs, _) = evaluate_batch(&plan, &ev, &keys, &cts, |_, _, _, _| {}).unwrap();
        for (j, image) in images.iter().enumerate() {
            let (group, shift) = out.place_of(j);
            let slots = client.decrypt_slots(&outs[group]).unwrap();
            let got = out.layout.extract_shifted(&slots, shift).unwrap();
            let want = plain::forward(&model, image).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() < LAYER_TOLERANCE,
                    "image {j}: {got:?} vs {want:?}"
                );
            }
        }
    }

    #[test]
    fn a_batch_of_one_is_the_single_image_plan() {
        let ctx = Context::named("N14_TEST").unwrap();
        let model = mini_resnet(true);
        let a = Plan::new(&model, &ctx).unwrap();
        let b = Plan::batched(&model, &ctx, 1).unwrap();
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert!(Plan::batched(&model, &ctx, 0).is_err());
    }

    #[test]
    fn too_deep_models_are_refused() {
        let ctx = Context::named("N14_TEST").unwrap();
        let model = Model::embedded().unwrap();
        let err = Plan::new(&model, &ctx).unwrap_err();
        assert!(
            matches!(
                err,
                PlanError::TooDeep {
                    depth: 20,
                    max: 5,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("20 levels"));
    }
}
