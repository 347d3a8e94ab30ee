"""How many calibration images weight reconstruction needs on a real detector: NudeNet's YOLOv8n (pypi_models.py)
converted with convert's defaults, calibrated on pypi_models.py's 12 images and on more.

    .venv/bin/python benchmarks/nudenet_calibration.py [--variants 0 4 6 8] [--seeds 3] [--write]

- Calibration: pypi_models.py's 6 sample images and 6 mosaics of LFW faces, plus V seeded crops or mirror images
  of each sample image (6 V more images); never the evaluation images.
- Each set converted with convert's defaults (weight reconstruction, which needs reconstruct.MIN_SAMPLES kept
  calibration samples and keeps at most focus.KEEP_BYTES of them) and with --no-reconstruct, at fitter seeds
  0 .. --seeds - 1: more images change the calibrated ranges and fits too, and the second mode shows that part alone.
- Judged as pypi_models.py judges NudeNet: the original's boxes (score >= 0.25 after NMS) matched by a spiking box of
  the same class at IoU >= 0.5, their mean IoU and mean score difference, on its 30 evaluation images; the
  reconstruction's note; the conversion's wall time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pypi_models  # noqa: E402

from amos_onnx.compensate.reconstruct import MIN_SAMPLES  # noqa: E402
from amos_onnx.fit.focus import KEEP_BYTES  # noqa: E402

MODES = {"reconstructed": {}, "--no-reconstruct": {"reconstruct": False}}


def run(variants: int, seed: int, mode: str) -> dict[str, object]:
    """One conversion and its judgement (pypi_models.run_nudenet)."""
    with tempfile.TemporaryDirectory() as tmp:
        r = pypi_models.run_nudenet(Path(tmp), calib_variants=variants, seed=seed, **MODES[mode])
    b, report = r["boxes"], r["report"]
    note = next((n for n in report.notes if n.startswith("weight reconstruction")), "")  # type: ignore[attr-defined]
    return {"images": report.calibration_samples, "matched": b.matched, "original": b.original,  # type: ignore[attr-defined]
            "converted": b.converted, "iou": float(np.mean(b.ious)), "score": float(np.mean(b.score_diffs)),  # type: ignore[attr-defined]
            "seconds": r["seconds"], "note": note}


def row(variants: int, mode: str, runs: list[dict[str, object]]) -> str:
    ious = [float(r["iou"]) for r in runs]  # type: ignore[arg-type]
    matched = ", ".join(f"{r['matched']}" for r in runs)
    return (f"| {runs[0]['images']} ({variants} per sample image) | {mode} | {matched} of {runs[0]['original']} "
            f"| {', '.join(f'{v:.3f}' for v in ious)} (mean {np.mean(ious):.3f}) "
            f"| {np.mean([float(r['score']) for r in runs]):.3f} "  # type: ignore[arg-type]
            f"| {np.median([float(r['seconds']) for r in runs]):.1f} | {runs[0]['note'] or '-'} |")  # type: ignore[arg-type]


def main() -> None:
    from results import machine, write_section

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, nargs="+", default=[0, 4, 6, 8],
                        help="crops or mirror images added per calibration sample image")
    parser.add_argument("--seeds", type=int, default=3, help="fitter seeds 0 .. N-1")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    rows = []
    for variants in args.variants:
        for mode in MODES:
            runs = [run(variants, seed, mode) for seed in range(args.seeds)]
            rows.append(row(variants, mode, runs))
            print(rows[-1], flush=True)
    command = " ".join(["benchmarks/nudenet_calibration.py", "--variants", *map(str, args.variants),
                        "--seeds", str(args.seeds), "--write"])
    section = "\n".join([
        "## NudeNet: how many calibration images weight reconstruction needs",
        "",
        f"`.venv/bin/python {command}` ({machine()}): NudeNet's YOLOv8n (pypi_models.py) calibrated on "
        "pypi_models.py's 12 images (6 sample images, 6 mosaics of LFW faces) and on those plus seeded crops or mirror "
        "images of each sample image, converted with convert's defaults (weight reconstruction: it refits layers only "
        f"with {MIN_SAMPLES} kept calibration samples or more, and keeps at most {KEEP_BYTES / 2**20:.0f} MiB of them, "
        f"{-(-KEEP_BYTES // (320 * 320 * 3 * 4))} images at 320x320) and with --no-reconstruct, at fitter seeds "
        f"0-{args.seeds - 1}; judged on pypi_models.py's 30 evaluation images (the original's boxes at score >= "
        f"{pypi_models.CONF} matched by a spiking box of the same class at IoU >= {pypi_models.MATCH_IOU}). Boxes "
        "and mean IoU per seed; score difference: mean |spiking - original| of the matched boxes' scores, over the "
        "seeds; seconds: the median conversion's wall time; the note: seed 0's.",
        "",
        "| calibration images | mode | boxes matched per seed | mean IoU per seed | score difference | seconds | "
        "weight reconstruction (seed 0) |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ])
    if args.write:
        write_section("nudenet_calibration", section)


if __name__ == "__main__":
    main()
