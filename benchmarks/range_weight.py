"""How much each calibrated fit should weigh the whole range against the calibration samples (--range-weight).

A calibrated fit minimises the squared error on the site's calibration samples plus, with a share of the loss
(--range-weight, 0.01 by default), on a uniform grid over the site's whole calibrated range [lo, hi]. The range
is the exact min and max of every value seen, often many standard deviations out, so the grid asks the gate to
resolve values the data hardly has, at the cost of resolution where it is. This benchmark converts at weights
0.01, 0.001 and 0:

- fashion: the compensation issue's four Fashion-MNIST networks at their target K, one gate per site and per
  channel, seeds 0..N-1 (the calibration's draw and the fits' search; the same 2,000 calibration images),
  weight reconstruction on (convert's default); full 10,000-image test set (inputs like the calibration data).
- pypi: NudeNet and the PP-OCR pipeline as pypi_models.py converts and judges them (mostly on images unlike
  the calibration images: other photographs, a scanned page against rendered ones; the OCR's 24 more pages are
  rendered as its calibration pages are).

    .venv/bin/python benchmarks/range_weight.py [--part fashion|pypi|all] [--seeds 3] [--write]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pypi_sweep  # noqa: E402
from bias_correction import ann_test, measure  # noqa: E402
from fashion_k import calibration_images  # noqa: E402
from fit_spread import table  # noqa: E402
from results import machine, write_section  # noqa: E402

from amos_onnx.options import FitOptions  # noqa: E402
from amos_onnx.pipeline import fit_plan, plan  # noqa: E402

NETS = ("vgg:4", "resnet:4", "effnet:6", "gelu:5")
WEIGHTS = (0.01, 0.001, 0.0)
MODES = (("one gate per site", False), ("per channel", True))


def network(name: str, k: int, seeds: int, folder: Path) -> list[dict[str, object]]:
    """One row per mode and weight: each seed's points below the ANN, KL and spikes per gate."""
    path, test, ann = ann_test(name)
    runs: dict[tuple[str, float], list[tuple[float, float, float]]] = {}
    for seed in range(seeds):
        for mode, per_channel in MODES:
            q = plan(path, calib={"image": calibration_images()}, seed=seed, per_channel=per_channel)
            for weight in WEIGHTS:
                fits, _ = fit_plan(q, FitOptions(k=k, seed=seed, per_channel=per_channel, range_weight=weight))
                row = measure(q, fits, True, test, folder)
                run = (100 * (ann - float(row["accuracy"])), 1000 * float(row["kl"]),  # type: ignore[arg-type]
                       float(row["spikes"]))  # type: ignore[arg-type]
                runs.setdefault((mode, weight), []).append(run)
                print(f"{name} K={k} {mode} weight {weight} seed {seed}: {run[0]:.2f} below, KL {run[1]:.1f}, "
                      f"{run[2]:.3f} spikes/gate", flush=True)
    return [{"net": name, "ann": ann, "k": k, "mode": mode, "weight": weight, "runs": runs[(mode, weight)]}
            for mode, _ in MODES for weight in WEIGHTS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("fashion", "pypi", "all"), default="all")
    parser.add_argument("--nets", nargs="*", default=list(NETS), help="NAME:K per network")
    parser.add_argument("--seeds", type=int, default=3, help="fit seeds 0..N-1")
    parser.add_argument("--write", action="store_true", help="replace this benchmark's sections of RESULTS.md")
    args = parser.parse_args()
    weights = ", ".join(str(w) for w in WEIGHTS)
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("fashion", "all"):
            rows: list[dict[str, object]] = []
            for spec in args.nets:
                name, k = spec.split(":")
                rows += network(name, int(k), args.seeds, Path(tmp))
            if args.write:
                write_section("range_weight_fashion", "\n".join([
                    "## The range's weight in calibrated fits: Fashion-MNIST", "",
                    f"`benchmarks/range_weight.py --part fashion --nets {' '.join(args.nets)} --seeds {args.seeds} "
                    f"--write` ({machine()}): convert --range-weight {weights} (0.01 is the default), --seed 0 to "
                    f"{args.seeds - 1}, calibrated on fashion_k.py's 2,000 training images, convert's own fits (the "
                    "focus on) with weight reconstruction (convert's default), one gate per site or per channel "
                    "(--per-channel); full 10,000-image test set, native op. KL: of the spiking softmax from the "
                    "ANN's, per test image.", "", *table(rows, (("gates", "mode"), ("--range-weight", "weight")))]))
        if args.part in ("pypi", "all"):
            lines = pypi_sweep.rows(Path(tmp), "--range-weight",
                                    [(str(w), {"range_weight": w}) for w in WEIGHTS])
            if args.write:
                write_section("range_weight_pypi", "\n".join([
                    "## The range's weight in calibrated fits: real models from PyPI wheels", "",
                    f"`benchmarks/range_weight.py --part pypi --write` ({machine()}): pypi_models.py's NudeNet and "
                    f"PP-OCR conversions and judgements (see that section) with convert --range-weight {weights} "
                    "(0.01 is the default), seed 0, convert's defaults otherwise. NudeNet's images and page.png (a "
                    "scan) are unlike the calibration images; the 24 more pages are rendered as the calibration pages "
                    "are.", "", *lines]))


if __name__ == "__main__":
    main()
