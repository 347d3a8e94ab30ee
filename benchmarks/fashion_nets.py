"""Four Fashion-MNIST networks, trained here (torch, CPU, seeded) and exported to ONNX.

    .venv/bin/python benchmarks/fashion_nets.py [--nets vgg,resnet,effnet,gelu] [--retrain]

- vgg: 6 convs (16-16 | 32-32 | 64-64) with batch norm, ReLU and average pooling, then 2 fully connected layers.
- resnet: a 3x3 stem and max pooling, then 3 stages of 2 basic residual blocks (16, 32, 64 channels; adds
  before the ReLU; 1x1 projections where the shape changes): 13 convs and a fully connected layer.
- effnet: EfficientNet-style MBConv blocks (1x1 expand, depthwise 3x3, sigmoid-gated squeeze-excitation,
  1x1 project, residual adds) with SiLU everywhere.
- gelu: ConvNeXt-style blocks (depthwise 7x7, batch norm, 1x1 expand, GELU, 1x1 project, residual adds).

Trained with AdamW and a one-cycle schedule on the 60,000 training images (random 2-pixel shifts and
horizontal flips), seed 0; batch norm folded into the convolutions on export (TorchScript exporter, opset 17).
Each network is cached in .cache/fashion-nets/<name>.onnx with its test accuracy in <name>.json; --retrain
trains again. Training times are for this machine's 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fashion_data  # noqa: E402

CACHE = fashion_data.ROOT / ".cache/fashion-nets"
SEED = 0
EPOCHS = {"vgg": 4, "resnet": 4, "effnet": 4, "gelu": 4}
BATCH = 128


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class VGG(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for cout in (16, 32, 64):
            layers += [*conv_bn(cin, cout), nn.ReLU(), *conv_bn(cout, cout), nn.ReLU(), nn.AvgPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 3 * 3, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(), *conv_bn(cout, cout))
        self.short = nn.Identity() if cin == cout and stride == 1 else nn.Sequential(*conv_bn(cin, cout, 1, stride))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.short(x))


class ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        blocks: list[nn.Module] = [*conv_bn(1, 16), nn.ReLU(), nn.MaxPool2d(2)]
        cin = 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            blocks += [Basic(cin, cout, stride), Basic(cout, cout, 1)]
            cin = cout
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = nn.Sequential(*conv_bn(cin, mid, 1), nn.SiLU())
        self.depthwise = nn.Sequential(*conv_bn(mid, mid, 3, stride, groups=mid), nn.SiLU())
        squeeze = max(4, cin // 4)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(mid, squeeze, 1), nn.SiLU(),
                                nn.Conv2d(squeeze, mid, 1), nn.Sigmoid())
        self.project = nn.Sequential(*conv_bn(mid, cout, 1))
        self.residual = cin == cout and stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.depthwise(self.expand(x))
        h = self.project(h * self.se(h))
        return x + h if self.residual else h


class EffNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, 24, 3, 2), nn.SiLU())
        self.blocks = nn.Sequential(MBConv(24, 24, 1), MBConv(24, 32, 2), MBConv(32, 32, 1), MBConv(32, 48, 1))
        self.head = nn.Sequential(*conv_bn(48, 128, 1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class NeXt(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_bn(c, c, 5, groups=c), nn.Conv2d(c, 3 * c, 1), nn.GELU(),
                                  nn.Conv2d(3 * c, c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class GeluNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn(1, 32, 3, 2), nn.GELU(), NeXt(32), NeXt(32), *conv_bn(32, 64, 2, 2), nn.GELU(), NeXt(64),
            NeXt(64))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


NETS = {"vgg": VGG, "resnet": ResNet, "effnet": EffNet, "gelu": GeluNet}
DESCRIPTION = {
    "vgg": "VGG-style, 6 convs + 2 FC, ReLU, average pooling",
    "resnet": "ResNet-style, 13 convs + FC, ReLU, residual adds, max pooling",
    "effnet": "EfficientNet-style, 5 MBConv blocks, SiLU, sigmoid-gated squeeze-excitation",
    "gelu": "ConvNeXt-style, 5 blocks, GELU, residual adds",
}


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels and horizontal flips (seeded)."""
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = nn.functional.pad(x, (2, 2, 2, 2), value=float(x.min()))
    dx, dy = torch.randint(0, 5, (2,), generator=gen).tolist()
    return padded[:, :, dy:dy + 28, dx:dx + 28]


def accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(torch.from_numpy(x[i:i + 1000])).argmax(1) for i in range(0, len(x), 1000)])
    return float((pred.numpy() == y).mean())


def train(name: str, seed: int = SEED) -> tuple[nn.Module, float, float]:
    """The trained network, its test accuracy and the training seconds."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xtr, ytr = fashion_data.load("train")
    xte, yte = fashion_data.load("test")
    net = NETS[name]().to(memory_format=torch.channels_last)  # faster depthwise convolutions on the CPU
    epochs = EPOCHS[name]
    steps = epochs * (len(xtr) // BATCH)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    xt, yt = torch.from_numpy(xtr).contiguous(memory_format=torch.channels_last), torch.from_numpy(ytr)
    start = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(xt), generator=gen)
        for i in range(len(xt) // BATCH):
            idx = order[i * BATCH:(i + 1) * BATCH]
            loss = nn.functional.cross_entropy(net(_augment(xt[idx], gen)), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"{name}: epoch {epoch + 1}/{epochs} loss {loss.item():.3f} "
              f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    return net, accuracy(net, xte, yte), seconds


def export(net: nn.Module, path: Path) -> None:
    net.eval().to(memory_format=torch.contiguous_format)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(net, (torch.zeros(1, 1, 28, 28),), str(tmp), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)
    tmp.replace(path)


def network(name: str, retrain: bool = False) -> tuple[Path, dict[str, object]]:
    """(ONNX path, facts) of a trained network, training it when it is not cached (or retrain)."""
    path, facts_path, weights = CACHE / f"{name}.onnx", CACHE / f"{name}.json", CACHE / f"{name}.pt"
    if retrain or not (path.is_file() and facts_path.is_file() and weights.is_file()):
        net, acc, seconds = train(name)
        export(net, path)
        torch.save(net.state_dict(), weights)
        params = sum(p.numel() for p in net.parameters())
        facts_path.write_text(json.dumps({"name": name, "description": DESCRIPTION[name], "torch_accuracy": acc,
                                          "train_seconds": seconds, "epochs": EPOCHS[name], "seed": SEED,
                                          "parameters": params, "torch": torch.__version__}, indent=1))
    return path, json.loads(facts_path.read_text())


def trained(name: str) -> nn.Module:
    """The trained torch network (eval mode), for the peer converter."""
    network(name)
    net = NETS[name]()
    net.load_state_dict(torch.load(CACHE / f"{name}.pt", weights_only=True))
    return net.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default=",".join(NETS))
    parser.add_argument("--retrain", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    for name in args.nets.split(","):
        path, facts = network(name, args.retrain)
        print(f"{name}: {path} test accuracy {100 * facts['torch_accuracy']:.2f}% ({facts['parameters']} params, "
              f"{facts['train_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
