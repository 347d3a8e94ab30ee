"""Ray itself: imported only here and only when asked for, joined or started, and quiet on the terminal."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import onnx

from amos_onnx.data.dataset import is_ray_dataset
from amos_onnx.data.images import ImageOptions
from amos_onnx.data.inputs import batch_axes, batch_size
from amos_onnx.data.shards import Sharded, plan_shards
from amos_onnx.errors import DataError, OptionError
from amos_onnx.options import RayOptions

INSTALL = "pip install 'amos-onnx[ray]'"


def ray_module() -> Any:
    """The ray package, or a one-line error saying how to get it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the workers run as Ray Data's actor pool)
    except ImportError:
        raise OptionError(f"--ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


def start(options: RayOptions) -> Any:
    """Ray, joined to the cluster the options name (already joined: that one), with Ray Data's progress bars and
    log lines off (the driver draws its own progress line)."""
    ray = ray_module()
    for name in ("ray.data", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if not ray.is_initialized():
        try:
            ray.init(address=options.address or None, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = options.address or "a local cluster"
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OptionError(f"--ray {where}: cannot join or start Ray: {text}",
                              hint="'auto' joins a cluster started with 'ray start --head' on this machine") from None
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.enable_operator_progress_bars = False
    return ray


def actors(ray: Any, options: RayOptions) -> int:
    """How many actors: as given, else as many as the cluster's CPUs hold at options.cpus each."""
    if options.actors is not None:
        return options.actors
    return max(1, int(ray.cluster_resources().get("CPU", 1) // options.cpus))


def shardable(source: Any) -> None:
    """Nothing when the data can be sharded over Ray (a path, a list of paths, a ray.data.Dataset); else a
    one-line error, before any cluster is started."""
    def path(item: Any) -> bool:
        return isinstance(item, str) or hasattr(item, "__fspath__")

    if is_ray_dataset(source) or path(source) or (isinstance(source, list | tuple) and source
                                                  and all(path(p) for p in source)):
        return
    raise DataError(f"data of type {type(source).__name__} does not shard over Ray: give an .npz/.npy path, a folder "
                    "of images, a list of those, or a ray.data.Dataset")


def sharded(source: Any, model: onnx.ModelProto, images: ImageOptions | None, axes: Mapping[str, int],
            options: RayOptions, workers: int, unit: int = 1) -> Sharded:
    """The data as shards the workers read on their own: paths planned from their headers (data.shards) in whole
    units of `unit` samples, or a ray.data.Dataset read in batches (shardable(source) checked first)."""
    if is_ray_dataset(source):
        given = batch_axes(model, axes)
        return Sharded("a ray.data.Dataset", (), None, (), given, images, batch_size(model, given), source)
    return plan_shards(source, model, images, axes, workers, options.shard_samples, unit)


def plan_data(source: Any, model: onnx.ModelProto, images: ImageOptions | None, axes: Mapping[str, int],
              options: RayOptions, unit: int = 1) -> Sharded:
    """Ray started or joined, and the data planned as shards (of whole `unit`s of samples) for its actors."""
    shardable(source)
    return sharded(source, model, images, axes, options, actors(start(options), options), unit)
