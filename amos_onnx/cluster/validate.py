"""validate() and report() over Ray: each actor compares both models on its shards (report.validate.Comparison),
the driver merges the shards' tallies and spike counts (report.validate.Measured.merge)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx

from amos_onnx.cluster.connect import actors, shardable, sharded, start
from amos_onnx.cluster.run import partials
from amos_onnx.data.dataset import Dataset
from amos_onnx.data.shards import Shard
from amos_onnx.errors import OptionError
from amos_onnx.options import RayOptions
from amos_onnx.report.validate import Comparison, Measured, ValidateOptions


@dataclass
class _Measure:
    """The job of a validating actor (see cluster.run)."""

    comparison: Comparison

    @property
    def model(self) -> onnx.ModelProto:
        return self.comparison.orig_model

    def run(self, data: Dataset, shard: Shard | None, seed: int, threads: int) -> Measured:
        self.comparison.threads = threads
        return self.comparison.measure(data, seed=seed)


def measure_on_ray(comparison: Comparison, data: Any, options: ValidateOptions) -> tuple[str, Measured]:
    """What the data's description is, and what both models measured on it, shard by shard on Ray actors."""
    if data is None:
        raise OptionError("--ray needs --data: random inputs are drawn in one process")
    shardable(data)
    ray_options = options.ray or RayOptions()
    ray = start(ray_options)
    workers = actors(ray, ray_options)
    shards = sharded(data, comparison.orig_model, options.images, options.batch_axes, ray_options, workers)
    merged: Measured | None = None
    for _, partial in partials(ray, _Measure(comparison), shards, workers, ray_options, "validating",
                               options.progress):
        if merged is None:
            merged = partial
        else:
            merged.merge(partial)
    assert merged is not None  # a source has at least one shard or batch
    return f"{shards.description} on {workers} Ray actors", merged
