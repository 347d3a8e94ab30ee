"""Digits CNN per activation: original vs spiking test accuracy after a calibrated conversion.

    .venv/bin/python benchmarks/digits_activations.py [--activations relu,elu,...] [--write]

Trains the examples/digits CNN once per activation (torch, seed 0, 80/20 split),
exports it with torch.onnx.export(dynamo=False, opset 17), and for GELU, SiLU,
Mish and HardSwish also with dynamo=True (opset 20), converts it with
calibration on the training split (no compensation: --no-reconstruct), validates on the 360 test images, and prints
one row per network. --write puts the table into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples/digits"))

import train as digits  # noqa: E402
from results import machine, write_section  # noqa: E402

import amos_onnx  # noqa: E402

ACTIVATIONS = ["relu", "leakyrelu", "elu", "selu", "softplus", "sigmoid", "tanh", "hardsigmoid", "hardswish", "relu6"]
# Both exporters: TorchScript writes GELU as Div/Erf/Add/Mul/Mul and Mish as Softplus/Tanh/Mul, dynamo single ops.
EXPORTED_BOTH_WAYS = ["gelu", "silu", "mish", "hardswish"]
ACTIVATION_OPS = {"Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "Tanh", "Softplus",
                  "Softsign", "HardSwish", "Gelu", "Mish", "Erf", "Clip", "ThresholdedRelu"}


@dataclass(frozen=True)
class Row:
    activation: str
    exporter: str
    ops: str
    original: float
    spiking: float
    spikes: float
    convert_seconds: float
    native: bool
    left: int  # original activation ops still in the converted graph


def run(activation: str, folder: Path, seed: int = 0, dynamo: bool = False) -> Row:
    """Train, export, convert with calibration and validate one activation's network."""
    net, _ = digits.train(activation, seed)
    onnx_path = folder / f"{activation}{'_dynamo' if dynamo else ''}.onnx"
    digits.export(net, onnx_path, dynamo=dynamo)
    xtr, ytr, xte, yte = digits.split(seed)
    np.savez(folder / "train.npz", image=xtr)
    np.savez(folder / "test.npz", image=xte, labels=yte)
    spiking = onnx_path.with_name(onnx_path.stem + "_spiking.onnx")
    start = time.perf_counter()
    report = amos_onnx.convert(onnx_path, spiking, calib=folder / "train.npz", seed=seed,
                               reconstruct=False)  # the gates alone: no compensation
    seconds = time.perf_counter() - start
    result = amos_onnx.validate(onnx_path, spiking, folder / "test.npz")
    ops = ", ".join(report.kind_lines())
    left = sum(n.op_type in ACTIVATION_OPS for n in onnx.load(str(spiking)).graph.node)
    assert result.accuracy_original is not None and result.accuracy_converted is not None
    return Row(activation, "dynamo, opset 20" if dynamo else "TorchScript, opset 17", ops, result.accuracy_original,
               result.accuracy_converted, result.mean_spikes_per_gate or 0.0, seconds, result.native, left)


def table(rows: list[Row]) -> str:
    lines = [
        "| activation | exporter | sites | activation ops left | original | spiking | difference | spikes/gate | "
        "convert s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.activation} | {r.exporter} | {r.ops} | {r.left} | {100 * r.original:.2f}% | {100 * r.spiking:.2f}% "
            "| "
            f"{100 * (r.spiking - r.original):+.2f} | {r.spikes:.2f} | {r.convert_seconds:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--activations", default=",".join(ACTIVATIONS))
    parser.add_argument("--both-exporters", default=",".join(EXPORTED_BOTH_WAYS),
                        help="activations also exported with dynamo=True")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    runs = [(a, False) for a in args.activations.split(",") if a]
    runs += [(a, d) for a in args.both_exporters.split(",") if a for d in (False, True) if (a, d) not in runs]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for activation, dynamo in runs:
            rows.append(run(activation, Path(tmp), dynamo=dynamo))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = (
        "## Digits CNN per activation, calibrated conversion\n\n"
        f"Command: `.venv/bin/python benchmarks/digits_activations.py --write` "
        f"({machine()}; seed 0; "
        "trained on 1437 digits, calibrated on the same 1437, tested on the other 360; default K per activation, no "
        "compensation (--no-reconstruct); "
        f"converted models ran the {'native AmosGate op' if all(r.native for r in rows) else 'function form'} "
        "in onnxruntime).\n\n" + table(rows)
    )
    print(text)
    if args.write:
        write_section("digits_activations", text)


if __name__ == "__main__":
    main()
