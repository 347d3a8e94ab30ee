"""Bias correction on the Fashion-MNIST networks: accuracy, agreement with the ANN, KL divergence and spikes with
and without it, and what it costs.

    .venv/bin/python benchmarks/bias_correction.py [--nets vgg:3,4 resnet:3,4 effnet:6,8 gelu:5,6] [--spike-penalty P]
        [--write]

For each network of fashion_nets.py: one plan (calibrated on fashion_k.py's 2,000 training images, seed 0), then
at each K the first pass of fits (--focus-kicks 0, as fashion_k.py's calibrated curve) written twice, without
and with the bias correction (compensate.bias: measured on the plan's first kept calibration samples, up to 128), and
run on the full 10,000-image test set with the native op. On the ReLU networks the per-channel gates
(--per-channel) are measured with and without it too. The correction's seconds are its own stage's (the
fits are shared). Writes its section of RESULTS.md with --write.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fashion_data  # noqa: E402
import fashion_nets  # noqa: E402
from fashion_k import SEED, calibration_images, divergence, run_original, run_spiking  # noqa: E402
from results import machine, write_section  # noqa: E402

from amos_onnx.compensate.bias import SAMPLES  # noqa: E402
from amos_onnx.load import load_model  # noqa: E402
from amos_onnx.options import FitOptions  # noqa: E402
from amos_onnx.pipeline import Plan, compensate, fit_plan, plan, write  # noqa: E402

DEFAULT_NETS = ("vgg:3,4", "resnet:3,4", "effnet:6,8", "gelu:5,6")


def measure(p: Plan, fits: dict, corrected: bool, test: tuple[np.ndarray, np.ndarray, np.ndarray],  # type: ignore[type-arg]
            folder: Path) -> dict[str, object]:
    xte, yte, ann_logits = test
    start = time.perf_counter()
    compensation = compensate(p, fits) if corrected else None
    seconds = time.perf_counter() - start
    out = folder / "converted.onnx"
    write(p, out, fits, compensation=compensation)
    logits, spikes, _ = run_spiking(load_model(out), xte)
    out.unlink()
    return {"accuracy": float(np.mean(logits.argmax(1) == yte)),
            "agreement": float(np.mean(logits.argmax(1) == ann_logits.argmax(1))),
            "kl": divergence(ann_logits, logits), "spikes": spikes, "seconds": seconds,
            "notes": compensation.notes() if compensation else []}


def ann_test(name: str) -> tuple[Path, tuple[np.ndarray, np.ndarray, np.ndarray], float]:
    """A Fashion network's model file, its test set with the ANN's logits, and the ANN's accuracy."""
    path, _ = fashion_nets.network(name)
    xte, yte = fashion_data.load("test")
    ann_logits = run_original(path, xte)
    return path, (xte, yte, ann_logits), float(np.mean(ann_logits.argmax(1) == yte))


def baseline(name: str) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], float, Plan]:
    """A Fashion network's test set with the ANN's logits, the ANN's accuracy, and its calibrated plan."""
    path, test, ann = ann_test(name)
    return test, ann, plan(path, calib={"image": calibration_images()}, seed=SEED, bias_correction=True)  # bias


def network(name: str, ks: list[int], folder: Path, penalty: float = 0.0) -> list[dict[str, object]]:
    (xte, yte, ann_logits), ann, p = baseline(name)
    modes = [("one gate per site", p, False)]
    if all(s.activation is not None and s.activation.relu_like for s in p.sites if s.converts):
        by_channel = plan(p.model_path, calib={"image": calibration_images()}, seed=SEED, per_channel=True,
                          bias_correction=True)
        modes.append(("per channel", by_channel, True))
    rows = []
    for k in ks:
        for mode, q, per_channel in modes:
            start = time.perf_counter()
            fits, _ = fit_plan(q, FitOptions(k=k, seed=SEED, focus_kicks=0, per_channel=per_channel,
                                             spike_penalty=penalty))
            fit_seconds = time.perf_counter() - start
            for corrected in (False, True):
                row = measure(q, fits, corrected, (xte, yte, ann_logits), folder)
                rows.append({"net": name, "ann": ann, "k": k, "mode": mode, "corrected": corrected,
                             "fit_seconds": fit_seconds, **row})
                print(f"{name} K={k} {mode}{', corrected' if corrected else ''}: {100 * row['accuracy']:.2f}% "
                      f"(ANN {100 * ann:.2f}%), agreement {100 * row['agreement']:.2f}%, KL "
                      f"{1000 * row['kl']:.1f} mnat, {row['spikes']:.3f} spikes/gate, correction "
                      f"{row['seconds']:.1f} s (fits {fit_seconds:.1f} s)", flush=True)
    return rows


def _pair(plain: dict[str, object], fixed: dict[str, object], key: str, scale: float = 100.0,
          digits: int = 2) -> str:
    return f"{scale * float(plain[key]):.{digits}f} -> {scale * float(fixed[key]):.{digits}f}"  # type: ignore[arg-type]


def table(rows: list[dict[str, object]]) -> list[str]:
    lines = ["| network (ANN) | K | gates | accuracy, plain -> corrected (%) | agreement with the ANN (%) | "
             "KL (mnat/image) | spikes per gate | correction (s) | fits (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for plain, fixed in zip(rows[::2], rows[1::2]):
        lines.append(f"| {plain['net']} ({100 * float(plain['ann']):.2f}) | {plain['k']} | {plain['mode']} | "  # type: ignore[arg-type]
                     f"{_pair(plain, fixed, 'accuracy')} | {_pair(plain, fixed, 'agreement')} | "
                     f"{_pair(plain, fixed, 'kl', 1000.0, 1)} | {_pair(plain, fixed, 'spikes', 1.0, 3)} | "
                     f"{float(fixed['seconds']):.1f} | {float(plain['fit_seconds']):.1f} |")  # type: ignore[arg-type]
    return lines


Rows = list[dict[str, object]]


def run_nets(doc: str, network: Callable[[str, list[int], Path, float], Rows],
             write: Callable[[list[str], Rows, float], None]) -> None:
    """The command line both Fashion-MNIST compensation benchmarks share: --nets NAME:K,K,... (each network's rows
    from `network`, with --spike-penalty's value), then with --write `write(nets, rows, penalty)`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--nets", nargs="*", default=list(DEFAULT_NETS), help="NAME:K,K,... per network")
    parser.add_argument("--spike-penalty", type=float, default=0.0,
                        help="convert's --spike-penalty for every fit (a section of its own when not 0)")
    parser.add_argument("--write", action="store_true", help="replace this section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    rows: Rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.nets:
            name, ks = spec.split(":")
            rows += network(name, [int(k) for k in ks.split(",")], Path(tmp), args.spike_penalty)
    if args.write:
        write(args.nets, rows, args.spike_penalty)


def section(name: str, script: str, nets: list[str], penalty: float) -> tuple[str, str]:
    """A compensation benchmark's RESULTS.md section name and its command, with the spike penalty when not 0."""
    option = f" --spike-penalty {penalty:g}" if penalty else ""
    return (f"{name}_spike_penalty" if penalty else name,
            f"`benchmarks/{script} --nets {' '.join(nets)}{option} --write` ({machine()})")


def _write(nets: list[str], rows: Rows, penalty: float) -> None:
    name, command = section("bias_correction", "bias_correction.py", nets, penalty)
    write_section(name, "\n".join([
        "## Bias correction on Fashion-MNIST" + (f", spike penalty {penalty:g}" if penalty else ""),
        "",
        f"{command}: first pass of "
        "calibrated fits (--focus-kicks 0) on fashion_k.py's 2,000 calibration images, written without and with "
        f"--bias-correction (measured on the first {SAMPLES} calibration images, level by level), full "
        "10,000-image test set, native op. KL: of the spiking softmax from the ANN's, per test image. Correction: "
        "the compensate stage's wall time; fits: the fit stage's, shared by both.",
        "", *table(rows)]))


if __name__ == "__main__":
    run_nets(__doc__, network, _write)
