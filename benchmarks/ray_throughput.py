"""Throughput of `validate` on Ray against the number of actors, beside the single process, on this machine.

    .venv/bin/python benchmarks/ray_throughput.py [--reps 2] [--write]

The Fashion-MNIST VGG of fashion_nets.py, converted at K=4 (calibrated on fashion_k.py's 2,000 training images),
validated on 20,000 Fashion-MNIST images (the 10,000 test images and the last 10,000 training images) from one
.npz: in one process (onnxruntime's default threads), and on a local Ray cluster started here with this
machine's CPUs, with 1 and 2 actors of 1 CPU (one onnxruntime thread per session) and 1 actor of 2 CPUs. Each
configuration runs `reps` times, round-robin; the figure is images per second of the best run, each a ratio to
the single process's of the same run order. The Ray runs include each run's actor start (the models loaded and
their sessions made per actor), not the cluster's start, printed apart.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fashion_data  # noqa: E402
import fashion_nets  # noqa: E402
from fashion_k import SEED, calibration_images  # noqa: E402
from results import machine, write_section  # noqa: E402

import amos_onnx  # noqa: E402
from amos_onnx.options import RayOptions  # noqa: E402

CONFIGS = {"one process": None, "Ray, 1 actor x 1 CPU": RayOptions(actors=1, cpus=1),
           "Ray, 2 actors x 1 CPU": RayOptions(actors=2, cpus=1), "Ray, 1 actor x 2 CPUs": RayOptions(actors=1, cpus=2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="write the results into benchmarks/RESULTS.md")
    args = parser.parse_args()
    import ray

    model, _ = fashion_nets.network("vgg")
    xtr, ytr = fashion_data.load("train")
    xte, yte = fashion_data.load("test")
    with tempfile.TemporaryDirectory() as tmp:
        data, converted = Path(tmp) / "eval.npz", Path(tmp) / "vgg_k4.onnx"
        np.savez(data, image=np.concatenate([xte, xtr[50_000:]]), labels=np.concatenate([yte, ytr[50_000:]]))
        amos_onnx.convert(model, converted, {"image": calibration_images()}, k=4, seed=SEED, progress=False)
        start = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False)
        cluster_seconds = time.perf_counter() - start
        best: dict[str, float] = {}
        agree: dict[str, tuple[object, ...]] = {}
        for _ in range(args.reps):
            for name, options in CONFIGS.items():
                start = time.perf_counter()
                report = amos_onnx.validate(model, converted, data, progress=False, ray=options)
                rate = report.samples / (time.perf_counter() - start)
                best[name] = max(best.get(name, 0.0), rate)
                agree[name] = (report.samples, report.accuracy_converted, report.outputs[0].agreement,
                               report.mean_spikes_per_gate)
                print(f"{name}: {rate:.0f} images/s", flush=True)
        ray.shutdown()
    assert len(set(agree.values())) == 1, agree  # every configuration measured the same figures
    samples, accuracy, agreement, spikes = next(iter(agree.values()))
    rows = [f"| {name} | {rate:.0f} | {rate / best['one process']:.2f}x |" for name, rate in best.items()]
    text = "\n".join([
        "## validate on Ray: throughput against actors",
        "",
        f"`.venv/bin/python benchmarks/ray_throughput.py --reps {args.reps} --write` ({machine()}). The Fashion-MNIST "
        f"VGG at K=4, {samples} images; every configuration gave the same figures (spiking accuracy "
        f"{100 * float(accuracy):.2f}%, top-1 agreement {float(agreement):.4f}, {float(spikes):.3f} mean spikes per "
        f"gate). Best of {args.reps} runs, each with its actors' start; the local cluster's own start took "
        f"{cluster_seconds:.1f} s.",
        "",
        "| configuration | images/s | vs one process |",
        "|---|---|---|",
        *rows,
    ])
    print(text)
    if args.write:
        write_section("ray_throughput", text)


if __name__ == "__main__":
    main()
