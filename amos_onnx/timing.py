"""Wall time of each pipeline stage (load, find, calibrate, fit, focus, rewrite, save), logged as it ends."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


class Stages:
    """Seconds per stage name; a stage timed again (a plan fitted at several K, say) keeps its last time."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - start
            log.info("stage %s: %.2f s", name, self.seconds[name])
