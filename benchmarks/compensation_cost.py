"""Peak memory and wall time of calibrated conversions of the PyPI models with the compensation off and on.

    .venv/bin/python benchmarks/compensation_cost.py [--samples 64] [--chains C] [--write]

NudeNet (320x320), PP-OCRv4 det (640x640) and rec (48x320), calibrated on conversion_speed.py's folders of the
natural size (photos with seeded crops, rendered text pages and lines), each converted four ways with convert's
defaults otherwise (focus on): plain, --bias-correction, --bias-correction --sequential and --reconstruct. Every
conversion runs in a fresh process (large_model.measure; its wall time counts amos-onnx's import); its peak memory
is the largest resident set of that process and of the fit workers it forks, so the ratios compare like with like
within one run. Each compensation's note (what it did) follows the table. With --chains C (2 or more) the conversions
are plain and --reconstruct (convert's default), each with one chain and with C chains (convert --chains C), against
the plain one-chain conversion, in a section of their own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pypi_models  # noqa: E402
from conversion_speed import PPOCR, line_folder, photo_folder  # noqa: E402
from large_model import measure  # noqa: E402
from results import machine, write_section  # noqa: E402

from amos_onnx.data.images import ImageOptions  # noqa: E402

MODES = {"plain": {"reconstruct": False}, "--bias-correction": {"bias_correction": True},
         "--bias-correction --sequential": {"bias_correction": True, "sequential": True},
         "--reconstruct": {"reconstruct": True}}


def modes(chains: int) -> dict[str, dict[str, object]]:
    """The conversions of each model by name (plain first: the others are compared with it)."""
    if chains == 1:
        return MODES
    return {"plain": MODES["plain"], f"plain --chains {chains}": {**MODES["plain"], "chains": chains},
            "--reconstruct": MODES["--reconstruct"],
            f"--reconstruct --chains {chains}": {**MODES["--reconstruct"], "chains": chains}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--chains", type=int, default=1,
                        help="also convert with convert's --chains C (2 or more: a section of its own)")
    parser.add_argument("--write", action="store_true", help="write the results into benchmarks/RESULTS.md")
    args = parser.parse_args()
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pages = work / "pages"
        pypi_models.text_images(pages, args.samples, seed=0)
        cases = [("NudeNet YOLOv8n, 320x320", pypi_models.NUDENET, photo_folder(work / "photos", args.samples),
                  ImageOptions(size=(320, 320))),
                 ("PP-OCRv4 det, 640x640", pypi_models.OCR_DET, pages, ImageOptions(size=(640, 640), **PPOCR)),
                 ("PP-OCRv4 rec, 48x320", pypi_models.OCR_REC, line_folder(work / "rec", args.samples, (48, 320)),
                  ImageOptions(size=(48, 320), **PPOCR))]
        for name, spec, folder, images in cases:
            model = pypi_models.model_file(*spec)
            measured = {}
            for mode, options in modes(args.chains).items():
                more = json.dumps({"images": dataclasses.asdict(images), "progress": False, **options})
                row = measure("convert", str(model), str(work / "out.onnx"), str(folder), more)
                measured[mode] = (row["seconds"], row["peak_bytes"] / 1024)
                notes += [f"- {name}, {mode}: {note}" for note in row["compensation"]]
                print(f"{name}, {mode}: {measured[mode][0]:.1f} s, peak {measured[mode][1] / 1024:.0f} MiB", flush=True)
            rows.append((name, measured))
    lines = [f"| {name} | {mode} | {seconds:.1f} | {seconds / measured['plain'][0]:.2f}x | {peak / 1024:.0f} | "
             f"{peak / measured['plain'][1]:.2f}x |"
             for name, measured in rows for mode, (seconds, peak) in measured.items()]
    chains = f" --chains {args.chains}" if args.chains > 1 else ""
    text = "\n".join([
        "## The compensation's cost: time and peak memory" + (f", {chains.strip()}" if chains else ""),
        "",
        f"`.venv/bin/python benchmarks/compensation_cost.py --samples {args.samples}{chains} --write` ({machine()}). "
        f"Calibrated conversions on {args.samples} samples of each model's natural size (conversion_speed.py's "
        "folders), convert's defaults otherwise (focus on), each in a fresh process (wall time from before amos-onnx's "
        "import); peak: the largest resident set of the process or of a fit worker it forked.",
        "",
        "| conversion | compensation | wall (s) | vs plain | peak memory (MiB) | vs plain |",
        "|---|---|---|---|---|---|",
        *lines,
        "",
        "What each compensation did (its note):",
        "",
        *notes,
    ])
    print(text)
    if args.write:
        write_section("compensation_cost" + chains.replace(" --", "_").replace(" ", "_"), text)


if __name__ == "__main__":
    main()
