"""Latency of converted models as ratios to the original: function form vs the native AmosGate kernel.

    .venv/bin/python benchmarks/runtime.py [--reps 7] [--write]

Models: a ResNet-18-shaped CNN built in code (random He-initialised weights,
seed 0, 17 ReLU sites) at 1x3x224x224 and 8x3x224x224, and the digits example
(360 test images). Each converted model is the data-free conversion (ReLU K=10).
The three variants run round-robin in one process, `reps` times each after a
warm-up, with 1 and with 2 intra-op threads; the figure is the ratio of medians.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import machine, write_section  # noqa: E402

import amos_onnx  # noqa: E402
from amos_onnx.runtime import native_library, session  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


class _Builder:
    """Conv/Relu/Add/pool graph building with seeded He-initialised weights."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}"

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int, relu: bool) -> str:
        w, b, y = self.name("w"), self.name("b"), self.name("conv")
        std = np.sqrt(2.0 / (cin * k * k))
        self.inits += [
            numpy_helper.from_array((self.rng.standard_normal((cout, cin, k, k)) * std).astype(np.float32), w),
            numpy_helper.from_array(np.zeros(cout, np.float32), b),
        ]
        pad = k // 2
        self.nodes.append(helper.make_node("Conv", [x, w, b], [y], name=y, kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[pad] * 4))
        return self.relu(y) if relu else y

    def relu(self, x: str) -> str:
        y = self.name("relu")
        self.nodes.append(helper.make_node("Relu", [x], [y], name=y))
        return y

    def block(self, x: str, cin: int, cout: int, stride: int) -> str:
        h = self.conv(x, cin, cout, 3, stride, True)
        h = self.conv(h, cout, cout, 3, 1, False)
        skip = x if stride == 1 and cin == cout else self.conv(x, cin, cout, 1, stride, False)
        y = self.name("add")
        self.nodes.append(helper.make_node("Add", [h, skip], [y], name=y))
        return self.relu(y)


def resnet18_shaped(seed: int = 0) -> onnx.ModelProto:
    """ResNet-18's layer shapes (11.7M parameters) with random weights: a latency workload, not a classifier."""
    b = _Builder(seed)
    x = b.conv("input", 3, 64, 7, 2, True)
    pooled = b.name("maxpool")
    b.nodes.append(helper.make_node("MaxPool", [x], [pooled], name=pooled, kernel_shape=[3, 3], strides=[2, 2],
                                    pads=[1, 1, 1, 1]))
    x, cin = pooled, 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        x = b.block(x, cin, cout, stride)
        x = b.block(x, cout, cout, 1)
        cin = cout
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    b.nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
    b.inits += [
        numpy_helper.from_array((b.rng.standard_normal((512, 1000)) * 0.04).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(1000, np.float32), "fc_b"),
    ]
    b.nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc"))
    graph = helper.make_graph(b.nodes, "resnet18_shaped",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])], b.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def measure(paths: dict[str, Path], feed: dict[str, np.ndarray], threads: int, reps: int) -> dict[str, float]:
    """Median seconds per run of each variant, run round-robin so machine noise hits all alike."""
    sessions = {
        "original": session(paths["original"], native=False, threads=threads),
        "function": session(paths["converted"], native=False, threads=threads),
        "native": session(paths["converted"], native=True, threads=threads),
    }
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for sess in sessions.values():
        sess.run(None, feed)  # warm-up
    for _ in range(reps):
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, feed)
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    if native_library() is None:
        sys.exit("the native library is not built: run 'make ops' first")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        onnx.save(resnet18_shaped(), str(folder / "resnet.onnx"))
        amos_onnx.convert(folder / "resnet.onnx", folder / "resnet_spiking.onnx")
        amos_onnx.convert(ROOT / "examples/digits/digits_cnn.onnx", folder / "digits_spiking.onnx",
                          calib=ROOT / "examples/digits/digits_train.npz")
        resnet = {"original": folder / "resnet.onnx", "converted": folder / "resnet_spiking.onnx"}
        digits = {"original": ROOT / "examples/digits/digits_cnn.onnx", "converted": folder / "digits_spiking.onnx"}
        rng = np.random.default_rng(0)
        workloads = [
            ("ResNet-18-shaped, 1x3x224x224", resnet, {"input": rng.standard_normal((1, 3, 224, 224), np.float32)}),
            ("ResNet-18-shaped, 8x3x224x224", resnet, {"input": rng.standard_normal((8, 3, 224, 224), np.float32)}),
            ("digits CNN, 360x1x8x8", digits, {"image": np.load(ROOT / "examples/digits/digits_test.npz")["image"]}),
        ]
        for label, paths, feed in workloads:
            for threads in (1, 2):
                t = measure(paths, feed, threads, args.reps)
                rows.append((label, threads, t))
                print(f"{label}, {threads} thread(s): original {1000 * t['original']:.1f} ms, "
                      f"native x{t['native'] / t['original']:.2f}, function x{t['function'] / t['original']:.2f}",
                      flush=True)
    lines = [
        "## Runtime: converted model latency as a ratio to the original",
        "",
        f"Command: `.venv/bin/python benchmarks/runtime.py --write` ({machine()}; onnxruntime CPU, "
        f"median of {args.reps} round-robin runs after a warm-up; ResNet-18-shaped model with random weights, "
        "seed 0, data-free ReLU gates K=10; digits example calibrated on its training split).",
        "",
        "| workload | threads | original ms | native op / original | function form / original |",
        "|---|---|---|---|---|",
    ]
    for label, threads, t in rows:
        lines.append(f"| {label} | {threads} | {1000 * t['original']:.1f} | {t['native'] / t['original']:.2f} | "
                     f"{t['function'] / t['original']:.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section("runtime", text)


if __name__ == "__main__":
    main()
