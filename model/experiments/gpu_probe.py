#!/usr/bin/env python3
"""How fast one training step of the quadratic ResNet-20 runs on a GPU, eager, under torch.compile,
and as one captured CUDA graph (forward, backward, gradient clipping and SGD replayed with a single
launch). A CIFAR ResNet-20 step is hundreds of small kernels, so where kernel launches are slow (a
sandboxed GPU) the launch count, not the arithmetic, sets the time: this measures by how much.

    PYTHONPATH=model python model/experiments/gpu_probe.py --device cuda

A one-off probe (GPU lease of 2026-12-04; model/TRAINING.md has what it measured).
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F

from hemodel import CifarResNet, normalize
from train import augment, cutout


def make_step(model, batch, dev, mode):
    """A function running one training step on a fresh augmented batch; returns (step, sync)."""
    params = list(model.parameters())
    decay = [p for p in params if p.ndim > 1]
    bufs = [torch.zeros_like(p) for p in params]
    lr = torch.tensor(0.05, device=dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    x_u8 = torch.randint(0, 256, (4096, 3, 32, 32), dtype=torch.uint8, device=dev)
    y_all = torch.randint(0, 10, (4096,), device=dev)
    fwd = torch.compile(model) if mode == "compile" else model

    def batch_in():
        idx = torch.randint(0, 4096, (batch,), device=dev, generator=gen)
        return cutout(normalize(augment(x_u8[idx], gen)), 12, gen).contiguous(memory_format=torch.channels_last), \
            y_all[idx]

    def loss_of(xb, yb):
        # no autocast weight cache: a captured graph must recompute the casts on every replay
        with torch.autocast(dev.type, dtype=torch.bfloat16, cache_enabled=False):
            logits = fwd(xb)
            return F.cross_entropy(logits.float(), yb, label_smoothing=0.1) + 1.0 * model.range_penalty().float()

    def update():
        """SGD, momentum 0.9 (Nesterov), weight decay 5e-4, with the rate in a device tensor so that a
        captured graph can follow a schedule."""
        grads = [p.grad for p in params]
        torch.nn.utils.clip_grad_norm_(params, 5.0, foreach=True)
        with torch.no_grad():
            torch._foreach_add_([p.grad for p in decay], decay, alpha=5e-4)
            torch._foreach_mul_(bufs, 0.9)
            torch._foreach_add_(bufs, grads)
            torch._foreach_add_(grads, bufs, alpha=0.9)
            torch._foreach_mul_(grads, lr)
            torch._foreach_sub_(params, grads)

    def eager_step():
        xb, yb = batch_in()
        for p in params:
            p.grad = None
        loss_of(xb, yb).backward()
        update()

    if mode != "graph":
        return eager_step

    static_x, static_y = batch_in()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as CUDA graphs require
        for _ in range(3):
            for p in params:
                p.grad = None
            loss_of(static_x, static_y).backward()
            update()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    for p in params:
        p.grad = None
    with torch.cuda.graph(graph):
        loss_of(static_x, static_y).backward()
        update()

    def graph_step():
        xb, yb = batch_in()
        static_x.copy_(xb)
        static_y.copy_(yb)
        graph.replay()

    return graph_step


def measure(mode, batch, dev, steps):
    torch.manual_seed(0)
    model = CifarResNet().to(dev, memory_format=torch.channels_last).train()
    t0 = time.time()
    step = make_step(model, batch, dev, mode)
    for _ in range(5):
        step()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    setup = time.time() - t0
    t0 = time.time()
    for _ in range(steps):
        step()
    sync()
    ms = (time.time() - t0) / steps * 1000
    finite = all(torch.isfinite(p).all().item() for p in model.parameters())
    return {"mode": mode, "batch": batch, "ms_per_step": round(ms, 2),
            "s_per_epoch": round(ms / 1000 * (50000 // batch), 2), "setup_s": round(setup, 1), "finite": finite}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--modes", default="eager,graph,compile")
    ap.add_argument("--batches", default="128,512")
    args = ap.parse_args()
    dev = torch.device(args.device)
    for mode in args.modes.split(","):
        for batch in map(int, args.batches.split(",")):
            try:
                print(json.dumps(measure(mode, batch, dev, args.steps)), flush=True)
            except Exception as e:  # one failing mode must not cost the others' figures
                print(json.dumps({"mode": mode, "batch": batch, "error": f"{type(e).__name__}: {e}"[:300]}), flush=True)


if __name__ == "__main__":
    main()
