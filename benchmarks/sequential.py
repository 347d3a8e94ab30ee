"""Sequential refits (convert --sequential) on the Fashion-MNIST networks, beside the first pass and bias correction.

For each network of fashion_nets.py: one plan (calibrated on fashion_k.py's 2,000 training images, seed 0), the
first pass of calibrated fits at each K (--focus-kicks 0), then the same fits refitted sequentially
(compensate.sequential, on the plan's first kept calibration images, up to 128); each written without and with
--bias-correction and run on the full 10,000-image test set with the native op.

    .venv/bin/python benchmarks/sequential.py [--nets vgg:3,4 resnet:3,4 effnet:6,8 gelu:5,6] [--spike-penalty P]
        [--write]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bias_correction import baseline, measure, run_nets, section  # noqa: E402
from fashion_k import SEED  # noqa: E402
from results import write_section  # noqa: E402

from amos_onnx.compensate.bias import SAMPLES  # noqa: E402
from amos_onnx.compensate.sequential import sequential  # noqa: E402
from amos_onnx.options import FitOptions  # noqa: E402
from amos_onnx.pipeline import fit_plan  # noqa: E402

MODES = (("first pass", False, False), ("first pass + bias correction", False, True), ("sequential", True, False),
         ("sequential + bias correction", True, True))


def network(name: str, ks: list[int], folder: Path, penalty: float = 0.0) -> list[dict[str, object]]:
    test, ann, p = baseline(name)
    rows = []
    for k in ks:
        options = FitOptions(k=k, seed=SEED, focus_kicks=0, spike_penalty=penalty)
        first, _ = fit_plan(p, options)
        start = time.perf_counter()
        refitted, _ = sequential(p, first, options)
        seconds = time.perf_counter() - start
        for mode, refit, corrected in MODES:
            row = measure(p, refitted if refit else first, corrected, test, folder)
            rows.append({"net": name, "ann": ann, "k": k, "mode": mode, "refit_seconds": seconds if refit else 0.0,
                         **row})
            print(f"{name} K={k} {mode}: {100 * row['accuracy']:.2f}% (ANN {100 * ann:.2f}%), KL "
                  f"{1000 * row['kl']:.1f} mnat, {row['spikes']:.3f} spikes/gate", flush=True)
    return rows


def table(rows: list[dict[str, object]], last: str = "correction") -> list[str]:
    """The rows as a table; `last`: what the last column times (the compensate stage)."""
    lines = ["| network (ANN) | K | fits | accuracy (%) | below the ANN (points) | agreement with the ANN (%) | "
             f"KL (mnat/image) | spikes per gate | refits (s) | {last} (s) |", "|---" * 10 + "|"]
    for r in rows:
        ann, accuracy = 100 * float(r["ann"]), 100 * float(r["accuracy"])  # type: ignore[arg-type]
        lines.append(f"| {r['net']} ({ann:.2f}) | {r['k']} | {r['mode']} | {accuracy:.2f} | {ann - accuracy:.2f} | "
                     f"{100 * float(r['agreement']):.2f} | {1000 * float(r['kl']):.1f} | "  # type: ignore[arg-type]
                     f"{float(r['spikes']):.3f} | {float(r['refit_seconds']):.1f} | "  # type: ignore[arg-type]
                     f"{float(r['seconds']):.1f} |")  # type: ignore[arg-type]
    return lines


def _write(nets: list[str], rows: list[dict[str, object]], penalty: float) -> None:
    name, command = section("sequential", "sequential.py", nets, penalty)
    write_section(name, "\n".join([
        "## Sequential refits on Fashion-MNIST" + (f", spike penalty {penalty:g}" if penalty else ""),
        "",
        f"{command}: first pass of "
        "calibrated fits (--focus-kicks 0) on fashion_k.py's 2,000 calibration images, and the same fits "
        "refitted sequentially (--sequential: each gate, level by level, on the inputs it gets with the sites "
        f"before it spiking, against the original's outputs there; the first {SAMPLES} calibration images), each "
        "without and with --bias-correction; full 10,000-image test set, native op. KL: of the spiking softmax "
        "from the ANN's, per test image. Refits: the sequential stage's wall time; correction: the compensate "
        "stage's.",
        "", *table(rows)]))


if __name__ == "__main__":
    run_nets(__doc__, network, _write)
