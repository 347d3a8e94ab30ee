"""The calibration reservoir's two ways of drawing the same sample, over several calibration draws.

    .venv/bin/python benchmarks/reservoir_draws.py [--seeds 0,1,2,3] [--write]

A reservoir keeps a uniform sample of every value a site sees. Keyed: a uniform key for every value, the
smallest keys kept (the reservoir before amos-onnx drew keys only for candidates). Candidates (amos_onnx now):
keys only for the values that can enter, the same sample in distribution. Both on the Fashion-MNIST
EfficientNet-style network (benchmarks/fashion_nets.py), calibrated on fashion_k.py's 2,000 training images with
each calibration seed, converted at K=10 with --spike-penalty 0.002 and the focus (fitter seed 0), measured on
the 10,000 test images: how much the figures move from one calibration draw to the next, against the change of
method.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fashion_data  # noqa: E402
import fashion_k  # noqa: E402
import fashion_nets  # noqa: E402
import results  # noqa: E402

from amos_onnx.calibrate.reservoir import Reservoir  # noqa: E402
from amos_onnx.load import load_model  # noqa: E402
from amos_onnx.options import ConvertOptions, FitOptions  # noqa: E402
from amos_onnx.pipeline import fit_plan, plan, write  # noqa: E402

CANDIDATES = Reservoir._candidates


def keyed(self: Reservoir, n: int, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """A key for every value (the exact construction the candidates draw stands in for)."""
    return np.arange(n), self.rng.random(n)


def run(method: str, seeds: list[int], folder: Path) -> list[dict[str, float]]:
    Reservoir._candidates = keyed if method == "keyed" else CANDIDATES  # type: ignore[method-assign]
    path, _ = fashion_nets.network("effnet")
    xte, yte = fashion_data.load("test")
    ann = fashion_k.run_original(path, xte)
    calib = {"image": fashion_k.calibration_images()}
    rows = []
    for seed in seeds:
        p = plan(path, calib, ConvertOptions.of(seed=seed))
        fits, _ = fit_plan(p, FitOptions(k=10, seed=0, spike_penalty=0.002))
        write(p, folder / "out.onnx", fits)
        logits, spikes, _ = fashion_k.run_spiking(load_model(folder / "out.onnx"), xte)
        row = {"seed": seed, "accuracy": float(np.mean(logits.argmax(1) == yte)),
               "kl": fashion_k.divergence(ann, logits), "spikes": spikes, "calibrate": p.stages.seconds["calibrate"]}
        print(f"{method} calibration seed {seed}: {100 * row['accuracy']:.2f}%, KL {1000 * row['kl']:.1f}, "
              f"{spikes:.2f} spikes/gate, calibrate {row['calibrate']:.1f} s", flush=True)
        rows.append(row)
    Reservoir._candidates = CANDIDATES  # type: ignore[method-assign]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        by = {method: run(method, seeds, Path(tmp)) for method in ("keyed", "candidates")}
    lines = ["| reservoir | " + " | ".join(f"calibration seed {s}" for s in seeds) + " | mean |",
             "|---|" + "---|" * (len(seeds) + 1)]
    for method, rows in by.items():
        cells = [f"{100 * r['accuracy']:.2f}% / {1000 * r['kl']:.1f} / {r['spikes']:.2f}" for r in rows]
        mean = (f"{100 * np.mean([r['accuracy'] for r in rows]):.2f}% / {1000 * np.mean([r['kl'] for r in rows]):.1f}"
                f" / {np.mean([r['spikes'] for r in rows]):.2f}")
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {mean} |")
    print("\n".join(lines))
    if args.write:
        results.write_section("reservoir_draws", "\n".join([
            "## The calibration reservoir: keys for every value against keys for the candidates",
            "",
            f"`benchmarks/reservoir_draws.py --seeds {args.seeds} --write` ({results.machine()}; "
            f"{time.perf_counter() - start:.0f} s): the Fashion-MNIST EfficientNet-style network (ANN 90.31%) "
            "calibrated on fashion_k.py's 2,000 training images with each calibration seed, converted at K=10, "
            "--spike-penalty 0.002, with the focus, fitter seed 0. Cells: test accuracy / KL from the ANN's "
            "outputs (millinats per image) / spikes per gate. Keyed: a key for every value (the reservoir "
            "before the conversion-speed work); candidates: keys only for the values that can enter (now). Both "
            "draw the same sample in distribution; the calibration draw moves the figures as much as the method.",
            "", *lines]))


if __name__ == "__main__":
    main()
