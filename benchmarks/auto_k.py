"""Automatic K against a fixed K on the digits example: same accuracy, fewer spikes?

    .venv/bin/python benchmarks/auto_k.py [--write]

Converts examples/digits/digits_cnn.onnx calibrated on its training split with
--k 10 and with --k auto (default --target-mse 1e-4), without compensation
(--no-reconstruct), validates both on the 360 test images, and prints accuracy,
mean spikes per gate and the K chosen per site.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import machine, write_section  # noqa: E402

import amos_onnx  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples/digits"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in (10, "auto"):
            out = Path(tmp) / f"k_{k}.onnx"
            start = time.perf_counter()
            report = amos_onnx.convert(DIGITS / "digits_cnn.onnx", out, calib=DIGITS / "digits_train.npz", k=k,
                                       reconstruct=False)  # the gates' K and fits alone: no compensation
            seconds = time.perf_counter() - start
            result = amos_onnx.validate(DIGITS / "digits_cnn.onnx", out, DIGITS / "digits_test.npz")
            ks = ", ".join(str(s.k) for s in report.sites)
            rows.append(f"| --k {k} | {ks} | {100 * (result.accuracy_original or 0):.2f}% | "
                        f"{100 * (result.accuracy_converted or 0):.2f}% | {result.mean_spikes_per_gate:.3f} | "
                        f"{seconds:.1f} |")
            print(rows[-1], flush=True)
    text = "\n".join([
        "## Automatic K on the digits example",
        "",
        f"Command: `.venv/bin/python benchmarks/auto_k.py --write` ({machine()}; calibrated on the 1437 training "
        "digits, tested on the other 360; --k auto picks per site the smallest K in 4..16 whose fit has MSE <= 1e-4 "
        "on the site's calibration samples; no compensation: --no-reconstruct).",
        "",
        "| mode | K per site | original | spiking | mean spikes per gate | convert s |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    print(text)
    if args.write:
        write_section("auto_k", text)


if __name__ == "__main__":
    main()
