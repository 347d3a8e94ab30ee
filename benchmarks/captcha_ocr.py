"""ddddocr's captcha reader (a CNN of SiLU blocks, a bidirectional LSTM and a CTC head, from its PyPI wheel):
converted calibrated, with its LSTM written out as Scans of spiking gates and with the LSTM left as it is
(`--skip Tanh`), read against the original on rendered captchas, and timed.

Captchas: 4-6 seeded letters and digits in Pillow's default font on a light background with a few noise lines,
some blurred, read as ddddocr reads them (height 64, width in proportion, grey, pixels/255). Calibration: 64
captchas 160 pixels wide (seed 0); evaluation: 100 of varied width (seed 1). The text is the greedy CTC reading
of the output (the best class per step, repeats merged, blanks dropped), compared as class sequences.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pypi_models  # noqa: E402

import amos_onnx  # noqa: E402
from amos_onnx.options import FindOptions  # noqa: E402
from amos_onnx.rewrite.recurrent import lower_recurrent  # noqa: E402

DDDDOCR = ("ddddocr", "1.6.1", "ddddocr/common.onnx")
CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
CALIBRATION, EVALUATION = 64, 100
RUNS = 30  # timed runs of each model, one thread, after 3 to warm up


def captcha(rng: np.random.Generator, width: int | None = None) -> np.ndarray:
    """One rendered captcha as ddddocr feeds it: (1, 1, 64, width in proportion) float32 in [0, 1]."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    count = int(rng.integers(4, 7))
    text = "".join(rng.choice(list(CHARS), count))
    font = ImageFont.load_default(size=int(rng.integers(28, 44)))
    w = width or int(22 * count + rng.integers(10, 40))
    image = Image.new("RGB", (w, 64), tuple(int(v) for v in rng.integers(180, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 4))):
        ends = [tuple(int(v) for v in rng.integers(0, [w, 64])) for _ in range(2)]
        draw.line(ends, fill=tuple(int(v) for v in rng.integers(0, 200, 3)), width=1)
    draw.text((int(rng.integers(2, 10)), int(rng.integers(2, 14))), text,
              fill=tuple(int(v) for v in rng.integers(0, 90, 3)), font=font)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(0.6))
    grey = image.resize((int(image.size[0] * 64 / image.size[1]), 64), Image.Resampling.LANCZOS).convert("L")
    return (np.asarray(grey, np.float32) / 255.0)[None, None]


def greedy(output: np.ndarray) -> list[int]:
    """The greedy CTC reading of one output (steps first, classes last): best class per step, repeats merged,
    blank (0) dropped."""
    best = output.reshape(output.shape[0], -1).argmax(-1)
    return [int(c) for i, c in enumerate(best) if c != 0 and (i == 0 or c != best[i - 1])]


def read_all(model: object, inputs: list[np.ndarray], native: bool = True) -> list[list[int]]:
    sess = amos_onnx.session(model, native=native)
    return [greedy(sess.run(None, {"input1": x})[0]) for x in inputs]


def compare(reference: list[list[int]], got: list[list[int]]) -> dict[str, float]:
    distance = sum(pypi_models.edit_distance(a, b) for a, b in zip(reference, got))  # type: ignore[arg-type]
    return {"same": sum(a == b for a, b in zip(reference, got)), "cer": distance / max(sum(map(len, reference)), 1)}


def milliseconds(model: object, x: np.ndarray, native: bool) -> float:
    sess = amos_onnx.session(model, native=native, threads=1)
    for _ in range(3):
        sess.run(None, {"input1": x})
    start = time.perf_counter()
    for _ in range(RUNS):
        sess.run(None, {"input1": x})
    return (time.perf_counter() - start) / RUNS * 1000


def run(work: Path) -> dict[str, object]:
    model = pypi_models.model_file(*DDDDOCR)
    rng = np.random.default_rng(0)
    np.savez(work / "calib.npz", input1=np.concatenate([captcha(rng, 160) for _ in range(CALIBRATION)]))
    rng = np.random.default_rng(1)
    inputs = [captcha(rng) for _ in range(EVALUATION)]
    reference = read_all(model, inputs, native=False)
    rows = {}
    for label, skip in (("LSTM written out, spiking", None), ("LSTM left as it is (--skip Tanh)", {"Tanh"})):
        out = work / f"{'left' if skip else 'lowered'}.onnx"
        start = time.perf_counter()
        report = amos_onnx.convert(model, out, work / "calib.npz", skip=skip, progress=False)
        seconds = time.perf_counter() - start
        rows[label] = {**compare(reference, read_all(out, inputs)), "seconds": seconds, "out": out,
                       "converted": report.converted, "sites": len(report.sites),
                       "skipped": [s.reason for s in report.sites if s.status == "skipped"]}
    shifted = [np.concatenate([x[..., 1:], x[..., -1:]], axis=-1) for x in inputs]  # one pixel to the left
    control = compare(reference, read_all(model, shifted, native=False))
    x = inputs[0]
    lowered = lower_recurrent(onnx.load(str(model)), FindOptions()).model
    original = milliseconds(model, x, native=False)
    timing = {"lowered, no gates": milliseconds(lowered, x, native=False) / original,
              **{label: milliseconds(row["out"], x, native=True) / original for label, row in rows.items()}}
    return {"rows": rows, "timing": timing, "control": control, "original_ms": original, "width": x.shape[-1],
            "chars": sum(map(len, reference))}


def lines(r: dict) -> list[str]:
    out = ["| conversion | sites converted | captchas read as the original reads them | character error rate "
           "against the original | conversion (s) | latency / the original's (native op, one thread) |",
           "|---|---|---|---|---|---|"]
    for label, row in r["rows"].items():
        out.append(f"| {label} | {row['converted']} of {row['sites']} | {row['same']} of {EVALUATION} | "
                   f"{row['cer']:.4f} | {row['seconds']:.1f} | {r['timing'][label]:.2f}x |")
    out.append(f"| the original with its LSTM written out, no gates | | | | | "
               f"{r['timing']['lowered, no gates']:.2f}x |")
    c = r["control"]
    out.append(f"| no conversion: the original on the captchas shifted one pixel left | | {c['same']} of "
               f"{EVALUATION} | {c['cer']:.4f} | | |")
    return out


def main() -> None:
    from results import machine, write_section

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = run(Path(tmp))
    rows = lines(r)
    print("\n".join(rows))
    skipped = next(iter(r["rows"].values()))["skipped"] or ["none"]
    section = "\n".join([
        "## A CNN + LSTM captcha reader from a PyPI wheel, fully spiking",
        "",
        f"`benchmarks/captcha_ocr.py --write` ({machine()}): {DDDDOCR[0]} {DDDDOCR[1]} {DDDDOCR[2]} (SiLU "
        "convolution blocks, a bidirectional LSTM, a CTC head), calibrated on "
        f"{CALIBRATION} rendered captchas 160 pixels wide, convert's defaults, read on {EVALUATION} others of varied "
        f"width ({r['chars']} characters as the original reads them) by greedy CTC decoding, against the original. "
        "Written out, the LSTM is a Scan per direction whose gates (3 Sigmoid, 2 Tanh each) convert, calibrated at "
        f"every step. Latency: one captcha {r['width']} pixels wide, mean of {RUNS} runs on one thread, the "
        f"original {r['original_ms']:.1f} ms. Sites left unconverted with the LSTM written out: "
        + "; ".join(skipped) + ".",
        "",
        *rows,
    ])
    if args.write:
        write_section("captcha_ocr", section)


if __name__ == "__main__":
    main()
