#!/usr/bin/env python3
"""Export a trained HE-friendly CIFAR ResNet for the Blindsight server.

Folds every BatchNorm into the convolution before it, then writes into --out:

- weights.safetensors: the fused f32 tensors (conv1.weight, conv1.bias, blocks.3.shortcut.weight, fc.weight, ...);
- manifest.json: the layer graph (topologically sorted nodes: conv2d, quadratic, relu, add,
  global_avg_pool, linear), input normalization, class names, accuracies and the largest activation
  inputs measured on the exported graph without clamping (as the encrypted evaluation computes), and
  the training record;
- reference_logits.json: logits of a few inputs computed in float64 from the exported (f32-rounded)
  weights, the fixture for the server's plaintext forward pass.

Everything measured here runs the exported graph itself (`run_graph`), not the PyTorch module, so the
files are checked as the server will read them; the fused graph is also checked against the unfused
eval-mode model.

    PYTHONPATH=model python model/export.py --ckpt model/runs/r20q/best.pt --out model/resnet20
"""

import argparse
import copy
import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from hemodel import CIFAR10_MEAN, CIFAR10_STD, CifarResNet, QuadAct, load_cifar_bin, model_from_checkpoint
from train import DEFAULT_DATA

FORMAT, VERSION = "blindsight-model", 1
EXACT_PREFIX = "exact_prefix/test_batch.first1017.bin"
REFERENCE_SEED, REFERENCE_SYNTHETIC, REFERENCE_RECORDS, REFERENCE_TOLERANCE = 20250101, 4, 8, 1e-4
FUSION_TOLERANCE = 1e-4
# Training flags that define a run (the rest only say where and how fast it ran).
RECIPE_FLAGS = ["init_from", "epochs", "batch", "lr", "momentum", "wd", "clip", "penalty", "ramp_epochs",
                "label_smoothing", "cutout", "no_clamp_from", "teacher", "teacher_flip", "kd_weight", "kd_temp",
                "activation", "n", "width", "device", "time_budget", "swa_start", "swa_per_epoch", "seed", "bf16",
                "channels_last", "compile", "max_steps", "out"]


def fuse(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm folded into the convolution before it, in float64."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
    bias = bn.bias.double() - bn.running_mean.double() * scale
    if conv.bias is not None:
        bias = bias + conv.bias.double() * scale
    return weight.contiguous(), bias.contiguous()


class GraphBuilder:
    """Collects nodes and float64 tensors in evaluation order."""

    def __init__(self):
        self.nodes, self.tensors = [], {}

    def conv(self, name, src, conv, bn):
        weight, bias = fuse(conv, bn)
        self.tensors[f"{name}.weight"], self.tensors[f"{name}.bias"] = weight, bias
        self.nodes.append({"name": name, "op": "conv2d", "inputs": [src], "weight": f"{name}.weight",
                           "bias": f"{name}.bias", "in_channels": conv.in_channels,
                           "out_channels": conv.out_channels, "kernel": conv.kernel_size[0],
                           "stride": conv.stride[0], "padding": conv.padding[0]})
        return name

    def act(self, name, src, module):
        if isinstance(module, QuadAct):
            self.nodes.append({"name": name, "op": "quadratic", "inputs": [src],
                               "coefficients": [module.a, module.b, module.c]})
        else:
            self.nodes.append({"name": name, "op": "relu", "inputs": [src]})
        return name

    def add(self, name, a, b):
        self.nodes.append({"name": name, "op": "add", "inputs": [a, b]})
        return name

    def pool(self, name, src):
        self.nodes.append({"name": name, "op": "global_avg_pool", "inputs": [src]})
        return name

    def linear(self, name, src, fc):
        self.tensors[f"{name}.weight"] = fc.weight.detach().double().contiguous()
        self.tensors[f"{name}.bias"] = fc.bias.detach().double().contiguous()
        self.nodes.append({"name": name, "op": "linear", "inputs": [src], "weight": f"{name}.weight",
                           "bias": f"{name}.bias", "in_features": fc.in_features,
                           "out_features": fc.out_features})
        return name


@torch.no_grad()
def build_graph(model: CifarResNet):
    """The model as a node graph with BatchNorm fused; returns (nodes, float64 tensors, output name)."""
    g = GraphBuilder()
    x = g.act("act1", g.conv("conv1", "input", model.conv1, model.bn1), model.act1)
    for i, blk in enumerate(model.blocks):
        p = f"blocks.{i}"
        out = g.act(f"{p}.act1", g.conv(f"{p}.conv1", x, blk.conv1, blk.bn1), blk.act1)
        out = g.conv(f"{p}.conv2", out, blk.conv2, blk.bn2)
        sc = x if blk.shortcut is None else g.conv(f"{p}.shortcut", x, blk.shortcut[0], blk.shortcut[1])
        x = g.act(f"{p}.act2", g.add(f"{p}.add", out, sc), blk.act2)
    out = g.linear("fc", g.pool("pool", x), model.fc)
    return g.nodes, g.tensors, out


def run_graph(nodes, tensors, output, x, dtype=torch.float64, act_max=None):
    """Evaluate the exported graph on a normalized NCHW batch, without clamping.

    If act_max is a dict, it is updated with the largest |input| seen by each activation node.
    """
    w = {k: v.to(dtype) for k, v in tensors.items()}
    vals = {"input": x.to(dtype)}
    for n in nodes:
        ins = [vals[i] for i in n["inputs"]]
        op = n["op"]
        if op in ("quadratic", "relu") and act_max is not None:
            m = ins[0].abs().max().item()
            if not math.isfinite(m):
                raise SystemExit(f"{n['name']}: non-finite activation input without clamping; the model diverges "
                                 "as the encrypted evaluation would compute it (train longer, or check the penalty)")
            act_max[n["name"]] = max(act_max.get(n["name"], 0.0), m)
        if op == "conv2d":
            y = F.conv2d(ins[0], w[n["weight"]], w[n["bias"]], stride=n["stride"], padding=n["padding"])
        elif op == "quadratic":
            a, b, c = n["coefficients"]
            y = (a * ins[0] + b) * ins[0] + c
        elif op == "relu":
            y = F.relu(ins[0])
        elif op == "add":
            y = ins[0] + ins[1]
        elif op == "global_avg_pool":
            y = ins[0].mean(dim=(2, 3))
        elif op == "linear":
            y = F.linear(ins[0], w[n["weight"]], w[n["bias"]])
        else:
            raise ValueError(f"unknown op {op}")
        vals[n["name"]] = y
    return vals[output]


def measure(nodes, tensors, output, x_u8, y, batch=500):
    """Top-1 accuracy of the exported graph (float64, no clamp) and the largest activation inputs."""
    act_max, correct = {}, 0
    for i in range(0, len(y), batch):
        logits = run_graph(nodes, tensors, output, normalize_f64(x_u8[i:i + batch]), act_max=act_max)
        correct += (logits.argmax(1) == y[i:i + batch]).sum().item()
    return correct / len(y), act_max


@torch.no_grad()
def check_fusion(model, nodes, fused64, exported, output, x):
    """The graph against the unfused eval-mode model, all in float64, on a batch. With the fused weights
    unrounded, only summation order differs (a fusing bug shows here); with the exported f32 weights,
    the rounding is amplified by the network, and a model whose logits move by more than 1e-4 of their
    scale is too unstable to be evaluated under CKKS noise. Tolerances are relative to the logits' scale."""
    ref = copy.deepcopy(model).double().eval()(x)
    bad = (~ref.isfinite().all(1)).sum().item()
    if bad:
        raise SystemExit(f"the model's logits are not finite on {bad} of {len(x)} test images: it diverges "
                         "without clamping, as the encrypted evaluation would compute it")
    scale = max(1.0, ref.abs().max().item())
    for what, tensors, tol in (("fused float64", fused64, 1e-9), ("exported f32", exported, FUSION_TOLERANCE)):
        diff = (run_graph(nodes, tensors, output, x) - ref).abs().max().item()
        print(f"check: max |{what} graph - unfused model| = {diff:.3e} (logit scale {scale:.3e}, {len(x)} images)")
        if not diff <= tol * scale:  # also catches NaN
            raise SystemExit(f"{what} graph differs from the unfused model by {diff:.3e} > {tol} * {scale:.3e}")


def reference_fixture(nodes, tensors, output, x_exact, y_exact):
    """Inputs and float64 logits for the Rust forward-pass test (record pixels are read from the data set)."""
    rng = np.random.default_rng(REFERENCE_SEED)
    # Rounded to 4 decimals so the fixture stays small; both sides parse the same decimals to the same f64.
    synth = np.round(rng.standard_normal((REFERENCE_SYNTHETIC, 3, 32, 32)), 4)
    synth_logits = run_graph(nodes, tensors, output, torch.from_numpy(synth))
    rec_logits = run_graph(nodes, tensors, output, normalize_f64(x_exact[:REFERENCE_RECORDS]))
    if not (synth_logits.isfinite().all() and rec_logits.isfinite().all()):
        raise SystemExit("reference logits are not finite: the model diverges on the fixture inputs")
    return {
        "tolerance": REFERENCE_TOLERANCE,
        "tolerance_meaning": "per input: max_j |logit_j - reference_j| <= tolerance * max(1, max_j |reference_j|)",
        "seed": REFERENCE_SEED,
        "synthetic": [{"input": s.reshape(-1).tolist(), "logits": l.tolist()} for s, l in zip(synth, synth_logits)],
        "records": [{"file": EXACT_PREFIX, "index": i, "label": int(y_exact[i]), "logits": rec_logits[i].tolist()}
                    for i in range(REFERENCE_RECORDS)],
    }


def normalize_f64(x_u8):
    """(x/255 - mean)/std in float64, the same formula the server's layout code evaluates."""
    mean = torch.tensor(CIFAR10_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, dtype=torch.float64).view(1, 3, 1, 1)
    return (x_u8.double() / 255.0 - mean) / std


def command_flags(args):
    """The train.py flags that reproduce a run, from its saved arguments."""
    flags = []
    for k in RECIPE_FLAGS:
        v = args.get(k)
        if (k.startswith("kd_") and not args.get("teacher")) or (k == "swa_per_epoch" and not args.get("swa_start")):
            continue
        if isinstance(v, bool):
            flags += [f"--{k.replace('_', '-')}"] if v else []
        elif isinstance(v, list):
            flags += [f"--{k.replace('_', '-')}", *map(str, v)]
        elif v is not None and not (k in ("max_steps", "label_smoothing", "cutout", "no_clamp_from", "time_budget",
                                          "swa_start") and v == 0) and not (k, v) in (("width", 16), ("device", "cpu")):
            flags += [f"--{k.replace('_', '-')}", str(v)]
    return " ".join(flags)


def training_record(state):
    args = state["args"]
    flags = command_flags(args)
    if args.get("swa_start"):
        schedule = (f"LR warmed up over one epoch to a constant {args['lr']} for {args['epochs']} epochs, the weights "
                    f"averaged {args['swa_per_epoch']} times an epoch from epoch {args['swa_start']} on "
                    f"({state.get('swa_snapshots', '?')} snapshots; stochastic weight averaging, BatchNorm "
                    f"statistics recomputed)")
    else:
        schedule = f"one-cycle LR peaking at {args['lr']} over {args['epochs']} epochs"
    recipe = (f"SGD (Nesterov, momentum {args['momentum']}, weight decay {args['wd']}), batch {args['batch']}, "
              f"{schedule}; random crop (4-pixel pad) and horizontal flip; {args['activation']} activations")
    if args["activation"] == "quadratic":
        recipe += (f" (least-squares ReLU fit on [-{args['clip']}, {args['clip']}], inputs clamped while training, "
                   f"range penalty {args['penalty']} ramped up over {args['ramp_epochs']} epochs)")
    if args.get("label_smoothing"):
        recipe += f"; label smoothing {args['label_smoothing']}"
    if args.get("cutout"):
        recipe += f"; Cutout {args['cutout']}x{args['cutout']}"
    if args.get("teacher"):
        teachers = args["teacher"] if isinstance(args["teacher"], list) else [args["teacher"]]
        mirrored = ", each also on the mirrored image" if args.get("teacher_flip") else ""
        recipe += (f"; distilled from {' + '.join(teachers)} (weight {args['kd_weight']}, "
                   f"temperature {args['kd_temp']}{mirrored})")
    if args.get("bf16"):
        recipe += "; bf16 autocast for the training forward pass"
    lineage = warm_start_lineage(args.get("init_from"))
    if lineage:
        recipe += "; warm start from " + " <- ".join(f"{r['checkpoint']} ({r['epochs']} epochs)" for r in lineage)
    return {"epochs_done": state["epoch"], "epochs_planned": args["epochs"],
            "epochs_total": state["epoch"] + sum(r["epochs"] for r in lineage), "warm_start": lineage,
            "recipe": recipe, "command": "python model/train.py " + flags,
            "log_tail": [finite(r) for r in state["log"][-5:]]}


def warm_start_lineage(path, depth=32):
    """The chain of checkpoints a run was warm-started from (`--init-from`), newest first, each with
    the epochs it trained, so that the manifest states the whole training a model had."""
    out = []
    while path and depth > 0 and os.path.exists(path):
        state = torch.load(path, map_location="cpu", weights_only=False)
        out.append({"checkpoint": path, "epochs": state["epoch"],
                    "command": "python model/train.py " + command_flags(state["args"])})
        path, depth = state["args"].get("init_from"), depth - 1
    if path and depth > 0:
        # earlier checkpoints of the chain left the tree (model/TRAINING.md names their commits); the
        # manifest then records the chain only this far
        print(f"warm-start lineage stops at {path}: not in the tree (restore it with git checkout, "
              "model/TRAINING.md)")
    return out


def finite(record):
    """A log record with non-finite numbers as null: JSON has no NaN, and early epochs may log one."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


def to_json(obj, depth=0, expand=2):
    """JSON with objects, and lists of objects, one member per line for `expand` levels and compact
    below: a node or a fixture case per line, readable and with small diffs when a value changes."""
    pad = "  " * (depth + 1)
    if depth < expand and isinstance(obj, dict):
        items = [f"{pad}{json.dumps(k)}: {to_json(v, depth + 1, expand)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * depth + "}"
    if depth < expand and isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        items = [pad + to_json(x, depth + 1, expand) for x in obj]
        return "[\n" + ",\n".join(items) + "\n" + "  " * depth + "]"
    return json.dumps(obj, allow_nan=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--ckpt", default=os.path.join(here, "runs", "r20q", "best.pt"))
    ap.add_argument("--out", default=os.path.join(here, "resnet20"))
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    state = torch.load(args.ckpt, map_location="cpu", weights_only=False)
    targs = state["args"]
    model = model_from_checkpoint(state)
    nodes, fused64, output = build_graph(model)
    tensors = {k: v.float() for k, v in fused64.items()}

    with open(os.path.join(args.data, "jpeg75", "batches.meta.txt")) as f:
        classes = [line.strip() for line in f if line.strip()]
    x_test, y_test = map(torch.from_numpy, load_cifar_bin(os.path.join(args.data, "jpeg75", "test_batch.bin")))
    x_exact, y_exact = map(torch.from_numpy, load_cifar_bin(os.path.join(args.data, EXACT_PREFIX)))

    check_fusion(model, nodes, fused64, tensors, output, normalize_f64(x_test[:256]))
    acc_jpeg, act_max = measure(nodes, tensors, output, x_test, y_test)
    acc_exact, _ = measure(nodes, tensors, output, x_exact, y_exact)
    print(f"accuracy (fused graph, float64, no clamp): jpeg75 test {acc_jpeg:.4f} ({len(y_test)} images), "
          f"exact-prefix test {acc_exact:.4f} ({len(y_exact)} images)")
    print(f"largest activation input over the jpeg75 test set (clip {targs['clip']}):")
    for name, m in act_max.items():
        print(f"  {name:16s} {m:.4f}{'  > clip' if m > targs['clip'] else ''}")

    depth = model.depth
    manifest = {
        "format": FORMAT, "version": VERSION,
        "name": f"resnet{depth}-{targs['activation']}-cifar10", "architecture": f"resnet{depth}", "dataset": "cifar10",
        "input": {"name": "input", "channels": 3, "height": 32, "width": 32,
                  "mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD)},
        "classes": classes,
        "clip": targs["clip"],
        "nodes": nodes,
        "output": output,
        "accuracy": {"jpeg75_test": acc_jpeg, "exact_prefix_test": acc_exact},
        "activation_max_abs": act_max,
        "training": training_record(state),
    }
    # Serialized before anything is written, so a non-finite value leaves no half-written export.
    manifest_text = to_json(manifest) + "\n"
    reference_text = to_json(reference_fixture(nodes, tensors, output, x_exact, y_exact)) + "\n"
    os.makedirs(args.out, exist_ok=True)
    save_file(tensors, os.path.join(args.out, "weights.safetensors"),
              metadata={"format": FORMAT, "name": manifest["name"]})
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        f.write(manifest_text)
    with open(os.path.join(args.out, "reference_logits.json"), "w") as f:
        f.write(reference_text)
    print(f"wrote {args.out}: {len(nodes)} nodes, {sum(t.numel() for t in tensors.values())} weights")


if __name__ == "__main__":
    main()
