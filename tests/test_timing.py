"""Per-stage and per-site conversion time: in the report, in the report files and in --verbose's log."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import ROOT

import amos_onnx

DIGITS = ROOT / "examples/digits/digits_cnn.onnx"
TRAIN = ROOT / "examples/digits/digits_train.npz"
TEST = ROOT / "examples/digits/digits_test.npz"
STAGES = ["load", "find", "calibrate", "fit", "focus", "compensate", "rewrite", "save"]


def test_every_stage_and_site_is_timed_and_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        report = amos_onnx.convert(DIGITS, tmp_path / "s.onnx", TRAIN, k=5, progress=False)
    assert list(report.stage_seconds) == STAGES and all(s >= 0 for s in report.stage_seconds.values())
    assert report.stage_seconds["calibrate"] > 0 and report.stage_seconds["fit"] > 0
    assert all(site.fit_seconds is not None and site.fit_seconds > 0 for site in report.sites)
    logged = caplog.text
    assert all(f"stage {name}: " in logged for name in STAGES) and "fitted in " in logged
    data = amos_onnx.write_report(DIGITS, tmp_path / "s.onnx", TEST, tmp_path / "report", conversion=report,
                                  progress=False)
    saved = json.loads((tmp_path / "report/report.json").read_text())
    assert saved["conversion"]["stage_seconds"] == pytest.approx(report.stage_seconds)
    assert data["conversion"]["sites"][0]["fit_seconds"] == report.sites[0].fit_seconds
    text = (tmp_path / "report/report.md").read_text()
    assert "Conversion time: load " in text and "(total " in text


def test_data_free_conversions_have_no_calibration_stage(tmp_path: Path) -> None:
    report = amos_onnx.convert(DIGITS, tmp_path / "s.onnx", k=5)
    assert list(report.stage_seconds) == ["load", "find", "fit", "rewrite", "save"]
