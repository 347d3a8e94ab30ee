"""Each site's gate alone in place for many sites in one run (rewrite.fanned): the model as it is, and beside it a copy
of what lies downstream of each site reading that site's gate. It measures what the switched model measures, to
the bit on these models, for the focus and the time budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from test_focus import _loud_and_quiet

from amos_onnx.fit import focus
from amos_onnx.fit.sites import fit_sites
from amos_onnx.options import FitOptions
from amos_onnx.pipeline import plan
from amos_onnx.rewrite import fanned
from amos_onnx.rewrite.fanned import fanned_model, group_size, sample_bytes
from amos_onnx.runtime import session


def test_the_fanned_model_gives_each_sites_outputs_as_the_switched_model_does(tmp_path: Path) -> None:
    """The loud/quiet model (Tanh and a composite SiLU side by side, concatenated): the original's nodes, then per
    site its gate and the copies of what reads it downstream (the loud site: its scaling Mul and the Concat; the
    quiet site: the Concat); y as it is and once per site, each to the bit the switched model's y with that site's
    switch alone on."""
    path = _loud_and_quiet(tmp_path)
    p = plan(path, calib=tmp_path / "calib.npz")
    fits = fit_sites(p.sites, p.reservoirs, FitOptions(k=8))
    made = fanned_model(p.model, p.sites, {name: f.params for name, f in fits.items()}, p.options.emit, p.judged)
    assert made is not None
    model, outputs = made
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == [
        "Slice", "Tanh", "Mul", "Slice", "Sigmoid", "Mul", "Mul", "Concat",
        "AmosGate", "Mul", "Concat",  # the loud site alone
        "AmosGate", "Concat"]  # the quiet site alone
    assert set(outputs) == {"loud_site", "quiet_site"}
    assert [o.name for o in model.graph.output] == ["y", outputs["loud_site"][0], outputs["quiet_site"][0]]
    x = np.load(tmp_path / "calib.npz")["x"][:200]
    y, *alone = session(model, native=False).run(None, {"x": x})
    mixed, switches = focus.switched_model(p.model, p.sites, fits, p.options.emit)
    off = {name: np.array(False) for name in switches.values()}
    switched = session(mixed, native=False)
    assert np.array_equal(y, switched.run(["y"], {"x": x, **off})[0])
    for site, got in zip(("loud_site", "quiet_site"), alone):
        want = switched.run(["y"], {"x": x, **off, switches[site]: np.array(True)})[0]
        assert np.array_equal(got, want)
        assert not np.array_equal(got, y)


def test_effects_from_fanned_models_equal_the_switched_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """focus.effects with fanned models (side by side, one site per model, or all in one) and with the switched
    model alone (group_size 0): the same effects, to the bit."""
    path = _loud_and_quiet(tmp_path)
    p = plan(path, calib=tmp_path / "calib.npz")
    fits = fit_sites(p.sites, p.reservoirs, FitOptions(k=8))
    both = focus.effects(p, fits)
    for size in (0, 1, 2):
        monkeypatch.setattr(focus, "group_size", lambda *_, size=size: size)
        assert focus.effects(p, fits) == both


def _downstream_if(tmp_path: Path) -> Path:
    """x -> Tanh (a site) -> If(cond: Identity of it, else its Neg) -> y."""
    then = helper.make_graph([helper.make_node("Identity", ["t"], ["a"])], "then", [],
                             [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4])])
    other = helper.make_graph([helper.make_node("Neg", ["t"], ["b"])], "else", [],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4])])
    nodes = [helper.make_node("Tanh", ["x"], ["t"], name="tanh"),
             helper.make_node("If", ["cond"], ["y"], name="choose", then_branch=then, else_branch=other)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
                                           helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "if.onnx"))
    x = np.random.default_rng(0).normal(0, 1, (64, 4)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x, cond=np.array(True))
    return tmp_path / "if.onnx"


def test_a_site_read_inside_a_subgraph_downstream_is_left_to_the_switched_model(tmp_path: Path) -> None:
    """A node downstream of the site holds a subgraph: no fanned model; the focus measures the site with the
    switched model, its effect that of the gate on y."""
    p = plan(_downstream_if(tmp_path), calib=tmp_path / "calib.npz")
    fits = fit_sites(p.sites, p.reservoirs, FitOptions(k=8))
    assert fanned_model(p.model, p.sites, {"tanh": fits["tanh"].params}, p.options.emit, p.judged) is None
    assert group_size(p.model, p.judged, 64) > 0
    effect = focus.effects(p, fits)
    assert set(effect.by_site) == {"tanh"} and effect.by_site["tanh"] > 0


def test_a_fanned_model_holds_as_many_sites_as_its_outputs_allow(tmp_path: Path) -> None:
    """group_size: FANNED_BYTES over the judged tensors' bytes for the samples, less the model's own; 0 where a
    shape beyond the samples' axis is not known, where nothing is judged, or where not even two sites fit."""
    p = plan(_loud_and_quiet(tmp_path), calib=tmp_path / "calib.npz")
    assert sample_bytes(p.model, p.judged) == 32 * 4
    assert group_size(p.model, p.judged, 1000) == fanned.FANNED_BYTES // (128 * 1000) - 1
    assert group_size(p.model, p.judged, fanned.FANNED_BYTES // 128 // 2) == 0  # one site would fit, not two
    assert group_size(p.model, [], 1000) == 0
    graph = helper.make_graph([helper.make_node("Tanh", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "M"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "M"])])
    free = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])  # y's width known only at run time
    assert sample_bytes(free, p.judged) is None and group_size(free, p.judged, 1000) == 0
