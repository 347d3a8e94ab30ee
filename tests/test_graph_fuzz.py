"""A short seeded run of the graph fuzzer: random calibrated networks through convert with random options end in
a converted model whose function form and native op agree to the bit, or a one-line refusal; never a crash."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import ROOT

from amos_onnx.runtime import native_library

sys.path.insert(0, str(ROOT / "benchmarks"))

import graph_fuzz  # noqa: E402
import graph_grammar  # noqa: E402

pytestmark = pytest.mark.skipif(native_library() is None, reason="native library not built (make ops)")


def test_random_calibrated_networks_convert_or_are_refused_cleanly(tmp_path: Path) -> None:
    """Cases 0-11 of seed 0, and 82 and 170, whose function form and native op differed before the native op
    told onnxruntime its outputs' shapes (a MatMul + Add after the last gate fused into a Gemm in one form only)."""
    cases = [*range(12), 82, 170]
    outcomes, defects = graph_fuzz.run(cases, seed=0, folder=tmp_path)
    assert defects == []
    assert sum(outcomes.values()) == len(cases)
    assert outcomes["ok"] >= 8 and outcomes["refused"] >= 1  # most convert; some option sets are refused


def test_random_attention_cast_and_if_networks_convert_or_are_refused_cleanly(tmp_path: Path) -> None:
    """The blocks grammar (self-attention, MLPs, activations in float16 or double between Casts, If branches),
    cases 0-7 of seed 0: no defect, and the networks run in onnxruntime (the grammar uses only kernels it has)."""
    outcomes, defects = graph_fuzz.run(range(8), seed=0, folder=tmp_path, grammar="blocks")
    assert defects == [] and outcomes["unrunnable"] == 0
    assert outcomes["ok"] >= 5


def test_a_case_is_rebuilt_the_same() -> None:
    """--only N rebuilds case N: the network is a function of the seed and the case number alone."""
    first, inputs = graph_grammar.build(82, 0)
    again, same = graph_grammar.build(82, 0)
    assert first.SerializeToString() == again.SerializeToString() and inputs == same
    assert graph_grammar.build(83, 0)[0].SerializeToString() != first.SerializeToString()
