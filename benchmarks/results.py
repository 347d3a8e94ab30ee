"""Shared by the benchmark scripts: replace one script's section of benchmarks/RESULTS.md."""

from __future__ import annotations

import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    """Date and machine of a run, for the record."""
    import os

    return f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


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
