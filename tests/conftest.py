"""Fixtures built in code: single-activation models and helpers to run them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent


def activation_model(
    op: str,
    opset: int,
    attrs: dict | None = None,
    consts: list[np.ndarray | None] | None = None,
    shape: list[int | str] | None = None,
    as_constant_nodes: bool = False,
    ir_version: int = 8,
) -> onnx.ModelProto:
    """x -> op(x, *consts) -> y; consts become initializers (or Constant nodes); None leaves an input empty."""
    shape = shape or ["N", 16]
    inputs, nodes, inits = ["x"], [], []
    for i, value in enumerate(consts or []):
        if value is None:
            inputs.append("")
            continue
        name = f"c{i}"
        inputs.append(name)
        tensor = numpy_helper.from_array(np.asarray(value), name)
        if as_constant_nodes:
            nodes.append(helper.make_node("Constant", [], [name], value=tensor, name=f"const{i}"))
        else:
            inits.append(tensor)
    nodes.append(helper.make_node(op, inputs, ["y"], name=f"{op.lower()}_site", **(attrs or {})))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
    onnx.checker.check_model(model, full_check=True)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path
