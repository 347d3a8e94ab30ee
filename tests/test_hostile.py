"""Hostile and broken inputs: one line, exit code 2, no output written, no input changed, nothing read outside."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import ROOT, activation_model
from onnx import TensorProto, helper, numpy_helper

import amos_onnx
from amos_onnx import save as save_module
from amos_onnx.cli import main

DIGITS = ROOT / "examples/digits/digits_cnn.onnx"
TRAIN = ROOT / "examples/digits/digits_train.npz"
TEST = ROOT / "examples/digits/digits_test.npz"


def write(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def graph(nodes: list, inputs: list, outputs: list, inits: list | None = None, opset: int = 13) -> onnx.ModelProto:
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits or []),
                             opset_imports=[helper.make_opsetid("", opset)])


def vi(name: str, shape: list | None = None, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape if shape is not None else [4])


def external_model(tmp: Path, location: str, offset: str = "0", length: str = "16") -> Path:
    """A Relu model whose slope-free Add reads a weight from external data at `location`."""
    w = numpy_helper.from_array(np.ones(4, np.float32), "w")
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        w.external_data.add(key=key, value=value)
    model = graph([helper.make_node("Add", ["x", "w"], ["a"]), helper.make_node("Relu", ["a"], ["y"])],
                  [vi("x")], [vi("y")], [w])
    return write(model, tmp / "ext.onnx")


def _npz(tmp: Path, **arrays: np.ndarray) -> Path:
    np.savez(tmp / "data.npz", **arrays)
    return tmp / "data.npz"


IMG = np.zeros((4, 1, 8, 8), np.float32)
Case = Callable[[Path], tuple[list[str], str]]


def _bytes(data: bytes) -> Case:
    def build(tmp: Path) -> tuple[list[str], str]:
        (tmp / "m.onnx").write_bytes(data)
        return ["convert", str(tmp / "m.onnx"), str(tmp / "out.onnx")], ""
    return build


def _model(make: Callable[[], onnx.ModelProto], validate: bool = False) -> Case:
    def build(tmp: Path) -> tuple[list[str], str]:
        path = write(make(), tmp / "m.onnx")
        if validate:
            return ["validate", str(path), str(path)], ""
        return ["convert", str(path), str(tmp / "out.onnx")], ""
    return build


def _digits(*options: str) -> Case:
    return lambda tmp: (["convert", str(DIGITS), str(tmp / "out.onnx"), *options], "")


def _calib(**arrays: np.ndarray) -> Case:
    return lambda tmp: (["convert", str(DIGITS), str(tmp / "out.onnx"), "--calib", str(_npz(tmp, **arrays))], "")


def _validate(**arrays: np.ndarray) -> Case:
    return lambda tmp: (["validate", str(DIGITS), str(DIGITS), "--data", str(_npz(tmp, **arrays))], "")


def _image_folder(tmp: Path, junk: bool = False) -> Path:
    """Four 8x8 grey PNGs (digits-sized), plus an undecodable .png when junk."""
    from PIL import Image

    folder = tmp / "imgs"
    folder.mkdir()
    for i in range(4):
        Image.fromarray((IMG[i, 0] * 255 / max(IMG[i].max(), 1)).astype(np.uint8)).save(folder / f"{i}.png")
    if junk:
        (folder / "broken.png").write_bytes(b"not a png at all")
    return folder


def _images(*options: str, junk: bool = False, empty: bool = False) -> Case:
    def build(tmp: Path) -> tuple[list[str], str]:
        folder = tmp / "imgs" if empty else _image_folder(tmp, junk)
        folder.mkdir(exist_ok=True)
        return ["convert", str(DIGITS), str(tmp / "out.onnx"), "--calib", str(folder), *options], ""
    return build


def _bomb(tmp: Path) -> tuple[list[str], str]:
    """A folder holding a PNG whose header declares 30000 x 30000 pixels (a few hundred bytes on disk)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    folder = tmp / "bomb"
    folder.mkdir()
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    (folder / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                                      + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
    return ["convert", str(DIGITS), str(tmp / "out.onnx"), "--calib", str(folder), "--image-size", "8x8"], ""


def _ext(location: str, setup: Callable[[Path], None] = lambda tmp: None) -> Case:
    def build(tmp: Path) -> tuple[list[str], str]:
        setup(tmp)
        return ["convert", str(external_model(tmp, location)), str(tmp / "out.onnx")], ""
    return build


def _span(offset: str, length: str) -> Case:
    def build(tmp: Path) -> tuple[list[str], str]:
        (tmp / "weights.bin").write_bytes(np.ones(16, np.float32).tobytes())
        return ["convert", str(external_model(tmp, "weights.bin", offset, length)), str(tmp / "out.onnx")], ""
    return build


def _outside_file(tmp: Path) -> None:
    (tmp.parent / "secret.bin").write_bytes(np.ones(4, np.float32).tobytes())


def _symlink_out(tmp: Path) -> None:
    _outside_file(tmp)
    os.symlink(tmp.parent / "secret.bin", tmp / "link.bin")


def _cycle() -> onnx.ModelProto:
    return graph([helper.make_node("Relu", ["b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
                  helper.make_node("Add", ["x", "b"], ["y"])], [vi("x")], [vi("y")])


def _nan_weights() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.array([1, np.nan, 0, 0], np.float32), "w")
    return graph([helper.make_node("Add", ["x", "w"], ["a"]), helper.make_node("Relu", ["a"], ["y"])],
                 [vi("x")], [vi("y")], [w])


def _converted_twice(tmp: Path) -> tuple[list[str], str]:
    amos_onnx.convert(DIGITS, tmp / "once.onnx")
    return ["convert", str(tmp / "once.onnx"), str(tmp / "once.onnx")], ""


CORPUS: dict[str, tuple[Case, str]] = {
    "missing file": (lambda tmp: (["convert", str(tmp / "nope.onnx"), str(tmp / "out.onnx")], ""),
                     "no such model file"),
    "empty file": (_bytes(b""), "file is empty"),
    "random bytes": (_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()),
                     "not an ONNX model"),
    "text file": (_bytes(b"name,value\n1,2\n"), "not an ONNX model"),
    "truncated model": (_bytes(DIGITS.read_bytes()[:5000]), "not an ONNX model"),
    "truncated tail": (_bytes(DIGITS.read_bytes()[:-7]), "not an ONNX model"),
    "tensor message": (_bytes(numpy_helper.from_array(np.ones(3, np.float32)).SerializeToString()),
                       "not an ONNX model"),
    "graph message": (_bytes(helper.make_graph([], "g", [], []).SerializeToString()), "not an ONNX model"),
    "dangling input": (_model(lambda: graph([helper.make_node("Relu", ["nowhere"], ["y"])], [vi("x")], [vi("y")])),
                       "model fails the ONNX checker"),
    "cycle": (_model(_cycle), "model fails the ONNX checker"),
    "duplicate tensor names": (_model(lambda: graph([helper.make_node("Relu", ["x"], ["y"]),
                                                     helper.make_node("Relu", ["x"], ["y"])], [vi("x")], [vi("y")])),
                               "model fails the ONNX checker"),
    "missing graph output": (_model(lambda: graph([helper.make_node("Relu", ["x"], ["a"])], [vi("x")], [vi("y")])),
                             "model fails the ONNX checker"),
    "unknown domain op": (_model(lambda: helper.make_model(
        helper.make_graph([helper.make_node("Frob", ["x"], ["y"], domain="com.nowhere")], "g", [vi("x")], [vi("y")]),
        opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.nowhere", 1)]), validate=True),
        "onnxruntime cannot load the model"),
    "opset too old": (_model(lambda: graph([helper.make_node("Relu", ["x"], ["y"])], [vi("x")], [vi("y")], opset=7)),
                      "opset 7 is below the supported minimum 9"),
    "opset too new": (_model(lambda: graph([helper.make_node("Relu", ["x"], ["y"])], [vi("x")], [vi("y")], opset=99)),
                      "opset 99 is newer than the newest"),
    "no default opset": (_model(lambda: helper.make_model(helper.make_graph([], "g", [vi("x")], [vi("x")]),
                                                          opset_imports=[helper.make_opsetid("x.y", 1)])),
                         "imports no default ONNX opset"),
    "NaN weights": (_model(_nan_weights), "initializer 'w' contains NaN"),
    "opset imported twice": (_model(lambda: helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [vi("x")], [vi("y")]),
        opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("", 17)])),
        "imports an opset for domain 'ai.onnx' more than once"),
    "external data missing": (_ext("weights.bin"), "no such file next to the model"),
    "external data ..": (_ext("../secret.bin", _outside_file), "only plain paths inside the model's folder"),
    "external data absolute": (_ext("/etc/hostname"), "only plain paths inside the model's folder"),
    "external data symlink": (_ext("link.bin", _symlink_out), "leads outside the model's folder"),
    "external data at a negative offset": (_span("-4096", "16"), "offset -4096 and length 16 must not be negative"),
    "external data past the file's end": (_span("0", "1048576"), "reaches past the file's 64 bytes"),
    "output is the input": (lambda tmp: (["convert", str(DIGITS), str(DIGITS)], ""), "output path is the input model"),
    "output is the calibration data": (lambda tmp: (["convert", str(DIGITS), str(TRAIN), "--calib", str(TRAIN)], ""),
                                       "output path is the input model"),
    "output is external data": (lambda tmp: ((tmp / "w.bin").write_bytes(np.ones(4, np.float32).tobytes()) and None)
                                or (["convert", str(external_model(tmp, "w.bin")), str(tmp / "w.bin")], ""),
                                "output path is the input model"),
    "output folder missing": (lambda tmp: (["convert", str(DIGITS), str(tmp / "no/dir/out.onnx")], ""),
                              "does not exist"),
    "output is a folder": (lambda tmp: (["convert", str(DIGITS), str(tmp)], ""), "is a directory"),
    "output names a new folder": (lambda tmp: (["convert", str(DIGITS), str(tmp / "newdir") + "/"], ""),
                                  "output path names a folder"),
    # /proc refuses new files even to root, so this also holds when the tests run as root
    "output folder not writable": (lambda tmp: (["convert", str(DIGITS), "/proc/amos_out.onnx"], ""),
                                   "/proc/amos_out.onnx: "),
    "already converted, onto itself": (_converted_twice, "output path is the input model"),
    "K = 0": (_digits("--k", "0"), "--k 0: K must be between 1 and 64"),
    "K negative": (_digits("--k", "-2"), "--k -2: K must be between 1 and 64"),
    "K too big": (_digits("--k", "65"), "--k 65: K must be between 1 and 64"),
    "unknown --only op": (_digits("--only", "Relu,Frob"), "--only: unknown activation op Frob"),
    "unknown --skip op": (_digits("--skip", "Frob"), "--skip: unknown activation op Frob"),
    "empty --only": (_digits("--only", ","), "--only: give a comma-separated list"),
    "unknown --emit": (_digits("--emit", "fancy"), "--emit fancy: must be one of function, inline"),
    "calibration missing file": (_digits("--calib", "/nonexistent/c.npz"), "no such data file"),
    "calibration not npz": (lambda tmp: ((tmp / "c.npz").write_text("x") and None) or
                            (["convert", str(DIGITS), str(tmp / "out.onnx"), "--calib", str(tmp / "c.npz")], ""),
                            "not a readable .npz file"),
    "calibration missing name": (_calib(pixels=IMG), "no array for model input 'image'"),
    "calibration wrong dtype": (_calib(image=IMG.astype(np.float16)), "has dtype float16, the model expects float32"),
    "calibration wrong rank": (_calib(image=IMG[0]), "the model expects rank 4"),
    "calibration wrong dims": (_calib(image=np.zeros((4, 1, 9, 8), np.float32)), "the model expects [batch, 1, 8, 8]"),
    "calibration NaN": (_calib(image=np.full((4, 1, 8, 8), np.nan, np.float32)), "contains NaN or Inf"),
    "calibration zero samples": (_calib(image=IMG[:0]), "data has zero samples"),
    "calibration ragged labels": (_calib(image=IMG, labels=np.zeros(3)), "'labels' must be a 1-D array of 4 labels"),
    "validate missing name": (_validate(pixels=IMG), "no array for model input 'image'"),
    "validate huge random input": (_model(lambda: graph([helper.make_node("Relu", ["x"], ["y"])],
                                                        [vi("x", [100000, 100000])], [vi("y", [100000, 100000])]),
                                          validate=True), "too large for random inputs"),
    "unknown option": (_digits("--frobnicate"), "No such option '--frobnicate'"),
    "K not a number": (_digits("--k", "ten"), "--k ten: give a number of neurons or 'auto'"),
    "bad --k-per-op": (_digits("--k-per-op", "Relu:8"), "--k-per-op Relu:8: expected OP=K"),
    "--k-per-op unknown op": (_digits("--k-per-op", "Frob=4"), "--k-per-op: unknown activation op Frob"),
    "--k-per-op K out of range": (_digits("--k-per-op", "Relu=99"), "--k-per-op Relu=99: K must be between 1 and 64"),
    "--target-mse not positive": (_digits("--k", "auto", "--target-mse", "0"), "--target-mse 0.0: must be positive"),
    "missing output argument": (lambda tmp: (["convert", str(DIGITS)], ""), "Missing argument 'OUTPUT'"),
    "images: std without mean": (_images("--std", "0.5"), "--std given without --mean"),
    "images: mean without std": (_images("--mean", "0.5"), "--mean given without --std"),
    "images: wrong layout": (_images("--layout", "NHWC"), "--layout NHWC does not fit input 'image' [?, 1, 8, 8]"),
    "images: size against the model": (_images("--image-size", "16x16"),
                                       "--image-size 16x16 does not fit input 'image'"),
    "images: three means for one channel": (_images("--mean", "0.4,0.5,0.6", "--std", "1"),
                                            "--mean: 3 values for 1 channels"),
    "images: zero std": (_images("--mean", "0", "--std", "0"), "--std 0: every std must be positive"),
    "images: bad mean list": (_images("--mean", "a,b", "--std", "1"), "--mean a,b: give comma-separated numbers"),
    "images: bad size": (_images("--image-size", "big"), "--image-size big: give HxW"),
    "images: folder without images": (_images(empty=True), "no image files"),
    "images: undecodable image": (_images(junk=True), "broken.png: not a readable image"),
    "images: a header declaring 30000 x 30000 pixels": (_bomb, "huge.png: image too large to read"),
    "images: options without a folder": (_digits("--calib", str(TRAIN), "--mean", "0", "--std", "1"),
                                         "image options (--image-size, --layout, --scale, --mean, --std, --bgr) need "
                                         "a folder"),
}


def _hashes(paths: list[Path]) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


@pytest.mark.parametrize("name", list(CORPUS))
def test_bad_input_is_refused_cleanly(name: str, tmp_path: Path) -> None:
    build, fragment = CORPUS[name]
    work = tmp_path / "work"
    work.mkdir()
    args, _ = build(work)
    watched = [DIGITS, TRAIN, TEST] + sorted(p for p in work.iterdir() if p.is_file())
    before, listing = _hashes(watched), sorted(p.name for p in work.iterdir())
    result = CliRunner().invoke(main, args)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("amos-onnx: error: ") and fragment in lines[0], result.stderr
    assert _hashes(watched) == before  # no input changed
    assert sorted(p.name for p in work.iterdir()) == listing  # no output, no stray temporary file


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 40


def test_converting_a_converted_model_passes_it_through(tmp_path: Path) -> None:
    """Documented behaviour: a converted model has no activations left, so it is re-saved unchanged."""
    once, twice = tmp_path / "once.onnx", tmp_path / "twice.onnx"
    amos_onnx.convert(DIGITS, once)
    report = amos_onnx.convert(once, twice)
    assert report.sites == []
    a, b = onnx.load(str(once)), onnx.load(str(twice))
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    assert a.graph.node == b.graph.node and list(a.functions) == list(b.functions)


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_interrupted_write_keeps_previous_output(failure: BaseException, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous output")
    real_replace = os.replace

    def broken(src: str, dst: str) -> None:
        raise failure

    monkeypatch.setattr(save_module.os, "replace", broken)
    src = tmp_path / "m.onnx"
    write(activation_model("Relu", 13), src)
    if isinstance(failure, OSError):
        result = CliRunner().invoke(main, ["convert", str(src), str(out)])
        assert result.exit_code == 2 and "writing failed (No space left on device)" in result.stderr
    else:
        with pytest.raises(KeyboardInterrupt):
            amos_onnx.convert(src, out)
    monkeypatch.setattr(save_module.os, "replace", real_replace)
    assert out.read_bytes() == b"previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out.onnx"]


def test_nothing_outside_the_model_folder_is_read(tmp_path: Path) -> None:
    """The '..' model is refused before any external data is opened (the secret's access time is kept)."""
    work = tmp_path / "work"
    work.mkdir()
    _outside_file(work)
    secret = tmp_path / "secret.bin"
    os.utime(secret, (1_000_000, 1_000_000))
    result = CliRunner().invoke(main, ["inspect", str(external_model(work, "../secret.bin"))])
    assert result.exit_code == 2
    assert secret.stat().st_atime == 1_000_000


def test_onnxruntime_s_own_log_stays_out_of_the_one_line_error(tmp_path: Path) -> None:
    """A converted model onnxruntime refuses (a gate whose thresholds are INTS): `validate` in a process of its
    own writes exactly one line to stderr, ours, naming the model and the attribute (onnxruntime's logger writes
    to the process's stderr itself, which the command line runner would not see)."""
    import subprocess
    import sys

    original = tmp_path / "relu.onnx"
    onnx.save(activation_model("Relu", 17, shape=[4]), str(original))
    node = helper.make_node("AmosGate", ["x"], ["y"], domain="amos", name="bad/amos", k=3, thresholds=[1, 2, 3],
                            resets=[1.0] * 3, weights=[1.0] * 3)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    converted = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("amos", 1)]),
              str(converted))
    done = subprocess.run([sys.executable, "-m", "amos_onnx", "validate", str(original), str(converted)],
                          capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"amos-onnx: error: {converted}: onnxruntime cannot load the model")
    assert "attribute 'thresholds' must be a non-empty list of floats" in lines[0]


def test_a_model_only_the_full_check_refuses_converts_with_a_note(tmp_path: Path) -> None:
    """A model whose value_info gives a tensor rank 0 where it has rank 2 (onnx.checker's full check: "Inferred
    shape and existing shape differ in rank"; onnxruntime merges it leniently and runs it, as with a real table
    recognizer's Loop body): converted, data-free and calibrated, with the full check's complaint in the report's
    notes; the output equals the original within the ReLU gate's error (K=8 on [-10, 10]: 0.05)."""
    from amos_onnx.runtime import session

    nodes = [helper.make_node("Cast", ["x"], ["c"], to=TensorProto.FLOAT), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              value_info=[helper.make_tensor_value_info("c", TensorProto.FLOAT, [])])
    src = tmp_path / "loose.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    with pytest.raises(onnx.shape_inference.InferenceError):
        onnx.checker.check_model(str(src), full_check=True)
    x = np.linspace(-9, 9, 64, dtype=np.float32).reshape(16, 4)
    np.savez(tmp_path / "calib.npz", x=x)
    for calib in (None, tmp_path / "calib.npz"):
        report = amos_onnx.convert(src, tmp_path / "out.onnx", calib, k=8)
        assert [s.status.value for s in report.sites] == ["converted"]
        assert any("full check refuses the model" in n and "differ in rank" in n for n in report.notes), report.notes
        got = session(tmp_path / "out.onnx", native=False).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, np.maximum(x, 0), rtol=0, atol=0.05)
