"""Calibration over Ray: each actor samples its shards into reservoirs of its own (calibrate.run.Sampler), the
driver merges them into one uniform sample of the same bounded size per site (Reservoir.merge) and keeps the
first samples for the later stages, in the order of the data."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from amos_onnx.calibrate.reservoir import Reservoir
from amos_onnx.calibrate.run import Blocks, Kept, Sampler
from amos_onnx.cluster.connect import actors, start
from amos_onnx.cluster.run import partials
from amos_onnx.data.dataset import Dataset
from amos_onnx.data.shards import Shard, Sharded
from amos_onnx.options import RayOptions


@dataclass
class Sampled:
    """One shard's reservoirs (merged from its blocks), its sample and block counts and, for the first shards,
    its first batches."""

    blocks: Blocks
    samples: int
    kept: list[dict[str, np.ndarray]] = field(default_factory=list)


@dataclass
class _Sample:
    """The job of a calibrating actor (see cluster.run): samples a shard block by block as the single process does
    (calibrate.run.Blocks; a ray.data.Dataset's batch, whose place in the data is not known, with draws of its
    own) and keeps the first batches of a shard that starts within the first `keep_samples` samples (or of every
    batch of a ray.data.Dataset)."""

    sampler: Sampler
    keep_samples: int
    keep_bytes: int

    @property
    def model(self) -> onnx.ModelProto:
        return self.sampler.probe

    def run(self, data: Dataset, shard: Shard | None, seed: int, threads: int) -> Sampled:
        self.sampler.threads = threads
        start, file = (shard.start, shard.file) if shard is not None else (0, seed)
        kept = Kept(self.keep_samples, self.keep_bytes) if start < self.keep_samples else None
        blocks = Blocks()
        samples = self.sampler.sample(data, blocks, keep=kept, start=start, file=file)
        return Sampled(blocks, samples, kept.feeds if kept is not None else [])


def sample_on_ray(sampler: Sampler, data: Sharded, progress: bool | None,
                  keep: Kept | None) -> tuple[dict[str, Reservoir], int]:
    """The reservoirs of every site over all the data, and the samples seen, from shards sampled on Ray actors:
    for shards of files, the single process's reservoirs (whole blocks per shard: calibrate.run.Blocks)."""
    ray_options = sampler.options.ray or RayOptions()
    ray = start(ray_options)
    workers = actors(ray, ray_options)
    job = _Sample(sampler, keep.samples if keep else 0, keep.bytes if keep else 0)
    merged = Blocks()
    samples = 0
    first: list[tuple[int, list[dict[str, np.ndarray]]]] = []
    for index, part in partials(ray, job, data, workers, ray_options, "calibrating", progress):
        merged.merge(part.blocks)
        samples += part.samples
        if part.kept:
            first.append((index, part.kept))
    if keep is not None:
        for _, feeds in sorted(first, key=lambda item: item[0]):
            for feed in feeds:
                keep.offer(feed)
    return sampler.settled(merged), samples
