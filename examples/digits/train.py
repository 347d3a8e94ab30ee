"""Train a small CNN on scikit-learn's digits with torch and export it to ONNX.

    python examples/digits/train.py --activation relu --out examples/digits/digits_cnn.onnx --data examples/digits

writes the model and, with --data, digits_train.npz and digits_test.npz (input "image",
float32 [N, 1, 8, 8] scaled to [0, 1], plus "labels"). Needs torch and scikit-learn
(pip install -e '.[train]'); the converter itself does not.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leakyrelu": lambda: nn.LeakyReLU(0.1),
    "elu": nn.ELU,
    "selu": nn.SELU,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "hardsigmoid": nn.Hardsigmoid,
    "hardswish": nn.Hardswish,
    "relu6": nn.ReLU6,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "prelu": lambda: nn.PReLU(16),
}


def split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits as float32 [N, 1, 8, 8] in [0, 1]; a seeded 80/20 train/test split."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.8 * len(y))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def make_net(activation: str) -> nn.Module:
    act = ACTIVATIONS[activation]
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), act(),
        nn.Conv2d(16, 32, 3, padding=1), act() if activation != "prelu" else nn.PReLU(32),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64), act() if activation != "prelu" else nn.PReLU(),
        nn.Linear(64, 10),
    )


def train(activation: str, seed: int = 0, epochs: int = 40) -> tuple[nn.Module, float]:
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = split(seed)
    net = make_net(activation)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(yt), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean())
    return net, acc


def export(net: nn.Module, out: Path, opset: int = 17, dynamo: bool = False) -> None:
    """TorchScript exporter (dynamo=False: decomposed activations such as GELU's Erf chain) or the dynamo
    exporter (dynamo=True, opset 20 or newer: single Gelu/Mish ops; needs onnxscript)."""
    if dynamo:
        batch = torch.export.Dim("batch")
        torch.onnx.export(
            net, (torch.zeros(2, 1, 8, 8),), str(out), input_names=["image"], output_names=["logits"],
            dynamic_shapes=({0: batch},), opset_version=max(opset, 20), dynamo=True, verbose=False,
        )
        return
    torch.onnx.export(
        net, (torch.zeros(1, 1, 8, 8),), str(out), input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset, dynamo=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--activation", default="relu", choices=sorted(ACTIVATIONS))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None, help="folder for digits_train.npz and digits_test.npz")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    net, acc = train(args.activation, args.seed)
    export(net, args.out)
    print(f"{args.activation}: test accuracy {100 * acc:.2f}% -> {args.out}")
    if args.data:
        xtr, ytr, xte, yte = split(args.seed)
        np.savez_compressed(args.data / "digits_train.npz", image=xtr, labels=ytr)
        np.savez_compressed(args.data / "digits_test.npz", image=xte, labels=yte)


if __name__ == "__main__":
    main()
