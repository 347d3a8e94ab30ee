"""The conversion report of the digits example, kept in examples/digits/report/ so its pictures can be seen.

    .venv/bin/python benchmarks/digits_report.py [--write]

Converts examples/digits/digits_cnn.onnx calibrated on its 1437 training digits (seed 0) and writes the
report measured on the 360 test digits: report.md, report.json and the pictures (matplotlib, the plot extra).
Paths in the report are relative to the repository (the converted model is kept in .cache/digits-report).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import machine, write_section  # noqa: E402

import amos_onnx  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DIGITS = Path("examples/digits")  # relative to ROOT, the working directory of main(): the report names these
FOLDER = DIGITS / "report"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update examples/digits/report and benchmarks/RESULTS.md")
    args = parser.parse_args()
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(".cache/digits-report/digits_spiking.onnx")
        out.parent.mkdir(parents=True, exist_ok=True)
        conversion = amos_onnx.convert(DIGITS / "digits_cnn.onnx", out, calib=DIGITS / "digits_train.npz", seed=0)
        target = FOLDER if args.write else Path(tmp) / "report"
        if target.exists():
            shutil.rmtree(target)
        data = amos_onnx.write_report(DIGITS / "digits_cnn.onnx", out, DIGITS / "digits_test.npz", target, conversion)
    t, orig = data["totals"], data["original"]
    rel = "../examples/digits/report"
    text = "\n".join([
        "## The digits example's report and pictures",
        "",
        f"Command: `.venv/bin/python benchmarks/digits_report.py --write` ({machine()}; calibrated on the 1437 "
        "training digits, seed 0, measured on the 360 test digits). Whole report: "
        f"[examples/digits/report/report.md]({rel}/report.md).",
        "",
        f"Spikes per input {t['spikes_per_input']:.0f} ({t['mean_spikes_per_gate']:.3f} per gate), synaptic operations "
        f"per input {t['synaptic_ops_per_input']:.4g} against the original's {orig['macs_per_input']:.4g} "
        f"multiply-accumulates, latency {t['latency_steps']} steps (pipelined: one input every "
        f"{t['pipelined_interval_steps']} steps).",
        "",
        *[f"![{p}]({rel}/{p})" for p in data["pictures"]],
    ])
    print(text)
    if args.write:
        write_section("digits_report", text)


if __name__ == "__main__":
    main()
