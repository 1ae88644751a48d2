"""HE-friendly ResNets for CIFAR: quadratic activations, BatchNorm, 1x1 shortcuts.

Every ReLU of the standard CIFAR ResNet is replaced by a quadratic a*x^2 + b*x + c, the least-squares
fit of ReLU on [-clip, clip]. During training the activation input is clamped to that range (so the
quadratic never sees values it was not fit for) and `range_penalty` reports how far inputs stray
outside it; the trainer adds it to the loss so that, at inference without the clamp (as the
homomorphic evaluation computes), inputs stay inside the range.
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def fit_relu_quadratic(clip: float) -> tuple[float, float, float]:
    """Least-squares (a, b, c) so that a*x^2 + b*x + c ~ ReLU(x) on [-clip, clip], uniform weight."""
    xs = np.linspace(-clip, clip, 200001)
    a, b, c = np.polyfit(xs, np.maximum(xs, 0.0), 2)
    return float(a), float(b), float(c)


def track_range(act, x):
    """Accumulates, while evaluating, the largest |input| of an activation and the per-sample flag
    'every input within [-clip, clip]'."""
    ax = x.detach().abs()
    # NaN-aware: a NaN anywhere makes the maximum NaN (torch.max propagates it)
    m = ax.max()
    act.max_abs = m if act.max_abs is None else torch.maximum(act.max_abs, m)
    ok = (ax <= act.clip).flatten(1).all(1)
    act.in_range = ok if act.in_range is None else act.in_range & ok


class QuadAct(nn.Module):
    """Quadratic activation; records the penalty for inputs outside [-clip, clip]."""

    def __init__(self, clip: float):
        super().__init__()
        self.clip = clip
        self.a, self.b, self.c = fit_relu_quadratic(clip)
        self.penalty = None
        self.max_abs = None
        self.track_max = False
        # Clamping while training stabilizes the first epochs, but a network trained only clamped
        # never sees what the quadratic does outside the range and blows up unclamped; the
        # trainer turns the clamp off for the later epochs (`--no-clamp-from`).
        self.clamp_in_training = True
        # per-sample flag: all inputs of this activation within [-clip, clip] (evaluation)
        self.in_range = None

    def forward(self, x):
        if self.track_max:
            track_range(self, x)
        if self.training:
            # squared excess per sample, summed over the tensor (PAPER's weight 1e-3 is for a sum)
            self.penalty = F.relu(x.abs() - self.clip).pow(2).flatten(1).sum(1).mean()
            if self.clamp_in_training:
                x = x.clamp(-self.clip, self.clip)
        return (self.a * x + self.b) * x + self.c


class ReluAct(nn.Module):
    """Plain ReLU, for the baseline that measures what the quadratic costs in accuracy."""

    def __init__(self, clip: float):
        super().__init__()
        self.clip = clip
        self.penalty = None
        self.max_abs = None
        self.track_max = False
        self.in_range = None

    def forward(self, x):
        if self.track_max:
            # the ranges a ReLU network's activations see: what a polynomial would have to cover
            track_range(self, x)
        return F.relu(x)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, act):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = act()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout)
            )
        self.act2 = act()

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x if self.shortcut is None else self.shortcut(x)
        return self.act2(out + sc)


class CifarResNet(nn.Module):
    """CIFAR ResNet-(6n+2): 3 stages of n basic blocks, widths w, 2w, 4w (ResNet-20: n=3, w=16)."""

    def __init__(self, n=3, width=16, num_classes=10, clip=2.0, activation="quadratic"):
        super().__init__()
        act_cls = QuadAct if activation == "quadratic" else ReluAct
        act = lambda: act_cls(clip)  # noqa: E731
        self.depth = 6 * n + 2
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = act()
        blocks = []
        cin = width
        for stage, w in enumerate([width, 2 * width, 4 * width]):
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(cin, w, stride, act))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def activations(self):
        return [m for m in self.modules() if isinstance(m, (QuadAct, ReluAct))]

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.blocks(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)

    def range_penalty(self):
        ps = [m.penalty for m in self.activations() if m.penalty is not None]
        return torch.stack(ps).sum() if ps else torch.zeros((), device=self.fc.weight.device)


def model_from_checkpoint(state):
    """The network a `train.py` checkpoint (already loaded) holds, in evaluation mode."""
    a = state["args"]
    model = CifarResNet(n=a["n"], width=a.get("width", 16), clip=a["clip"], activation=a["activation"])
    model.load_state_dict(state["model"])
    return model.eval()


CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def load_cifar_bin(path, limit=None):
    """CIFAR binary layout: 3073-byte records (label, 1024 R, 1024 G, 1024 B). Returns (uint8 NCHW, labels)."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % 3073:
        raise ValueError(f"{path}: size {raw.size} is not a multiple of 3073")
    recs = raw.reshape(-1, 3073)
    if limit is not None:
        recs = recs[:limit]
    return recs[:, 1:].reshape(-1, 3, 32, 32).copy(), recs[:, 0].astype(np.int64)


def normalize(x_uint8: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CIFAR10_MEAN, device=x_uint8.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=x_uint8.device).view(1, 3, 1, 1)
    return (x_uint8.float() / 255.0 - mean) / std
