"""Composite activations as exporters write them: one gate each, and no lookalike matched."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import save
from onnx import TensorProto, helper, numpy_helper

import amos_onnx
from amos_onnx.report.spikes import gate_params

X = np.linspace(-10, 10, 8000, dtype=np.float32).reshape(-1, 8)


def graph_model(nodes: list, consts: dict | None = None, outputs: tuple = ("y",), constant_nodes: bool = False,
                opset: int = 17) -> onnx.ModelProto:
    """x -> nodes -> outputs; consts become initializers, or Constant nodes when constant_nodes."""
    inits, pre = [], []
    for name, value in (consts or {}).items():
        tensor = numpy_helper.from_array(np.asarray(value, np.float32), name)
        if constant_nodes:
            pre.append(helper.make_node("Constant", [], [name], value=tensor, name=f"const_{name}"))
        else:
            inits.append(tensor)
    graph = helper.make_graph(
        pre + nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["N", 8]) for o in outputs], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def n(op: str, inputs: list[str], output: str, **attrs: object) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [output], name=f"{op.lower()}_{output}", **attrs)


SQRT2, C = math.sqrt(2.0), math.sqrt(2.0 / math.pi)
PATTERNS = {
    # name: (nodes, constants, reference, label prefix, tolerance on [-10, 10] with the data-free K=16 gate)
    "silu-x-first": ([n("Sigmoid", ["x"], "s"), n("Mul", ["x", "s"], "y")], {}, lambda x: x / (1 + np.exp(-x)),
                     "SiLU", 0.16),
    "silu-x-second": ([n("Sigmoid", ["x"], "s"), n("Mul", ["s", "x"], "y")], {}, lambda x: x / (1 + np.exp(-x)),
                      "SiLU", 0.16),
    "swish-b": ([n("Mul", ["x", "b"], "bx"), n("Sigmoid", ["bx"], "s"), n("Mul", ["x", "s"], "y")], {"b": 1.702},
                lambda x: x / (1 + np.exp(-1.702 * x)), "Composite", 0.16),
    "gelu-erf-torch": ([n("Div", ["x", "r2"], "a"), n("Erf", ["a"], "e"), n("Add", ["e", "one"], "p"),
                        n("Mul", ["x", "p"], "m"), n("Mul", ["m", "half"], "y")], {"r2": SQRT2, "one": 1.0,
                                                                                   "half": 0.5},
                       lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / SQRT2)), "GELU", 0.14),
    "gelu-erf-half-first": ([n("Mul", ["x", "ir2"], "a"), n("Erf", ["a"], "e"), n("Add", ["one", "e"], "p"),
                             n("Mul", ["half", "x"], "hx"), n("Mul", ["hx", "p"], "y")],
                            {"ir2": 1 / SQRT2, "one": 1.0, "half": 0.5},
                            lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / SQRT2)), "GELU", 0.14),
    "gelu-tanh": ([n("Pow", ["x", "three"], "x3"), n("Mul", ["x3", "k"], "kx3"), n("Add", ["x", "kx3"], "inner"),
                   n("Mul", ["inner", "c"], "ci"), n("Tanh", ["ci"], "t"), n("Add", ["t", "one"], "p"),
                   n("Mul", ["x", "p"], "m"), n("Mul", ["m", "half"], "y")],
                  {"three": 3.0, "k": 0.044715, "c": C, "one": 1.0, "half": 0.5},
                  lambda x: 0.5 * x * (1 + np.tanh(C * (x + 0.044715 * x**3))), "GELU(tanh)", 0.14),
    "mish": ([n("Softplus", ["x"], "sp"), n("Tanh", ["sp"], "t"), n("Mul", ["x", "t"], "y")], {},
             lambda x: x * np.tanh(np.logaddexp(0, x)), "Mish", 0.12),
    "hardswish-clip": ([n("Add", ["x", "three"], "a"), n("Clip", ["a", "zero", "six"], "c"), n("Mul", ["x", "c"], "m"),
                        n("Div", ["m", "six"], "y")], {"three": 3.0, "zero": 0.0, "six": 6.0},
                       lambda x: x * np.clip(x + 3, 0, 6) / 6, "HardSwish", 0.25),
    "hardswish-hardsigmoid": ([n("HardSigmoid", ["x"], "h", alpha=1 / 6, beta=0.5), n("Mul", ["x", "h"], "y")], {},
                              lambda x: x * np.clip(x / 6 + 0.5, 0, 1), "HardSwish", 0.25),
    "hardswish-relu6": ([n("Add", ["x", "three"], "a"), n("Clip", ["a", "zero", "six"], "r6"),
                         n("Mul", ["x", "r6"], "m"),
                         n("Mul", ["m", "sixth"], "y")], {"three": 3.0, "zero": 0.0, "six": 6.0, "sixth": 1 / 6},
                        lambda x: x * np.clip(x + 3, 0, 6) / 6, "HardSwish", 0.25),
    "hardswish-minmax": ([n("Add", ["x", "three"], "a"), n("Max", ["a", "zero"], "mx"), n("Min", ["mx", "six"], "mn"),
                          n("Mul", ["x", "mn"], "m"), n("Div", ["m", "six"], "y")], {"three": 3.0, "zero": 0.0,
                                                                                     "six": 6.0},
                         lambda x: x * np.clip(x + 3, 0, 6) / 6, "HardSwish", 0.25),
    "relu6-minmax": ([n("Max", ["x", "zero"], "a"), n("Min", ["a", "six"], "y")], {"zero": 0.0, "six": 6.0},
                     lambda x: np.clip(x, 0, 6), "ReLU6", 0.005),
    "leakyrelu-max": ([n("Mul", ["x", "a"], "ax"), n("Max", ["x", "ax"], "y")], {"a": 0.1},
                      lambda x: np.maximum(x, 0.1 * x), "Composite", 0.2),
    "softplus-log": ([n("Exp", ["x"], "e"), n("Add", ["e", "one"], "p"), n("Log", ["p"], "y")], {"one": 1.0},
                     lambda x: np.logaddexp(0, x), "Softplus", 0.35),
}


@pytest.mark.parametrize("constant_nodes", [False, True], ids=["initializers", "constant-nodes"])
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_pattern_becomes_one_gate(name: str, constant_nodes: bool, tmp_path: Path) -> None:
    nodes, consts, ref, label, tol = PATTERNS[name]
    src = save(graph_model(nodes, consts, constant_nodes=constant_nodes), tmp_path / "m.onnx")
    report = amos_onnx.convert(src, tmp_path / "fn.onnx")
    amos_onnx.convert(src, tmp_path / "inline.onnx", emit="inline")
    assert [(s.status, s.op.split("[")[0]) for s in report.sites] == [("converted", label)]
    fn = onnx.load(str(tmp_path / "fn.onnx"))
    assert [node.op_type for node in fn.graph.node] == ["AmosGate"]  # every node of the pattern is gone
    assert not fn.graph.initializer
    gate = fn.graph.node[0]
    assert gate.name == f"{nodes[-1].name}/amos" and gate_params(gate).k == 16
    orig = amos_onnx.session(src).run(None, {"x": X})[0]
    assert np.abs(orig - ref(X.astype(np.float64))).max() < 1e-4 * max(1.0, np.abs(orig).max())
    a = amos_onnx.session(tmp_path / "fn.onnx", native=False).run(None, {"x": X})[0]
    b = amos_onnx.session(tmp_path / "inline.onnx").run(None, {"x": X})[0]
    assert np.array_equal(a, b)
    assert np.abs(a - orig).max() <= tol


def test_squeeze_excitation_is_not_silu(tmp_path: Path) -> None:
    """x * Sigmoid(s) with s computed from another branch: the Sigmoid converts alone, the Mul stays."""
    w = numpy_helper.from_array(np.eye(8, dtype=np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["s"], name="squeeze"),
             helper.make_node("Sigmoid", ["s"], ["g"], name="excite"),
             helper.make_node("Mul", ["x", "g"], ["y"], name="scale")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], [w])
    src = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    report = amos_onnx.convert(src, tmp_path / "c.onnx")
    assert [(s.node, s.op, s.status) for s in report.sites] == [("excite", "Sigmoid", "converted")]
    assert report.near_misses == [("scale", "Mul depends on 2 tensors (s, x), not one")]
    ops = [node.op_type for node in onnx.load(str(tmp_path / "c.onnx")).graph.node]
    assert ops == ["MatMul", "AmosGate", "Mul"]


def test_intermediate_used_elsewhere_is_kept(tmp_path: Path) -> None:
    """x*Sigmoid(x) whose Sigmoid output is also a graph output: no composite, the Sigmoid converts alone."""
    nodes = [n("Sigmoid", ["x"], "s"), n("Mul", ["x", "s"], "y")]
    src = save(graph_model(nodes, outputs=("y", "s")), tmp_path / "m.onnx")
    report = amos_onnx.convert(src, tmp_path / "c.onnx")
    assert [(s.op, s.status) for s in report.sites] == [("Sigmoid", "converted")]
    assert report.near_misses == [("mul_y", "intermediate tensor 's' is a graph output")]
    converted = onnx.load(str(tmp_path / "c.onnx"))
    assert [node.op_type for node in converted.graph.node] == ["AmosGate", "Mul"]
    assert [o.name for o in converted.graph.output] == ["y", "s"]


def test_intermediate_consumed_by_another_node_is_kept(tmp_path: Path) -> None:
    nodes = [n("Sigmoid", ["x"], "s"), n("Mul", ["x", "s"], "y"), n("Add", ["s", "s"], "z")]
    src = save(graph_model(nodes, outputs=("y", "z")), tmp_path / "m.onnx")
    report = amos_onnx.inspect(src)
    assert [(s.op, s.status) for s in report.sites] == [("Sigmoid", "would convert")]
    assert ("mul_y", "intermediate tensor 's' is also used by add_z") in report.near_misses


def test_consecutive_activations_stay_separate(tmp_path: Path) -> None:
    """Relu then SiLU: the SiLU composite stops at the Relu's output; the Relu converts on its own."""
    nodes = [n("Relu", ["x"], "r"), n("Sigmoid", ["r"], "s"), n("Mul", ["r", "s"], "y")]
    report = amos_onnx.inspect(save(graph_model(nodes), tmp_path / "m.onnx"))
    assert [(s.node, s.op) for s in report.sites] == [("relu_r", "Relu"), ("mul_y", "SiLU[Sigmoid·Mul]")]


def test_skip_composite_converts_the_parts(tmp_path: Path) -> None:
    nodes = [n("Sigmoid", ["x"], "s"), n("Mul", ["x", "s"], "y")]
    src = save(graph_model(nodes), tmp_path / "m.onnx")
    amos_onnx.convert(src, tmp_path / "c.onnx", skip={"Composite"})
    assert [node.op_type for node in onnx.load(str(tmp_path / "c.onnx")).graph.node] == ["AmosGate", "Mul"]


def test_arithmetic_on_one_tensor_is_not_an_activation(tmp_path: Path) -> None:
    """A layer norm's Sqrt(var + eps) and Exp(-x*x) are functions of one tensor but hold no activation: they
    are reported and left alone. Softplus as Log(1+Exp(x)) has none either, but is a known activation."""
    nodes = [n("Add", ["x", "eps"], "v"), n("Sqrt", ["v"], "y")]
    report = amos_onnx.convert(save(graph_model(nodes, {"eps": 1e-5}), tmp_path / "m.onnx"), tmp_path / "c.onnx")
    assert report.sites == []
    assert report.near_misses == [("sqrt_y", "Add·Sqrt is arithmetic on one tensor (no activation op, not a known "
                                   "activation): left as it is")]
    assert [node.op_type for node in onnx.load(str(tmp_path / "c.onnx")).graph.node] == ["Add", "Sqrt"]
    bump = [n("Mul", ["x", "x"], "sq"), n("Neg", ["sq"], "nsq"), n("Exp", ["nsq"], "y")]
    assert amos_onnx.inspect(save(graph_model(bump), tmp_path / "b.onnx")).sites == []
    softplus = [n("Exp", ["x"], "e"), n("Add", ["e", "one"], "p"), n("Log", ["p"], "y")]
    sites = amos_onnx.inspect(save(graph_model(softplus, {"one": 1.0}), tmp_path / "s.onnx")).sites
    assert [s.op for s in sites] == ["Softplus[Exp·Add·Log]"]
