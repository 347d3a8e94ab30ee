"""Conversion time of this checkout against another one (the code before a change, say), in one run.

    .venv/bin/python benchmarks/versus.py --source /path/to/other/checkout

Eight command-line conversions (the digits example calibrated; the Fashion-MNIST VGG at K=5, the
EfficientNet-style network at K=10 with the focus and data-free and at K=32 (beyond the library's K), the GELU
network at K=8 per channel, the ResNet at K=4 and the GELU network at K=5 per channel with sequential refits,
calibrated on 2,000 training images drawn with seed 0), each run alternately with the other checkout's amos_onnx
and this one's, twice; prints the best of two for each and their ratio. The machines are shared and noisy: only ratios
from one run are worth comparing. With --real, two real models from PyPI wheels too (conversion_speed.py's folders of
64 samples, convert's defaults: weight reconstruction): PP-OCRv4 rec on rendered text lines and NudeNet on sample
photos (about 4 minutes more).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fashion_data  # noqa: E402

ROOT = fashion_data.ROOT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="the other checkout")
    parser.add_argument("--work", type=Path, default=Path("/tmp"), help="a folder for its files (made if missing)")
    parser.add_argument("--real", action="store_true", help="PP-OCRv4 rec and NudeNet too")
    args = parser.parse_args()
    x, _ = fashion_data.load("train")
    pick = np.random.default_rng(0).choice(len(x), 2000, replace=False)
    args.work.mkdir(parents=True, exist_ok=True)
    calib = args.work / "fashion_calibration.npz"
    np.savez(calib, image=x[np.sort(pick)])
    nets, digits = ROOT / ".cache/fashion-nets", ROOT / "examples/digits"
    cases = [("digits calibrated", [digits / "digits_cnn.onnx", "--calib", digits / "digits_train.npz"]),
             ("vgg K=5 calibrated", [nets / "vgg.onnx", "--k", "5", "--calib", calib]),
             ("effnet K=10 calibrated, focus", [nets / "effnet.onnx", "--k", "10", "--calib", calib]),
             ("effnet data-free", [nets / "effnet.onnx", "--k", "10"]),
             ("effnet K=32 calibrated, focus", [nets / "effnet.onnx", "--k", "32", "--calib", calib]),
             ("gelu K=8 per-channel", [nets / "gelu.onnx", "--k", "8", "--calib", calib, "--per-channel"]),
             ("resnet K=4 sequential", [nets / "resnet.onnx", "--k", "4", "--calib", calib, "--sequential"]),
             ("gelu K=5 per-channel sequential",
              [nets / "gelu.onnx", "--k", "5", "--calib", calib, "--per-channel", "--sequential"])]
    if args.real:
        cases += real_cases(args.work)
    for name, (model, *options) in cases:
        seconds: dict[str, list[float]] = {"other": [], "this": []}
        for label, source in (("other", args.source), ("this", ROOT)) * 2:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "amos_onnx", "convert", str(model), str(args.work / "out.onnx"),
                            "-q", *map(str, options)], env={**os.environ, "PYTHONPATH": str(source.resolve())},
                           check=True, stdout=subprocess.DEVNULL, cwd=args.work)
            seconds[label].append(time.perf_counter() - start)
        other, this = min(seconds["other"]), min(seconds["this"])
        print(f"{name}: other {other:.1f} s, this {this:.1f} s, this/other {this / other:.2f}", flush=True)


def real_cases(work: Path) -> list[tuple[str, list[object]]]:
    """PP-OCRv4 rec on 64 rendered text lines and NudeNet on 64 sample photos, as conversion_speed.py converts
    them (convert's defaults), as command lines."""
    import conversion_speed
    import pypi_models

    norm = conversion_speed.PPOCR  # its scale is convert's default, 1/255
    ocr = ["--mean", ",".join(map(str, norm["mean"])), "--std", ",".join(map(str, norm["std"]))]
    lines = conversion_speed.line_folder(work / "rec_lines", 64, (48, 320))
    photos = conversion_speed.photo_folder(work / "photos", 64)
    return [("PP-OCRv4 rec, 64 lines", [pypi_models.model_file(*pypi_models.OCR_REC), "--calib", lines,
                                        "--image-size", "48x320", *ocr]),
            ("NudeNet, 64 photos", [pypi_models.model_file(*pypi_models.NUDENET), "--calib", photos,
                                    "--image-size", "320x320"])]


if __name__ == "__main__":
    main()
