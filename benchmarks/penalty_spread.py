"""The spike penalty spread by measured effect against spread by the share of gate evaluations alone.

convert --spike-penalty P spreads P over the sites by their share of the network's gate evaluations and, with
calibration and --penalty-by-effect, by how far each site's gate error moves the outputs (fit.penalty).
For each Fashion-MNIST network, each penalty and both spreads, conversions with seeds 0..N-1 (calibrated on
fashion_k.py's 2,000 training images, convert's defaults otherwise: weight reconstruction, the focus) are measured
on the full 10,000-image test set (native op): points below the ANN, KL, spikes per gate and the fit stage's wall
time (the measure of the sites' effects included). A spread is better where it is as accurate with fewer spikes.

    .venv/bin/python benchmarks/penalty_spread.py [--nets vgg:4:0.01,0.02,0.04 ...] [--seeds 3] [--per-channel]
                                                  [--range-weight W] [--write]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bias_correction import ann_test, measure  # noqa: E402
from fashion_k import calibration_images  # noqa: E402
from fit_spread import WITHIN, _spread  # noqa: E402
from results import machine, write_section  # noqa: E402

from amos_onnx.fit import sites as sites_module  # noqa: E402
from amos_onnx.fit.search import GRID_FLOOR  # noqa: E402
from amos_onnx.options import FitOptions  # noqa: E402
from amos_onnx.pipeline import fit_plan, plan  # noqa: E402

NETS = ("vgg:4:0.01,0.02,0.04", "resnet:4:0.01,0.02,0.04", "effnet:6:0.001,0.002,0.005", "gelu:5:0.001,0.002,0.005")
SPREADS = (("effect", True), ("share", False))


def network(spec: str, seeds: int, folder: Path, per_channel: bool, range_weight: float) -> list[dict[str, object]]:
    """One row per penalty and spread: each seed's points below the ANN, KL and spikes per gate, and the fit
    stages' mean wall time."""
    name, k, penalties = spec.split(":")
    path, test, ann = ann_test(name)
    rows = {(float(pen), spread): {"net": name, "ann": ann, "k": int(k), "penalty": pen, "spread": spread,
                                   "runs": [], "seconds": 0.0}
            for pen in penalties.split(",") for spread, _ in SPREADS}
    for seed in range(seeds):
        p = plan(path, calib={"image": calibration_images()}, seed=seed, per_channel=per_channel)
        for (penalty, spread), row in rows.items():
            options = FitOptions(k=int(k), seed=seed, per_channel=per_channel, range_weight=range_weight,
                                 spike_penalty=penalty, penalty_by_effect=dict(SPREADS)[spread])
            sites_module._REFITS.clear()  # each conversion makes its own error-only refits: comparable fit times
            fits, _ = fit_plan(p, options)
            row["seconds"] += (p.stages.seconds.get("fit", 0.0) + p.stages.seconds.get("focus", 0.0)) / seeds
            got = measure(p, fits, True, test, folder)
            run = (100 * (ann - float(got["accuracy"])), 1000 * float(got["kl"]), float(got["spikes"]))  # type: ignore[arg-type]
            row["runs"].append(run)  # type: ignore[attr-defined]
            print(f"{name} K={k} penalty {penalty:g} by {spread} seed {seed}: {run[0]:.2f} below, KL {run[1]:.1f}, "
                  f"{run[2]:.3f} spikes/gate, fit {p.stages.seconds.get('fit', 0.0):.1f} s", flush=True)
    return list(rows.values())


def table(rows: list[dict[str, object]]) -> list[str]:
    lines = ["| network (ANN) | K | --spike-penalty | spread by | points below the ANN: mean (least to most) | "
             f"KL (mnat/image) | spikes per gate | seeds within {WITHIN} points | fit stages (s) |",
             "|---" * 9 + "|"]
    for r in rows:
        runs: list[tuple[float, float, float]] = r["runs"]  # type: ignore[assignment]
        below, kl, spikes = (list(v) for v in zip(*runs))
        lines.append(f"| {r['net']} ({100 * float(r['ann']):.2f}) | {r['k']} | {r['penalty']} | "  # type: ignore[arg-type]
                     f"{'measured effect and share' if r['spread'] == 'effect' else 'share alone'} | "
                     f"{_spread(below, 2)} | {_spread(kl, 1)} | {_spread(spikes, 3)} | "
                     f"{sum(b <= WITHIN for b in below)} of {len(runs)} | {float(r['seconds']):.1f} |")  # type: ignore[arg-type]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="*", default=list(NETS), help="NAME:K:PENALTY,PENALTY,... per network")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--per-channel", action="store_true", help="convert's --per-channel")
    parser.add_argument("--range-weight", type=float, default=GRID_FLOOR, help="convert's --range-weight")
    parser.add_argument("--write", action="store_true", help="replace this section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.nets:
            rows += network(spec, args.seeds, Path(tmp), args.per_channel, args.range_weight)
    if not args.write:
        return
    flag = " --per-channel" if args.per_channel else ""
    flag += f" --range-weight {args.range_weight:g}" if args.range_weight != GRID_FLOOR else ""
    write_section("penalty_spread" + flag.replace(" --", "_").replace("-", "_").replace(" ", "_"), "\n".join([
        "## The spike penalty spread by measured effect" + flag.replace(" --", ", --"), "",
        f"`benchmarks/penalty_spread.py --nets {' '.join(args.nets)} --seeds {args.seeds}{flag} --write` "
        f"({machine()}): convert --spike-penalty P --seed 0 to {args.seeds - 1}{flag}, the penalty spread over the "
        "sites by their share of the gate evaluations and their measured effect on the outputs (--penalty-by-effect) "
        "or by the share alone (convert's default); calibrated on fashion_k.py's 2,000 training images, "
        "convert's defaults otherwise (weight reconstruction, the focus); full 10,000-image test set, native op. "
        "KL: of the spiking softmax from the ANN's, per test image. Fit stages: the fits (with the measures of the "
        "sites' effects) and the focus, mean over the seeds, each conversion making its own error-only refits.",
        "", *table(rows)]))


if __name__ == "__main__":
    main()
