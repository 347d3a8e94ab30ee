"""A synthetic model with 2.5 GiB of external weights: inspect time, and convert's peak memory against the
weight size (target: below 1.5x), data-free and calibrated.

    .venv/bin/python benchmarks/large_model.py [--layers 10] [--width 8192] [--write]

The model is 10 MatMul layers of 8192 x 8192 float32 weights (256 MiB each) with ReLU and SiLU (x*Sigmoid(x))
between them, its weights written straight to one external data file. Each measurement runs in a fresh
process and reports the largest peak resident memory of that process (VmHWM) and of the fitting processes
it forked (getrusage ru_maxrss of its children).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import machine, write_section  # noqa: E402

PROBE = """
import json, resource, sys, time
start = time.perf_counter()
import amos_onnx
action = sys.argv[1]
if action == "inspect":
    report = amos_onnx.inspect(sys.argv[2])
elif action == "convert":  # model, output[, calibration data[, convert's other keywords as JSON]]
    more = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    if "images" in more:
        more["images"] = amos_onnx.ImageOptions(**{key: tuple(value) if isinstance(value, list) else value
                                                   for key, value in more["images"].items()})
    report = amos_onnx.convert(sys.argv[2], sys.argv[3], calib=sys.argv[4] if len(sys.argv) > 4 else None, **more)
# This process's own peak: VmHWM of its address space. (ru_maxrss of SELF would also count the benchmark
# process it was forked from before exec.) Forked fitting workers: RUSAGE_CHILDREN.
own = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
peak = max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({"seconds": time.perf_counter() - start, "peak_bytes": peak * 1024,
                  "sites": len(report.sites), "summary": report.summary(),
                  "compensation": [n for n in getattr(report, "notes", [])
                                   if n.startswith(("bias correction", "weight reconstruction"))]}))
"""


def build(folder: Path, layers: int, width: int, seed: int = 0) -> tuple[Path, int]:
    """Write the model and its weights file chunk by chunk (never the whole weights in memory)."""
    rng = np.random.default_rng(seed)
    data = folder / "big.onnx.weights"
    inits, nodes, offset = [], [], 0
    with open(data, "wb") as handle:
        for i in range(layers):
            for row in range(0, width, 1024):
                block = rng.normal(0, 1 / np.sqrt(width), (min(1024, width - row), width)).astype(np.float32)
                handle.write(block.tobytes())
            size = width * width * 4
            tensor = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[width, width])
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(size))):
                tensor.external_data.add(key=key, value=value)
            inits.append(tensor)
            offset += size
            x = "x" if i == 0 else f"a{i - 1}"
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]))
            if i == layers - 1:
                nodes[-1].output[0] = "y"
            elif i % 2 == 0:
                nodes.append(helper.make_node("Relu", [f"m{i}"], [f"a{i}"]))
            else:
                nodes.append(helper.make_node("Sigmoid", [f"m{i}"], [f"s{i}"]))
                nodes.append(helper.make_node("Mul", [f"m{i}", f"s{i}"], [f"a{i}"]))
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(folder / "big.onnx"))
    return folder / "big.onnx", offset


def measure(*args: str) -> dict:
    """inspect MODEL or convert MODEL OUTPUT [CALIB [JSON]] in a fresh process: its seconds (from before the
    import), peak bytes (the process's VmHWM or a forked fitting worker's ru_maxrss), sites and summary."""
    out = subprocess.run([sys.executable, "-c", PROBE, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--width", type=int, default=8192)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        model, weight_bytes = build(folder, args.layers, args.width)
        built = time.perf_counter() - start
        np.savez(folder / "calib.npz", x=np.random.default_rng(1).normal(size=(16, args.width)).astype(np.float32))
        rows = [("inspect", measure("inspect", str(model))),
                ("convert, data-free", measure("convert", str(model), str(folder / "free.onnx"))),
                ("convert, calibrated on 16 samples", measure("convert", str(model), str(folder / "cal.onnx"),
                                                              str(folder / "calib.npz")))]
        written = (folder / "cal.onnx.data").stat().st_size
    gib = weight_bytes / 2**30
    lines = [
        "## A model with 2.5 GiB of external weights",
        "",
        f"Command: `.venv/bin/python benchmarks/large_model.py --write` ({machine()}; {args.layers} MatMul layers of "
        f"{args.width} x {args.width} float32, {gib:.2f} GiB of weights in one external file, ReLU and SiLU between "
        f"them, seed 0; written in {built:.0f} s; each figure from a fresh process, peak RSS: the largest of the "
        "process's VmHWM and its forked fitting workers' ru_maxrss).",
        "",
        "| run | seconds | peak memory | peak / weight size | sites |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['peak_bytes'] / 2**30:.2f} GiB | "
                     f"{r['peak_bytes'] / weight_bytes:.2f} | {r['sites']} |")
    lines += ["", f"The converted model's weights file beside it: {written / 2**30:.2f} GiB (copied in 16 MiB "
              "chunks; the weights never pass through the converter's memory as a whole). Calibration holds the "
              "weights once, inside onnxruntime's session."]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section("large_model", text)


if __name__ == "__main__":
    main()
