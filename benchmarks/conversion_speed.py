"""Where a calibrated conversion's time goes: stage by stage, on real models with calibration sets of realistic size.

    .venv/bin/python benchmarks/conversion_speed.py [--samples 256] [--chain 100,300,1000] [--write]

- The PyPI models (benchmarks/pypi_models.py: NudeNet's YOLOv8n, PP-OCRv4 det and rec, PP-OCR mobile cls), each
  calibrated on `--samples` images at its natural input size (NudeNet 320x320: scikit-image sample images and
  seeded crops of them; det 640x640: rendered text pages; rec 48x320 and cls 48x192: rendered text lines), with
  the focus and weight reconstruction on (convert's defaults). The stage times are the conversion report's
  (timing.Stages).
- A chain of ReLU sites (MatMul 16x16, then Relu, repeated), calibrated on 256 random rows: conversion time per
  site at each `--chain` length, to show how it grows with sites.
- The rec model at 64, 256 and 1,024 calibration lines: what grows with the calibration's size.

Each conversion runs in this process one after another, on the machine's cores (fits in AMOS_ONNX_JOBS worker
processes, one per CPU by default).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pypi_models  # noqa: E402
import results  # noqa: E402

import amos_onnx  # noqa: E402
from amos_onnx.data.dataset import open_data, read_ahead, sample_count  # noqa: E402
from amos_onnx.data.images import ImageOptions  # noqa: E402
from amos_onnx.data.inputs import model_layout, rows, sliceable  # noqa: E402
from amos_onnx.parallel import RUN_THREADS, side_by_side  # noqa: E402
from amos_onnx.runtime import session  # noqa: E402

SAMPLE_IMAGES = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "coffee.png", "coins.png",
                 "color.png", "grass.png", "gravel.png", "horse.png", "hubble_deep_field.jpg", "ihc.png",
                 "logo.png", "microaneurysms.png", "moon.png", "motorcycle_left.png", "page.png", "phantom.png",
                 "retina.jpg", "rocket.jpg", "text.png")
PPOCR = {"scale": 1 / 255, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}  # PP-OCR's normalisation
# The pipeline's stages in order (amos_onnx.pipeline); a table shows those its conversions ran
STAGES = ("load", "find", "calibrate", "budget", "fit", "focus", "sequential", "compensate", "rewrite", "save")


def photo_folder(folder: Path, count: int) -> Path:
    """`count` images: scikit-image's sample images and seeded crops and mirror images of them."""
    variants = -(-count // len(SAMPLE_IMAGES)) - 1
    pypi_models.image_folder(folder, SAMPLE_IMAGES, variants=variants)
    for extra in sorted(folder.iterdir())[count:]:
        extra.unlink()
    return folder


def line_folder(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> Path:
    """`count` rendered text lines of seeded random words, each on an image of (height, width) `size`."""
    from PIL import Image, ImageDraw, ImageFont

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    height, width = size
    for i in range(count):
        font = ImageFont.load_default(size=int(rng.integers(int(height * 0.5), int(height * 0.8))))
        paper = tuple(int(v) for v in rng.integers(190, 256, 3))
        ink = tuple(int(v) for v in rng.integers(0, 70, 3))
        image = Image.new("RGB", (width, height), paper)
        words = " ".join(rng.choice(pypi_models.WORDS, int(rng.integers(1, 5))))
        ImageDraw.Draw(image).text((int(rng.integers(2, 12)), int(height * 0.1)), words, fill=ink, font=font)
        image.save(folder / f"line_{i:04d}.png")
    return folder


def relu_chain(path: Path, sites: int, width: int = 16, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(sites):
        weight = (rng.normal(0, 1, (width, width)) * 1.4 / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{i}"))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"matmul{i}"),
                  helper.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", width])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def plain_pass(model: Path, calib: object, images: ImageOptions | None = None) -> float:
    """Seconds of one onnxruntime pass of the original model over the calibration data, read and preprocessed as
    the conversion reads it (the next batch read ahead), a sample per run where the batch dimension is free,
    the runs side by side on one thread each as the calibration runs them: the floor under the calibrate
    stage on this machine at this moment."""
    proto = onnx.load(str(model))
    data = open_data(calib, proto, images)
    sess = session(proto, native=False, folder=model.parent, threads=RUN_THREADS)
    one = sliceable(proto, data.axes)  # a row per run where the batch is free, as the calibration runs large rows
    start = time.perf_counter()
    with side_by_side() as map_:
        for batch in read_ahead(data.batches):
            feeds = [rows(batch, i, i + 1) for i in range(sample_count(batch))] if one else [batch]
            map_(lambda feed: sess.run(None, model_layout(feed, data.axes)), feeds)  # noqa: B023 (run here)
    return time.perf_counter() - start


def convert(model: Path, out: Path, calib: object, images: ImageOptions | None = None) -> dict[str, object]:
    plain = plain_pass(model, calib, images)
    start = time.perf_counter()
    report = amos_onnx.convert(model, out, calib, images=images, progress=False)
    total = time.perf_counter() - start
    fits = [s.fit_seconds for s in report.sites if s.fit_seconds is not None]
    return {"seconds": total, "stages": report.stage_seconds, "sites": report.converted, "plain": plain,
            "samples": report.calibration_samples, "slowest_fit": max(fits, default=0.0)}


def pypi_rows(work: Path, samples: int) -> list[tuple[str, dict[str, object]]]:
    nudenet = photo_folder(work / "photos", samples)
    pages = work / "pages"
    pypi_models.text_images(pages, samples, seed=0)
    rec_lines, cls_lines = line_folder(work / "rec", samples, (48, 320)), line_folder(work / "cls", samples, (48, 192))
    cases = [("NudeNet YOLOv8n, 320x320", pypi_models.NUDENET, nudenet, ImageOptions(size=(320, 320))),
             ("PP-OCRv4 det, 640x640", pypi_models.OCR_DET, pages, ImageOptions(size=(640, 640), **PPOCR)),
             ("PP-OCR cls, 48x192", pypi_models.OCR_CLS, cls_lines, ImageOptions(size=(48, 192), **PPOCR)),
             ("PP-OCRv4 rec, 48x320", pypi_models.OCR_REC, rec_lines, ImageOptions(size=(48, 320), **PPOCR))]
    rows = []
    for name, spec, folder, images in cases:
        row = convert(pypi_models.model_file(*spec), work / "out.onnx", folder, images)
        print(f"{name}: {_line(row)}", flush=True)
        rows.append((name, row))
    return rows


def _line(row: dict[str, object]) -> str:
    stages = row["stages"]
    assert isinstance(stages, dict)
    return (f"{row['seconds']:.1f} s, {row['sites']} sites, {row['samples']} samples, original's pass "
            f"{row['plain']:.1f} s; "
            + ", ".join(f"{s} {stages[s]:.1f}" for s in STAGES if s in stages))


def _table(rows: list[tuple[str, dict[str, object]]]) -> list[str]:
    shown = [s for s in STAGES if any(s in row["stages"] for _, row in rows)]  # type: ignore[operator]
    lines = ["| conversion | sites | samples | total (s) | original's pass (s) | " + " | ".join(shown)
             + " | slowest fit (s) |", "|---|---|---|---|---|" + "---|" * len(shown) + "---|"]
    for name, row in rows:
        stages = row["stages"]
        assert isinstance(stages, dict)
        cells = " | ".join(f"{stages[s]:.2f}" if s in stages else "-" for s in shown)
        lines.append(f"| {name} | {row['sites']} | {row['samples']} | {row['seconds']:.1f} | {row['plain']:.1f} | "
                     f"{cells} | {row['slowest_fit']:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--chain", default="100,300,1000", help="ReLU chain lengths, comma-separated")
    parser.add_argument("--write", action="store_true", help="replace this section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = pypi_rows(work, args.samples)
        chain_rows = []
        np.savez(work / "rows.npz", x=np.random.default_rng(1).normal(0, 1, (256, 16)).astype(np.float32))
        for n in (int(v) for v in args.chain.split(",")):
            row = convert(relu_chain(work / "chain.onnx", n), work / "out.onnx", work / "rows.npz")
            print(f"ReLU chain, {n} sites: {_line(row)}; {1000 * float(row['seconds']) / n:.0f} ms per site",
                  flush=True)
            chain_rows.append((f"ReLU chain, {n} sites ({1000 * float(row['seconds']) / n:.0f} ms per site)", row))
        size_rows = []
        for count in (64, 256, 1024):
            folder = line_folder(work / f"rec{count}", count, (48, 320), seed=2)
            row = convert(pypi_models.model_file(*pypi_models.OCR_REC), work / "out.onnx", folder,
                          ImageOptions(size=(48, 320), **PPOCR))
            print(f"rec on {count} lines: {_line(row)}", flush=True)
            size_rows.append((f"PP-OCRv4 rec, {count} lines", row))
    if args.write:
        results.write_section("conversion_speed", "\n".join([
            "## Conversion time by stage",
            "",
            f"`benchmarks/conversion_speed.py --samples {args.samples} --chain {args.chain} --write` "
            f"({results.machine()}); seconds of wall time per stage as the conversion report gives them "
            "(`convert --verbose` logs the same), calibrated, focus on and weight reconstruction (compensate; "
            "convert's defaults), fits in one worker "
            "process per core; \"original's pass\": one onnxruntime pass of the original model over the same data, "
            "read and run as the calibration does (the next batch read ahead, one run per core on one thread each), "
            "timed just before the conversion (the machine's speed at that moment: the calibrate stage cannot take "
            "less). Natural input sizes, calibration sets of rendered text and "
            "scikit-image's sample images with seeded crops; the ReLU chain is MatMul 16x16 + Relu repeated, on 256 "
            "random rows.",
            "", *_table(rows), "", *_table(chain_rows), "", *_table(size_rows)]))


if __name__ == "__main__":
    main()
