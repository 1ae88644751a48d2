#!/usr/bin/env python3
"""Where a trained network's accuracy goes: top-1 of `train.py` checkpoints as the encrypted evaluation
computes them (eval mode, no clamp), split so the issue's two test sets can be compared.

For each checkpoint: the 10000 jpeg75 test images, the first 1017 of them (the images that
exact_prefix holds with true pixels, so the JPEG step's cost is measured on the same images), the
1017 true-pixel images, the same network evaluated with its activation inputs clamped (what the
range costs), and the mean of the probabilities on the image and its mirror (flip test-time
augmentation, a two-member ensemble for twice the encrypted work). With several checkpoints it
also gives each pair's ensemble (mean of probabilities) on jpeg75, plain and flip-averaged (what
`train.py --teacher --teacher-flip` distils from), and with three or more the ensemble of all.

    PYTHONPATH=model python model/evaluate.py model/checkpoints/resnet20q19-swa.pt model/checkpoints/resnet20q11-last.pt
"""

import argparse
import itertools
import os

import torch

import hemodel
from hemodel import load_cifar_bin, model_from_checkpoint, normalize

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10")
PREFIX = 1017


@torch.no_grad()
def logits(model, x_u8, batch=500):
    return torch.cat([model(normalize(x_u8[i:i + batch])).double() for i in range(0, len(x_u8), batch)])


def accuracy(scores, y):
    return (scores.argmax(1) == y).double().mean().item()


class Clamped:
    """Within the block, every quadratic activation clamps its input to the clip range, as training does."""

    def __enter__(self):
        self.forward = hemodel.QuadAct.forward

        def clamped(act, x):
            x = x.clamp(-act.clip, act.clip)
            return (act.a * x + act.b) * x + act.c

        hemodel.QuadAct.forward = clamped

    def __exit__(self, *exc):
        hemodel.QuadAct.forward = self.forward


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    x_jpeg, y_jpeg = map(torch.from_numpy, load_cifar_bin(os.path.join(args.data, "jpeg75", "test_batch.bin")))
    x_true, y_true = map(torch.from_numpy, load_cifar_bin(
        os.path.join(args.data, "exact_prefix", f"test_batch.first{PREFIX}.bin")))
    if not torch.equal(y_jpeg[:PREFIX], y_true):
        raise SystemExit("exact_prefix's labels differ from the first jpeg75 test records: not the same images")

    probs, flip_probs = {}, {}
    print("checkpoint: jpeg75 | jpeg75 first 1017 | true-pixel 1017 | jpeg75 clamped | jpeg75 flip-averaged")
    for path in args.checkpoints:
        model = model_from_checkpoint(torch.load(path, map_location="cpu", weights_only=False))
        plain = logits(model, x_jpeg)
        true = logits(model, x_true)
        with Clamped():
            clamped = logits(model, x_jpeg)
        p = plain.softmax(1)
        flipped = p + logits(model, x_jpeg.flip(3)).softmax(1)
        probs[path], flip_probs[path] = p, flipped
        print(f"{path}: {accuracy(plain, y_jpeg):.4f} | {accuracy(plain[:PREFIX], y_true):.4f} | "
              f"{accuracy(true, y_true):.4f} | {accuracy(clamped, y_jpeg):.4f} | {accuracy(flipped, y_jpeg):.4f}",
              flush=True)
    for a, b in itertools.combinations(probs, 2):
        print(f"ensemble {a} + {b}: jpeg75 {accuracy(probs[a] + probs[b], y_jpeg):.4f}, "
              f"flip-averaged {accuracy(flip_probs[a] + flip_probs[b], y_jpeg):.4f}")
    if len(probs) > 2:
        print(f"ensemble of all {len(probs)}: jpeg75 {accuracy(sum(probs.values()), y_jpeg):.4f}, "
              f"flip-averaged {accuracy(sum(flip_probs.values()), y_jpeg):.4f}")


if __name__ == "__main__":
    main()
