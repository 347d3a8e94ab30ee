"""The command line's values read into the option objects (options.py): op lists, K, NAME=NUMBER pairs, Ray and
image preprocessing options, and click options whose help and default come from the option objects' fields."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, fields
from enum import StrEnum
from typing import Any

import click

from amos_onnx.cluster.connect import ray_module
from amos_onnx.errors import OptionError
from amos_onnx.options import AUTO, CalibrationOptions, ConvertOptions, FindOptions, FitOptions, K, RayOptions, op_set


def parse_k(value: str | None) -> K:
    if value is None:
        return None
    if value == AUTO:
        return AUTO
    try:
        return int(value)
    except ValueError:
        raise OptionError(f"--k {value}: give a number of neurons or 'auto'") from None


def _named_ints(items: list[str], option: str, form: str) -> dict[str, int]:
    """NAME=NUMBER items of an option as a dict; `form` (e.g. "OP=K, e.g. Relu=8") in the error."""
    result = {}
    for item in items:
        name, _, number = item.rpartition("=")
        try:
            result[name.strip()] = int(number)
        except ValueError:
            name = ""
        if not name.strip():
            raise OptionError(f"{option} {item}: expected {form}")
    return result


def parse_k_per_op(value: str | None) -> dict[str, int]:
    return {} if value is None else _named_ints(value.split(","), "--k-per-op", "OP=K, e.g. Relu=8")


def parse_batch_axes(values: tuple[str, ...]) -> dict[str, int]:
    return _named_ints(list(values), "--batch-axis", "NAME=AXIS, e.g. state=1")


batch_axis_option = click.option(
    "--batch-axis", "batch_axes", multiple=True, metavar="NAME=AXIS",
    help=next(f for f in fields(CalibrationOptions) if f.name == "batch_axes").metadata["help"])


def ray_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """--ray [ADDRESS], --ray-actors and --ray-cpus (options.RayOptions), read by ray_from."""
    function = option_from(RayOptions, "cpus", "--ray-cpus")(function)
    function = option_from(RayOptions, "actors", "--ray-actors", type=int)(function)
    return option_from(RayOptions, "address", "--ray", is_flag=False, flag_value=LOCAL_RAY, metavar="[ADDRESS]",
                 type=str)(function)


LOCAL_RAY = "local"  # what a bare --ray stands for: a Ray cluster started on this machine


def ray_from(values: dict[str, Any]) -> RayOptions | None:
    """RayOptions from --ray, --ray-actors and --ray-cpus (taken out of values); None without --ray. Ray must
    be installed when asked for."""
    address, actors, cpus = values.pop("address"), values.pop("actors"), values.pop("cpus")
    if address is None:
        if actors is not None or cpus != 1:
            raise OptionError("--ray-actors and --ray-cpus need --ray")
        return None
    ray_module()
    return RayOptions(None if address == LOCAL_RAY else address, actors, cpus)


def _floats(value: str | None, option: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise OptionError(f"{option} {value}: give comma-separated numbers, e.g. 0.485,0.456,0.406") from None


def _size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    height, _, width = value.lower().partition("x")
    try:
        return (int(height), int(width or height))
    except ValueError:
        raise OptionError(f"--image-size {value}: give HxW (e.g. 224x224) or one number") from None


IMAGE_KEYS = ("image_size", "layout", "scale", "mean", "std", "bgr")


def image_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The preprocessing options for a folder of images, shared by convert, validate and report."""
    options = [
        click.option("--image-size", type=str, default=None, help="HxW images are resized to (default: the model's)."),
        click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default=None,
                     help="Image input layout (default: told from the model's input shape)."),
        click.option("--scale", type=float, default=1 / 255, show_default="1/255",
                     help="Pixel values are multiplied by this."),
        click.option("--mean", type=str, default=None,
                     help="Per-channel mean subtracted after scaling, e.g. 0.485,0.456,0.406."),
        click.option("--std", type=str, default=None,
                     help="Per-channel std divided by after the mean, e.g. 0.229,0.224,0.225."),
        click.option("--bgr", is_flag=True, help="Feed channels in BGR order (default RGB)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def images_from(path: str | None, image_size: str | None, layout: str | None, scale: float, mean: str | None,
            std: str | None, bgr: bool) -> Any:
    """ImageOptions when the data path is a folder, else None (and no image option may be given)."""
    from pathlib import Path

    from amos_onnx.data.images import ImageOptions

    given = image_size or layout or mean or std or bgr or scale != 1 / 255
    if path is None or not Path(path).is_dir():
        if given:
            raise OptionError("image options (--image-size, --layout, --scale, --mean, --std, --bgr) need a folder of "
                              "images as data")
        return None
    return ImageOptions(_size(image_size), layout, scale, _floats(mean, "--mean"), _floats(std, "--std"), bgr)


def option_from(kind: type, name: str, *decls: str,
                **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A click option whose help (and, for a value click can show, default) come from an option object's field."""
    spec = next(f for f in fields(kind) if f.name == name)
    default = None if spec.default is MISSING else spec.default
    if isinstance(default, bool):
        return click.option(*decls, name, is_flag=True, help=spec.metadata["help"], **kwargs)
    if isinstance(default, StrEnum):
        default = default.value
    if default is not None:
        kwargs.setdefault("show_default", True)
        kwargs.setdefault("type", type(default))
    return click.option(*decls, name, default=default, help=spec.metadata["help"], **kwargs)


def convert_options(o: dict[str, Any], calib: str | None, quiet: bool) -> ConvertOptions:
    """ConvertOptions from convert's command-line values (`seed` and `per_channel` serve calibration and fit)."""
    images = images_from(calib, **{key: o[key] for key in IMAGE_KEYS})
    find = FindOptions(only=op_set("--only", o["only"]), skip=op_set("--skip", o["skip"]),
                       channel_axis=o["channel_axis"])
    ray = ray_from(o)
    if ray is not None and calib is None:
        raise OptionError("--ray needs --calib: Ray runs the calibration")
    calibration = CalibrationOptions(seed=o["seed"], per_channel=o["per_channel"], images=images,
                                     batch_axes=parse_batch_axes(o["batch_axes"]), ray=ray)
    fit = FitOptions(k=parse_k(o["k"]), k_per_op=parse_k_per_op(o["k_per_op"]), target_mse=o["target_mse"],
                     spike_penalty=o["spike_penalty"], seed=o["seed"], kicks=o["kicks"], focus_kicks=o["focus_kicks"],
                     per_channel=o["per_channel"], bias_correction=o["bias_correction"], reconstruct=o["reconstruct"],
                     sequential=o["sequential"], latency=o["latency"], spike_budget=o["spike_budget"],
                     range_weight=o["range_weight"], channel_kicks=o["channel_kicks"], chains=o["chains"])
    return ConvertOptions(find, calibration, fit, o["emit"], False if quiet else None)
