"""The real PyPI models (pypi_models.py's NudeNet and PP-OCR pipeline, converted and judged as there) under
several option sets, a table row each: here K for every site, against convert's default K per activation
(NudeNet's SiLU K=16, its one sigmoid K=12; PP-OCR's composites and hard-swish K=16, hard-sigmoid K=12, ReLU
K=10). range_weight.py's pypi part makes its rows with the same function.

How far the spiking twins move from the originals when every gate gets more neurons: whether the boxes NudeNet
loses and the lines the OCR reads differently come from the gates' resolution (they would come back as K grows)
or are decisions at a threshold that any small change of the outputs flips.

    .venv/bin/python benchmarks/pypi_sweep.py [--ks default 24 32] [--chains 1] [--seeds 1] [--write]

--chains N converts every row with convert's --chains N (N circuits of K neurons side by side in each gate, the
latency still K) and writes a section of its own. --seeds N: a row per K and fit seed 0 .. N-1 (convert's --seed:
the calibration's draws and the fits' local search; the images are the same), since one line of page.png or one
box near NudeNet's score threshold can turn with the seed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pypi_models  # noqa: E402


def rows(folder: Path, header: str, variants: list[tuple[str, dict[str, object]]]) -> list[str]:
    """A markdown table: per variant (its label under `header`, convert's keywords), NudeNet's boxes against the
    original's and the PP-OCR pipeline's character error rates, with the conversions' seconds and NudeNet's mean
    spikes per gate (on its evaluation images)."""
    lines = [f"| {header} | NudeNet: boxes matched / the original's | precision | mean IoU | "
             "mean score difference | lost boxes' scores | NudeNet spikes per gate | PP-OCR: CER on the 5 images "
             "(page.png) | det / cls / rec alone | CER on 24 more pages | conversion s (NudeNet; det, cls, rec) |",
             "|---" * 11 + "|"]
    for index, (label, options) in enumerate(variants):
        nude = pypi_models.run_nudenet(folder / f"nudenet-{index}", **options)  # type: ignore[arg-type]
        ocr = pypi_models.run_ocr(folder / f"ocr-{index}", more_pages=pypi_models.OCR_MORE_PAGES, **options)
        boxes: pypi_models.BoxMatch = nude["boxes"]  # type: ignore[assignment]
        pages: list[dict[str, object]] = ocr["pages"]  # type: ignore[assignment]
        page = next(p for p in pages if p["image"] == "page.png")
        alone: dict[str, float] = ocr["alone"]  # type: ignore[assignment]
        more: dict[str, float] = ocr["more"]  # type: ignore[assignment]
        seconds: dict[str, float] = ocr["seconds"]  # type: ignore[assignment]
        lost = ", ".join(f"{s:.3f}" for s in sorted(boxes.missed)) or "-"
        lines.append(
            f"| {label} | {boxes.matched} / {boxes.original} | {boxes.precision:.3f} | {np.mean(boxes.ious):.3f} | "
            f"{np.mean(boxes.score_diffs):.3f} | {lost} | {nude['validation'].mean_spikes_per_gate:.2f} | "  # type: ignore[attr-defined]
            f"{float(ocr['cer']):.3f} ({page['distance']} of {len(str(page['original']))}) | "  # type: ignore[arg-type]
            f"{alone['det']:.3f} / {alone['cls']:.3f} / {alone['rec']:.3f} | {more['cer']:.3f} | "
            f"{float(nude['seconds']):.0f}; {', '.join(f'{seconds[m]:.0f}' for m in ('det', 'cls', 'rec'))} |")  # type: ignore[arg-type]
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    from results import machine, write_section

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", nargs="+", default=["default", "24", "32"],
                        help="K for every site per row ('default': convert's K per activation)")
    parser.add_argument("--chains", type=int, default=1, help="convert's --chains for every row")
    parser.add_argument("--seeds", type=int, default=1, help="a row per K and convert --seed 0 .. N-1")
    parser.add_argument("--write", action="store_true", help="replace this benchmark's section of RESULTS.md")
    args = parser.parse_args()
    chains = {"chains": args.chains} if args.chains != 1 else {}
    variants = [(k if args.seeds == 1 else f"{k}, seed {seed}",
                 {**chains, **({} if k == "default" else {"k": int(k)}), **({"seed": seed} if seed else {})})
                for k in args.ks for seed in range(args.seeds)]
    with tempfile.TemporaryDirectory() as tmp:
        lines = rows(Path(tmp), "K", variants)
    if args.write:
        flag = f" --chains {args.chains}" if chains else ""
        write_section("pypi_sweep" + flag.replace(" --", "_").replace(" ", "_"), "\n".join([
            "## Real pretrained models from PyPI wheels against K" + flag.replace(" --", ", --"), "",
            f"`benchmarks/pypi_sweep.py --ks {' '.join(args.ks)}{flag}"
            + (f" --seeds {args.seeds}" if args.seeds > 1 else "") + f" --write` ({machine()}): pypi_models.py's "
            "NudeNet and PP-OCR conversions and judgements (see that section)"
            + (f", every gate {args.chains} chains of K neurons (`--chains {args.chains}`)," if chains else "")
            + " with `--k` for every site, or convert's "
            "default K per activation (NudeNet's SiLU 16; PP-OCR's composites and hard-swish 16, hard-sigmoid 12, "
            f"ReLU 10), {'seed 0' if args.seeds == 1 else f'seeds 0-{args.seeds - 1}'}, convert's defaults otherwise "
            "(weight reconstruction). NudeNet's images and page.png "
            "(a scan) are unlike the calibration images; the 24 more pages are rendered as the calibration pages "
            "are.", "", *lines]))


if __name__ == "__main__":
    main()
