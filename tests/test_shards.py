"""Data in shards (data.shards) and figures that merge (Reservoir.merge, OutputTally, Measured): what Ray's actors
do, checked here in one process without Ray, against the single-process path in onnxruntime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from click.testing import CliRunner
from conftest import ROOT, activation_model, save
from test_dataset import _recurrent

import amos_onnx
from amos_onnx.calibrate.reservoir import Reservoir
from amos_onnx.cli import main
from amos_onnx.data.dataset import open_data
from amos_onnx.data.shards import open_shard, plan_shards
from amos_onnx.errors import DataError
from amos_onnx.report.validate import Comparison, ValidateOptions

DIGITS = ROOT / "examples/digits"


def _batches(dataset) -> list[dict[str, np.ndarray]]:
    return [dict(batch) for batch in dataset.batches]


def _same_batches(whole: list[dict[str, np.ndarray]], parts: list[dict[str, np.ndarray]]) -> None:
    assert len(whole) == len(parts)
    for a, b in zip(whole, parts):
        assert a.keys() == b.keys()
        for name in a:
            assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_shards_read_the_single_process_batches_and_labels(compressed: bool, tmp_path: Path) -> None:
    """x [N, 8] and a recurrent state [2, N, 4] (samples on axis 1, read whole) with labels: 200 samples in
    shards of 64 rows (the batch size) give the single-process batches one for one, each shard its labels."""
    model_path = _recurrent(tmp_path, True)
    model = onnx.load(model_path)
    rng = np.random.default_rng(0)
    x, state = rng.normal(0, 1, (200, 8)).astype(np.float32), rng.normal(0, 1, (2, 200, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 200)
    data = tmp_path / "data.npz"
    (np.savez_compressed if compressed else np.savez)(data, x=x, state=state, labels=labels)
    sharded = plan_shards(data, model, None, None, workers=2, shard_samples=50)
    assert [(s.start, s.stop) for s in sharded.shards] == [(0, 64), (64, 128), (128, 192), (192, 200)]
    assert sharded.count == 200 and sharded.axes == {"state": 1} and sharded.paths == (data,)
    parts = [open_shard(s, sharded, model) for s in sharded.shards]
    _same_batches(_batches(open_data(data, model)), [b for part in parts for b in _batches(part)])
    assert np.array_equal(np.concatenate([p.labels for p in parts]), labels)


def test_npy_folder_and_list_shards_read_the_single_process_batches(tmp_path: Path) -> None:
    """An .npy (memory-mapped), a folder of images (its sorted files split) and a list of both: the same batches
    as each read in one process."""
    from PIL import Image

    model = activation_model("Relu", 17, shape=["N", 3, 8, 8])
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (150, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(70):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    for source in (tmp_path / "x.npy", folder):
        sharded = plan_shards(source, model, None, None, workers=1, shard_samples=64)
        parts = [b for s in sharded.shards for b in _batches(open_shard(s, sharded, model))]
        _same_batches(_batches(open_data(source, model)), parts)
    both = plan_shards([tmp_path / "x.npy", folder], model, None, None, workers=1, shard_samples=64)
    assert both.count == 220 and [s.index for s in both.shards] == list(range(5))
    assert len(both.paths) == 71  # the .npy and every image: never to be overwritten


def test_shards_are_checked_from_headers_and_a_bad_row_names_its_file_and_rows(tmp_path: Path) -> None:
    model = activation_model("Relu", 17, shape=["N", 16])
    with pytest.raises(DataError, match=r"wrong\.npz: input 'x' has dtype float64"):
        np.savez(tmp_path / "wrong.npz", x=np.zeros((10, 16)))
        plan_shards(tmp_path / "wrong.npz", model, None, None, workers=1)
    with pytest.raises(DataError, match="'labels' must be a 1-D array of 10 labels"):
        np.savez(tmp_path / "labels.npz", x=np.zeros((10, 16), np.float32), labels=np.zeros(9))
        plan_shards(tmp_path / "labels.npz", model, None, None, workers=1)
    x = np.zeros((300, 16), np.float32)
    x[200, 3] = np.nan
    np.savez(tmp_path / "nan.npz", x=x)
    sharded = plan_shards(tmp_path / "nan.npz", model, None, None, workers=1, shard_samples=128)
    _batches(open_shard(sharded.shards[0], sharded, model))  # rows 0..127 are fine
    with pytest.raises(DataError, match=r"nan\.npz rows 192\.\.255: input 'x' contains NaN or Inf"):
        _batches(open_shard(sharded.shards[1], sharded, model))


def test_merged_reservoirs_are_the_smallest_keys_of_all_shards_and_uniform() -> None:
    """Shards sampled with their own generators and merged: exact count and range, the `cap` smallest keys of the
    union, and (over 40 seeded streams of 200,000 values in 7 shards) each tenth of the stream holds a tenth of
    the sample within 3 standard errors."""
    counts = np.zeros(10)
    for seed in range(40):
        parts = []
        for shard, chunk in enumerate(np.array_split(np.arange(200_000, dtype=np.float32), 7)):
            part = Reservoir(500, np.random.default_rng([seed, shard]))
            for batch in np.array_split(chunk, 9):
                part.add(batch)
            parts.append(part)
        keys = np.sort(np.concatenate([p.keys for p in parts]))[:500]
        merged = Reservoir(500, np.random.default_rng(seed))
        for part in parts:
            merged.merge(part)
        assert merged.seen == 200_000 and (merged.lo, merged.hi) == (0, 199_999) and merged.values.size == 500
        assert np.array_equal(np.sort(merged.keys), keys)
        counts += np.bincount((merged.values // 20_000).astype(int), minlength=10)
    share, n = counts / counts.sum(), counts.sum()
    assert np.all(np.abs(share - 0.1) < 3 * np.sqrt(0.1 * 0.9 / n)), share


@pytest.mark.parametrize("per_channel", [False, True])
def test_calibration_in_shards_samples_exactly_what_one_process_samples(per_channel: bool, tmp_path: Path) -> None:
    """30,000 rows ([N, 4, 8] into a Tanh: 4 blocks of 8,192 samples) sampled shard by shard by the Ray actors' job
    (cluster.calibrate._Sample), in shards of one and of two blocks, merged in any order: the single process's
    reservoirs value for value (count, range, sample, keys, channels), and its first batches."""
    from amos_onnx.calibrate.run import BLOCK_SAMPLES, Blocks, Kept, Sampler, calibrate
    from amos_onnx.cluster.calibrate import _Sample
    from amos_onnx.find.sites import find_sites
    from amos_onnx.options import CalibrationOptions

    model = activation_model("Tanh", 17, shape=["N", 4, 8])
    model_path = save(model, tmp_path / "tanh.onnx")
    x = np.random.default_rng(0).normal(0, 2, (30_000, 4, 8)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    sites, _ = find_sites(gs.import_onnx(model), 17)
    options = CalibrationOptions(cap=3000, seed=5, per_channel=per_channel)
    kept = Kept(300, 1 << 30)
    one, count = calibrate(model, sites, open_data(tmp_path / "x.npz", model), options, keep=kept)
    assert count == 30_000 and all(r.seen == 30_000 * 32 for r in one.values())
    for shard_samples in (1, 2 * BLOCK_SAMPLES):
        sharded = plan_shards(tmp_path / "x.npz", model, None, None, 2, shard_samples, unit=BLOCK_SAMPLES)
        assert len(sharded.shards) == (4 if shard_samples == 1 else 2)
        job = _Sample(Sampler(model, sites, options, str(model_path), tmp_path), 300, 1 << 30)
        parts = [job.run(open_shard(s, sharded, model), s, s.index + 1, 1) for s in reversed(sharded.shards)]
        merged = Blocks()
        for part in parts:
            merged.merge(part.blocks)
        assert merged.count == 4
        for name, theirs in job.sampler.settled(merged).items():
            mine = one[name]
            assert (theirs.seen, theirs.lo, theirs.hi) == (mine.seen, mine.lo, mine.hi)
            assert np.array_equal(theirs.values, mine.values) and np.array_equal(theirs.channels, mine.channels)
            assert np.array_equal(theirs.keys, mine.keys) and mine.values.size == (4 * 4096 if per_channel else 3000)
            assert np.array_equal(theirs.channel_lo, mine.channel_lo) and np.array_equal(theirs.channel_hi,
                                                                                          mine.channel_hi)
        first = np.concatenate([feed["x"] for part in reversed(parts) for feed in part.kept])
        single = np.concatenate([feed["x"] for feed in kept.feeds])
        assert len(single) >= 300 and np.array_equal(first[:len(single)], single)


def test_merged_channel_reservoirs_keep_each_channel_s_range() -> None:
    rng = np.random.default_rng(0)
    a, b = Reservoir(100, np.random.default_rng(1), axis=1), Reservoir(100, np.random.default_rng(2), axis=1)
    xa, xb = rng.normal(0, 1, (20, 3, 5)), rng.normal(5, 1, (30, 3, 5))
    a.add(xa)
    b.add(xb)
    a.merge(b)
    both = np.concatenate([xa, xb]).astype(np.float32)
    assert np.array_equal(a.channel_lo, both.min(axis=(0, 2))) and np.array_equal(a.channel_hi, both.max(axis=(0, 2)))
    assert a.values.size == both.size  # 750 values, below the per-channel cap: all of them kept
    for c in range(3):
        assert np.all(np.isin(a.values[a.channels == c], both[:, c]))


def test_measured_shards_merge_into_the_single_process_figures(tmp_path: Path) -> None:
    """The digits example: its test set measured in 6 shards (Comparison.measure on each, with its own seed) and
    merged gives validate's counts, maxima, agreement, accuracies and spikes exactly, its sums to rounding."""
    original, converted, data = DIGITS / "digits_cnn.onnx", tmp_path / "spiking.onnx", DIGITS / "digits_test.npz"
    amos_onnx.convert(original, converted, DIGITS / "digits_train.npz", progress=False)
    whole = amos_onnx.validate(original, converted, data, progress=False)
    comparison = Comparison(original, converted, ValidateOptions())
    sharded = plan_shards(data, comparison.orig_model, None, None, workers=1, shard_samples=64)
    parts = [comparison.measure(open_shard(s, sharded, comparison.orig_model), seed=s.index + 1)
             for s in sharded.shards]
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    tally = merged.outputs[0]
    assert len(parts) == 6 and merged.samples == whole.samples == 360
    assert tally.accuracies == (whole.accuracy_original, whole.accuracy_converted)
    assert (tally.agreement, tally.error_max) == (whole.outputs[0].agreement, whole.outputs[0].max_abs_error)
    assert tally.mean_error == pytest.approx(whole.outputs[0].mean_abs_error, rel=1e-12)
    assert whole.counter is not None
    for name, stats in whole.counter.stats.items():
        mine = merged.counter.stats[name]
        assert (mine.spikes, mine.evaluations, mine.silent, mine.error_max) == \
            (stats.spikes, stats.evaluations, stats.silent, stats.error_max)
        assert mine.samples.seen == stats.samples.seen and mine.samples.values.size == stats.samples.values.size


def test_ray_options_give_one_line_errors(tmp_path: Path) -> None:
    """Without Ray installed, --ray says how to get it (exit 2); --ray-actors needs --ray. (With Ray installed,
    the errors raised before a cluster starts: tests/test_slow_ray.py.)"""
    src = save(activation_model("Relu", 17), tmp_path / "m.onnx")
    hidden = "import sys; sys.modules['ray'] = None; from amos_onnx.cli import main; main()"
    result = subprocess.run([sys.executable, "-c", hidden, "validate", str(src), str(src), "--ray"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == \
        ["amos-onnx: error: --ray needs Ray, which is not installed: pip install 'amos-onnx[ray]'"]
    result = CliRunner().invoke(main, ["validate", str(src), str(src), "--ray-actors", "2"])
    assert result.exit_code == 2 and "--ray-actors and --ray-cpus need --ray" in result.output
