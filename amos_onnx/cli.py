"""The amos-onnx command line: parses options, calls the public API, prints. No graph code here."""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

import amos_onnx
from amos_onnx.api import named_function
from amos_onnx.cli_values import (
    IMAGE_KEYS,
    batch_axis_option,
    convert_options,
    image_options,
    images_from,
    option_from,
    parse_batch_axes,
    ray_from,
    ray_options,
)
from amos_onnx.errors import AmosError, OptionError
from amos_onnx.fit.search import GRID_FLOOR, KICKS
from amos_onnx.gate import sample_error
from amos_onnx.options import ConvertOptions, FindOptions, FitOptions, op_set
from amos_onnx.report.validate import ValidateOptions

EXIT_FAILED = 1


def _run(action: Callable[[], Any]) -> Any:
    """Run an API call; a user error becomes one line on stderr and exit code 2."""
    try:
        return action()
    except AmosError as exc:
        click.echo(f"amos-onnx: error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)


class _OneLineErrors(click.Group):
    """Usage errors (unknown option, bad value, missing argument) as one line and exit code 2, like ours."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.ClickException as exc:
            click.echo(f"amos-onnx: error: {exc.format_message()}", err=True)
            sys.exit(2)
        except click.exceptions.Abort:
            click.echo("amos-onnx: aborted", err=True)
            sys.exit(130)


@click.group(cls=_OneLineErrors)
@click.version_option(package_name="amos-onnx")
@click.option("-v", "--verbose", is_flag=True, help="Log what each stage does.")
def main(verbose: bool) -> None:
    """Convert ONNX networks into AMOS spiking networks (at most one spike per neuron)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")
    import onnxruntime

    onnxruntime.set_default_logger_severity(2 if verbose else 4)  # its warnings and errors would break our lines


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--calib", type=click.Path(), default=None,
              help=".npz (one array per model input), .npy (one-input model) or a folder of images.")
@option_from(FitOptions, "k", "--k", type=str)
@option_from(FitOptions, "k_per_op", "--k-per-op", type=str)
@option_from(FitOptions, "chains", "--chains", type=int)
@option_from(FitOptions, "target_mse", "--target-mse")
@option_from(FitOptions, "spike_penalty", "--spike-penalty")
@option_from(FitOptions, "kicks", "--kicks")
@option_from(FitOptions, "focus_kicks", "--focus-kicks")
@option_from(FitOptions, "range_weight", "--range-weight")
@option_from(FitOptions, "per_channel", "--per-channel")
@option_from(FitOptions, "channel_kicks", "--channel-kicks")
@option_from(FitOptions, "bias_correction", "--bias-correction")
@option_from(FitOptions, "reconstruct", "--reconstruct/--no-reconstruct")
@option_from(FitOptions, "sequential", "--sequential")
@option_from(FitOptions, "latency", "--latency", type=int)
@option_from(FitOptions, "spike_budget", "--spike-budget", type=float)
@option_from(FindOptions, "channel_axis", "--channel-axis", type=int)
@option_from(ConvertOptions, "emit", "--emit")
@option_from(FindOptions, "only", "--only", type=str)
@option_from(FindOptions, "skip", "--skip", type=str)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the calibration's sampling and of every fit's local search.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="Also write report.json, report.md and pictures here (run on the calibration data).")
@image_options
@batch_axis_option
@ray_options
@click.option("-q", "--quiet", is_flag=True, help="No progress line.")
def convert(model: str, output: str, calib: str | None, report_dir: str | None, quiet: bool, **values: Any) -> None:
    """Convert MODEL into its spiking twin and write it to OUTPUT."""
    options = _run(lambda: convert_options(values, calib, quiet))
    with tempfile.TemporaryDirectory() as tmp:  # with --report and a compensation: the conversion without it
        plain = Path(tmp) / "uncorrected.onnx" if report_dir and options.fit.compensation(calib is not None) else None
        report = _run(lambda: amos_onnx.convert(model, output, calib, options, uncorrected_output=plain))
        if report_dir:
            images, axes = options.calibration.images, options.calibration.batch_axes
            _run(lambda: amos_onnx.write_report(model, output, calib, report_dir, conversion=report, images=images,
                                                batch_axes=axes, progress=options.progress,
                                                ray=options.calibration.ray,
                                                uncorrected=plain if plain and plain.exists() else None))
            click.echo(f"report: {report_dir}/report.md")
    for line in report.kind_lines() + report.notes:
        click.echo(line)
    if report.near_misses:
        click.echo(f"{len(report.near_misses)} lookalikes left as they are (see 'amos-onnx inspect')")
    click.echo(report.summary())
    click.echo(f"wrote {output} ({report.emit} form)")


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--only", type=str, default=None, help="Consider only these op types.")
@click.option("--skip", type=str, default=None, help="Leave these op types analog.")
@click.option("--json", "as_json", is_flag=True, help="Print the sites as JSON.")
def inspect(model: str, only: str | None, skip: str | None, as_json: bool) -> None:
    """List MODEL's activation sites and whether each would convert; writes nothing."""
    report = _run(lambda: amos_onnx.inspect(model, FindOptions(op_set("--only", only), op_set("--skip", skip))))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    for site in report.sites:
        detail = site.reason if site.status == "skipped" else site.function
        click.echo(f"{site.node}\t{site.op}\t{site.status}\t{detail}")
    for node, reason in report.near_misses:
        click.echo(f"{node}\tnot an activation: {reason}")
    for line in report.kind_lines() + report.notes:
        click.echo(line)
    click.echo(report.summary())


@main.command()
@click.argument("original", type=click.Path(dir_okay=False))
@click.argument("converted", type=click.Path(dir_okay=False))
@click.option("--data", type=click.Path(), default=None,
              help=".npz of inputs (and optional labels), .npy, or a folder of images.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the report as JSON here.")
@click.option("--atol", type=float, default=None, help="Absolute error bound (also for classifier outputs when given).")
@click.option("--rtol", type=float, default=None, help="Error bound relative to max |original output|.")
@click.option("--min-agreement", type=float, default=None, help="Top-1 agreement floor for classifier outputs (0.95).")
@click.option("--no-native", is_flag=True, help="Run the function form even when the native op is built.")
@image_options
@batch_axis_option
@ray_options
@click.option("-q", "--quiet", is_flag=True, help="No progress line.")
def validate(original: str, converted: str, data: str | None, json_path: str | None, no_native: bool, quiet: bool,
             **values: Any) -> None:
    """Run ORIGINAL and CONVERTED on the same inputs; one PASSED/FAILED line per output (exit 1 on FAILED)."""
    images = _run(lambda: images_from(data, **{key: values[key] for key in IMAGE_KEYS}))
    axes = _run(lambda: parse_batch_axes(values["batch_axes"]))
    ray = _run(lambda: ray_from(values))
    options = ValidateOptions(atol=values["atol"], rtol=values["rtol"], min_agreement=values["min_agreement"],
                              native=False if no_native else None, images=images, progress=False if quiet else None,
                              batch_axes=axes, ray=ray)
    report = _run(lambda: amos_onnx.validate(original, converted, data, options))
    for line in report.lines():
        click.echo(line)
    if json_path:
        report.write_json(json_path)
    sys.exit(0 if report.passed else EXIT_FAILED)


@main.command("report")
@click.argument("original", type=click.Path(dir_okay=False))
@click.argument("converted", type=click.Path(dir_okay=False))
@click.option("--data", type=click.Path(), default=None,
              help=".npz of inputs (and optional labels), .npy, or a folder of images.")
@click.option("--out", "out", type=click.Path(file_okay=False), required=True, help="Folder for the report.")
@image_options
@batch_axis_option
@ray_options
@click.option("-q", "--quiet", is_flag=True, help="No progress line.")
def report_command(original: str, converted: str, data: str | None, out: str, quiet: bool,
                   batch_axes: tuple[str, ...], **values: Any) -> None:
    """Measure CONVERTED against ORIGINAL on data and write report.json, report.md and pictures to OUT."""
    ray = _run(lambda: ray_from(values))
    images = _run(lambda: images_from(data, **values))
    axes = _run(lambda: parse_batch_axes(batch_axes))
    result = _run(lambda: amos_onnx.write_report(original, converted, data, out, images=images,
                                                 progress=False if quiet else None, batch_axes=axes, ray=ray))
    totals = result["totals"]
    spikes = (f"mean spikes per gate {totals['mean_spikes_per_gate']:.3f}, spikes per input "
              f"{totals['spikes_per_input']:.1f}" if totals["mean_spikes_per_gate"] is not None else
              "no spikes counted (no AmosGate node: nothing converted, or gates written with --emit inline)")
    inner = totals["gates_inside_subgraphs"]
    where = f"; of the top-level graph's gates, not the {inner} inside If branches or Scan bodies" if inner else ""
    click.echo(f"{spikes}, latency {totals['latency_steps']} steps "
               f"(pipelined: one input every {totals['pipelined_interval_steps']} steps{where})")
    click.echo(f"wrote {out}/report.json and {out}/report.md ({len(result['pictures'])} pictures)")


@main.command("fit")
@click.argument("function")
@click.option("--k", "k", type=int, required=True, help="Neurons in the gate (1..64).")
@click.option("--range", "bounds", type=float, nargs=2, default=None, help="LO HI: the input range to fit.")
@click.option("--samples", type=click.Path(dir_okay=False), default=None, help=".npy of input samples to weight by.")
@click.option("--spike-cost", type=float, default=0.0, show_default=True,
              help="Squared error one mean spike may cost (absolute; convert's --spike-penalty is relative).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the local search.")
@click.option("--kicks", type=int, default=None,
              help=f"Iteration budget: local-search moves (default {KICKS}); more find better gates, for more time.")
@click.option("--time-budget", type=float, default=None,
              help="Seconds after which the local search stops (the result then depends on the machine's speed; "
                   "with --chains, each chain's).")
@click.option("--range-weight", type=float, default=GRID_FLOOR, show_default=True,
              help="With --samples: the share of the squared error taken evenly over the range, the rest on the "
                   "samples (convert's --range-weight).")
@click.option("--chains", type=int, default=1, show_default=True,
              help="Circuits of K neurons side by side, each fitted to one piece of the range (convert's --chains).")
@click.option("--json", "as_json", is_flag=True, help="Print parameters and figures as JSON.")
def fit_command(function: str, k: int, bounds: tuple[float, float] | None, samples: str | None, as_json: bool,
                **budget: Any) -> None:
    """Fit a K-neuron gate for FUNCTION (Relu, sigmoid, SiLU, gelu, ...; any case) and print T, h, d and its
    quality."""
    values = _run(lambda: _load_samples(samples)) if samples else None
    result = _run(lambda: amos_onnx.fit_function(function, k, bounds, values, **budget))
    data = {**result.params.to_dict(), "function": function, "range": [result.lo, result.hi], "mse": result.mse,
            "max_error": result.max_error, "mean_spikes": result.mean_spikes}
    if values is not None:  # the fit's own objective: the error where the samples are
        on = sample_error(result.params, named_function(function).func, values.astype("float32"))
        data.update(samples_mse=on[0], samples_max_error=on[1], samples_mean_spikes=on[2])
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for name in ("thresholds", "resets", "weights"):
        click.echo(f"{name}: {' '.join(f'{v:.8g}' for v in data[name])}")
    chains = result.params.chains
    if chains > 1:
        click.echo(f"chains: {chains} (the values above chain by chain, K each)")
    shape = f"K={k}" + (f" x {chains} chains" if chains > 1 else "")
    click.echo(f"{function} {shape} on [{result.lo:g}, {result.hi:g}]: mse {result.mse:.3g}, "
               f"max error {result.max_error:.3g}, mean spikes {result.mean_spikes:.3f} (dense grid of 200,001 points)")
    if values is not None:
        click.echo(f"on the {values.size} samples: mse {data['samples_mse']:.3g}, max error "
                   f"{data['samples_max_error']:.3g}, mean spikes {data['samples_mean_spikes']:.3f}")


def _load_samples(path: str) -> Any:
    import numpy as np

    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise OptionError(f"--samples {path}: not a readable .npy/.npz file ({exc})") from None
    if hasattr(data, "files"):
        if len(data.files) != 1:
            raise OptionError(f"--samples {path}: the .npz must hold exactly one array, has {len(data.files)}")
        return data[data.files[0]]
    return data
