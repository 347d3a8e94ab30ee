"""A job over sharded data on Ray Data's pool of stateful actors: each actor holds the job (its onnxruntime
sessions made once), reads whole shards itself and returns one partial result per shard; the driver streams the
partials in, at most one per shard (a shard retried after its actor died counts once), and draws the progress.

A job is a picklable object with `model` (the model the data is checked against) and `run(data, shard, seed,
threads)`: the partial result over a Dataset, with `samples`; `shard` is where the data lies (None for a
ray.data.Dataset's batch), `seed` its own random seed, `threads` the CPUs its runs use
(as many side by side, one onnxruntime thread each).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from amos_onnx.data.dataset import Dataset
from amos_onnx.data.inputs import LABELS, check_feeds, model_layout
from amos_onnx.data.progress import Progress
from amos_onnx.data.shards import Sharded, open_shard
from amos_onnx.errors import AmosError, DataError
from amos_onnx.options import RayOptions

SHARD = "amos_shard"  # the column of shard descriptors the actors are mapped over
PARTIAL = "amos_partial"  # the column of pickled (shard index, partial result) the actors return


@dataclass(frozen=True)
class Failed:
    """A shard the job refused (bad data): its one-line message, raised on the driver."""

    message: str


class Worker:
    """One Ray actor: the job with its sessions, mapped over batches of shard descriptors (or of a
    ray.data.Dataset's rows)."""

    def __init__(self, job: Any, sharded: Sharded, threads: int) -> None:
        self.job, self.sharded, self.threads = job, sharded, threads
        self.batches = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if SHARD in batch:
            shards = [pickle.loads(item) for item in batch[SHARD]]
            items = [(s.index, s.index + 1, s) for s in shards]
        else:
            self.batches += 1
            items = [(-1, hash((os.getpid(), self.batches)) & 0x7FFFFFFF, None)]
        out = []
        for index, seed, shard in items:
            try:
                data = open_shard(shard, self.sharded, self.job.model) if shard is not None else self._rows(batch)
                partial = self.job.run(data, shard, seed, self.threads)
            except AmosError as exc:
                partial = Failed(exc.one_line())
            out.append(pickle.dumps((index, partial)))
        return {PARTIAL: np.array(out, dtype=object)}

    def _rows(self, batch: dict[str, np.ndarray]) -> Dataset:
        """A ray.data.Dataset's batch (columns named by the model's inputs, optional labels) as a Dataset."""
        arrays = {name: np.asarray(value) for name, value in batch.items() if name != LABELS}
        feeds = check_feeds(model_layout(arrays, self.sharded.axes), self.job.model, "ray.data.Dataset batch",
                            self.sharded.axes)
        labels = np.asarray(batch[LABELS]) if LABELS in batch else None
        count = next((a.shape[0] for a in feeds.values() if a.ndim), 1)
        return Dataset("ray.data.Dataset batch", iter([feeds]), count, labels, axes=self.sharded.axes)


def partials(ray: Any, job: Any, sharded: Sharded, workers: int, options: RayOptions, label: str,
             progress: bool | None) -> Iterator[tuple[int, Any]]:
    """(shard index, partial result) of every shard (index -1 for a ray.data.Dataset's batches), as the actors
    finish them; a shard that failed for bad data raises its one-line error."""
    worker_sharded = replace(sharded, source=None)
    if sharded.source is not None:
        dataset, size = sharded.source, sharded.size
    else:
        dataset = ray.data.from_items([{SHARD: pickle.dumps(s)} for s in sharded.shards],
                                      override_num_blocks=len(sharded.shards))
        size = 1
    mapped = dataset.map_batches(Worker, fn_constructor_args=(job, worker_sharded, options.cpus), batch_size=size,
                                 batch_format="numpy",
                                 compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=options.cpus)
    bar = Progress(label, sharded.count, progress)
    seen: set[int] = set()
    for row in mapped.iter_rows():
        index, partial = pickle.loads(row[PARTIAL])
        if isinstance(partial, Failed):
            raise DataError(partial.message)
        if index >= 0 and index in seen:
            continue
        seen.add(index)
        bar.advance(partial.samples)
        yield index, partial
    bar.close()
    missing = len(sharded.shards) - len(seen)
    if sharded.shards and missing:
        raise DataError(f"{sharded.description}: {missing} shards returned nothing")
