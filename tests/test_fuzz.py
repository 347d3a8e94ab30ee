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


def test_worker_processes_run_exactly_the_cases_of_one(tmp_path: Path) -> None:
    """The benchmark splits its cases between processes: together they see the same corrupted models."""
    one = fuzz.run(40, seed=3, folder=tmp_path / "one")
    two = fuzz.run(40, seed=3, folder=tmp_path / "two", jobs=2)
    assert one == two and sum(one[0].values()) == 80


def test_converted_models_with_a_changed_gate_never_crash_validate() -> None:
    """fuzz_gates.py, 40 seeded cases in a fresh process (it forks a child per case, which a process that has run
    onnxruntime sessions, as this one has, should not): no signal, no traceback, and some changes refused."""
    import subprocess

    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/fuzz_gates.py"), "--cases", "40", "--seed", "5"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "', 2)" in done.stdout  # refused cases: (kind, 2)
