"""Slow tier: real pretrained models from PyPI wheels convert whole and keep their outputs (DESIGN.md).

NudeNet 3.4.2's YOLOv8n (57 SiLU + 1 Sigmoid) calibrated on scikit-image sample images and LFW face mosaics,
compared on other images by matched boxes; RapidOCR 1.4.4's PP-OCRv4 det/cls/rec calibrated on what the
original pipeline feeds them for a few images, compared by the text read from others. Wheels are downloaded
once into .cache/pypi-models (benchmarks/pypi_models.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ROOT
from onnx import TensorProto, helper

import amos_onnx
from amos_onnx.runtime import native_library, session

sys.path.insert(0, str(ROOT / "benchmarks"))

import pypi_models  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nudenet(tmp_path_factory: pytest.TempPathFactory) -> dict:
    pytest.importorskip("skimage", reason="needs scikit-image's sample images")
    return pypi_models.run_nudenet(tmp_path_factory.mktemp("nudenet"))


def test_nudenet_converts_whole_and_finds_the_same_boxes(nudenet: dict) -> None:
    assert nudenet["sites"] == nudenet["converted"] == 58 and nudenet["left"] == 0
    boxes = nudenet["boxes"]
    assert boxes.original >= 20  # enough boxes for the figures to mean something
    assert boxes.recall >= 0.9 and boxes.precision >= 0.9, (boxes.original, boxes.converted, boxes.matched)
    assert np.mean(boxes.score_diffs) <= 0.1 and np.mean(boxes.ious) >= 0.9


@pytest.mark.skipif(native_library() is None, reason="native library not built (make ops)")
def test_nudenet_spike_totals_match_the_native_spike_output(nudenet: dict) -> None:
    """The report's spike counts (simulated from gate inputs) against the native kernel's own spike output."""
    validation = nudenet["validation"]
    model = onnx.load(str(nudenet["converted_path"]))
    gates = [n for n in model.graph.node if n.op_type == "AmosGate"]
    for node in gates:
        node.output.append(f"{node.name}/spikes")
        model.graph.output.append(helper.make_tensor_value_info(f"{node.name}/spikes", TensorProto.INT32, None))
    sess = session(model, native=True)
    names = [f"{n.name}/spikes" for n in gates]
    counts = np.zeros(len(names))
    for feed in nudenet["eval_batches"]():
        counts += [int(c.sum()) for c in sess.run(names, feed)]
    n = validation.samples
    by_node = {g["node"]: g for g in validation.gates}
    for node, count in zip(gates, counts):
        assert by_node[node.name]["spikes_per_input"] * n == pytest.approx(count, abs=0.5), node.name
    assert sum(g["spikes_per_input"] for g in validation.gates) * n == pytest.approx(counts.sum(), abs=0.5)


def test_ocr_pipeline_reads_the_same_text(tmp_path: Path) -> None:
    pytest.importorskip("rapidocr_onnxruntime", reason="needs rapidocr-onnxruntime==1.4.4 (the pypi-models extra)")
    result = pypi_models.run_ocr(tmp_path)
    for key, report in result["reports"].items():
        assert report.sites and report.converted == len(report.sites), key
        assert result["left"][key] == 0, key
    assert result["chars"] > 500
    assert result["cer"] <= pypi_models.OCR_MAX_CER, result["pages"]
    # one model spiking at a time, and the original detector's boxes scored next to its threshold
    assert set(result["alone"]) == {"det", "cls", "rec"}
    assert all(0 <= v <= pypi_models.OCR_MAX_CER for v in result["alone"].values()), result["alone"]
    assert set(result["near"]) == {p["image"] for p in result["pages"]}
    assert all(abs(v - result["box_thresh"]) <= pypi_models.BOX_MARGIN for v in sum(result["near"].values(), []))


def test_silero_vad_converts_from_the_command_line_and_keeps_its_speech_decisions(tmp_path: Path) -> None:
    """Silero VAD 6.2.3 (wheel `silero-vad`): a scalar sample rate, a state [2, N, 128] with its samples on axis 1
    and its 12 activations and 4 LSTMs (written out as Scans: 32 sites) inside If branches. `convert --calib
    --batch-axis state=1` on the inputs the original
    saw over a spoken clip (benchmarks/speech.py, espeak-ng), then the converted model on its own state: speech
    decisions at 0.5 agree with the original's on at least 98% of the clip's chunks (issue 27)."""
    import silero_vad

    result = silero_vad.compare(10, tmp_path)
    assert "converted 32 of 32 activation sites" in str(result["summary"])
    assert "4 LSTM written out as Scans" in str(result["summary"])
    assert "data-free ranges" not in str(result["summary"])  # calibration reaches into If branches and Scan bodies
    assert 0.2 < float(result["speech"]) < 0.9  # the clip has speech and pauses, as the original hears it
    assert float(result["agreement"]) >= 0.98, result


def test_ddddocr_captcha_reader_spikes_whole_with_its_lstm_written_out(tmp_path: Path) -> None:
    """ddddocr 1.6.1's CNN + bidirectional LSTM CTC reader (benchmarks/captcha_ocr.py): every site converts, the
    LSTM's gates inside two Scans, and it reads rendered captchas as the original does."""
    pytest.importorskip("PIL", reason="renders captchas with Pillow")
    import captcha_ocr

    model = pypi_models.model_file(*captcha_ocr.DDDDOCR)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", input1=np.concatenate([captcha_ocr.captcha(rng, 160) for _ in range(32)]))
    report = amos_onnx.convert(model, tmp_path / "c.onnx", tmp_path / "calib.npz", progress=False)
    assert report.converted == len(report.sites) == 21
    converted = onnx.load(str(tmp_path / "c.onnx"))
    assert "LSTM" not in {n.op_type for n in converted.graph.node}
    assert sum(n.op_type == "Scan" for n in converted.graph.node) == 2
    rng = np.random.default_rng(1)
    inputs = [captcha_ocr.captcha(rng) for _ in range(50)]
    found = captcha_ocr.compare(captcha_ocr.read_all(model, inputs, native=False),
                                captcha_ocr.read_all(tmp_path / "c.onnx", inputs))
    assert found["same"] >= 42 and found["cer"] <= 0.05, found  # the benchmark: 93 of 100, 0.021
