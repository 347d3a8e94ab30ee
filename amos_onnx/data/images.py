"""A folder of images as model inputs, with explicit preprocessing: size, layout, scale, mean/std, RGB/BGR.

Each image is read with Pillow (the `images` extra), converted to RGB (or to grey for a one-channel
input), resized to the model's height x width (bilinear), and mapped to x = (pixel * scale - mean) / std
per channel, in the channel order the model expects; the array is laid out NCHW or NHWC.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from amos_onnx.data.inputs import InputSpec
from amos_onnx.errors import DataError, OptionError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class ImageOptions:
    """How pixels become model inputs. None means: take it from the model's input shape."""

    size: tuple[int, int] | None = None  # (height, width)
    layout: str | None = None  # "NCHW" or "NHWC"
    scale: float = 1 / 255
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    bgr: bool = False

    def __post_init__(self) -> None:
        if self.layout is not None and self.layout not in LAYOUTS:
            raise OptionError(f"--layout {self.layout}: must be NCHW or NHWC")
        if (self.mean is None) != (self.std is None):
            given, missing = ("--std", "--mean") if self.mean is None else ("--mean", "--std")
            raise OptionError(f"{given} given without {missing}: give per-channel --mean and --std together")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise OptionError(f"--std {','.join(f'{s:g}' for s in self.std)}: every std must be positive")
        if self.size is not None and min(self.size) < 1:
            raise OptionError(f"--image-size {self.size[0]}x{self.size[1]}: height and width must be positive")
        if not self.scale > 0:
            raise OptionError(f"--scale {self.scale:g}: must be positive")


@dataclass(frozen=True)
class ImagePlan:
    """Where the options meet the model's input: the resolved layout, channels and size."""

    layout: str
    channels: int
    height: int
    width: int
    dtype: np.dtype


def image_files(folder: Path) -> list[Path]:
    """The image files under folder (recursively), in sorted order."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def describe(folder: Path, count: int, image_plan: ImagePlan, options: ImageOptions) -> str:
    """A folder of images as reports name it: its image count and the inputs they become."""
    return (f"{folder} ({count} images, {image_plan.layout} {image_plan.channels}x{image_plan.height}x"
            f"{image_plan.width}{', BGR' if options.bgr else ''})")


def _fixed(dim: int | str | None) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def plan(spec: InputSpec, options: ImageOptions, where: str) -> ImagePlan:
    """Resolve layout, channels and size against the model input, or say which option does not fit."""
    if spec.dtype.kind != "f":
        raise DataError(f"{where}: images need a floating-point model input; '{spec.name}' is {spec.dtype}")
    if spec.shape is not None and len(spec.shape) != 4:
        raise DataError(f"{where}: images need a rank-4 model input; '{spec.name}' has rank {len(spec.shape)}")
    dims = [_fixed(d) for d in spec.shape] if spec.shape is not None else [None] * 4
    shape_text = "[" + ", ".join(str(d) if d else "?" for d in dims) + "]"
    looks = {"NCHW": dims[1] in (1, 3), "NHWC": dims[3] in (1, 3)}
    layout = options.layout
    if layout is None:
        fits = [name for name, ok in looks.items() if ok]
        if len(fits) != 1:
            raise OptionError(f"{where}: cannot tell the layout of input '{spec.name}' {shape_text}",
                              hint="pass --layout NCHW or --layout NHWC")
        layout = fits[0]
    c_axis, h_axis, w_axis = (1, 2, 3) if layout == "NCHW" else (3, 1, 2)
    channels = dims[c_axis]
    if channels is None:
        channels = len(options.mean) if options.mean and len(options.mean) in (1, 3) else 3
    if channels not in (1, 3):
        other = "NHWC" if layout == "NCHW" else "NCHW"
        raise OptionError(f"--layout {layout} does not fit input '{spec.name}' {shape_text}: axis {c_axis} has "
                          f"{channels} channels, images have 1 or 3", hint=f"did you mean --layout {other}?")
    for name, values in (("--mean", options.mean), ("--std", options.std)):
        if values is not None and len(values) not in (1, channels):
            raise OptionError(f"{name}: {len(values)} values for {channels} channels of input '{spec.name}'")
    height, width = dims[h_axis], dims[w_axis]
    if options.size is not None:
        if (height and height != options.size[0]) or (width and width != options.size[1]):
            raise OptionError(f"--image-size {options.size[0]}x{options.size[1]} does not fit input '{spec.name}' "
                              f"{shape_text} ({layout})")
        height, width = options.size
    if height is None or width is None:
        raise OptionError(f"{where}: input '{spec.name}' {shape_text} has a free height or width",
                          hint="pass --image-size HxW")
    return ImagePlan(layout, channels, height, width, spec.dtype)


def load_image(path: Path, image_plan: ImagePlan, options: ImageOptions) -> np.ndarray:
    """One preprocessed image as an array of the model's layout without the batch axis."""
    out = np.empty(_shape(image_plan), image_plan.dtype)
    _fill(out, _pixels(path, image_plan), levels(image_plan, options), image_plan.layout, options.bgr)
    return out


def _shape(image_plan: ImagePlan) -> tuple[int, int, int]:
    p = image_plan
    return (p.channels, p.height, p.width) if p.layout == "NCHW" else (p.height, p.width, p.channels)


def levels(image_plan: ImagePlan, options: ImageOptions) -> np.ndarray:
    """What each of the 256 pixel levels maps to, per channel in the model's channel order (channels x 256):
    (level * scale - mean) / std in float32 arithmetic (float64 for float64 models), the same arithmetic as
    mapping every pixel, once per level."""
    work = np.float64 if np.dtype(image_plan.dtype) == np.float64 else np.float32
    values = np.arange(256, dtype=work) * np.asarray(options.scale, work)
    table = np.empty((image_plan.channels, 256), work)
    for c in range(image_plan.channels):
        table[c] = values
        if options.mean is not None and options.std is not None:
            mean, std = (np.asarray(v[c % len(v)], work) for v in (options.mean, options.std))
            table[c] -= mean
            table[c] /= std
    return table.astype(image_plan.dtype)


def _pixels(path: Path, image_plan: ImagePlan) -> np.ndarray:
    """One image's 8-bit pixels, converted to RGB (or grey for a one-channel input) and resized to the model's
    height x width: height x width x channels."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - depends on the install
        raise DataError("reading images needs Pillow", hint="pip install 'amos-onnx[images]'") from None
    try:
        with Image.open(path) as image:
            converted = image.convert("L" if image_plan.channels == 1 else "RGB")
            resized = converted.resize((image_plan.width, image_plan.height), Image.Resampling.BILINEAR)
            pixels = np.asarray(resized, np.uint8)
    except Image.DecompressionBombError as exc:  # a header declaring more pixels than Pillow's guard allows
        raise DataError(f"{path}: image too large to read ({exc})") from None
    except MemoryError:
        raise DataError(f"{path}: image too large to read (out of memory)") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None
    return pixels.reshape(image_plan.height, image_plan.width, image_plan.channels)


def _fill(out: np.ndarray, pixels: np.ndarray, table: np.ndarray, layout: str, bgr: bool = False) -> None:
    """Write one image's mapped pixels into `out` (the model's layout, no batch axis) by table lookup, channel
    by channel (`bgr`: the model's channel c is the image's channel C - 1 - c). Every 8-bit level indexes the
    256-entry table, so clipping never acts: mode "clip" only spares numpy's bounds-checked, buffered take."""
    channels = table.shape[0]
    for c in range(channels):
        source = pixels[..., channels - 1 - c if bgr else c]
        np.take(table[c], source, out=out[c] if layout == "NCHW" else out[..., c], mode="clip")


def image_batches(files: list[Path], name: str, image_plan: ImagePlan, options: ImageOptions,
                  size: int) -> Iterator[dict[str, np.ndarray]]:
    """Batches of preprocessed images, read only as they are needed (each image written straight into its
    batch)."""
    table = levels(image_plan, options)
    for start in range(0, len(files), size):
        chunk = files[start : start + size]
        batch = np.empty((len(chunk), *_shape(image_plan)), image_plan.dtype)
        for i, path in enumerate(chunk):
            _fill(batch[i], _pixels(path, image_plan), table, image_plan.layout, options.bgr)
        yield {name: batch}
