"""The command line: bad input gives one line, exit code 2 and no output file; good input works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import ROOT, activation_model, save
from onnx import TensorProto, helper

from amos_onnx.cli import main

DIGITS = ROOT / "examples/digits/digits_cnn.onnx"
TRAIN = ROOT / "examples/digits/digits_train.npz"


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def bad_models(tmp: Path) -> dict[str, tuple[Path, str]]:
    """Broken model files and the message each must produce."""
    data = DIGITS.read_bytes()
    (tmp / "empty.onnx").write_bytes(b"")
    (tmp / "random.onnx").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (tmp / "text.onnx").write_text("this is not a model\n")
    (tmp / "truncated.onnx").write_bytes(data[: len(data) // 3])
    dangling = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["nowhere"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    (tmp / "checker.onnx").write_bytes(dangling.SerializeToString())
    return {
        "missing": (tmp / "nope.onnx", "no such model file"),
        "empty": (tmp / "empty.onnx", "file is empty, not an ONNX model"),
        "random": (tmp / "random.onnx", "not an ONNX model"),
        "text": (tmp / "text.onnx", "not an ONNX model"),
        "truncated": (tmp / "truncated.onnx", "not an ONNX model"),
        "checker": (tmp / "checker.onnx", "model fails the ONNX checker"),
    }


def assert_refused(code: int, err: str, fragment: str, out_dir: Path) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("amos-onnx: error: ") and fragment in lines[0], err
    assert not (out_dir / "out.onnx").exists()
    assert not [p for p in out_dir.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("kind", ["missing", "empty", "random", "text", "truncated", "checker"])
def test_bad_model_files(kind: str, tmp: Path) -> None:
    path, fragment = bad_models(tmp)[kind]
    for command in (["convert", path, tmp / "out.onnx"], ["inspect", path]):
        code, _, err = cli(*command)
        assert_refused(code, err, fragment, tmp)
        assert str(path) in err


def test_output_equal_to_input_is_refused(tmp: Path) -> None:
    model = tmp / "m.onnx"
    model.write_bytes(DIGITS.read_bytes())
    code, _, err = cli("convert", model, model)
    assert code == 2 and "output path is the input model" in err
    assert model.read_bytes() == DIGITS.read_bytes()


def test_missing_output_folder_is_refused(tmp: Path) -> None:
    code, _, err = cli("convert", DIGITS, tmp / "no/such/dir/out.onnx")
    assert code == 2 and "does not exist" in err


def test_validate_bad_data_and_failed_verdict(tmp: Path) -> None:
    code, _, err = cli("validate", DIGITS, DIGITS, "--data", tmp / "none.npz")
    assert code == 2 and "no such data file" in err
    converted = tmp / "k1.onnx"
    assert cli("convert", DIGITS, converted, "--k", "1")[0] == 0
    code, out, _ = cli("validate", DIGITS, converted, "--data", ROOT / "examples/digits/digits_test.npz",
                       "--min-agreement", "0.999", "--json", tmp / "r.json")
    assert code == 1 and out.count("FAILED logits:") == 1
    report = json.loads((tmp / "r.json").read_text())
    assert report["passed"] is False and report["outputs"][0]["agreement"] < 0.999


def test_model_without_activations_converts_and_says_so(tmp: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"], name="add")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    src = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp / "m.onnx")
    code, out, _ = cli("convert", src, tmp / "out.onnx")
    assert code == 0 and "no activations found" in out
    assert [n.op_type for n in onnx.load(str(tmp / "out.onnx")).graph.node] == ["Add"]


def test_unconverted_ops_pass_through_and_skip_reasons_are_listed(tmp: Path) -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Softmax", ["a"], ["b"], name="softmax", axis=1),
        helper.make_node("Tanh", ["b"], ["y"], name="tanh"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    src = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp / "m.onnx")
    code, out, _ = cli("convert", src, tmp / "out.onnx", "--skip", "Tanh")
    assert code == 0
    assert "Relu: 1 converted  K=10" in out and "Tanh: 1 skipped (in --skip)" in out
    assert "converted 1 of 2 activation sites, 1 skipped" in out
    ops = [(n.op_type, n.name) for n in onnx.load(str(tmp / "out.onnx")).graph.node]
    assert ops == [("AmosGate", "relu/amos"), ("Softmax", "softmax"), ("Tanh", "tanh")]


def test_inspect_writes_nothing_and_lists_sites(tmp: Path) -> None:
    src = save(activation_model("Sigmoid", 13), tmp / "m.onnx")
    before = sorted(p.name for p in tmp.iterdir())
    code, out, _ = cli("inspect", src)
    assert code == 0 and "sigmoid_site\tSigmoid\twould convert\tSigmoid" in out
    assert sorted(p.name for p in tmp.iterdir()) == before


def test_console_script_runs_as_a_process(tmp: Path) -> None:
    """The installed entry point (not only the click object) gives the same exit codes."""
    done = subprocess.run([sys.executable, "-m", "amos_onnx", "convert", str(tmp / "nope.onnx"), str(tmp / "o.onnx")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
