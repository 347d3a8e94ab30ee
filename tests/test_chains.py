"""Gates of several chains (--chains): the gate, its three emission forms and the native op bit for bit, the fit,
convert's node and its accuracy against one chain at the same K, the options that keep one chain."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import activation_model, save
from gate_cases import PRELU_SLOPES
from onnx import TensorProto, helper

import amos_onnx
from amos_onnx.cli import main
from amos_onnx.errors import OptionError
from amos_onnx.fit import kernel
from amos_onnx.fit.chains import FIT_POINTS, SCREEN_STARTS, cost, cut_sets, fit_chains, joint_weights, pieces
from amos_onnx.fit.grids import Grids
from amos_onnx.fit.search import fit, quick_fit
from amos_onnx.gate import GateParams, of_chains, simulate
from amos_onnx.options import FitOptions
from amos_onnx.report.spikes import gate_params
from amos_onnx.rewrite import emit
from amos_onnx.runtime import native_library, session

NATIVE = native_library() is not None


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def random_chains(seed: int) -> GateParams:
    rng = np.random.default_rng(seed)
    k, c = int(rng.integers(1, 20)), int(rng.integers(2, 5))
    return of_chains([GateParams(rng.normal(0, 3, k), rng.normal(0, 3, k), rng.normal(0, 2, k)) for _ in range(c)])


def gate_model(params: GateParams, spikes: bool = False) -> onnx.ModelProto:
    node = emit.gate_node("x", "y", params, 2, "g/amos", "test gate")
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if spikes:
        node.output.append("s")
        outputs.append(helper.make_tensor_value_info("s", TensorProto.INT32, None))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "M"])],
                              outputs)
    opsets = [helper.make_opsetid("", 17)]
    return helper.make_model(graph, opset_imports=opsets + [helper.make_opsetid("amos", 1)], ir_version=10,
                             functions=[emit.function_proto(emit.overload_of(params, 2), opsets)])


def inline_model(params: GateParams) -> onnx.ModelProto:
    nodes, inits = emit.inline_nodes("x", "y", params, 2, lambda s: f"g/{s}")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "M"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_gate_of_chains_is_its_chains_added_in_order() -> None:
    params = random_chains(0)
    x = np.random.default_rng(1).normal(0, 6, 1000).astype(np.float32)
    y, s = simulate(params, x)
    want = simulate(params.chain(0), x)[0]
    for c in range(1, params.chains):
        want = want + simulate(params.chain(c), x)[0]
    assert np.array_equal(y, want)
    assert np.array_equal(s, sum(simulate(params.chain(c), x)[1] for c in range(params.chains)))
    assert params.k * params.chains == params.neurons and params.to_dict()["chains"] == params.chains


@pytest.mark.parametrize("thresholds, chains, axis", [(np.zeros(5), 2, None), (np.zeros((3, 4)), 2, 1),
                                                      (np.zeros(4), 0, None)])
def test_chains_need_a_shared_gate_of_a_multiple_of_their_count(thresholds: np.ndarray, chains: int,
                                                                axis: int | None) -> None:
    with pytest.raises(ValueError, match="chains need a shared gate"):
        GateParams(thresholds, thresholds, thresholds, axis=axis, chains=chains)


@pytest.mark.parametrize("seed", range(8))
def test_every_form_of_a_gate_of_chains_agrees_bit_for_bit(seed: int) -> None:
    """Numpy reference, the fitter's C simulation, the function form, the inline form and (when built) the native
    op, outputs and spike counts, with +-inf and NaN among the inputs."""
    params = random_chains(seed)
    rng = np.random.default_rng(100 + seed)
    x = rng.normal(0, 6, (3, 1031)).astype(np.float32)
    x[0, :4] = [np.inf, -np.inf, np.nan, 0.0]
    reference, spikes = simulate(params, x)
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(kernel.simulate(params, x), (reference, spikes)))
    function = session(gate_model(params), native=False).run(["y"], {"x": x})[0]
    inline = session(inline_model(params), native=False).run(["y"], {"x": x})[0]
    assert np.array_equal(function, reference, equal_nan=True) and np.array_equal(inline, reference, equal_nan=True)
    if NATIVE:
        y, s = session(gate_model(params, spikes=True), native=True).run(["y", "s"], {"x": x})
        assert np.array_equal(y, reference, equal_nan=True) and np.array_equal(s, spikes)


def test_the_node_of_a_gate_of_chains_and_its_function() -> None:
    params = random_chains(3)
    node = emit.gate_node("x", "y", params, 2, "g/amos", "doc")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert sorted(attrs) == ["chain_resets", "chain_thresholds", "chain_weights", "chains", "k"]
    assert attrs["k"] == params.k and attrs["chains"] == params.chains
    assert len(attrs["chain_thresholds"]) == params.k * params.chains
    assert node.overload == f"k{params.k}x{params.chains}"
    read = gate_params(node)
    assert read.chains == params.chains and np.array_equal(read.thresholds, params.thresholds)


def _outcome(model: onnx.ModelProto, x: np.ndarray, native: bool) -> np.ndarray | str:
    try:
        return session(model, native=native).run(["y"], {"x": x})[0]
    except Exception as exc:  # noqa: BLE001 - a refusal, at session creation or run
        return str(exc)


@pytest.mark.parametrize("case", ["one-chain body, node of chains", "body of chains, one-chain node",
                                  "body of 3 chains, node of 2"])
def test_a_node_that_does_not_fit_its_overload_never_gets_two_answers(case: str) -> None:
    """The function form refuses a node whose chains disagree with its overload's: it never computes a gate the
    native op computes differently."""
    two, one = random_chains(5), GateParams(np.ones(4), np.ones(4), np.ones(4))
    two = of_chains([two.chain(0), two.chain(1)])
    if case == "one-chain body, node of chains":
        node_params, overload = two, emit.Overload(two.k)
    elif case == "body of chains, one-chain node":
        node_params, overload = one, emit.Overload(4, None, 2)
    else:
        node_params, overload = two, emit.Overload(two.k, None, 3)
    model = gate_model(node_params)
    model.graph.node[0].overload = overload.name
    del model.functions[:]
    model.functions.append(emit.function_proto(overload, [helper.make_opsetid("", 17)]))
    x = np.linspace(-5, 5, 40, dtype=np.float32).reshape(4, 10)
    assert isinstance(_outcome(model, x, native=False), str)


def test_the_pieces_add_up_to_f_and_the_cuts_lie_inside_the_range() -> None:
    x = np.linspace(-20, 20, 4001)
    for cuts in ([0.5], [-1.0, 2.0], [-3.0, 0.0, 4.0]):
        assert np.allclose(sum(f(x) for f in pieces(silu, cuts)), silu(x), atol=1e-12)
    ordered = np.sort(np.random.default_rng(0).normal(0, 2, 5000))
    for chains in (2, 3, 4):
        for cuts in cut_sets(chains, -8.0, 9.0, ordered):
            assert len(cuts) == chains - 1 and all(-8 < c < 9 for c in cuts) and cuts == sorted(cuts)


@pytest.mark.parametrize("func, k", [(silu, 4), (silu, 6), (gelu, 5), (lambda x: 1 / (1 + np.exp(-x)), 4)])
def test_two_chains_fit_far_closer_than_one_at_the_same_k(func, k: int) -> None:  # type: ignore[no-untyped-def]
    """On samples like a network's (most near 0, a long tail), two chains of K neurons have under half the error
    of one chain of K neurons, with the same latency K."""
    samples = np.random.default_rng(2).standard_t(4, 20000) * 2.0
    lo, hi = float(samples.min()), float(samples.max())
    one = fit(func, k, lo, hi, samples, kicks=6, keep_starts=8)
    two = fit_chains(func, k, 2, lo, hi, samples, kicks=6, keep_starts=8)
    err = [float(np.mean((kernel.simulate(g.params, samples.astype(np.float32))[0] - func(samples)) ** 2))
           for g in (one, two)]
    assert two.params.chains == 2 and two.params.k == k
    assert err[1] < 0.5 * err[0], err


def test_the_cut_is_chosen_on_quick_fits_and_the_full_fit_improves_on_them() -> None:
    """Each cut set's pieces get a quick fit (search.quick_fit: the best structured starts descended a little);
    only the cut whose quick gate costs least is fitted in full, from those quick fits, and the result costs no
    more than any cut's quick gate."""
    samples = np.random.default_rng(4).standard_t(4, 20000) * 2.0
    lo, hi = float(samples.min()), float(samples.max())
    for func, k in ((silu, 5), (gelu, 4)):
        p = Grids.of(func, lo, hi, samples).problem(0.0, FIT_POINTS)
        quick = [cost(joint_weights([quick_fit(f, k, lo, hi, samples, keep_starts=SCREEN_STARTS)
                                     for f in pieces(func, cuts)], p), p)
                 for cuts in cut_sets(2, lo, hi, np.sort(samples))]
        result = fit_chains(func, k, 2, lo, hi, samples, kicks=6, keep_starts=8)
        assert len(quick) == 3 and cost(result.params, p) <= min(quick), (cost(result.params, p), quick)


def test_converted_node_of_chains_and_its_accuracy(tmp_path: Path) -> None:
    """A Mish model converted with --chains 2 at K=5: one AmosGate whose two chains give outputs closer to Mish
    than --chains 1 at the same K (root mean square error on the calibration inputs, long-tailed: up to about
    +-40); both forms bit-identical."""
    model = save(activation_model("Mish", 18, shape=["N", 64]), tmp_path / "m.onnx")
    x = (np.random.default_rng(3).standard_t(4, (256, 64)) * 2).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    errors = {}
    for chains in (1, 2):
        out = tmp_path / f"c{chains}.onnx"
        report = amos_onnx.convert(model, out, tmp_path / "calib.npz", k=5, chains=chains, reconstruct=False)
        converted = onnx.load(str(out))
        assert [n.op_type for n in converted.graph.node] == ["AmosGate"]
        assert gate_params(converted.graph.node[0]).chains == chains
        want = session(model, native=False).run(None, {"x": x})[0]
        got = session(out, native=False).run(None, {"x": x})[0]
        errors[chains] = float(np.sqrt(np.mean((got - want) ** 2)))
        if NATIVE:
            assert np.array_equal(session(out, native=True).run(None, {"x": x})[0], got)
        assert any(n.startswith("chains: 1 of 1 gates") for n in report.notes) == (chains == 2)
    assert errors[2] < 0.75 * errors[1] and errors[2] < 0.2, errors  # measured: 0.24 with one chain, 0.14 with two


def test_per_channel_gates_keep_one_chain(tmp_path: Path) -> None:
    model = save(activation_model("PRelu", 16, consts=[PRELU_SLOPES], shape=["N", 4, 5, 5]), tmp_path / "p.onnx")
    amos_onnx.convert(model, tmp_path / "c.onnx", chains=2)
    node = onnx.load(str(tmp_path / "c.onnx")).graph.node[0]
    assert gate_params(node).chains == 1 and gate_params(node).axis is not None


def test_the_command_line_takes_chains_and_refuses_too_many(tmp_path: Path) -> None:
    model = save(activation_model("Gelu", 20, shape=["N", 8]), tmp_path / "g.onnx")
    runner = CliRunner()
    done = runner.invoke(main, ["convert", str(model), str(tmp_path / "c.onnx"), "--chains", "2", "--k", "4", "-q"])
    assert done.exit_code == 0, done.output
    assert gate_params(onnx.load(str(tmp_path / "c.onnx")).graph.node[0]).chains == 2
    bad = runner.invoke(main, ["convert", str(model), str(tmp_path / "d.onnx"), "--chains", "9"])
    assert bad.exit_code == 2 and "--chains 9: must be between 1 and 4" in bad.output
    assert not (tmp_path / "d.onnx").exists()
    with pytest.raises(OptionError):
        FitOptions(chains=0)


def test_the_fit_command_fits_chains_and_refuses_too_many(tmp_path: Path) -> None:
    """amos-onnx fit --chains 2: 2 x K values, and on long-tailed samples under half the square error of one chain
    of K neurons (measured: 0.41 of it)."""
    np.save(tmp_path / "s.npy", np.random.default_rng(5).standard_t(4, 4000) * 2.0)
    runner = CliRunner()
    fitted = {}
    for chains in (1, 2):
        done = runner.invoke(main, ["fit", "SiLU", "--k", "4", "--samples", str(tmp_path / "s.npy"), "--kicks", "6",
                                    "--chains", str(chains), "--json"])
        assert done.exit_code == 0, done.output
        fitted[chains] = json.loads(done.output)
    assert fitted[2]["chains"] == 2 and "chains" not in fitted[1]
    assert len(fitted[2]["thresholds"]) == len(fitted[2]["weights"]) == 8 and fitted[2]["k"] == 4
    errors = [fitted[c]["samples_mse"] for c in (1, 2)]
    assert errors[1] < 0.5 * errors[0], errors
    text = runner.invoke(main, ["fit", "SiLU", "--k", "3", "--chains", "2", "--kicks", "2"]).output
    assert "chains: 2" in text and "SiLU K=3 x 2 chains on" in text
    bad = runner.invoke(main, ["fit", "SiLU", "--k", "4", "--chains", "5"])
    assert bad.exit_code == 2 and "--chains 5: must be between 1 and 4" in bad.output


def test_chains_through_sequential_refits_reconstruction_and_a_time_budget(tmp_path: Path) -> None:
    """Eight Conv + Tanh layers converted with --chains 2: sequentially refitted gates stay two chains (and are named
    so), a --latency budget keeps within its steps with two chains per gate, and both convert closer to the original
    than one chain in the same mode (mean square error of the outputs on held-out inputs, in onnxruntime; measured
    0.29x and 0.27x); the function form and the native op agree to the bit."""
    from test_compensate import _data
    from test_sequential import deep_tanh

    model = deep_tanh(3)
    path = save(model, tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", x=_data(model, 256, 1))
    x = _data(model, 256, 2)
    want = session(path, native=False).run(None, {"x": x})[0]
    for mode in ({"k": 3, "sequential": True}, {"latency": 24}):
        errors = {}
        for chains in (1, 2):
            out = tmp_path / f"c{chains}.onnx"
            report = amos_onnx.convert(path, out, tmp_path / "calib.npz", chains=chains, focus_kicks=0,
                                       progress=False, **mode)
            got = session(out, native=False).run(None, {"x": x})[0]
            errors[chains] = float(np.mean((got - want) ** 2))
            gates = [gate_params(n) for n in onnx.load(str(out)).graph.node if n.op_type == "AmosGate"]
            assert len(gates) == 8 and {g.chains for g in gates} == {chains}
            if "sequential" in mode:
                assert {s.source for s in report.sites} == {"calibrated sequentially"}
            else:
                assert report.budget is not None and report.budget["latency_steps"] <= 24
            if NATIVE:
                assert np.array_equal(session(out, native=True).run(None, {"x": x})[0], got)
        assert errors[2] < 0.5 * errors[1], (mode, errors)


@pytest.mark.parametrize("chains", [2, 3, 4])
def test_the_inline_form_of_chains_in_a_converted_model(tmp_path: Path, chains: int) -> None:
    """convert --emit inline with 2-4 chains (the converter's own unique names for every chain's nodes and sums):
    the same outputs as the function form, bit for bit, and no AmosGate left."""
    model = save(activation_model("Gelu", 20, shape=["N", 8]), tmp_path / "g.onnx")
    amos_onnx.convert(model, tmp_path / "f.onnx", k=3, chains=chains)
    amos_onnx.convert(model, tmp_path / "i.onnx", k=3, chains=chains, emit="inline")
    inline = onnx.load(str(tmp_path / "i.onnx"))
    assert "AmosGate" not in {n.op_type for n in inline.graph.node}
    assert sum(n.op_type == "Add" and "chains" in n.name for n in inline.graph.node) == chains - 1
    x = np.linspace(-6, 6, 64, dtype=np.float32).reshape(8, 8)
    assert np.array_equal(session(tmp_path / "i.onnx", native=False).run(None, {"x": x})[0],
                          session(tmp_path / "f.onnx", native=False).run(None, {"x": x})[0])
