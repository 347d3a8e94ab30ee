"""Models with external data: large weights stay on disk through load, calibration and save; the output's
weights go to one data file beside it; inspect never reads them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import amos_onnx
from amos_onnx.errors import ModelLoadError, OutputPathError
from amos_onnx.load import SMALL_EXTERNAL, read_model

WIDTH = 192  # 192 x 192 float32 = 144 KiB per weight: above SMALL_EXTERNAL, so it stays on disk


def mlp(folder: Path, name: str = "mlp.onnx", nan: bool = False) -> Path:
    """x -> MatMul -> Relu -> MatMul -> x*Sigmoid(x) -> MatMul -> y, every tensor saved as external data."""
    rng = np.random.default_rng(0)
    weights = [rng.normal(0, 1 / np.sqrt(WIDTH), (WIDTH, WIDTH)).astype(np.float32) for _ in range(3)]
    if nan:
        weights[2][5, 7] = np.nan
    inits = [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["a"]), helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w1"], ["b"]), helper.make_node("Sigmoid", ["b"], ["s"]),
             helper.make_node("Mul", ["b", "s"], ["m"], name="silu"), helper.make_node("MatMul", ["m", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", WIDTH])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / name), save_as_external_data=True, location=f"{name}.weights", size_threshold=0)
    return folder / name


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_weights_stay_on_disk_and_the_output_carries_its_own(tmp_path: Path) -> None:
    src = mlp(tmp_path / "in")
    weights_file = tmp_path / "in" / "mlp.onnx.weights"
    before = digest(weights_file)
    model, files, _ = read_model(src)
    assert files == [weights_file]
    assert [t.data_location for t in model.graph.initializer] == [TensorProto.EXTERNAL] * 3  # 144 KiB > 64 KiB
    assert WIDTH * WIDTH * 4 > SMALL_EXTERNAL
    x = np.random.default_rng(1).normal(size=(64, WIDTH)).astype(np.float32)
    inline = tmp_path / "inline.onnx"
    onnx.save(onnx.load(str(src)), str(inline))
    (tmp_path / "out").mkdir()
    for calib in (None, {"x": x}):
        out = tmp_path / "out" / ("cal.onnx" if calib else "free.onnx")
        report = amos_onnx.convert(src, out, calib=calib)
        assert [(s.op, s.status) for s in report.sites] == [("Relu", "converted"), ("SiLU[Sigmoid·Mul]", "converted")]
        data = out.with_name(out.name + ".data")
        assert data.stat().st_size == 3 * WIDTH * WIDTH * 4
        converted = onnx.load(str(out), load_external_data=False)
        locations = {e.value for t in converted.graph.initializer for e in t.external_data if e.key == "location"}
        assert locations == {data.name}
        assert [n.op_type for n in converted.graph.node] == ["MatMul", "AmosGate", "MatMul", "AmosGate", "MatMul"]
        # the weights copied beside the output are the original weights, byte for byte
        original = onnx.load(str(src))
        copied = onnx.load(str(out))
        for a, b in zip(original.graph.initializer, copied.graph.initializer):
            assert np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
        # the same conversion of the model with its weights inside gives the same gates and outputs
        amos_onnx.convert(inline, tmp_path / "inline_out.onnx", calib=calib)
        reference = onnx.load(str(tmp_path / "inline_out.onnx"))
        assert [n.attribute for n in converted.graph.node] == [n.attribute for n in reference.graph.node]
        y_ref = amos_onnx.session(tmp_path / "inline_out.onnx").run(None, {"x": x})[0]
        assert np.array_equal(amos_onnx.session(out).run(None, {"x": x})[0], y_ref)
        result = amos_onnx.validate(src, out, {"x": x})
        assert result.samples == 64 and len(result.gates) == 2
    assert digest(weights_file) == before


def test_inspect_does_not_read_the_weights(tmp_path: Path) -> None:
    """The weights file is replaced by one of the same size full of NaN: inspect (which never reads it) still
    lists the sites, while convert scans the weights and refuses them."""
    src = mlp(tmp_path)
    weights_file = tmp_path / "mlp.onnx.weights"
    weights_file.write_bytes(np.full(weights_file.stat().st_size // 4, np.nan, np.float32).tobytes())
    assert [s.op for s in amos_onnx.inspect(src).sites] == ["Relu", "SiLU[Sigmoid·Mul]"]
    with pytest.raises(ModelLoadError, match="initializer 'w0' contains NaN"):
        amos_onnx.convert(src, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "out.onnx.data").exists()


def test_nan_in_one_external_weight_is_found(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="initializer 'w2' contains NaN"):
        amos_onnx.convert(mlp(tmp_path, nan=True), tmp_path / "out.onnx")


def test_an_output_whose_data_file_is_the_input_weights_is_refused(tmp_path: Path) -> None:
    """mlp.onnx keeps its weights in 'w.onnx.data'; writing w.onnx beside it would overwrite them."""
    src = mlp(tmp_path)
    (tmp_path / "mlp.onnx.weights").rename(tmp_path / "w.onnx.data")
    model = onnx.load(str(src), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "w.onnx.data"
    onnx.save(model, str(src))
    before = digest(tmp_path / "w.onnx.data")
    with pytest.raises(OutputPathError, match="would overwrite an input"):
        amos_onnx.convert(src, tmp_path / "w.onnx")
    assert digest(tmp_path / "w.onnx.data") == before and not (tmp_path / "w.onnx").exists()


def test_the_weights_file_never_overwrites_the_model_or_the_calibration_data(tmp_path: Path) -> None:
    """The output's weights file `<output>.data` is checked against every input: the model file itself (a model
    named net.data converted to net) and the calibration data (out.onnx.data converted to out.onnx)."""
    src = mlp(tmp_path, name="net.data")
    before = digest(src)
    with pytest.raises(OutputPathError, match="would overwrite an input"):
        amos_onnx.convert(src, tmp_path / "net")
    assert digest(src) == before and not (tmp_path / "net").exists()
    src = mlp(tmp_path / "b")
    calib = tmp_path / "b" / "out.onnx.data"
    with open(calib, "wb") as handle:  # an .npz by its content, whatever its name
        np.savez(handle, x=np.zeros((4, WIDTH), np.float32))
    before = digest(calib)
    with pytest.raises(OutputPathError, match="would overwrite an input"):
        amos_onnx.convert(src, tmp_path / "b" / "out.onnx", calib=calib)
    assert digest(calib) == before and not (tmp_path / "b" / "out.onnx").exists()


def test_outputs_keep_an_existing_file_s_mode_or_take_the_umask_s(tmp_path: Path) -> None:
    """Rewriting an existing 0644 output keeps 0644 (its weights file too); a new one gets 0666 less the umask."""
    src = mlp(tmp_path / "in")
    out = tmp_path / "out.onnx"
    amos_onnx.convert(src, out)
    umask = os.umask(0o022)
    try:
        assert out.stat().st_mode & 0o777 == 0o666 & ~umask
        out.chmod(0o640)
        amos_onnx.convert(src, out)
        assert out.stat().st_mode & 0o777 == 0o640
        fresh = tmp_path / "fresh.onnx"
        amos_onnx.convert(src, fresh)
        assert fresh.stat().st_mode & 0o777 == 0o644
        assert (tmp_path / "fresh.onnx.data").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)


def _constants_model(folder: Path, location: str) -> Path:
    """x + c -> Relu -> If(flag: + c2 in a Constant inside the branch, else as it is), with c (a Constant node's
    value) and c2 (a Constant inside the If's then-branch) stored as external data at `location`
    (relative to the model's folder), which the caller makes exist."""
    c, c2 = np.linspace(-1, 1, 64, dtype=np.float32), np.linspace(2, -2, 64, dtype=np.float32)
    then = helper.make_graph([helper.make_node("Constant", [], ["c2"], value=numpy_helper.from_array(c2, "c2")),
                              helper.make_node("Add", ["r", "c2"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 64])])
    other = helper.make_graph([helper.make_node("Identity", ["r"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", 64])])
    nodes = [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(c, "c"), name="const"),
             helper.make_node("Add", ["x", "c"], ["a"]), helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=other, name="branch")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64]),
                                           helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = bytearray()
    branch = next(a.g for a in model.graph.node[3].attribute if a.name == "then_branch")
    for tensor in (model.graph.node[0].attribute[0].t, branch.node[0].attribute[0].t):
        raw = tensor.raw_data or np.array(tensor.float_data, np.float32).tobytes()
        offset = len(data)
        data += raw
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "constants.onnx"))
    (folder / "constants.bin").write_bytes(bytes(data))
    return folder / "constants.onnx"


def test_constant_nodes_and_subgraphs_with_external_data_are_checked_and_carried(tmp_path: Path) -> None:
    """External data of a Constant node and of a Constant in an If branch: read through a symlink out of the
    model's folder, it is refused naming the node and attribute; inside the folder, the conversion carries the
    values in its own output (which then runs with the input's data file gone), equal to the original within
    the ReLU gate's error."""
    from amos_onnx.runtime import session

    outside = tmp_path / "outside"
    outside.mkdir()
    model = _constants_model(tmp_path / "m", "link/constants.bin")
    (outside / "constants.bin").write_bytes((tmp_path / "m/constants.bin").read_bytes())
    os.symlink(outside, tmp_path / "m/link")
    with pytest.raises(ModelLoadError, match="node 'const' attribute 'value' external data 'link/constants.bin': "
                                             "leads outside the model's folder"):
        amos_onnx.convert(model, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()

    model = _constants_model(tmp_path / "ok", "constants.bin")
    x = np.linspace(-3, 3, 4 * 64, dtype=np.float32).reshape(4, 64)
    expected = [session(model, native=False).run(None, {"x": x, "flag": np.array(f)})[0] for f in (True, False)]
    amos_onnx.convert(model, tmp_path / "out.onnx", k=8)
    (tmp_path / "ok/constants.bin").unlink()
    converted = onnx.load(str(tmp_path / "out.onnx"))
    assert not any(t.data_location == TensorProto.EXTERNAL for t in (
        n.attribute[0].t for n in converted.graph.node if n.op_type == "Constant"))
    for flag, want in zip((True, False), expected):
        got = session(tmp_path / "out.onnx", native=False).run(None, {"x": x, "flag": np.array(flag)})[0]
        np.testing.assert_allclose(got, want, rtol=0, atol=0.05)
