"""validate's throughput on Ray against the number of actors, and calibration through Ray against one process.

    .venv/bin/python benchmarks/ray_cluster.py [--reps 2] [--seeds 0,1,2,3] [--write]

The Fashion-MNIST VGG of fashion_nets.py, converted at K=4 (calibrated on fashion_k.py's 2,000 training images),
validated on 20,000 Fashion-MNIST images (the 10,000 test images and the last 10,000 training images) from one
.npz: in one process (its two models' runs side by side, one onnxruntime thread each), and on a local Ray
cluster started here with this machine's CPUs, with 1 and 2 actors of 1 CPU (one onnxruntime thread per
session) and 1 actor of 2 CPUs. Each configuration runs `reps` times, round-robin; the figure is images per
second of the best run, each a ratio to the single process's of the same run order. The Ray runs include each
run's actor start (the models loaded and their sessions made per actor), not the cluster's start, printed apart.

Calibration: the same VGG converted at convert's default K (ReLU 10) and at K=4, with each calibration seed, in
one process and through Ray (2 actors) on 32,768 training images (4 blocks of calibrate.run.BLOCK_SAMPLES, a
shard each); each conversion's wall time, its test accuracy on the 10,000 test images (the native op) and
whether the two models' gates are the same bytes (they should be: the reservoirs are sampled block by block).
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
import onnx  # noqa: E402
from fashion_k import SEED, calibration_images  # noqa: E402
from results import machine, write_section  # noqa: E402

import amos_onnx  # noqa: E402
from amos_onnx.options import RayOptions  # noqa: E402

CALIBRATION_IMAGES = 32_768  # 4 blocks of calibrate.run.BLOCK_SAMPLES
CONFIGS = {"one process": None, "Ray, 1 actor x 1 CPU": RayOptions(actors=1, cpus=1),
           "Ray, 2 actors x 1 CPU": RayOptions(actors=2, cpus=1), "Ray, 1 actor x 2 CPUs": RayOptions(actors=1, cpus=2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--seeds", default="0,1,2,3", help="calibration seeds, comma-separated")
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
        calibration = calibrate_both(model, [int(v) for v in args.seeds.split(",")], Path(tmp))
        ray.shutdown()
    assert len(set(agree.values())) == 1, agree  # every configuration measured the same figures
    samples, accuracy, agreement, spikes = next(iter(agree.values()))
    rows = [f"| {name} | {rate:.0f} | {rate / best['one process']:.2f}x |" for name, rate in best.items()]
    text = "\n".join([
        "## Ray: validate's throughput against actors, calibration against one process",
        "",
        f"`.venv/bin/python benchmarks/ray_cluster.py --reps {args.reps} --seeds {args.seeds} --write` ({machine()}). "
        "The Fashion-MNIST "
        f"VGG at K=4, {samples} images; every configuration gave the same figures (spiking accuracy "
        f"{100 * float(accuracy):.2f}%, top-1 agreement {float(agreement):.4f}, {float(spikes):.3f} mean spikes per "
        f"gate). Best of {args.reps} runs, each with its actors' start; the local cluster's own start took "
        f"{cluster_seconds:.1f} s.",
        "",
        "| configuration | images/s | vs one process |",
        "|---|---|---|",
        *rows,
        "",
        f"Calibration through Ray (2 actors, 4 shards of {CALIBRATION_IMAGES} calibration images, one block each) "
        "against one process, same seed: wall time of each conversion, test accuracy of each on the 10,000 test "
        f"images (ANN {100 * calibration['ann']:.2f}%), and whether the two converted models' gates are the same "
        "bytes.",
        "",
        "| K | seed | one process | Ray | same gates | one process s | Ray s |",
        "|---|---|---|---|---|---|---|",
        *[f"| {k} | {seed} | {100 * one:.2f}% | {100 * many:.2f}% | {'yes' if same else 'NO'} | {t1:.1f} | {t2:.1f} |"
          for k, seed, one, many, same, t1, t2 in calibration["rows"]],
    ])
    print(text)
    if args.write:
        write_section("ray_cluster", text)


def calibrate_both(model: Path, seeds: list[int], folder: Path) -> dict[str, object]:
    """Per K (default, 4) and seed: test accuracies of the VGG converted in one process and through Ray, whether
    their gates are the same bytes, and the wall time of each conversion."""
    xte, yte = fashion_data.load("test")
    calib = folder / "calib.npz"
    np.savez(calib, image=calibration_images(CALIBRATION_IMAGES))

    def accuracy(path: Path) -> float:
        return float(np.mean(amos_onnx.session(path).run(None, {"image": xte})[0].argmax(1) == yte))

    def gates(path: Path) -> object:
        converted = onnx.load(path)
        return ([(n.input, n.attribute) for n in converted.graph.node if n.op_type == "AmosGate"],
                [(t.name, t.raw_data) for t in converted.graph.initializer])

    rows = []
    for k in ("default", 4):
        for seed in seeds:
            found, seconds = [], []
            for mode, options in (("one", None), ("ray", RayOptions(actors=2, shard_samples=256))):
                out = folder / f"calibrated_{mode}.onnx"
                start = time.perf_counter()
                amos_onnx.convert(model, out, calib, k=None if k == "default" else k, seed=seed, progress=False,
                                  ray=options)
                seconds.append(time.perf_counter() - start)
                found.append(accuracy(out))
            same = gates(folder / "calibrated_one.onnx") == gates(folder / "calibrated_ray.onnx")
            rows.append((k, seed, *found, same, *seconds))
            print(f"K {k}, seed {seed}: one process {found[0]:.4f}, Ray {found[1]:.4f}, same gates {same}", flush=True)
    return {"ann": accuracy(model), "rows": rows}


if __name__ == "__main__":
    main()
