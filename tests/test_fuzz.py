"""A short seeded run of the mutation fuzzer: corrupted models never crash inspect or convert."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import fuzz  # noqa: E402


def test_short_fuzz_run_has_no_crash(tmp_path: Path) -> None:
    outcomes, crashes = fuzz.run(30, seed=7, folder=tmp_path)
    assert crashes == []
    assert sum(outcomes.values()) == 60
    assert outcomes[("convert", 2)] > 0  # the corruptions really are caught as user errors
