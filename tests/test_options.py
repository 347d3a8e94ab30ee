"""The option objects: checked once where they are built, recorded by the plan, and the command line's defaults
and help taken from their fields."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ROOT

import amos_onnx
from amos_onnx.cli import main
from amos_onnx.errors import OptionError
from amos_onnx.options import (
    AUTO,
    DEFAULT_TARGET_MSE,
    FOCUS_KICKS,
    REFIT_KICKS,
    CalibrationOptions,
    ConvertOptions,
    EmitForm,
    FindOptions,
    FitOptions,
)
from amos_onnx.pipeline import fit_plan, plan

DIGITS = ROOT / "examples/digits/digits_cnn.onnx"
TRAIN = ROOT / "examples/digits/digits_train.npz"


@pytest.mark.parametrize("build,message", [
    (lambda: FitOptions(k=0), "--k 0: K must be between 1 and 64"),
    (lambda: FitOptions(k="most"), "--k most: give a number of neurons or 'auto'"),  # type: ignore[arg-type]
    (lambda: FitOptions(k_per_op={"Relu": 65}), "--k-per-op Relu=65: K must be between 1 and 64"),
    (lambda: FitOptions(k_per_op={"Swish": 4}), "--k-per-op: unknown activation op Swish"),
    (lambda: FitOptions(target_mse=0.0), "--target-mse 0.0: must be positive"),
    (lambda: FitOptions(spike_penalty=float("inf")), "--spike-penalty inf: must be zero or positive"),
    (lambda: FitOptions(kicks=-1), "--kicks -1: the number of local-search moves must be 0 or more"),
    (lambda: FitOptions(focus_kicks=-2), "--focus-kicks -2: the number of local-search moves must be 0 or more"),
    (lambda: FitOptions(channel_kicks=-3, per_channel=True),
     "--channel-kicks -3: the number of local-search moves must be 0 or more"),
    (lambda: FitOptions(channel_kicks=5), "--channel-kicks needs --per-channel"),
    (lambda: FindOptions(only=frozenset({"Relu", "Swish"})), "--only: unknown activation op Swish"),
    (lambda: ConvertOptions.of(only="Relu,Swish"), "--only: unknown activation op Swish"),
    (lambda: ConvertOptions.of(skip=" , "), "--skip: give a comma-separated list of op types"),
    (lambda: ConvertOptions(emit="onnx"), "--emit onnx: must be one of function, inline"),  # type: ignore[arg-type]
    (lambda: ConvertOptions(FindOptions(channel_axis=1)), "--channel-axis 1: only with --per-channel"),
    (lambda: ConvertOptions(fit=FitOptions(per_channel=True)), "per-channel fits need a calibration that keeps"),
])
def test_bad_values_are_refused_where_the_options_are_built(build, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OptionError) as caught:
        build()
    assert message in caught.value.one_line()


def test_options_are_frozen_and_keywords_build_the_same_objects() -> None:
    options = ConvertOptions.of(k=8, seed=3, per_channel=True, only={"Relu"}, emit="inline", spike_penalty=0.005)
    assert options == ConvertOptions(FindOptions(only=frozenset({"Relu"})), CalibrationOptions(seed=3,
                                                                                               per_channel=True),
                                     FitOptions(k=8, spike_penalty=0.005, seed=3, per_channel=True), EmitForm.INLINE)
    assert options.emit is EmitForm.INLINE  # a string becomes the enum
    # op types as the CLI takes them (one comma-separated string, not its letters) or as any collection
    assert ConvertOptions.of(skip="Composite, Sigmoid").find == FindOptions(skip=frozenset({"Composite", "Sigmoid"}))
    assert ConvertOptions.of(only=["Relu"]).find == FindOptions(only=frozenset({"Relu"}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.fit.k = 4  # type: ignore[misc]
    with pytest.raises(TypeError, match="unknown conversion option 'kick'"):
        ConvertOptions.of(kick=3)
    defaults = FitOptions()
    assert (defaults.k, defaults.target_mse, defaults.kicks, defaults.focus_kicks) == (
        None, DEFAULT_TARGET_MSE, REFIT_KICKS, FOCUS_KICKS)
    assert FitOptions(k=AUTO).k == "auto"


def test_convert_help_takes_defaults_and_help_from_the_fields() -> None:
    result = CliRunner().invoke(main, ["convert", "--help"], terminal_width=400)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for kind, name, flag in [(FitOptions, "target_mse", "--target-mse"), (FitOptions, "kicks", "--kicks"),
                             (FitOptions, "focus_kicks", "--focus-kicks"), (FitOptions, "per_channel", "--per-channel"),
                             (FindOptions, "channel_axis", "--channel-axis"), (ConvertOptions, "emit", "--emit")]:
        spec = next(f for f in dataclasses.fields(kind) if f.name == name)
        assert flag in text and " ".join(spec.metadata["help"].split()) in text, flag
    assert f"[default: {DEFAULT_TARGET_MSE}]" in text and f"[default: {REFIT_KICKS}]" in text
    assert "[default: function]" in text


def test_the_plan_records_its_options_and_fit_plan_keeps_to_them(tmp_path: Path) -> None:
    """The plan made with per-channel calibration says so; a per-channel fit of a plan without it is refused
    instead of quietly giving one gate per site."""
    options = ConvertOptions.of(k=4, seed=1, focus_kicks=0)
    p = plan(DIGITS, TRAIN, options)
    assert p.options is options and p.options.calibration.seed == 1
    fits, effect = fit_plan(p)
    assert effect is None and {f.params.k for f in fits.values()} == {4}
    with pytest.raises(OptionError, match="per-channel fits need a plan"):
        fit_plan(p, FitOptions(k=4, per_channel=True))
    with pytest.raises(TypeError, match="options or keywords, not both"):
        amos_onnx.convert(DIGITS, tmp_path / "out.onnx", TRAIN, options, k=5)


def test_one_seed_option_seeds_calibration_and_fits(tmp_path: Path) -> None:
    """convert --seed sets the calibration's and the fits' seed alike (the CLI's ConvertOptions)."""
    from amos_onnx.cli_values import convert_options

    values = {"k": "6", "k_per_op": None, "target_mse": 1e-4, "spike_penalty": 0.0, "seed": 7, "kicks": 6,
              "focus_kicks": 0, "per_channel": False, "bias_correction": True, "reconstruct": False, "sequential": True,
              "channel_axis": None, "latency": None, "spike_budget": None, "range_weight": 0.001, "channel_kicks": 0,
              "chains": 2, "emit": "function", "only": None,
              "skip": None, "image_size": None, "layout": None, "scale": 1 / 255, "mean": None, "std": None,
              "bgr": False, "batch_axes": ("state=1",), "address": None, "actors": None, "cpus": 1}
    options = convert_options(values, str(TRAIN), quiet=True)
    assert options.calibration.seed == options.fit.seed == 7 and options.fit.k == 6 and options.progress is False
    assert options.fit.range_weight == 0.001 and options.fit.chains == 2
    assert options.calibration.batch_axes == {"state": 1} and options.fit.bias_correction and options.fit.sequential


@pytest.mark.parametrize("name", ["silu", "SILU", "SiLU"])
def test_fit_takes_function_names_in_any_case(name: str) -> None:
    result = CliRunner().invoke(main, ["fit", name, "--k", "6", "--json"])
    assert result.exit_code == 0, result.output
    reference = amos_onnx.fit_function("SiLU", 6)
    assert np.array_equal(json.loads(result.output)["thresholds"], np.asarray(reference.params.thresholds))


def test_gelu_in_lower_case_is_the_registry_op() -> None:
    """"gelu" names two registered spellings of one function (the op Gelu and the composite GELU): the op's."""
    ours = amos_onnx.fit_function("gelu", 8)
    assert np.array_equal(ours.params.thresholds, amos_onnx.fit_function("Gelu", 8).params.thresholds)
    result = CliRunner().invoke(main, ["fit", "swish", "--k", "6"])
    assert result.exit_code == 2 and "unknown function 'swish'" in result.output


def test_fit_spike_cost_is_absolute_and_named_apart_from_convert_spike_penalty() -> None:
    result = CliRunner().invoke(main, ["fit", "Sigmoid", "--k", "6", "--spike-penalty", "1e-3"])
    assert result.exit_code == 2 and "Did you mean '--spike-cost'?" in result.output
    plain, cheap = (amos_onnx.fit_function("Sigmoid", 6, spike_cost=c, kicks=2) for c in (0.0, 1e-2))
    assert cheap.mean_spikes < plain.mean_spikes
