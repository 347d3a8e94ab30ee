"""Slow tier: a torch-trained digits CNN per activation keeps its accuracy after a calibrated conversion."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import ROOT

pytest.importorskip("torch", reason="the slow tier needs torch: pip install -e '.[train]'")
pytest.importorskip("sklearn", reason="the slow tier needs scikit-learn: pip install -e '.[train]'")
sys.path.insert(0, str(ROOT / "benchmarks"))

import digits_activations  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("activation", digits_activations.ACTIVATIONS)
def test_calibrated_conversion_keeps_accuracy_within_one_point(activation: str, tmp_path: Path) -> None:
    row = digits_activations.run(activation, tmp_path)
    assert row.original >= 0.95, f"{activation} network trained badly: {row.original:.4f}"
    assert abs(row.spiking - row.original) <= 0.01, row
    assert 0 < row.spikes < 16
