"""Calibration and validation data in the forms users have: .npz/.npy, folders of images with explicit
preprocessing (scikit-image's sample images), dicts of arrays, iterables and CalibrationDataReader objects."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import ROOT
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import amos_onnx
from amos_onnx.calibrate.run import calibrate
from amos_onnx.cli import main
from amos_onnx.data.dataset import open_data
from amos_onnx.data.images import ImageOptions
from amos_onnx.data.progress import Progress
from amos_onnx.errors import DataError
from amos_onnx.options import CalibrationOptions, FindOptions
from amos_onnx.pipeline import _find
from amos_onnx.report.spikes import gate_params

skdata = pytest.importorskip("skimage.data")

DIGITS = ROOT / "examples/digits/digits_cnn.onnx"
TRAIN = ROOT / "examples/digits/digits_train.npz"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CALIBRATION_IMAGES = ("chelsea", "coffee", "rocket", "astronaut")
OTHER_IMAGES = ("retina", "hubble_deep_field", "immunohistochemistry")


def image_cnn(layout: str = "NCHW", size: int = 32) -> onnx.ModelProto:
    """A small seeded CNN for normalised RGB input: Relu on the input itself (so calibration sees the
    preprocessed pixels), Conv, Sigmoid, global pooling, Gemm to 5 classes."""
    rng = np.random.default_rng(0)
    shape = ["N", 3, size, size] if layout == "NCHW" else ["N", size, size, 3]
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="input_relu")]
    source = "r"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["r"], ["rt"], perm=[0, 3, 1, 2]))
        source = "rt"
    nodes += [
        helper.make_node("Conv", [source, "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c"], ["s"], name="conv_sigmoid"),
        helper.make_node("GlobalAveragePool", ["s"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"]),
    ]
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("w", rng.normal(0, 0.3, (8, 3, 3, 3))), ("b", rng.normal(0, 0.1, 8)),
        ("fw", rng.normal(0, 3, (8, 5))), ("fb", np.zeros(5)))]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def sample_folder(folder: Path, names: tuple[str, ...], size: int | None = None) -> Path:
    """scikit-image sample images as PNG files, whole or as a top-left crop of size x size."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        pixels = getattr(skdata, name)()
        if pixels.ndim == 2:
            pixels = np.stack([pixels] * 3, axis=-1)
        pixels = pixels[..., :3]
        if size is not None:
            pixels = pixels[:size, :size]
        Image.fromarray(pixels).save(folder / f"{name}.png")
    return folder


def test_image_folder_calibration_feeds_exactly_the_preprocessed_pixels(tmp_path: Path) -> None:
    """Images already at the model's size are not resampled, so the calibration samples of the Relu on the
    input must equal (pixel / 255 - mean) / std computed here independently."""
    model = image_cnn()
    folder = sample_folder(tmp_path / "calib", CALIBRATION_IMAGES, size=32)
    options = ImageOptions(mean=MEAN, std=STD)
    data = open_data(folder, model, options)
    assert data.count == 4 and "4 images, NCHW 3x32x32" in data.description
    sites, *_ = _find(model, FindOptions())
    reservoirs, seen = calibrate(model, sites, data, CalibrationOptions(seed=0))
    assert seen == 4
    expected = np.stack([(getattr(skdata, n)()[:32, :32, :3] / 255.0 - MEAN) / STD for n in CALIBRATION_IMAGES])
    values = reservoirs["x"].values
    assert values.size == expected.size == 4 * 3 * 32 * 32
    assert np.allclose(np.sort(values), np.sort(expected.astype(np.float32).ravel()), atol=1e-6)


def test_nhwc_and_bgr_layouts_are_honoured(tmp_path: Path) -> None:
    model = image_cnn("NHWC")
    folder = sample_folder(tmp_path / "calib", ("coffee",), size=32)
    batch = next(open_data(folder, model, ImageOptions(bgr=True, scale=1.0)).batches)["x"]
    pixels = skdata.coffee()[:32, :32, :3].astype(np.float32)
    assert batch.shape == (1, 32, 32, 3) and np.array_equal(batch[0], pixels[..., ::-1])
    nchw = next(open_data(folder, image_cnn(), ImageOptions(scale=1.0)).batches)["x"]
    assert nchw.shape == (1, 3, 32, 32) and np.array_equal(nchw[0], pixels.transpose(2, 0, 1))


@pytest.mark.parametrize(("layout", "channels", "dtype", "bgr", "mean", "std"), [
    ("NCHW", 3, np.float32, False, MEAN, STD), ("NCHW", 3, np.float32, True, MEAN, STD),
    ("NHWC", 3, np.float32, True, (0.5,), (0.25,)), ("NCHW", 1, np.float32, False, (0.5,), (0.5,)),
    ("NHWC", 3, np.float64, False, MEAN, STD), ("NCHW", 3, np.float16, False, None, None)])
def test_pixels_map_through_the_level_table_exactly_as_pixel_by_pixel_arithmetic(
        tmp_path: Path, layout: str, channels: int, dtype: type, bgr: bool, mean: tuple[float, ...] | None,
        std: tuple[float, ...] | None) -> None:
    """Each 8-bit level's value is computed once (images.levels) and looked up: bit for bit what
    (pixel * scale - mean) / std gives pixel by pixel in float32 (float64 for float64 models), resized and
    laid out as the model takes it."""
    from amos_onnx.data.images import ImagePlan, load_image

    folder = sample_folder(tmp_path / "photo", ("astronaut",))
    image_plan = ImagePlan(layout, channels, 40, 56, np.dtype(dtype))
    options = ImageOptions(scale=1 / 255, mean=mean, std=std, bgr=bgr)
    got = load_image(folder / "astronaut.png", image_plan, options)
    with Image.open(folder / "astronaut.png") as image:
        small = image.convert("L" if channels == 1 else "RGB").resize((56, 40), Image.Resampling.BILINEAR)
    work = np.float64 if dtype == np.float64 else np.float32
    pixels = np.asarray(small, work).reshape(40, 56, channels)
    pixels = pixels[..., ::-1] if bgr else pixels
    want = pixels * np.asarray(1 / 255, work)
    if mean is not None and std is not None:
        want = (want - np.asarray(mean, work)) / np.asarray(std, work)
    want = want.astype(dtype)
    assert got.dtype == dtype
    assert np.array_equal(got, want.transpose(2, 0, 1) if layout == "NCHW" else want)


def test_calibrate_on_sample_images_then_validate_on_others(tmp_path: Path) -> None:
    """Whole sample images resized to the model; the converted classifier agrees with the original on images
    it never saw, through the CLI with explicit preprocessing options."""
    model_path = tmp_path / "cnn.onnx"
    onnx.save(image_cnn(), str(model_path))
    calib = sample_folder(tmp_path / "calib", CALIBRATION_IMAGES)
    other = sample_folder(tmp_path / "other", OTHER_IMAGES)
    out = tmp_path / "cnn_spiking.onnx"
    norm = ["--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD))]
    result = CliRunner().invoke(main, ["convert", str(model_path), str(out), "--calib", str(calib), *norm])
    assert result.exit_code == 0, result.output
    assert "fitted on" in result.stdout and "(4 images, NCHW 3x32x32) (4 samples)" in result.stdout
    result = CliRunner().invoke(main, ["validate", str(model_path), str(out), "--data", str(other), *norm, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "3 samples" in result.stdout and "top1-agreement=1.0000" in result.stdout
    # the fits followed the normalised data, not the data-free range
    relu = next(n for n in onnx.load(str(out)).graph.node if n.op_type == "AmosGate")
    assert gate_params(relu).thresholds.max() < 4


def test_iterables_and_readers_calibrate_like_the_npz(tmp_path: Path) -> None:
    """A list of dicts, a generator, a CalibrationDataReader and a dict of arrays, with the same 64-row
    batches as the npz, sample the same values; a reader's conversion gives the npz's gates bit for bit."""
    with np.load(TRAIN) as npz:
        images = npz["image"]
    chunks = [{"image": images[i : i + 64]} for i in range(0, len(images), 64)]

    class Reader:
        def __init__(self) -> None:
            self.items = iter(chunks)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    model = onnx.load(str(DIGITS))
    sites, *_ = _find(model, FindOptions())
    want, _ = calibrate(model, sites, open_data(TRAIN, model), CalibrationOptions(cap=5000))
    for name, source in (("list", chunks), ("generator", (c for c in chunks)), ("reader", Reader()),
                         ("dict", {"image": images})):
        got, seen = calibrate(model, sites, open_data(source, model), CalibrationOptions(cap=5000))  # type: ignore[arg-type]
        assert seen == 1437, name
        for tensor, res in want.items():
            assert np.array_equal(got[tensor].values, res.values), (name, tensor)
    reference = amos_onnx.convert(DIGITS, tmp_path / "npz.onnx", calib=TRAIN)
    report = amos_onnx.convert(DIGITS, tmp_path / "reader.onnx", calib=Reader())
    assert report.calibration_samples == reference.calibration_samples == 1437
    assert report.calibration == "batches from a Reader"
    gates = [[n.attribute for n in onnx.load(str(tmp_path / f)).graph.node if n.op_type == "AmosGate"]
             for f in ("npz.onnx", "reader.onnx")]
    assert gates[0] == gates[1] and len(gates[0]) == 3


@pytest.mark.parametrize("source, message", [
    ([{"pixels": np.zeros((2, 1, 8, 8), np.float32)}], "item 0: no array for model input 'image'"),
    ([np.zeros((2, 1, 8, 8), np.float32)], "item 0 is ndarray, not a dict of input arrays"),
    ([], "yielded no inputs"),
    (42, "data of type int is not supported"),
])
def test_bad_iterables_name_the_item(source: object, message: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        amos_onnx.convert(DIGITS, tmp_path / "out.onnx", calib=source)  # type: ignore[arg-type]
    assert not (tmp_path / "out.onnx").exists()


def test_npy_for_a_one_input_model(tmp_path: Path) -> None:
    with np.load(TRAIN) as npz:
        np.save(tmp_path / "calib.npy", npz["image"][:100])
    report = amos_onnx.convert(DIGITS, tmp_path / "out.onnx", calib=tmp_path / "calib.npy")
    assert report.calibration_samples == 100


def test_progress_line_counts_samples_and_is_quiet_when_asked() -> None:
    stream = io.StringIO()
    bar = Progress("calibrating", 10, enabled=True, stream=stream, interval=0.0)
    for _ in range(5):
        bar.advance(2)
    bar.close()
    text = stream.getvalue()
    assert "\rcalibrating [" in text and "10/10 samples" in text and text.endswith("\n")
    quiet = io.StringIO()
    bar = Progress("calibrating", 10, enabled=False, stream=quiet)
    bar.advance(10)
    bar.close()
    assert quiet.getvalue() == "" and bar.done == 10
    assert Progress("x", None, stream=io.StringIO()).enabled is False  # not a terminal: silent by default


def _npz_with_header(path: Path, name: str, shape: tuple[int, ...], payload: bytes) -> Path:
    """An .npz whose member `name` has a valid .npy header declaring `shape` (float32) and then `payload`."""
    import io
    import zipfile

    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{name}.npy", head.getvalue() + payload)
    return path


def test_npz_headers_are_checked_before_anything_is_decompressed(tmp_path: Path) -> None:
    """A header declaring a huge array is refused in one line (no MemoryError), and a shape that does not fit
    the model is refused from the header alone (the member's data is never read)."""
    model = onnx.load(str(DIGITS))
    name = model.graph.input[0].name
    huge = _npz_with_header(tmp_path / "huge.npz", name, (10**12, 1, 8, 8), b"\0" * 64)
    with pytest.raises(DataError, match="declares 256000000000000 bytes but holds"):
        open_data(huge, model)
    wrong = _npz_with_header(tmp_path / "wrong.npz", name, (4, 1, 9, 9), b"\0" * (4 * 81 * 4))
    with pytest.raises(DataError, match=r"has shape \[4, 1, 9, 9\], the model expects"):
        open_data(wrong, model)


def test_a_scalar_input_serves_every_sample(tmp_path: Path) -> None:
    """A rank-0 model input (Silero VAD's sample rate, say) in calibration and validation data: the same value
    for every batch, not a sample count; the converted model is compared with the original in onnxruntime."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("Sigmoid", ["m"], ["y"], name="sig")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
                                           helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    src = tmp_path / "scalar.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.normal(0, 2, (100, 4)).astype(np.float32), s=np.array(1.5, np.float32))
    report = amos_onnx.convert(src, tmp_path / "out.onnx", data, k=12, progress=False)
    assert report.calibration_samples == 100 and report.converted == 1
    result = amos_onnx.validate(src, tmp_path / "out.onnx", data, progress=False)
    assert result.samples == 100 and result.passed
    assert result.outputs[0].max_abs_error <= 0.02  # a calibrated sigmoid K=12 gate on 1.5 * normal(0, 2)


def _recurrent(folder: Path, named: bool) -> Path:
    """x [N, 8] and a state [2, N, 4] (its samples on axis 1): y = Sigmoid(x W + state[0]), state out [2, N, 4].
    `named`: the batch dims carry the name "N"; else they are unnamed free dims."""
    n = "N" if named else None
    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.5, (8, 4)).astype(np.float32), "w")
    zero, axes0 = (numpy_helper.from_array(np.array(v, np.int64), name) for v, name in ((0, "zero"), ([0], "axes0")))
    nodes = [helper.make_node("Gather", ["state", "zero"], ["s0"], axis=0),
             helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "s0"], ["a"]),
             helper.make_node("Sigmoid", ["a"], ["y"], name="gate"),
             helper.make_node("Unsqueeze", ["y", "axes0"], ["u"]),
             helper.make_node("Concat", ["u", "u"], ["state_out"], axis=0)]
    graph = helper.make_graph(nodes, "rnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, 8]),
                                             helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, n, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, 4]),
                               helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [2, n, 4])],
                              [w, zero, axes0])
    path = folder / f"rnn_{'named' if named else 'unnamed'}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_state_with_its_samples_on_axis_1_calibrates_and_validates(tmp_path: Path) -> None:
    """A recurrent state [2, N, 4] beside x [N, 8]: its batch axis is told by the model's dims where they name it,
    else refused in one line saying how (--batch-axis state=1), and given so, calibration sees the 20 samples, the
    converted y matches the original's within the sigmoid gate's error (0.02 at K=8), validate passes and report
    writes its files."""
    from amos_onnx.runtime import session

    rng = np.random.default_rng(1)
    x, state = rng.normal(0, 1, (20, 8)).astype(np.float32), rng.normal(0, 1, (2, 20, 4)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, state=state)
    named, unnamed = _recurrent(tmp_path, True), _recurrent(tmp_path, False)
    expected = session(named, native=False).run(["y"], {"x": x, "state": state})[0]
    report = amos_onnx.convert(named, tmp_path / "named_out.onnx", tmp_path / "data.npz", k=8)
    assert report.calibration_samples == 20 and [s.status.value for s in report.sites] == ["converted"]
    got = session(tmp_path / "named_out.onnx").run(["y"], {"x": x, "state": state})[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=0.02)

    args = ["convert", str(unnamed), str(tmp_path / "out.onnx"), "--calib", str(tmp_path / "data.npz"), "--k", "8"]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 2 and not (tmp_path / "out.onnx").exists()
    assert "inputs have different sample counts ('x' 20, 'state' 2)" in refused.stderr
    assert "--batch-axis NAME=AXIS" in refused.stderr
    done = CliRunner().invoke(main, [*args, "--batch-axis", "state=1"])
    assert done.exit_code == 0, done.stderr
    got = session(tmp_path / "out.onnx").run(["y"], {"x": x, "state": state})[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=0.02)
    checked = CliRunner().invoke(main, ["validate", str(unnamed), str(tmp_path / "out.onnx"), "--data",
                                        str(tmp_path / "data.npz"), "--batch-axis", "state=1", "--atol", "0.02"])
    assert checked.exit_code == 0, checked.stdout + checked.stderr
    reported = CliRunner().invoke(main, ["report", str(unnamed), str(tmp_path / "out.onnx"), "--data",
                                         str(tmp_path / "data.npz"), "--batch-axis", "state=1", "--out",
                                         str(tmp_path / "report")])
    assert reported.exit_code == 0 and (tmp_path / "report/report.json").is_file(), reported.stderr
    bad = CliRunner().invoke(main, [*args, "--batch-axis", "state=3"])
    assert bad.exit_code == 2 and "--batch-axis state=3: input 'state' has rank 3" in bad.stderr


def test_read_ahead_reads_one_batch_ahead_in_order_and_raises_where_the_reader_failed() -> None:
    from amos_onnx.data.dataset import read_ahead

    made: list[int] = []

    def source(fail_at: int | None = None):  # type: ignore[no-untyped-def]
        for i in range(6):
            if i == fail_at:
                raise DataError(f"batch {i} is bad")
            made.append(i)
            yield {"x": np.full((2, 3), i, np.float32)}

    seen = []
    for batch in read_ahead(source()):
        seen.append(int(batch["x"][0, 0]))
        assert len(made) <= len(seen) + 1  # the batch in hand and at most the next one
    assert seen == list(range(6))
    made.clear()
    got = []
    with pytest.raises(DataError, match="batch 3 is bad"):
        for batch in read_ahead(source(fail_at=3)):
            got.append(int(batch["x"][0, 0]))
    assert got == [0, 1, 2]
    assert list(read_ahead(iter([]))) == []


def test_validate_with_both_models_side_by_side_gives_one_run_at_a_time_s_figures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """validate runs the two models on each batch side by side, one thread each, and reads the next batch
    ahead: every figure (tallies, spike counts, per-layer errors, accuracies) equals one run at a time's."""
    import amos_onnx.parallel

    digits = ROOT / "examples/digits"
    out = tmp_path / "spiking.onnx"
    amos_onnx.convert(digits / "digits_cnn.onnx", out, digits / "digits_train.npz", progress=False, k=6)
    figures = []
    for width in (1, 3):
        monkeypatch.setattr(amos_onnx.parallel, "cpus", lambda: width)  # noqa: B023 (called here)
        report = amos_onnx.validate(digits / "digits_cnn.onnx", out, digits / "digits_test.npz")
        figures.append(report.to_dict())
    assert figures[0] == figures[1]
    assert figures[0]["samples"] == 360
