"""Shared by the benchmark scripts: replace one script's section of benchmarks/RESULTS.md."""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def cpu_model() -> str:
    """The processor's model name (Linux's /proc/cpuinfo), else the architecture: the trained networks, and so
    every Fashion-MNIST figure, depend on it (torch's CPU kernels differ between processors)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def machine() -> str:
    """Date and machine of a run, for the record."""
    return (f"{time.strftime('%Y-%m-%d')}, {platform.machine()} ({cpu_model()}), {os.cpu_count()} cores, "
            f"Python {platform.python_version()}")


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """RESULTS.md to ourselves: each script rewrites the whole file, and two may run at once (by hand)."""
    with open(RESULTS.with_name(".RESULTS.md.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_section(name: str, text: str) -> None:
    """Put `text` between this benchmark's markers, replacing what a previous run wrote (under a lock, and
    through a temporary file: the file is never half-written)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    section = f"{begin}\n{text.strip()}\n{end}"
    with _locked():
        current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
        if begin in current:
            current = current[: current.index(begin)] + section + current[current.index(end) + len(end):]
        else:
            current = current.rstrip() + "\n\n" + section + "\n"
        tmp = RESULTS.with_name(f".RESULTS.md.{os.getpid()}.tmp")
        tmp.write_text(current)
        tmp.replace(RESULTS)
