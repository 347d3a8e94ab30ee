"""Per-channel gates (convert --per-channel) against one gate per site, gate by gate, on Fashion-MNIST networks.

    .venv/bin/python benchmarks/per_channel.py [--nets effnet,gelu] [--k 10] [--write]

For each network of fashion_nets.py: one plan calibrated on the 2,000 training images fashion_k uses (seed 0),
keeping each value's channel; every site fitted at K with one gate and with per-channel gates (fit_sites, fitter
seed 0, error alone), then each site's gate error (MSE against its function) and mean spikes on its calibration
samples and on fresh inputs: the site's values on 500 other training images (not among the calibration ones, seed
1), run through the gates in their own [N, C, ...] layout. The fresh figures show whether the narrower per-channel
ranges hold on inputs the fit never saw.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fashion_data  # noqa: E402
import fashion_nets  # noqa: E402
from fashion_k import CALIBRATION_IMAGES, SEED, calibration_images, calibration_indices  # noqa: E402
from results import machine, write_section  # noqa: E402

from amos_onnx.calibrate.run import exposed  # noqa: E402
from amos_onnx.fit.site_fit import SiteFit  # noqa: E402
from amos_onnx.fit.sites import fit_sites  # noqa: E402
from amos_onnx.gate import sample_error  # noqa: E402
from amos_onnx.options import FitOptions  # noqa: E402
from amos_onnx.pipeline import plan  # noqa: E402
from amos_onnx.runtime import session  # noqa: E402

FRESH_IMAGES = 500
BATCH = 250


def fresh_images(n: int = FRESH_IMAGES) -> np.ndarray:
    """Training images outside fashion_k's calibration draw (seed 1)."""
    x, _ = fashion_data.load("train")
    used = set(calibration_indices(len(x)).tolist())
    order = [i for i in np.random.default_rng(1).permutation(len(x)) if i not in used]
    return x[np.array(order[:n])]


def site_values(path: Path, tensors: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    sess = session(exposed(onnx.load(path), dict.fromkeys(tensors, onnx.TensorProto.FLOAT)), native=False)
    runs = [sess.run(tensors, {"image": x[i:i + BATCH]}) for i in range(0, len(x), BATCH)]
    return {name: np.concatenate([r[j] for r in runs]) for j, name in enumerate(tensors)}


def gate_error(fit: SiteFit, func, v: np.ndarray) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    mse, _, spikes = sample_error(fit.params, func, v)
    return mse, spikes


def compare(name: str, k: int) -> dict[str, object]:
    path, facts = fashion_nets.network(name)
    p = plan(path, calib={"image": calibration_images()}, seed=SEED, per_channel=True)
    sites = [s for s in p.sites if s.converts and s.activation is not None]
    fits, seconds = {}, {}
    for mode in (False, True):
        start = time.perf_counter()
        fits[mode] = fit_sites(p.sites, p.reservoirs, FitOptions(k=k, seed=SEED, per_channel=mode))
        seconds[mode] = time.perf_counter() - start
    fresh = site_values(path, sorted({s.input for s in sites}), fresh_images())
    rows = []
    for s in sites:
        func = s.activation.func  # type: ignore[union-attr]
        one, per = fits[False][s.name], fits[True][s.name]
        rows.append({"site": s.name, "channels": s.channels, "calib": (one.mse, per.mse),
                     "spikes": (one.mean_spikes, per.mean_spikes),
                     "fresh": (gate_error(one, func, fresh[s.input]), gate_error(per, func, fresh[s.input]))})
        print(f"{name} {s.name}: calibration {one.mse:.3g} -> {per.mse:.3g}, fresh {rows[-1]['fresh'][0][0]:.3g} -> "
              f"{rows[-1]['fresh'][1][0]:.3g}", flush=True)
    return {"name": name, "description": facts["description"], "k": k, "rows": rows, "seconds": seconds}


def table(result: dict[str, object]) -> str:
    lines = [f"{result['name']} ({result['description']}), K={result['k']}: fitting {result['seconds'][False]:.0f} s "  # type: ignore[index]
             f"with one gate per site, {result['seconds'][True]:.0f} s per channel.", "",  # type: ignore[index]
             "| site | channels | MSE on calibration samples: one gate / per channel (ratio) | MSE on fresh inputs: "
             "one gate / per channel (ratio) | spikes per gate on fresh inputs: one gate / per channel |",
             "|---|---|---|---|---|"]
    ratios = {"calib": [], "fresh": []}  # type: ignore[var-annotated]
    for r in result["rows"]:  # type: ignore[attr-defined]
        (a, b), ((fa, sa), (fb, sb)) = r["calib"], r["fresh"]
        ratios["calib"].append(b / a)
        ratios["fresh"].append(fb / fa)
        lines.append(f"| {r['site']} | {r['channels']} | {a:.3g} / {b:.3g} ({b / a:.2f}) | {fa:.3g} / {fb:.3g} "
                     f"({fb / fa:.2f}) | {sa:.2f} / {sb:.2f} |")
    lines += ["", f"Median ratio over the {len(ratios['calib'])} sites: {np.median(ratios['calib']):.2f} on the "
              f"calibration samples, {np.median(ratios['fresh']):.2f} on fresh inputs (largest on fresh inputs: "
              f"{max(ratios['fresh']):.2f})."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="effnet,gelu")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    results = [compare(name, args.k) for name in args.nets.split(",")]
    text = ("## Per-channel gates against one gate per site\n\n"
            f"Command: `.venv/bin/python benchmarks/per_channel.py --write` ({machine()}; networks of "
            f"`benchmarks/fashion_nets.py`, seed 0; calibrated on fashion_k's {CALIBRATION_IMAGES:,} training images "
            f"(seed 0) keeping each value's channel; fitter seed 0, error alone; fresh inputs: the sites' values on "
            f"{FRESH_IMAGES} other training images, seed 1). Gate error: MSE of each site's gate against its "
            "function.\n\n" + "\n\n".join(table(r) for r in results))
    print(text)
    if args.write:
        write_section("per_channel", text)


if __name__ == "__main__":
    main()
