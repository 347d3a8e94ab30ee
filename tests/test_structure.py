"""The house: stage packages that import as modules, one public __all__, one activation registry that refuses
duplicates, and sites that the rewrite finds by their output tensor, not by position."""

from __future__ import annotations

import importlib
import pkgutil
import types
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from conftest import activation_model
from onnx import TensorProto, helper

import amos_onnx
from amos_onnx.find import gates
from amos_onnx.find.composite import KNOWN
from amos_onnx.find.sites import find_sites
from amos_onnx.fit.sites import fit_sites
from amos_onnx.options import EmitForm
from amos_onnx.rewrite.graph import rewrite
from amos_onnx.runtime import session

STAGES = ("find", "data", "calibrate", "fit", "rewrite", "report")


def test_every_stage_is_a_package_and_no_export_shadows_one() -> None:
    for stage in STAGES:
        module = importlib.import_module(f"amos_onnx.{stage}")
        assert isinstance(module, types.ModuleType) and hasattr(module, "__path__"), stage
        assert isinstance(getattr(amos_onnx, stage), types.ModuleType), f"amos_onnx.{stage} is shadowed"
    for module in pkgutil.iter_modules(amos_onnx.__path__):
        value = getattr(amos_onnx, module.name, None)
        assert value is None or isinstance(value, types.ModuleType), f"amos_onnx.{module.name} is shadowed"
    assert all(hasattr(amos_onnx, name) for name in amos_onnx.__all__)


def test_a_duplicate_registration_is_an_error() -> None:
    with pytest.raises(ValueError, match="Sigmoid since opset 6 is registered twice"):
        gates.register("Sigmoid", 6)(lambda ctx: gates.NoMatch("never"))
    with pytest.raises(ValueError, match="function SiLU is registered twice"):
        gates.named("SiLU")(lambda x: x)
    assert gates.lookup("", "Sigmoid", 17) is not None  # the registry is as it was


def test_composite_names_come_from_the_registry() -> None:
    """The composite finder's names are the gate modules' reference functions, one definition each."""
    from amos_onnx.find.gates import exponential, gelu, relu, sigmoid

    assert KNOWN == gates.named_functions()
    assert KNOWN["GELU"] is gelu.gelu and KNOWN["Mish"] is exponential.mish and KNOWN["ReLU6"] is relu.relu6
    assert KNOWN["SiLU"] is sigmoid.silu and KNOWN["HardSwish"] is sigmoid.hard_swish
    x = np.linspace(-8, 8, 1001)
    assert np.allclose(KNOWN["SiLU"](x), x / (1 + np.exp(-x)), atol=1e-12)


def _two_sites(tmp_path: Path) -> onnx.ModelProto:
    nodes = [helper.make_node("Sigmoid", ["x"], ["a"], name="first"),
             helper.make_node("Tanh", ["a"], ["y"], name="second")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_the_rewrite_finds_sites_by_their_output_tensor_not_their_position(tmp_path: Path) -> None:
    """Sites found on one graph still rewrite the right nodes after unrelated nodes were put in front of them:
    each gate replaces the node writing its site's output (compared with the original in onnxruntime)."""
    model = _two_sites(tmp_path)
    sites, _ = find_sites(gs.import_onnx(model), 17)
    assert [(s.name, s.output, s.nodes) for s in sites] == [("first", "a", ("a",)), ("second", "y", ("y",))]
    fits = fit_sites(sites, {})
    moved = onnx.ModelProto()
    moved.CopyFrom(model)
    extra = [helper.make_node("Identity", ["x"], ["unused"], name="in_front")]
    nodes = extra + list(moved.graph.node)
    del moved.graph.node[:]
    moved.graph.node.extend(nodes)
    rewrite(moved, sites, {name: f.params for name, f in fits.items()}, EmitForm.FUNCTION)
    assert [(n.name, n.op_type) for n in moved.graph.node] == [
        ("in_front", "Identity"), ("first/amos", "AmosGate"), ("second/amos", "AmosGate")]
    x = np.random.default_rng(0).normal(0, 2, (16, 8)).astype(np.float32)
    want = session(model, native=False).run(["y"], {"x": x})[0]
    got = session(moved, native=False).run(["y"], {"x": x})[0]
    assert np.max(np.abs(got - want)) <= 0.06  # two data-free K=12 gates in series


def test_a_node_without_a_name_is_named_by_its_op_and_position(tmp_path: Path) -> None:
    model = activation_model("Relu", 17)
    model.graph.node[0].name = ""
    sites, _ = find_sites(gs.import_onnx(model), 17)
    assert [(s.name, s.output) for s in sites] == [("Relu_0", "y")]


@pytest.mark.parametrize("emit", ["function", "inline"])
def test_an_ir3_model_keeps_its_initializers_constant(tmp_path: Path, emit: str) -> None:
    """IR < 4 lists every initializer as a graph input (constants there). Raised to IR 4 (or 10 for the function
    form), they leave the inputs instead of becoming overridable inputs, and the inline gates' own initializers
    need no listing; the converted model is compared with the original in onnxruntime."""
    bias = np.linspace(-1, 1, 8, dtype=np.float32)
    nodes = [helper.make_node("Add", ["x", "bias"], ["a"]), helper.make_node("Relu", ["a"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8]),
                                           helper.make_tensor_value_info("bias", TensorProto.FLOAT, [8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                              [onnx.numpy_helper.from_array(bias, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)
    onnx.checker.check_model(model, full_check=True)
    src = tmp_path / "ir3.onnx"
    onnx.save(model, str(src))
    report = amos_onnx.convert(src, tmp_path / "out.onnx", k=10, emit=emit)
    out = onnx.load(str(tmp_path / "out.onnx"))
    assert [v.name for v in out.graph.input] == ["x"] and out.ir_version == (10 if emit == "function" else 4)
    assert any("IR version raised from 3" in note for note in report.notes)
    x = np.random.default_rng(0).uniform(-5, 5, (16, 8)).astype(np.float32)
    want = session(src, native=False).run(["y"], {"x": x})[0]
    got = session(tmp_path / "out.onnx", native=False).run(["y"], {"x": x})[0]
    assert np.max(np.abs(got - want)) <= 10 / 2**10 + 1e-6  # the data-free K=10 ReLU ladder's step on [0, 10)


def test_every_name_the_benchmarks_and_examples_import_exists() -> None:
    """The benchmarks and examples run outside the test suite: a module moved under them must not go unseen."""
    import ast
    import importlib

    root = Path(__file__).resolve().parent.parent
    missing = []
    for path in sorted([*root.glob("benchmarks/*.py"), *root.glob("examples/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("amos_onnx"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if not hasattr(module, alias.name) and importlib.util.find_spec(full) is None:
                        missing.append(f"{path.name}: {full}")
    assert not missing
