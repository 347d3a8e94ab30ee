"""Weight reconstruction (convert --reconstruct) on the Fashion-MNIST networks, beside bias correction.

For each network of fashion_nets.py: one plan (calibrated on fashion_k.py's 2,000 training images, seed 0), the
first pass of calibrated fits at each K (--focus-kicks 0), written four ways: as they are, with --bias-correction,
with --reconstruct (compensate.reconstruct, on the plan's kept calibration images, up to 256), and refitted
sequentially (--sequential) with --reconstruct; convert's own fits (the focus on) refitted sequentially with
--reconstruct; and convert's own fits with per-channel gates (--per-channel, a plan whose calibration kept each
value's channel) with --reconstruct, as they are and refitted sequentially; each run on the full 10,000-image test
set with the native op.

    .venv/bin/python benchmarks/reconstruct.py [--nets vgg:3,4 resnet:3,4 effnet:6,8 gelu:5,6]
        [--spike-penalty P] [--write]
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bias_correction import baseline, measure, run_nets, section  # noqa: E402
from fashion_k import SEED, calibration_images  # noqa: E402
from results import write_section  # noqa: E402
from sequential import table  # noqa: E402

from amos_onnx.compensate.reconstruct import SAMPLES  # noqa: E402
from amos_onnx.compensate.sequential import sequential  # noqa: E402
from amos_onnx.options import FOCUS_KICKS, FitOptions  # noqa: E402
from amos_onnx.pipeline import fit_plan, plan  # noqa: E402

# (label, the fits: "first" pass or with the "focus" (convert's defaults), sequential refits on them, the
# compensation: None, "bias correction" or "reconstruction")
MODES = (("first pass", "first", False, None), ("first pass + bias correction", "first", False, "bias correction"),
         ("first pass + reconstruction", "first", False, "reconstruction"),
         ("sequential + reconstruction", "first", True, "reconstruction"),
         ("focus + sequential + reconstruction", "focus", True, "reconstruction"),
         ("focus + per channel + reconstruction", "channels", False, "reconstruction"),
         ("focus + per channel + sequential + reconstruction", "channels", True, "reconstruction"))


def network(name: str, ks: list[int], folder: Path, penalty: float = 0.0) -> list[dict[str, object]]:
    test, ann, p = baseline(name)
    by_channel = plan(p.model_path, calib={"image": calibration_images()}, seed=SEED, per_channel=True)
    plans = {"first": p, "focus": p, "channels": by_channel}
    rows = []
    for k in ks:
        fits, refitted, refit_seconds = {}, {}, {}
        # the refits walk the layers as the reconstruction will (sequential reads the plan's compensation): every
        # sequential row here is measured with reconstruction
        p.options = replace(p.options, fit=replace(p.options.fit, reconstruct=True, bias_correction=False))
        for kind, kicks in (("first", 0), ("focus", FOCUS_KICKS)):
            options = FitOptions(k=k, seed=SEED, focus_kicks=kicks, spike_penalty=penalty)
            fits[kind], _ = fit_plan(p, options)
            start = time.perf_counter()
            refitted[kind], _ = sequential(p, fits[kind], options)
            refit_seconds[kind] = time.perf_counter() - start
        options = FitOptions(k=k, seed=SEED, per_channel=True, spike_penalty=penalty)
        fits["channels"], _ = fit_plan(by_channel, options)
        start = time.perf_counter()
        refitted["channels"], _ = sequential(by_channel, fits["channels"], options)
        refit_seconds["channels"] = time.perf_counter() - start
        for mode, kind, refit, compensation in MODES:
            q = plans[kind]
            q.options = replace(q.options, fit=replace(q.options.fit, reconstruct=compensation == "reconstruction",
                                                       bias_correction=compensation == "bias correction"))
            row = measure(q, refitted[kind] if refit else fits[kind], compensation is not None, test, folder)
            rows.append({"net": name, "ann": ann, "k": k, "mode": mode,
                         "refit_seconds": refit_seconds[kind] if refit else 0.0, **row})
            print(f"{name} K={k} {mode}: {100 * float(row['accuracy']):.2f}% (ANN {100 * ann:.2f}%), KL "  # type: ignore[arg-type]
                  f"{1000 * float(row['kl']):.1f} mnat, {float(row['spikes']):.3f} spikes/gate, "  # type: ignore[arg-type]
                  f"{float(row['seconds']):.1f} s {row['notes']}", flush=True)  # type: ignore[arg-type]
    return rows


def _write(nets: list[str], rows: list[dict[str, object]], penalty: float) -> None:
    name, command = section("reconstruct", "reconstruct.py", nets, penalty)
    write_section(name, "\n".join([
        "## Weight reconstruction on Fashion-MNIST" + (f", spike penalty {penalty:g}" if penalty else ""),
        "",
        f"{command}: first pass of calibrated fits (--focus-kicks 0) on fashion_k.py's 2,000 calibration images, "
        "written as they are, with --bias-correction (the first 128 calibration images), with --reconstruct (each "
        "Conv and Gemm after the gates refitted by ridge regression, level by level, on the inputs it gets with "
        f"the sites before it spiking; the first {SAMPLES} calibration images, every fourth held out to judge each "
        "refit), and refitted sequentially (--sequential) with --reconstruct; last, convert's own fits (the focus "
        "on: the fits that move the outputs most refitted with more moves) refitted sequentially with "
        "--reconstruct; and convert's own fits with per-channel gates (--per-channel: one gate per channel where "
        "the calibration kept each value's channel) with --reconstruct, as they are and refitted sequentially "
        "(one refit per gate a site's channels share); full 10,000-image test set, native "
        "op. KL: of the spiking softmax from the ANN's, per test image. Refits: the sequential stage's wall time; "
        "compensation: the compensate stage's (bias correction or reconstruction).",
        "", *table(rows, "compensation")]))


if __name__ == "__main__":
    run_nets(__doc__, network, _write)
