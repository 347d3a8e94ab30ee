"""A model cut into segments by level (rewrite.segments) and walked over cached tensors (compensate.walk)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_compensate import Builder, _data, residual

from amos_onnx.compensate import walk as walk_module
from amos_onnx.compensate.targets import site_levels
from amos_onnx.compensate.walk import Walk
from amos_onnx.find.sites import Site
from amos_onnx.fit import focus
from amos_onnx.fit.sites import fit_sites
from amos_onnx.options import EmitForm, FindOptions, FitOptions
from amos_onnx.pipeline import _find, plan, write
from amos_onnx.rewrite.segments import split
from amos_onnx.runtime import session


def _levels(model: onnx.ModelProto) -> tuple[dict[str, int], list[Site]]:
    sites, *_ = _find(model, FindOptions())
    return site_levels(model, sites)[0], sites


def test_a_residual_model_splits_by_level_and_its_segments_run_in_turn_give_its_outputs(tmp_path: Path) -> None:
    """residual(): stem Relu (level 1), relu_a (2), relu_b (3). Cut at levels 1 and 2: segment 0 holds the
    nodes before the first site's output (stem Conv and Relu), segment 1 those reading level 1 (conv_a, relu_a),
    segment 2 the rest; the stem's output crosses two cuts (the residual). Walked over two feeds, the segments
    give the whole model's output to float rounding (onnxruntime fuses Conv with the Add and Relu after it only
    when they are in one model)."""
    model = residual()
    levels, _ = _levels(model)
    segments = split(model, levels, [1, 2], set())
    names = [[model.graph.node[i].name for i in s.nodes] for s in segments]
    assert names == [["stem", "stem_relu"], ["conv_a", "relu_a"], ["conv_b", "sum", "relu_b", "y"]]
    assert [s.inputs for s in segments] == [("x",), ("stem_relu",), ("relu_a", "stem_relu")]
    assert [s.outputs for s in segments] == [("stem_relu",), ("relu_a",), ("y",)]
    feeds = [{"x": _data(model, 3, 1)}, {"x": _data(model, 5, 2)}]
    walk = Walk(model, segments, feeds, ["only"], ["y"], "residual", tmp_path)
    for part in range(len(segments)):
        walk.store(part, "only", walk.run(part, "only", {}))
    whole = session(model, native=False)
    for feed, (got,) in zip(feeds, walk.outputs("only", ["y"])):
        np.testing.assert_allclose(got, whole.run(["y"], feed)[0], rtol=1e-5, atol=1e-5)
    assert all(set(held) == {"y"} for held in walk.streams["only"])  # nothing else held at the end


def test_constant_nodes_stay_constants_in_every_segment_that_reads_them(tmp_path: Path) -> None:
    """A weight written as a Constant node (as paddle2onnx does) and read after the cut is copied into that
    segment's model, not carried as a tensor between segments."""
    b = Builder(["N", 4, 6, 6])
    weight = numpy_helper.from_array(b.rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), "w_value")
    b.nodes.append(helper.make_node("Constant", [], ["w"], name="w", value=weight))
    h = b.node("Relu", [b.node("Conv", ["x", "w"], "first", pads=[1] * 4)], "relu")
    model = b.model(b.node("Conv", [h, "w"], "y", pads=[1] * 4), ["N", 4, 6, 6])
    levels, _ = _levels(model)
    segments = split(model, levels, [1], set())
    assert [s.inputs for s in segments] == [("x",), ("relu",)]
    feeds = [{"x": _data(model, 2, 1)}]
    walk = Walk(model, segments, feeds, ["only"], ["y"], "constants", tmp_path)
    for part in range(2):
        walk.store(part, "only", walk.run(part, "only", {}))
    assert np.array_equal(walk.outputs("only", ["y"])[0][0], session(model, native=False).run(["y"], feeds[0])[0])


def test_a_subgraph_reading_an_outer_tensor_puts_it_among_the_segment_inputs(tmp_path: Path) -> None:
    """An If whose branches read the first site's output from outside: the If lands after the cut and that
    tensor is among its segment's inputs."""
    b = Builder(["N", 4])
    h = b.node("Relu", [b.node("Add", ["x", b.const("shift", (4,), 0.1)], "add")], "relu")
    then = helper.make_graph([helper.make_node("Neg", [h], ["a"])], "then", [],
                             [helper.make_tensor_value_info("a", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", [h], ["b"])], "else", [],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)])
    b.inits.append(numpy_helper.from_array(np.array(True), "flag"))
    b.nodes.append(helper.make_node("If", ["flag"], ["y"], name="y", then_branch=then, else_branch=other))
    model = b.model("y", ["N", 4])
    levels, _ = _levels(model)
    segments = split(model, levels, [1], set())
    assert segments[1].inputs == ("relu",)
    feeds = [{"x": _data(model, 3, 1)}]
    walk = Walk(model, segments, feeds, ["only"], ["y"], "if", tmp_path)
    for part in range(2):
        walk.store(part, "only", walk.run(part, "only", {}))
    want = session(model, native=False).run(["y"], feeds[0])[0]
    assert np.array_equal(walk.outputs("only", ["y"])[0][0], want) and want.min() < 0


def test_streams_past_the_byte_bound_drop_their_last_feeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With room for about two feeds' tensors, trim keeps the first two feeds of every stream (one at least)."""
    model = residual()
    levels, _ = _levels(model)
    feeds = [{"x": _data(model, 4, seed)} for seed in range(5)]
    walk = Walk(model, split(model, levels, [1, 2], set()), feeds, ["a", "b"], ["y"], "trim", tmp_path)
    for name in ("a", "b"):
        walk.store(0, name, walk.run(0, name, {}))
    per_feed = sum(a.nbytes for a in walk.streams["a"][0].values())
    monkeypatch.setattr(walk_module, "WALK_BYTES", 4 * per_feed + 1)
    walk.trim()
    assert [len(s) for s in walk.streams.values()] == [2, 2] and walk.samples == 8
    monkeypatch.setattr(walk_module, "WALK_BYTES", 0)
    walk.trim()
    assert [len(s) for s in walk.streams.values()] == [1, 1]


def test_a_segment_without_nodes_runs_as_nothing(tmp_path: Path) -> None:
    """Cut at a level no node reaches: that segment has no nodes and no outputs, makes nothing and needs no
    session, and the walk still ends with the model's output."""
    model = residual()
    levels, _ = _levels(model)
    segments = split(model, levels, [1, 2, 5], set())
    assert segments[3].nodes == () and segments[3].outputs == ()
    feeds = [{"x": _data(model, 2, 1)}]
    walk = Walk(model, segments, feeds, ["only"], ["y"], "empty", tmp_path)
    for part in range(len(segments)):
        walk.store(part, "only", walk.run(part, "only", {}))
        assert {key[0] for key in walk.sessions} == ({2} if part == 3 else {part})  # the last built only
    (got,) = walk.outputs("only", ["y"])[0]
    np.testing.assert_allclose(got, session(model, native=False).run(["y"], feeds[0])[0], rtol=1e-5, atol=1e-5)


def test_finish_runs_the_rest_as_one_model_and_gives_what_the_segments_give_in_turn(tmp_path: Path) -> None:
    """finish(part) on the residual model: from each part, the output the segments give run one by one (to float
    rounding: one model lets onnxruntime fuse the Conv, Add and Relu across the cuts), the stream untouched, and
    the stem's output (a graph output here too, made before the tail) taken from what the stream holds. One
    tail model is kept, built again for another part or after use()."""
    model = residual()
    model.graph.output.append(helper.make_tensor_value_info("stem_relu", TensorProto.FLOAT, None))
    levels, _ = _levels(model)
    segments = split(model, levels, [1, 2], set())
    feeds = [{"x": _data(model, 3, 1)}, {"x": _data(model, 2, 2)}]
    walk = Walk(model, segments, feeds, ["only"], ["y", "stem_relu"], "finish", tmp_path)
    whole = session(model, native=False)
    want = [whole.run(["y", "stem_relu"], feed) for feed in feeds]
    for part in range(len(segments)):
        held = [dict(h) for h in walk.streams["only"]]
        finished = walk.finish(part, "only", {}, ["y", "stem_relu"])
        assert walk.tail is not None and walk.tail[0] == (part, ("y", "stem_relu"), ())
        assert walk.tail[1].nodes == tuple(i for s in segments[part:] for i in s.nodes)
        assert walk.tail[1].outputs == (("y", "stem_relu") if part == 0 else ("y",))
        for got, expected in zip(finished, want):
            for a, b in zip(got, expected):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        assert all(h.keys() == k.keys() for h, k in zip(walk.streams["only"], held))  # the stream as it was
        walk.store(part, "only", walk.run(part, "only", {}))
    walk.use(model)
    assert walk.tail is None and not walk.sessions


def test_walk_sessions_run_a_fixed_thread_count_and_feeds_side_by_side_give_the_same_tensors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime's outputs depend on its thread count (bias correction's files differed between one and two
    threads), so every session of the walk runs WALK_THREADS, not onnxruntime's default of one per core: the
    segments' and the tail's. On a machine with cores for several such runs the feeds go side by side (here 8
    CPUs: 4 at once), and every tensor, run or finished, is the same to the bit as one feed at a time, in order."""
    model = residual()
    levels, _ = _levels(model)
    segments = split(model, levels, [1, 2], set())
    feeds = [{"x": _data(model, n, seed)} for seed, n in enumerate((3, 1, 4, 2, 5))]
    got = {}
    for cpus in (2, 8):
        monkeypatch.setattr(walk_module, "cpus", lambda cpus=cpus: cpus)
        walk = Walk(model, segments, feeds, ["only"], ["y"], "threads", tmp_path)
        finished = walk.finish(0, "only", {}, ["y"])
        sessions = [walk.tail[2]] if walk.tail else []
        for part in range(len(segments)):
            walk.store(part, "only", walk.run(part, "only", {}))
            sessions += walk.sessions.values()
        assert len(sessions) == 4
        assert {s.get_session_options().intra_op_num_threads for s in sessions} == {walk_module.WALK_THREADS}
        got[cpus] = [f[0] for f in finished] + [y for (y,) in walk.outputs("only", ["y"])]
    assert [a.shape[0] for a in got[2]] == [3, 1, 4, 2, 5] * 2
    assert all(np.array_equal(a, b) for a, b in zip(got[2], got[8]))


def test_a_walk_builds_each_segment_with_the_switches_it_is_given_fixed(tmp_path: Path) -> None:
    """The switched model (fit.focus.switched_model) of residual() walked in two streams, every switch off and
    every switch on: each segment's session is built from the segment with its switches fixed (no switch among
    its inputs, rewrite.switches), one per setting; the streams end at the original's y and the converted
    model's (to float rounding: onnxruntime fuses the Conv, Add and Relu across the cuts only in one model), and
    finishing from a part gives the same."""
    model = residual()
    levels, sites = _levels(model)
    fits = fit_sites(sites, {}, FitOptions(k=6))
    mixed, switches = focus.switched_model(model, sites, fits, EmitForm.FUNCTION)
    segments = split(mixed, levels, [1, 2], set())
    feeds = [{"x": _data(model, 3, 1)}, {"x": _data(model, 2, 2)}]
    walk = Walk(mixed, segments, feeds, ["off", "on"], ["y"], "fixed", tmp_path)
    settings = {stream: {s: np.array(stream == "on") for s in switches.values()} for stream in ("off", "on")}
    finished = {stream: walk.finish(0, stream, extra, ["y"]) for stream, extra in settings.items()}
    for part in range(len(segments)):
        for stream, extra in settings.items():
            walk.store(part, stream, walk.run(part, stream, extra))
        assert len(walk.sessions) == 2 and {key[0] for key in walk.sessions} == {part}
        for sess in walk.sessions.values():
            assert not {i.name for i in sess.get_inputs()} & set(switches.values())
    path = tmp_path / "residual.onnx"
    onnx.save(model, path)
    p = plan(path)
    write(p, tmp_path / "converted.onnx", fits)
    want = {"off": session(model, native=False), "on": session(tmp_path / "converted.onnx", native=False)}
    assert not np.allclose(*(want[stream].run(["y"], feeds[0])[0] for stream in settings), rtol=1e-3, atol=1e-3)
    for stream in settings:
        for feed, (got,), (done,) in zip(feeds, walk.outputs(stream, ["y"]), finished[stream]):
            expected = want[stream].run(["y"], feed)[0]
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(done, expected, rtol=1e-5, atol=1e-5)
