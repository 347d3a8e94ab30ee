"""The real models against themselves: how far the original NudeNet and PP-OCR pipeline move when an input image
changes in an everyday way, on pypi_models.py's evaluation images.

Each change is applied to every evaluation image (seeded), and the original model's outputs on the changed images
are compared with its outputs on the images as they are, by pypi_models.py's measures: boxes matched (same class,
IoU >= 0.5), mean IoU and score difference for NudeNet; the character error rate of the text read for PP-OCR.
These are the scale the spiking twins' differences from the original (pypi_models.py's sections) read against.

Changes (CHANGES): a shift by one pixel to the left (the last column repeated), a JPEG re-encode at quality 95,
and +-1 grey level at a tenth of the pixels (below what a camera's noise or an 8-bit round trip gives).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pypi_models  # noqa: E402

CHANGES = {
    "shift": "shifted one pixel to the left",
    "jpeg95": "re-encoded as JPEG at quality 95",
    "level": "+-1 grey level at a tenth of the pixels",
}
LEVEL_SHARE = 0.1  # the share of pixels the "level" change moves by one grey level


def changed(pixels: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """An 8-bit image (height, width, channels) changed as CHANGES[kind] says; a new array."""
    from PIL import Image

    if kind == "shift":
        return np.concatenate([pixels[:, 1:], pixels[:, -1:]], axis=1)
    if kind == "jpeg95":
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
        with Image.open(io.BytesIO(buffer.getvalue())) as image:
            return np.asarray(image.convert("RGB"))
    if kind == "level":
        moved = rng.random(pixels.shape[:2]) < LEVEL_SHARE
        step = np.where(moved, rng.choice(np.array([-1, 1]), pixels.shape[:2]), 0)
        return np.clip(pixels.astype(np.int16) + step[..., None], 0, 255).astype(np.uint8)
    raise ValueError(f"unknown change {kind!r}: one of {', '.join(CHANGES)}")


def changed_folder(source: Path, target: Path, kind: str, seed: int = 0) -> Path:
    """Every image of `source` changed (CHANGES[kind], seeded, in name order) into `target` as PNG, same names."""
    from PIL import Image

    target.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for path in sorted(source.iterdir()):
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        Image.fromarray(changed(pixels, kind, rng)).save(target / f"{path.stem}.png")
    return target


def nudenet_outputs(sess: object, folder: Path) -> list[np.ndarray]:
    """The original NudeNet's output (session `sess`) for every image of `folder`, as pypi_models.run_nudenet
    reads them."""
    import amos_onnx
    from amos_onnx.data.dataset import open_data

    model = pypi_models.model_file(*pypi_models.NUDENET)
    feeds = open_data(folder, onnx.load(str(model)), amos_onnx.ImageOptions(size=(320, 320))).batches
    return [out for feed in feeds for out in sess.run(None, feed)[0]]  # type: ignore[attr-defined]


def nudenet_stability(work: Path, seed: int = 0) -> dict[str, pypi_models.BoxMatch]:
    """Per change, the original's boxes on the changed evaluation images matched against its boxes on them as
    they are."""
    import amos_onnx

    sess = amos_onnx.session(pypi_models.model_file(*pypi_models.NUDENET), native=False)
    evaluation = pypi_models.nudenet_eval_folder(work / "eval")
    reference = nudenet_outputs(sess, evaluation)
    found = {}
    for kind in CHANGES:
        boxes = pypi_models.BoxMatch()
        for want, got in zip(reference, nudenet_outputs(sess, changed_folder(evaluation, work / kind, kind, seed))):
            boxes.add(pypi_models.detections(want), pypi_models.detections(got))
        found[kind] = boxes
    return found


def ocr_stability(work: Path, seed: int = 0) -> dict[str, dict[str, int]]:
    """Per change, the edit distance of the original pipeline's text on each changed evaluation image from its
    text on the image as it is; under "chars", the characters of the latter."""
    models = {"det": pypi_models.model_file(*pypi_models.OCR_DET), "cls": pypi_models.model_file(*pypi_models.OCR_CLS),
              "rec": pypi_models.model_file(*pypi_models.OCR_REC)}
    evaluation = work / "eval"
    pypi_models.ocr_eval_folder(evaluation)
    ocr = pypi_models._pipeline(models)
    reference = {p.name: "\n".join(pypi_models._read(ocr, p)) for p in sorted(evaluation.iterdir())}
    found = {"chars": {name: len(text) for name, text in reference.items()}}
    for kind in CHANGES:
        folder = changed_folder(evaluation, work / kind, kind, seed)
        found[kind] = {name: pypi_models.edit_distance(text, "\n".join(pypi_models._read(ocr, folder / name)))
                       for name, text in reference.items()}
    return found


def lines(boxes: dict[str, pypi_models.BoxMatch], text: dict[str, dict[str, int]]) -> list[str]:
    """The section's table rows: one per change."""
    chars = text["chars"]
    total = sum(chars.values())
    rows = ["| change | NudeNet: boxes matched / the original's | mean IoU | mean score difference | lost boxes' "
            "scores | PP-OCR: character error rate | per image (edit distance / characters) |",
            "|---|---|---|---|---|---|---|"]
    for kind, label in CHANGES.items():
        b, distances = boxes[kind], text[kind]
        lost = ", ".join(f"{v:.3f}" for v in sorted(b.missed)) or "none"
        per = ", ".join(f"{name} {distances[name]}/{chars[name]}" for name in chars)
        rows.append(f"| {label} | {b.matched} / {b.original} | {np.mean(b.ious):.3f} | {np.mean(b.score_diffs):.3f} "
                    f"| {lost} | {sum(distances.values()) / max(total, 1):.3f} | {per} |")
    return rows


def main() -> None:
    from results import machine, write_section

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the changes that draw pixels")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        boxes = nudenet_stability(Path(tmp) / "nudenet", args.seed)
        text = ocr_stability(Path(tmp) / "ocr", args.seed)
    rows = lines(boxes, text)
    print("\n".join(rows))
    section = "\n".join([
        "## The real models against themselves: everyday changes of an input",
        "",
        f"`benchmarks/stability.py{f' --seed {args.seed}' if args.seed else ''} --write` ({machine()}): the original "
        "NudeNet and PP-OCR pipeline (no conversion) on pypi_models.py's evaluation images changed as each row says, "
        "against the same originals on the images as they are, by pypi_models.py's measures (boxes at score >= "
        f"{pypi_models.CONF}, matched by class at IoU >= {pypi_models.MATCH_IOU}; the text read by det, cls and rec). "
        "The spiking conversions' differences from the original, in the sections of pypi_models.py, read against "
        "these.",
        "",
        *rows,
    ])
    if args.write:
        write_section("stability", section)


if __name__ == "__main__":
    main()
