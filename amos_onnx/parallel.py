"""Run a function over many jobs in forked processes, one per CPU (AMOS_ONNX_JOBS to change).

The jobs hold closures (composite activations evaluated by onnxruntime sessions) that cannot be pickled,
so they are not sent to the workers: they sit in a module-level list set before the fork, and the
workers receive only indices. BLAS is held to one thread while they run (threadpoolctl, the `fast`
extra, set in the parent before the fork and inherited): the fitter's least-squares solves are small,
and BLAS threads spinning beside the worker processes cost more than they give. Without fork (or with
one job or CPU) everything runs here.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

log = logging.getLogger(__name__)

JOBS_ENV = "AMOS_ONNX_JOBS"

# Jobs go to the workers in chunks, about this many per worker: a round trip per job costs more than a ReLU
# site's fit does when there are thousands, and enough chunks stay for the slow fits to spread.
CHUNKS_PER_WORKER = 16

_TASK: tuple[Callable[[Any], Any], Sequence[Any]] | None = None


def workers(count: int) -> int:
    """Processes for `count` jobs: AMOS_ONNX_JOBS, else the CPUs this process may use, at most `count`."""
    value = os.environ.get(JOBS_ENV, "").strip()
    if value:
        try:
            return max(1, min(count, int(value)))
        except ValueError:
            log.warning("%s=%r is not a number; running in one process", JOBS_ENV, value)
            return 1
    return max(1, min(count, cpus()))


def cpus() -> int:
    """The CPUs this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _one_blas_thread() -> contextlib.AbstractContextManager[object]:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _run(index: int) -> Any:
    assert _TASK is not None
    func, jobs = _TASK
    return func(jobs[index])


def fork_map(func: Callable[[Any], Any], jobs: Sequence[Any]) -> list[Any]:
    """[func(job) for job in jobs], in forked worker processes when that helps; results in job order."""
    global _TASK
    count = workers(len(jobs))
    _TASK = (func, jobs)
    # The BLAS limit is set here, before the fork, and the workers inherit it: threadpoolctl dlopens the BLAS
    # libraries, and a dlopen in a forked child can wait forever on a loader lock held by one of the parent's
    # threads at fork time (seen: a fast-tier run hung after onnxruntime sessions had run in the parent).
    try:
        with _one_blas_thread():
            if count > 1 and "fork" in multiprocessing.get_all_start_methods():
                # Garbage is collected here, where the threads of any onnxruntime session in it still exist
                # (a worker collecting one hung in pthread_cond_destroy), and what is left is frozen so that
                # no worker collects it.
                gc.collect()
                gc.freeze()
                try:
                    context = multiprocessing.get_context("fork")
                    with concurrent.futures.ProcessPoolExecutor(count, mp_context=context) as pool:
                        chunk = max(1, len(jobs) // (count * CHUNKS_PER_WORKER))
                        return list(pool.map(_run, range(len(jobs)), chunksize=chunk))
                finally:
                    gc.unfreeze()
            return [_run(i) for i in range(len(jobs))]
    finally:
        _TASK = None


Mapper = Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]


@contextlib.contextmanager
def side_by_side(width: int | None = None) -> Iterator[Mapper]:
    """A map, [func(item) for item in items] in order, that runs `width` items at once on threads (default: one
    per CPU) for as long as the context holds them: for work that lets go of the GIL, such as onnxruntime runs,
    each on a session of one thread (RUN_THREADS). Two single-threaded runs side by side keep two cores busier
    than one run on both: most of a network's nodes are too small to split."""
    width = width or cpus()
    if width <= 1:
        yield lambda func, items: [func(item) for item in items]
        return
    with concurrent.futures.ThreadPoolExecutor(width) as pool:
        yield lambda func, items: list(pool.map(func, items))


def threads_map(func: Callable[[Any], Any], items: Sequence[Any], width: int | None = None) -> list[Any]:
    """[func(item) for item in items], side by side (side_by_side, for one map)."""
    with side_by_side(min(width or cpus(), len(items))) as map_:
        return map_(func, items)


# The onnxruntime threads of a session whose runs go side by side (threads_map): one, on any machine, also where
# there is one CPU and the runs go one at a time. onnxruntime's default is one per physical core of the host (two
# in a process pinned to one CPU here), and its sums depend on the thread count: with a fixed count the runs measure
# the same on any number of cores (compensate.walk: WALK_THREADS).
RUN_THREADS = 1
