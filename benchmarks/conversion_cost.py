"""Conversion time and peak memory versus model size: synthetic ResNet-style models of 1M to 100M parameters
and the real PyPI models.

    .venv/bin/python benchmarks/conversion_cost.py [--sizes 1,3,10,30,100] [--write]

Each synthetic model is a 3x3 stem and residual blocks (Conv 3x3, ReLU, Conv 3x3, Add, ReLU) of 256 channels
on an 8x8 input, with as many blocks as the size needs (1.18M parameters per block, weights normal, seed 0,
stored inside the .onnx file); every ReLU is a site. Each conversion runs in a fresh process (see
large_model.py): data-free, and calibrated on 8 random inputs (seed 1). The slope of a least-squares line
through (parameters, seconds) and (parameters, peak memory) is reported with each point's deviation from it.
The PyPI models (nudenet 320n, PP-OCRv4 det/rec, PP-OCR cls) are converted data-free the same way.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pypi_models  # noqa: E402
from large_model import measure  # noqa: E402
from results import machine, write_section  # noqa: E402

WIDTH, SIDE = 256, 8
PER_BLOCK = 2 * 9 * WIDTH * WIDTH + 2 * WIDTH


def build(path: Path, params: float, seed: int = 0) -> int:
    """A residual ReLU network with about `params` parameters; returns its exact parameter count."""
    rng = np.random.default_rng(seed)
    blocks = max(1, round((params - 9 * 3 * WIDTH) / PER_BLOCK))
    inits, nodes = [], []

    def conv(x: str, out: str, cin: int, name: str) -> None:
        w = rng.normal(0, np.sqrt(1.0 / (9 * cin)), (WIDTH, cin, 3, 3)).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(np.zeros(WIDTH, np.float32),
                                                                                       f"{name}.b")])
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [out], pads=[1, 1, 1, 1], name=name))

    conv("x", "stem", 3, "stem")
    nodes.append(helper.make_node("Relu", ["stem"], ["a0"], name="stem_relu"))
    for b in range(blocks):
        x = f"a{b}"
        conv(x, f"b{b}c1", WIDTH, f"b{b}c1")
        nodes.append(helper.make_node("Relu", [f"b{b}c1"], [f"b{b}r1"], name=f"b{b}relu1"))
        conv(f"b{b}r1", f"b{b}c2", WIDTH, f"b{b}c2")
        nodes.append(helper.make_node("Add", [f"b{b}c2", x], [f"b{b}s"], name=f"b{b}add"))
        nodes.append(helper.make_node("Relu", [f"b{b}s"], [f"a{b + 1}"], name=f"b{b}relu2"))
    graph = helper.make_graph(nodes, "resnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                              ["N", 3, SIDE, SIDE])],
                              [helper.make_tensor_value_info(f"a{blocks}", TensorProto.FLOAT,
                                                             ["N", WIDTH, SIDE, SIDE])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return sum(int(np.prod(t.dims)) for t in inits)


def slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    a, b = np.polyfit(np.asarray(xs), np.asarray(ys), 1)
    return float(a), float(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,3,10,30,100", help="millions of parameters")
    parser.add_argument("--pypi", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        np.savez(folder / "calib.npz", x=np.random.default_rng(1).normal(size=(8, 3, SIDE, SIDE)).astype(np.float32))
        for size in (float(s) for s in args.sizes.split(",")):
            model = folder / f"resnet_{size:g}M.onnx"
            params = build(model, size * 1e6)
            free = measure("convert", str(model), str(folder / "free.onnx"))
            cal = measure("convert", str(model), str(folder / "cal.onnx"), str(folder / "calib.npz"))
            rows.append((params, model.stat().st_size, free, cal))
            print(f"{params / 1e6:.1f}M params: data-free {free['seconds']:.1f} s {free['peak_bytes'] / 2**20:.0f} "
                  "MiB, "
                  f"calibrated {cal['seconds']:.1f} s {cal['peak_bytes'] / 2**20:.0f} MiB, {free['sites']} sites",
                  flush=True)
            model.unlink()
        real = []
        if args.pypi:
            for spec in (pypi_models.NUDENET, pypi_models.OCR_DET, pypi_models.OCR_CLS, pypi_models.OCR_REC):
                path = pypi_models.model_file(*spec)
                r = measure("convert", str(path), str(folder / "real.onnx"))
                real.append((spec[2].split("/")[-1], path.stat().st_size, r))
                print(f"{spec[2]}: {r['seconds']:.1f} s {r['peak_bytes'] / 2**20:.0f} MiB", flush=True)
    ps = [r[0] for r in rows]
    lines = [
        "## Conversion cost versus model size",
        "",
        f"Command: `.venv/bin/python benchmarks/conversion_cost.py --write` ({machine()}; synthetic ResNet-style "
        f"models, {WIDTH} channels on {SIDE}x{SIDE} inputs, weights seed 0 inside the .onnx file; calibrated on 8 "
        "random inputs, seed 1; each conversion in a fresh process, seconds including Python start-up and "
        "imports; peak RSS: the largest of the process's VmHWM and its forked fitting workers' ru_maxrss).",
        "",
        "| parameters | file | sites | data-free s | data-free peak | calibrated s | calibrated peak | "
        "calibrated peak / file |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for params, size, free, cal in rows:
        lines.append(f"| {params / 1e6:.1f}M | {size / 2**20:.0f} MiB | {free['sites']} | {free['seconds']:.1f} | "
                     f"{free['peak_bytes'] / 2**20:.0f} MiB | {cal['seconds']:.1f} | {cal['peak_bytes'] / 2**20:.0f} "
                     "MiB"
                     f" | {cal['peak_bytes'] / size:.2f} |")
    if len(rows) >= 2:
        fits = []
        for label, key, idx, scale, unit in (("data-free time", "seconds", 2, 1.0, "s"),
                                             ("calibrated time", "seconds", 3, 1.0, "s"),
                                             ("data-free peak memory", "peak_bytes", 2, 2**20, "MiB"),
                                             ("calibrated peak memory", "peak_bytes", 3, 2**20, "MiB")):
            ys = [r[idx][key] / scale for r in rows]
            a, b = slope(ps, ys)
            worst = max(abs(y - (a * p + b)) / max(y, 1e-9) for p, y in zip(ps, ys))
            fits.append(f"{label}: {a * 1e6:.3g} {unit} per million parameters + {b:.3g} {unit} "
                        f"(largest deviation of a point from the line: {100 * worst:.0f}%)")
        lines += ["", "Least-squares lines through the points:", ""] + [f"- {f}" for f in fits]
    if real:
        lines += ["", "The PyPI models of DESIGN.md, data-free:", "", "| model | file | sites | seconds | peak |",
                  "|---|---|---|---|---|"]
        for name, size, r in real:
            lines.append(f"| {name} | {size / 2**20:.1f} MiB | {r['sites']} | {r['seconds']:.1f} | "
                         f"{r['peak_bytes'] / 2**20:.0f} MiB |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section("conversion_cost", text)


if __name__ == "__main__":
    main()
