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


CASES = [(a, False) for a in digits_activations.ACTIVATIONS] + [
    (a, d) for a in digits_activations.EXPORTED_BOTH_WAYS for d in (False,
                                                                    True) if a not in digits_activations.ACTIVATIONS
] + [("hardswish", True)]


@pytest.mark.parametrize("activation, dynamo", CASES)
def test_calibrated_conversion_keeps_accuracy_within_one_point(activation: str, dynamo: bool, tmp_path: Path) -> None:
    """Every activation op converts (none left in the graph) and test accuracy stays within 1 point, for the
    TorchScript exporter and, for GELU, SiLU, Mish and HardSwish, the dynamo exporter too."""
    if dynamo:
        pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript: pip install -e '.[train]'")
    row = digits_activations.run(activation, tmp_path, dynamo=dynamo)
    assert row.left == 0, row
    assert row.original >= 0.95, f"{activation} network trained badly: {row.original:.4f}"
    assert abs(row.spiking - row.original) <= 0.01, row
    assert 0 < row.spikes < 16
