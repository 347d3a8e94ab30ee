"""Shared by the benchmark scripts: replace one script's section of benchmarks/RESULTS.md."""

from __future__ import annotations

import platform
import time
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
    import os

    return (f"{time.strftime('%Y-%m-%d')}, {platform.machine()} ({cpu_model()}), {os.cpu_count()} cores, "
            f"Python {platform.python_version()}")


def write_section(name: str, text: str) -> None:
    """Put `text` between this benchmark's markers, replacing what a previous run wrote."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    section = f"{begin}\n{text.strip()}\n{end}"
    if begin in current:
        current = current[: current.index(begin)] + section + current[current.index(end) + len(end):]
    else:
        current = current.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(current)
