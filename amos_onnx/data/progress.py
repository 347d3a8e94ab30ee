"""A one-line progress counter on the terminal for long runs over data; silent when not a TTY or quiet."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts samples of a run and redraws one stderr line at most every `interval` seconds."""

    def __init__(self, label: str, total: int | None, enabled: bool | None = None, stream: TextIO | None = None,
                 interval: float = 0.2) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label, self.total, self.done = label, total, 0
        self.interval, self.started, self.drawn = interval, time.monotonic(), 0.0

    def advance(self, samples: int) -> None:
        self.done += samples
        now = time.monotonic()
        if self.enabled and now - self.drawn >= self.interval:
            self.drawn = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self.started, 1e-9)
        if self.total:
            width = 24
            filled = min(width, width * self.done // self.total)
            bar = "#" * filled + "." * (width - filled)
            text = f"{self.label} [{bar}] {self.done}/{self.total} samples, {rate:.0f}/s"
        else:
            text = f"{self.label} {self.done} samples, {rate:.0f}/s"
        self.stream.write("\r" + text + "\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
