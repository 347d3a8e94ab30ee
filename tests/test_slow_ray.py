"""Slow tier: validate, report and calibration in shards on a local two-node Ray cluster give the single process's
figures, on a small CNN trained here on Fashion-MNIST and 20,000 Fashion-MNIST images (the 10,000 test images
and the 10,000 training images the network was not trained on)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ROOT

ray = pytest.importorskip("ray", reason="the Ray tests need the ray extra: pip install -e '.[ray]'")
torch = pytest.importorskip("torch", reason="the slow tier needs torch: pip install -e '.[train]'")
sys.path.insert(0, str(ROOT / "benchmarks"))

import fashion_data  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

import amos_onnx  # noqa: E402
from amos_onnx.errors import DataError  # noqa: E402
from amos_onnx.options import RayOptions  # noqa: E402

pytestmark = pytest.mark.slow

TRAIN_IMAGES = 20_000  # the network sees the first 20,000 training images, once
CALIBRATION_IMAGES = 20_000  # all of those, for calibration: 3 blocks of calibrate.run.BLOCK_SAMPLES
ACTOR_TITLE = b"MapBatches(Worker)"  # in a Ray Data actor's process title


def _train(x: np.ndarray, y: np.ndarray, path: Path) -> None:
    """A two-conv CNN, one epoch of Adam, seeded, exported with the TorchScript exporter (opset 17)."""
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    order = np.random.default_rng(0).permutation(len(x))
    for start in range(0, len(x), 128):
        pick = order[start:start + 128]
        loss = nn.functional.cross_entropy(net(torch.from_numpy(x[pick])), torch.from_numpy(y[pick]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    torch.onnx.export(net, (torch.zeros(1, 1, 28, 28),), str(path), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)


@pytest.fixture(scope="module")
def fashion(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fashion_ray")
    xtr, ytr = fashion_data.load("train")
    xte, yte = fashion_data.load("test")
    paths = {"model": folder / "cnn.onnx", "converted": folder / "cnn_spiking.onnx", "data": folder / "eval.npz",
             "calib": folder / "calib.npz"}
    _train(xtr[:TRAIN_IMAGES], ytr[:TRAIN_IMAGES], paths["model"])
    np.savez(paths["data"], image=np.concatenate([xte, xtr[50_000:]]), labels=np.concatenate([yte, ytr[50_000:]]))
    np.savez(paths["calib"], image=xtr[:CALIBRATION_IMAGES])
    amos_onnx.convert(paths["model"], paths["converted"], paths["calib"], k=4, progress=False)
    return paths


@pytest.fixture(scope="module")
def cluster() -> object:
    """A local Ray cluster of two nodes, one CPU each, joined by this process."""
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    nodes.add_node(num_cpus=1)
    ray.init(address=nodes.address, log_to_driver=False)
    yield nodes
    ray.shutdown()
    nodes.shutdown()


def _same(single: amos_onnx.report.validate.ValidationReport, on_ray: amos_onnx.report.validate.ValidationReport):
    """Exact for counts, maxima and what they give (accuracies, agreement, spikes), float rounding for sums."""
    assert on_ray.samples == single.samples == 20_000
    assert on_ray.accuracy_original == single.accuracy_original
    assert on_ray.accuracy_converted == single.accuracy_converted
    assert on_ray.native == single.native
    for a, b in zip(single.outputs, on_ray.outputs):
        assert (a.name, a.passed, a.agreement, a.max_abs_error) == (b.name, b.passed, b.agreement, b.max_abs_error)
        assert b.mean_abs_error == pytest.approx(a.mean_abs_error, rel=1e-12)
    assert single.counter is not None and on_ray.counter is not None
    for name, stats in single.counter.stats.items():
        theirs = on_ray.counter.stats[name]
        assert (stats.spikes, stats.evaluations, stats.silent, stats.error_count, stats.error_max) == \
            (theirs.spikes, theirs.evaluations, theirs.silent, theirs.error_count, theirs.error_max)
        assert theirs.error_sq == pytest.approx(stats.error_sq, rel=1e-12)
        assert theirs.samples.values.size == stats.samples.values.size == 20_000  # merged: full and bounded
        assert (theirs.samples.lo, theirs.samples.hi, theirs.samples.seen) == \
            (stats.samples.lo, stats.samples.hi, stats.samples.seen)
    assert on_ray.mean_spikes_per_gate == single.mean_spikes_per_gate


@pytest.fixture(scope="module")
def single(fashion: dict[str, Path]) -> amos_onnx.report.validate.ValidationReport:
    return amos_onnx.validate(fashion["model"], fashion["converted"], fashion["data"], progress=False)


def test_validate_on_ray_gives_the_single_process_figures(fashion, cluster, single) -> None:
    on_ray = amos_onnx.validate(fashion["model"], fashion["converted"], fashion["data"], progress=False,
                                ray=RayOptions(actors=2, shard_samples=2048))
    assert "10 shards on 2 Ray actors" in on_ray.data
    assert single.accuracy_original > 0.8  # the network learned (82% after its one epoch)
    _same(single, on_ray)


def test_a_killed_actor_still_gives_the_same_figures(fashion, cluster, single) -> None:
    """A SIGKILL to one actor's process mid-run: Ray restarts the actor and retries its shard; no shard counts
    twice."""
    killed: list[tuple[int, float]] = []
    done = threading.Event()
    earlier = set(_actor_pids())  # actors of earlier runs that may not have exited yet

    def kill_one() -> None:
        while not done.is_set():
            for pid in set(_actor_pids()) - earlier:
                time.sleep(0.5)  # let it take a shard
                os.kill(pid, signal.SIGKILL)
                killed.append((pid, time.monotonic()))
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one)
    killer.start()
    try:
        on_ray = amos_onnx.validate(fashion["model"], fashion["converted"], fashion["data"], progress=False,
                                    ray=RayOptions(actors=2, shard_samples=1024))
    finally:
        done.set()
        killer.join()
    ended = time.monotonic()
    assert killed and killed[0][1] < ended, "no actor was killed while the run went on"
    _same(single, on_ray)


def _actor_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if ACTOR_TITLE in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_report_on_ray_writes_the_single_process_figures(fashion, cluster, tmp_path: Path) -> None:
    one = amos_onnx.write_report(fashion["model"], fashion["converted"], fashion["data"], tmp_path / "one",
                                 progress=False)
    many = amos_onnx.write_report(fashion["model"], fashion["converted"], fashion["data"], tmp_path / "ray",
                                  progress=False, ray=RayOptions(actors=2))
    assert one["totals"] == many["totals"]
    one_json = json.loads((tmp_path / "one/report.json").read_text())
    ray_json = json.loads((tmp_path / "ray/report.json").read_text())
    for a, b in zip(one_json["validation"]["gates"], ray_json["validation"]["gates"]):
        assert (a["spikes_per_input"], a["silent_share"], a["layer_max_error"]) == \
            (b["spikes_per_input"], b["silent_share"], b["layer_max_error"])
        assert b["layer_rmse"] == pytest.approx(a["layer_rmse"], rel=1e-9)
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == sorted(p.name for p in (tmp_path / "ray").iterdir())


def test_calibration_on_ray_gives_the_single_process_model(fashion, cluster, tmp_path) -> None:
    """Calibrated through Ray on 20,000 images (3 blocks of 8,192 samples: calibrate.run.Blocks, one shard each on
    2 actors), the plan's reservoirs are the single process's value for value and it keeps the same first
    batches; so for seeds 0-2 and K = 4 and convert's default, the converted model's gates are the single
    process's to the bit, and so is its test accuracy."""
    from amos_onnx.pipeline import plan

    one = plan(fashion["model"], fashion["calib"], progress=False)
    many = plan(fashion["model"], fashion["calib"], progress=False, ray=RayOptions(actors=2, shard_samples=256))
    assert many.samples == one.samples == CALIBRATION_IMAGES and "3 shards" in (many.calibration or "")
    for name, reservoir in one.reservoirs.items():
        theirs = many.reservoirs[name]
        assert (theirs.seen, theirs.lo, theirs.hi) == (reservoir.seen, reservoir.lo, reservoir.hi)
        assert np.array_equal(theirs.values, reservoir.values) and np.array_equal(theirs.keys, reservoir.keys)
    assert len(many.feeds) == len(one.feeds)
    assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(one.feeds, many.feeds))
    for seed, k in ((0, 4), (1, 4), (2, None)):
        models, accuracy = {}, {}
        for mode, ray_options in (("one", None), ("ray", RayOptions(actors=2, shard_samples=256))):
            output = tmp_path / f"{mode}{seed}.onnx"
            amos_onnx.convert(fashion["model"], output, fashion["calib"], seed=seed, progress=False, ray=ray_options,
                              **({"k": k} if k else {}))
            models[mode] = onnx.load(output)
            accuracy[mode] = amos_onnx.validate(fashion["model"], output, fashion["data"],
                                                progress=False).accuracy_converted
        gates = [[(n.attribute, n.input) for n in m.graph.node if n.op_type == "AmosGate"] for m in models.values()]
        assert gates[0] and gates[0] == gates[1], seed
        inits = [{t.name: t.raw_data for t in m.graph.initializer} for m in models.values()]
        assert inits[0] == inits[1] and accuracy["ray"] == accuracy["one"], (seed, accuracy)


def test_a_ray_dataset_is_measured_like_the_same_arrays(fashion, cluster, tmp_path: Path) -> None:
    data = np.load(fashion["data"])
    x, y = data["image"][:3000], data["labels"][:3000]
    np.savez(tmp_path / "first.npz", image=x, labels=y)
    rows = ray.data.from_items([{"image": x[i], "labels": y[i]} for i in range(len(x))])
    on_ray = amos_onnx.validate(fashion["model"], fashion["converted"], rows, progress=False)
    alone = amos_onnx.validate(fashion["model"], fashion["converted"], tmp_path / "first.npz", progress=False)
    assert on_ray.data.startswith("a ray.data.Dataset")
    assert on_ray.samples == alone.samples == 3000
    assert (on_ray.accuracy_original, on_ray.accuracy_converted, on_ray.outputs[0].agreement) == \
        (alone.accuracy_original, alone.accuracy_converted, alone.outputs[0].agreement)
    assert alone.counter is not None and on_ray.counter is not None
    assert {n: s.spikes for n, s in on_ray.counter.stats.items()} == \
        {n: s.spikes for n, s in alone.counter.stats.items()}


def test_a_bad_shard_names_its_file_and_rows(fashion, cluster, tmp_path: Path) -> None:
    x = np.load(fashion["data"])["image"][:4096].copy()
    x[3000, 0, 5, 5] = np.nan
    bad = tmp_path / "bad.npz"
    np.savez(bad, image=x)
    with pytest.raises(DataError, match=r"bad\.npz rows 2944\.\.3007: input 'image' contains NaN"):
        amos_onnx.validate(fashion["model"], fashion["converted"], bad, progress=False,
                           ray=RayOptions(actors=2, shard_samples=2048))


def test_the_command_line_joins_a_cluster_by_its_address(fashion, cluster) -> None:
    command = [sys.executable, "-m", "amos_onnx", "validate", str(fashion["model"]), str(fashion["converted"]),
               "--data", str(fashion["data"]), "--ray", cluster.address, "--ray-actors", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    alone = subprocess.run(command[:-4], capture_output=True, text=True, timeout=600)
    assert result.returncode == alone.returncode == 0, result.stderr
    assert "on 2 Ray actors" in result.stdout.splitlines()[0]
    assert result.stdout.splitlines()[1:] == alone.stdout.splitlines()[1:]


def test_ray_options_are_checked_before_a_cluster_starts(tmp_path: Path) -> None:
    """convert --ray needs --calib, validate --ray needs --data, and data that does not shard is refused: one
    line, exit 2, nothing written."""
    from click.testing import CliRunner
    from conftest import activation_model, save

    from amos_onnx.cli import main

    src = save(activation_model("Relu", 17), tmp_path / "m.onnx")
    runner = CliRunner()
    result = runner.invoke(main, ["convert", str(src), str(tmp_path / "out.onnx"), "--ray"])
    assert result.exit_code == 2 and "--ray needs --calib" in result.output
    assert not (tmp_path / "out.onnx").exists()
    result = runner.invoke(main, ["validate", str(src), str(src), "--ray"])
    assert result.exit_code == 2 and "--ray needs --data" in result.output
    with pytest.raises(DataError, match="data of type dict does not shard over Ray"):
        amos_onnx.validate(src, src, {"x": np.zeros((4, 16), np.float32)}, ray=RayOptions())
