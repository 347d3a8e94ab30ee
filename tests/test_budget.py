"""A time budget (convert --latency, --spike-budget): the paths of gates, the choice of K per site, and whole
conversions against the original and against the uniform K within the same budget."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import save
from test_compensate import _data, chain, detached, labelled, residual, squeeze_excitation

import amos_onnx
from amos_onnx.cli import main
from amos_onnx.errors import OptionError
from amos_onnx.fit import budget, change
from amos_onnx.fit.budget import allocate_plan, candidates
from amos_onnx.fit.change import output_change, significantly_lower, standard_error, unit_changes
from amos_onnx.fit.choose import Chooser
from amos_onnx.fit.paths import SiteGraph
from amos_onnx.options import FitOptions
from amos_onnx.pipeline import plan
from amos_onnx.report.files import latency
from amos_onnx.report.spikes import gate_nodes, gate_params
from amos_onnx.runtime import session

BUILDS = {"chain": chain, "residual": residual, "squeeze_excitation": squeeze_excitation}


def _graph(model: onnx.ModelProto, tmp_path: Path) -> tuple[SiteGraph, Path]:
    path = save(model, tmp_path / "model.onnx")
    p = plan(path)
    return SiteGraph.of(p.model, p.sites), path


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_the_latency_of_any_k_per_site_is_the_converted_models(tmp_path: Path, name: str) -> None:
    """SiteGraph.latency for K per site equals report.files.latency read off the model converted with those K,
    and the converted model's gates carry those K, for seeded random choices."""
    graph, path = _graph(BUILDS[name](), tmp_path)
    rng = np.random.default_rng(1)
    for trial in range(3):
        ks = {site: int(rng.integers(1, 9)) for site in graph.order}
        out = tmp_path / f"out{trial}.onnx"
        amos_onnx.convert(path, out, k_per_site=ks, progress=False)
        converted = onnx.load(out)
        assert {n.name.removesuffix("/amos"): gate_params(n).k for n in gate_nodes(converted)} == ks
        assert latency(converted)["latency_steps"] == graph.latency(ks)


def test_paths_through_a_residual_block_and_a_squeeze_excitation_gate(tmp_path: Path) -> None:
    """Residual: stem, the block's first Relu and the Relu after the add are in series (the skip path has fewer
    gates). Squeeze-excitation: the sigmoid follows the stem on the deepest path; the critical path names the
    sites with the largest K sum."""
    graph, _ = _graph(residual(), tmp_path)
    assert graph.order == ("stem_relu", "relu_a", "relu_b")
    assert graph.before == {"stem_relu": frozenset(), "relu_a": {"stem_relu"}, "relu_b": {"relu_a", "stem_relu"}}
    assert graph.depth() == 3
    ks = {"stem_relu": 4, "relu_a": 2, "relu_b": 5}
    assert graph.latency(ks) == 11 and graph.critical_path(ks) == ["stem_relu", "relu_a", "relu_b"]
    graph, _ = _graph(squeeze_excitation(), tmp_path)
    assert graph.before == {"stem_relu": frozenset(), "excite_sigmoid": {"stem_relu"}}
    assert graph.critical_path({"stem_relu": 3, "excite_sigmoid": 6}) == ["stem_relu", "excite_sigmoid"]


def _brute_force(graph: SiteGraph, curves: dict[str, dict[int, float]], ks: tuple[int, ...],
                 limit: int) -> float:
    best = float("inf")
    for choice in itertools.product(ks, repeat=len(graph.order)):
        chosen = dict(zip(graph.order, choice))
        if graph.latency(chosen) <= limit:
            best = min(best, sum(curves[s][k] for s, k in chosen.items()))
    return best


def test_the_choice_is_the_best_one_on_a_chain_with_convex_curves() -> None:
    """Four gates in series, each error falling by a site's own factor per neuron: the greedy choice is the exact
    optimum (checked against every choice) at every latency from 4 to 24, and never worse than uniform K."""
    graph = SiteGraph(("a", "b", "c", "d"), {"a": frozenset(), "b": frozenset("a"), "c": frozenset("b"),
                                             "d": frozenset("c")})
    ks = tuple(range(1, 7))
    scale = {"a": 5.0, "b": 1.0, "c": 0.2, "d": 2.0}
    curves = {s: {k: scale[s] * 0.25**k for k in ks} for s in graph.order}
    spikes = {s: {k: 0.1 * k for k in ks} for s in graph.order}
    for limit in range(4, 25):
        allocation = Chooser(graph, curves, spikes, dict.fromkeys(graph.order, 1.0), limit, None).allocation()
        assert allocation.latency <= limit
        assert allocation.predicted == pytest.approx(_brute_force(graph, curves, ks, limit), rel=1e-12)
        if allocation.uniform is not None:
            assert allocation.predicted <= allocation.uniform[1]


def test_a_gate_off_the_critical_path_gets_the_largest_k_for_free() -> None:
    """Two branches joining: a long one of three gates and a short one of one. Within a budget of 9 steps the
    short branch's gate takes the largest candidate K (up to 9 steps fit beside the long branch), the long one
    shares 9 steps."""
    graph = SiteGraph(("a1", "a2", "a3", "b", "out"), {"a1": frozenset(), "a2": frozenset({"a1"}),
                                                       "a3": frozenset({"a2"}), "b": frozenset(),
                                                       "out": frozenset({"a3", "b"})})
    ks = tuple(range(1, 8))
    curves = {s: {k: 2.0**-k for k in ks} for s in graph.order}
    spikes = {s: dict.fromkeys(ks, 0.5) for s in graph.order}
    allocation = Chooser(graph, curves, spikes, dict.fromkeys(graph.order, 1.0), 9, None).allocation()
    assert allocation.latency == 9 and allocation.k["b"] == 7
    assert allocation.critical_path[-1] == "out" and sum(allocation.k[s] for s in ("a1", "a2", "a3", "out")) == 9


def test_a_spike_budget_bounds_the_mean_spikes_per_gate_weighted_by_gates() -> None:
    """Spikes grow with K; a large site (1,000 gates) and a small one (10): within 0.45 spikes per gate the large
    site stays low and the small one takes what it can; a budget below the fewest reachable is a one-line
    error naming that figure."""
    graph = SiteGraph(("big", "small"), {"big": frozenset(), "small": frozenset({"big"})})
    ks = tuple(range(2, 9))
    curves = {s: {k: 2.0**-k for k in ks} for s in graph.order}
    spikes = {s: {k: 0.1 * k for k in ks} for s in graph.order}
    weights = {"big": 1000.0, "small": 10.0}
    allocation = Chooser(graph, curves, spikes, weights, None, 0.45).allocation()
    assert allocation.spikes_per_gate <= 0.45 and allocation.k["small"] == 8 and allocation.k["big"] == 4
    with pytest.raises(OptionError, match=r"--spike-budget 0\.1: the fewest spikes per gate reachable .* 0\.200"):
        Chooser(graph, curves, spikes, weights, None, 0.1).allocation()


def test_candidate_k_lie_around_the_uniform_k_of_the_budget() -> None:
    assert candidates(FitOptions(latency=24), 7) == (1, 2, 3, 4, 5, 6, 7)
    assert candidates(FitOptions(latency=90), 18) == (3, 4, 5, 6, 7, 8, 9)
    assert candidates(FitOptions(spike_budget=1.0), 18) == tuple(range(2, 9))


def test_output_change_is_kl_for_scores_and_relative_error_otherwise() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (50, 5))
    assert output_change([[logits]], [[logits]]) == 0.0
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    q_logits = logits + rng.normal(0, 0.1, logits.shape)
    q = np.exp(q_logits) / np.exp(q_logits).sum(1, keepdims=True)
    expected = float(np.mean(np.sum(p * np.log(p / q), axis=1)))
    assert output_change([[logits]], [[q_logits]]) == pytest.approx(expected, rel=1e-9)
    assert output_change([[p]], [[q]]) == pytest.approx(expected, rel=1e-9)  # probabilities are taken as they are
    maps = rng.normal(0, 1, (4, 3, 5, 5))
    assert output_change([[maps]], [[maps * 1.1]]) == pytest.approx(0.01, rel=1e-9)


def test_unit_changes_are_each_samples_share_of_the_change() -> None:
    """unit_changes gives one share per sample (a row of the outputs' first axis) that sums to output_change,
    for scores, for maps and for both outputs together; outputs that disagree on their rows give one share per
    feed; a scalar output gives one per feed."""
    rng = np.random.default_rng(0)
    logits, maps = rng.normal(0, 2, (2, 30, 5)), rng.normal(0, 1, (2, 30, 3, 4))
    base = [[logits[f], maps[f]] for f in range(2)]
    runs = [[logits[f] + rng.normal(0, 0.1, (30, 5)), maps[f] * 1.1] for f in range(2)]
    shares = unit_changes(base, runs)
    assert shares.shape == (60,) and np.all(shares >= 0)
    assert shares.sum() == pytest.approx(output_change(base, runs), rel=1e-12)
    assert output_change([[m] for m, _ in base], [[m] for m, _ in runs]) == pytest.approx(
        float(np.mean(np.sum(_kl_rows(np.concatenate(logits), np.concatenate([r[0] for r in runs])), axis=1))),
        rel=1e-12)
    uneven = [[logits[f], maps[f][:10]] for f in range(2)], [[r[0], r[1][:10]] for r in runs]
    assert unit_changes(*uneven).shape == (2,)
    assert unit_changes(*uneven).sum() == pytest.approx(output_change(*uneven), rel=1e-12)
    scalar = [[np.array(1.0)], [np.array(2.0)]], [[np.array(1.5)], [np.array(2.0)]]
    assert unit_changes(*scalar) == pytest.approx([0.25 / 5, 0.0])


def _kl_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    p = np.exp(a) / np.exp(a).sum(1, keepdims=True)
    q = np.exp(b) / np.exp(b).sum(1, keepdims=True)
    return p * np.log(p / q)  # type: ignore[no-any-return]


def test_a_choice_is_significantly_lower_only_beyond_the_noise_of_the_samples() -> None:
    """significantly_lower: a lower sum by more than SIGNIFICANCE standard errors of the paired per-sample
    difference; the same gap within the noise is not; a difference the same at every sample is; with one sample,
    any lower sum."""
    rng = np.random.default_rng(0)
    other = rng.exponential(1.0, 400)
    noise = rng.normal(0, 1.0, 400)
    noise -= noise.mean()
    assert standard_error(other - 0.1 + noise, other) == pytest.approx(float(np.std(noise, ddof=1) * 20), rel=1e-9)
    assert significantly_lower(other - 0.2 + noise, other)  # gap 80, standard error about 20
    assert not significantly_lower(other - 0.05 + noise, other)  # gap 20: 1 standard error
    assert not significantly_lower(other + 0.2 + noise, other)
    assert significantly_lower(other - 1e-9, other) and not significantly_lower(other, other)
    assert significantly_lower(np.array([0.5]), np.array([0.6])) and not significantly_lower(np.array([0.6]),
                                                                                             np.array([0.5]))


def test_a_choice_not_significantly_better_keeps_the_uniform_k(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The chain of test_a_budgeted_conversion_keeps_its_latency_and_is_no_worse_than_the_uniform_k (its choice
    measures 0.66 of the uniform K's change) with a significance no choice can reach: the uniform K is kept, the
    file is the uniform K's conversion, and the report says why; at change.SIGNIFICANCE the choice stays."""
    path = save(chain(), tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", x=_data(onnx.load(path), 256, seed=3))
    chosen = amos_onnx.convert(path, tmp_path / "chosen.onnx", tmp_path / "calib.npz", latency=10, focus_kicks=0,
                               progress=False).budget
    assert chosen is not None and not chosen["uniform_kept"] and len(set(chosen["k"].values())) > 1
    mine, uniform = chosen["measured_together"]
    assert uniform - mine > change.SIGNIFICANCE * chosen["measured_standard_error"] > 0
    monkeypatch.setattr(change, "SIGNIFICANCE", 1e9)
    report = amos_onnx.convert(path, tmp_path / "kept.onnx", tmp_path / "calib.npz", latency=10, focus_kicks=0,
                               progress=False)
    kept = report.budget
    assert kept is not None and kept["uniform_kept"] and set(kept["k"].values()) == {chosen["uniform"]["k"]}
    assert kept["measured_together"] == chosen["measured_together"]
    assert any("the uniform K kept: K per site is not lower by 1e+09 standard errors" in n for n in report.notes)
    amos_onnx.convert(path, tmp_path / "uniform.onnx", tmp_path / "calib.npz", k=chosen["uniform"]["k"],
                      focus_kicks=0, progress=False)
    assert onnx.load(tmp_path / "kept.onnx") == onnx.load(tmp_path / "uniform.onnx")


def _change(original: Path, converted: Path, x: np.ndarray) -> float:
    a = session(original, native=False).run(None, {"x": x})
    b = session(converted, native=False).run(None, {"x": x})
    return output_change([a], [b])


@pytest.mark.parametrize("name,limit", [("chain", 10), ("residual", 11), ("squeeze_excitation", 7)])
def test_a_budgeted_conversion_keeps_its_latency_and_is_no_worse_than_the_uniform_k(
        tmp_path: Path, name: str, limit: int) -> None:
    """convert --latency: the converted model's latency (read off it) is at most the budget and the report's;
    its gates carry the chosen K; on the calibration samples its outputs are closer to the original's than the
    uniform K within the same budget, and stay within the stated tolerance of them; the function form and the
    native op give the same bits."""
    path = save(BUILDS[name](), tmp_path / "model.onnx")
    x = _data(onnx.load(path), 256, seed=3)
    np.savez(tmp_path / "calib.npz", x=x)
    report = amos_onnx.convert(path, tmp_path / "out.onnx", tmp_path / "calib.npz", latency=limit, focus_kicks=0,
                               progress=False)
    converted = onnx.load(tmp_path / "out.onnx")
    budget = report.budget
    assert budget is not None and latency(converted)["latency_steps"] == budget["latency_steps"] <= limit
    assert {n.name.removesuffix("/amos"): gate_params(n).k for n in gate_nodes(converted)} == budget["k"]
    uniform = budget["uniform"]["k"]
    amos_onnx.convert(path, tmp_path / "uniform.onnx", tmp_path / "calib.npz", k=uniform, focus_kicks=0,
                      progress=False)
    mine, theirs = _change(path, tmp_path / "out.onnx", x), _change(path, tmp_path / "uniform.onnx", x)
    assert set(budget["k"].values()) != {uniform} and mine < 0.7 * theirs  # measured: 0.66, 0.53, 0.60 of it
    # KL in nats per sample for the classifier (chain), relative square error of the maps otherwise
    assert mine < {"chain": 1e-3, "residual": 0.04, "squeeze_excitation": 0.025}[name]
    native = session(tmp_path / "out.onnx", native=True).run(None, {"x": x})
    function = session(tmp_path / "out.onnx", native=False).run(None, {"x": x})
    assert all(a.tobytes() == b.tobytes() for a, b in zip(native, function))


def test_budget_errors_are_one_line_and_name_the_smallest_reachable_latency(tmp_path: Path) -> None:
    path = save(chain(), tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", x=_data(onnx.load(path), 64, seed=3))
    with pytest.raises(OptionError, match=r"--latency 2: the smallest reachable latency of .*model\.onnx is 3 steps"):
        amos_onnx.convert(path, tmp_path / "out.onnx", tmp_path / "calib.npz", latency=2, progress=False)
    runner = CliRunner()
    cases = [(["--latency", "2", "--calib", str(tmp_path / "calib.npz")], "smallest reachable latency"),
             (["--latency", "12"], "--latency needs --calib"),
             (["--latency", "12", "--k", "4", "--calib", str(tmp_path / "calib.npz")], "not both"),
             (["--spike-budget", "-1", "--calib", str(tmp_path / "calib.npz")], "positive number"),
             (["--latency", "0", "--calib", str(tmp_path / "calib.npz")], "at least 1")]
    for extra, message in cases:
        result = runner.invoke(main, ["convert", str(path), str(tmp_path / "out.onnx"), *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "out.onnx").exists()


def test_a_classifier_exported_with_its_labels_is_measured_at_its_scores(tmp_path: Path) -> None:
    """A classifier whose only output is its ArgMax cast to int32: the budget measures at the scores the labels
    are computed from, so it makes the same choice and the same file's gates and weights as the scores' model;
    a model none of whose outputs comes from a floating-point tensor is a one-line error naming the file and its
    outputs (exit 2, no output file), and --k still converts it."""
    np.savez(tmp_path / "calib.npz", x=_data(chain(), 128, seed=3))
    scores, labels = save(chain(), tmp_path / "scores.onnx"), save(labelled(chain()), tmp_path / "labels.onnx")
    reports = [amos_onnx.convert(path, tmp_path / f"{path.stem}_out.onnx", tmp_path / "calib.npz", latency=10,
                                 progress=False).budget for path in (scores, labels)]
    assert reports[0] is not None and reports[1] is not None and reports[0]["k"] == reports[1]["k"]
    assert reports[0]["measured_together"] == reports[1]["measured_together"]
    written = [onnx.load(tmp_path / f"{name}_out.onnx").graph.initializer for name in ("scores", "labels")]
    assert sorted(t.SerializeToString() for t in written[0]) == sorted(t.SerializeToString() for t in written[1])
    path = save(detached(chain()), tmp_path / "ids.onnx")
    np.savez(tmp_path / "calib.npz", x=_data(chain(), 128, seed=3), ids=np.arange(128))
    with pytest.raises(OptionError, match=r"--spike-budget 0\.5: .*ids\.onnx has no floating-point output, nor one "
                                          r"its outputs are computed from, .*\(ids_out \(int64\)\); choose K"):
        amos_onnx.convert(path, tmp_path / "out.onnx", tmp_path / "calib.npz", spike_budget=0.5, progress=False)
    result = CliRunner().invoke(main, ["convert", str(path), str(tmp_path / "out.onnx"), "--calib",
                                       str(tmp_path / "calib.npz"), "--latency", "9"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "--latency 9:" in result.output and "no floating-point output" in result.output
    assert not (tmp_path / "out.onnx").exists()
    amos_onnx.convert(path, tmp_path / "out.onnx", tmp_path / "calib.npz", k=3, progress=False)
    assert {gate_params(n).k for n in gate_nodes(onnx.load(tmp_path / "out.onnx"))} == {3}


def test_the_cli_prints_the_choice_and_the_report_shows_it(tmp_path: Path) -> None:
    path = save(chain(), tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", x=_data(onnx.load(path), 128, seed=3))
    result = CliRunner().invoke(main, ["convert", str(path), str(tmp_path / "out.onnx"), "--calib",
                                       str(tmp_path / "calib.npz"), "--latency", "9", "--report",
                                       str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert "budget: latency" in result.output and "critical path relu1 (K=" in result.output
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Time budget" in text and "critical path relu1 (K=" in text


def test_a_spike_budget_conversion_spends_no_more_spikes_than_it_may(tmp_path: Path) -> None:
    """convert --spike-budget: the chosen K keep the mean spikes per gate on the calibration samples (the fits'
    count, weighted by gates) within the budget, and the converted model's own spike count on those samples
    (validate, the native op's spike outputs) is within 0.02 of it."""
    path = save(chain(), tmp_path / "model.onnx")
    x = _data(onnx.load(path), 256, seed=3)
    np.savez(tmp_path / "calib.npz", x=x)
    report = amos_onnx.convert(path, tmp_path / "out.onnx", tmp_path / "calib.npz", spike_budget=0.7, focus_kicks=0,
                               progress=False)
    assert report.budget is not None and report.budget["spikes_per_gate"] <= 0.7
    measured = amos_onnx.validate(path, tmp_path / "out.onnx", tmp_path / "calib.npz")
    assert measured.mean_spikes_per_gate == pytest.approx(report.budget["spikes_per_gate"], abs=0.02)


def test_a_latency_far_above_a_spike_budget_is_met_below_its_uniform_k(tmp_path: Path) -> None:
    """--latency 60 --spike-budget 0.7 on the chain of three gates: the latency's uniform K (20) and the candidates
    around it spend more than 0.7 spikes per gate, but a latency is a bound, so smaller K meet both budgets. It
    was refused ("the fewest spikes per gate reachable with K in 18..22 are 4.730"); now the windows go below the
    candidates (budget.lowered) and the conversion keeps both budgets, as validate measures them."""
    path = save(chain(), tmp_path / "model.onnx")
    x = _data(onnx.load(path), 256, seed=3)
    np.savez(tmp_path / "calib.npz", x=x)
    report = amos_onnx.convert(path, tmp_path / "out.onnx", tmp_path / "calib.npz", latency=60, spike_budget=0.7,
                               focus_kicks=0, progress=False)
    assert report.budget is not None and report.budget["spikes_per_gate"] <= 0.7
    assert latency(onnx.load(tmp_path / "out.onnx"))["latency_steps"] == report.budget["latency_steps"] <= 60
    assert max(report.budget["k"].values()) < 18  # below the candidates around the uniform K
    measured = amos_onnx.validate(path, tmp_path / "out.onnx", tmp_path / "calib.npz")
    assert measured.mean_spikes_per_gate == pytest.approx(report.budget["spikes_per_gate"], abs=0.02)
    assert _change(path, tmp_path / "out.onnx", x) < 0.1


def test_windows_go_below_the_candidates_in_proportion_to_the_spikes_and_widen_over_gaps() -> None:
    """budget.lowered: with no choice within the spike budget at the candidates' smallest K, each free window
    gains a K as far below as the spikes need in proportion (spikes 0.2 K: 1.0 per gate at K=5, budget 0.5:
    K=2); none without a spike budget or where every window starts at K=1. widened then tries the K next to a
    choice that has not been tried, down to 1 in a lowered window."""
    graph = SiteGraph(("a", "b"), {"a": frozenset(), "b": frozenset("a")})
    outer = tuple(range(5, 12))
    windows = {"a": [5, 6, 7], "b": [5, 6, 7]}
    chooser = Chooser(graph, {s: {k: 2.0**-k for k in w} for s, w in windows.items()},
                      {s: {k: 0.2 * k for k in w} for s, w in windows.items()}, dict.fromkeys(graph.order, 1.0),
                      24, 0.5, candidates=outer)
    with pytest.raises(OptionError, match="reachable with K in 5..7"):
        chooser.allocation()
    assert budget.widened(windows, chooser, None, outer) is None
    assert budget.lowered(windows, chooser, 0.5) == {"a": [2, 5, 6, 7], "b": [2, 5, 6, 7]}  # 5 * 0.5 / 1.0
    assert budget.lowered(windows, chooser, None) is None
    assert budget.lowered({"a": [1, 5], "b": [1, 5]}, chooser, 0.5) is None
    low = {"a": [2, 5, 6, 7], "b": [2, 5, 6, 7]}
    chooser = Chooser(graph, {s: {k: 2.0**-k for k in w} for s, w in low.items()},
                      {s: {k: 0.2 * k for k in w} for s, w in low.items()}, dict.fromkeys(graph.order, 1.0), 24,
                      0.5, candidates=outer)
    chosen = chooser.allocation()
    assert chosen.k == {"a": 2, "b": 2}
    assert budget.widened(low, chooser, chosen, outer) == {"a": [1, 2, 3, 5, 6, 7], "b": [1, 2, 3, 5, 6, 7]}


def test_a_model_without_top_level_gates_has_nothing_to_choose(tmp_path: Path) -> None:
    """Only a Relu and a Sigmoid inside an If's branches: the budget has no gate on any path (latency 0), the
    sites keep their default K, and the conversion goes through."""
    from test_subgraphs import if_model

    path = save(if_model(), tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", cond=np.array(True),
             x=np.random.default_rng(0).normal(0, 1, (50, 4)).astype(np.float32))
    report = amos_onnx.convert(path, tmp_path / "out.onnx", tmp_path / "calib.npz", latency=5, progress=False)
    assert report.budget is not None and report.budget["latency_steps"] == 0 and report.budget["k"] == {}
    assert sorted(s.k for s in report.sites) == [10, 12]
    assert any("no gate in the top-level graph" in note for note in report.notes)


def test_a_budget_works_with_per_channel_gates_and_compensation(tmp_path: Path) -> None:
    """--latency with --per-channel, --bias-correction and --sequential: those act on the chosen K (the gates
    carry it, the latency holds; per-channel gates, refitted sequentially one per gate their channels share, and
    a bias corrected after each site), and the outputs stay within the budgeted conversion's tolerance
    (residual: relative square error 0.04; measured 0.022)."""
    path = save(residual(), tmp_path / "model.onnx")
    x = _data(onnx.load(path), 256, seed=3)
    np.savez(tmp_path / "calib.npz", x=x)
    report = amos_onnx.convert(path, tmp_path / "out.onnx", tmp_path / "calib.npz", latency=11, per_channel=True,
                               bias_correction=True, sequential=True, progress=False)
    converted = onnx.load(tmp_path / "out.onnx")
    assert report.budget is not None and latency(converted)["latency_steps"] == report.budget["latency_steps"] <= 11
    assert {n.name.removesuffix("/amos"): gate_params(n).k for n in gate_nodes(converted)} == report.budget["k"]
    assert [s.source for s in report.sites] == ["calibrated sequentially"] * 3 and len(report.biases) == 3
    assert all(gate_params(n).axis is not None for n in gate_nodes(converted))
    assert _change(path, tmp_path / "out.onnx", x) < 0.04


@pytest.mark.parametrize("name,limit", [("chain", 10), ("residual", 11), ("squeeze_excitation", 7)])
def test_a_site_is_tried_at_more_k_only_where_its_choice_sits_at_the_edge(
        tmp_path: Path, name: str, limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The K tried per site start around the budget's uniform K (budget.FIRST) and grow only where the choice
    sits at the edge of those tried: every chosen K lies inside its site's tried K or at the edge of the
    candidates, fewer fits are made than every site at every candidate, and the choice is the one made with
    every candidate tried (these graphs; measured on the same samples)."""
    path = save(BUILDS[name](), tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", x=_data(onnx.load(path), 256, seed=3))
    p = plan(path, tmp_path / "calib.npz", latency=limit, focus_kicks=0, progress=False)
    lazy, fits = allocate_plan(p, p.options.fit)
    outer = lazy.candidates
    assert outer == candidates(p.options.fit, SiteGraph.of(p.model, p.sites).depth())
    for site, k in lazy.k.items():
        tried = sorted(lazy.curves[site])
        assert tried == list(range(tried[0], tried[-1] + 1))
        assert tried[0] < k < tried[-1] or k == tried[0] == outer[0] or k == tried[-1] == outer[-1]
        assert fits[site].params.k == k
    assert sum(map(len, lazy.curves.values())) < len(outer) * len(lazy.k)
    monkeypatch.setattr(budget, "FIRST", (budget.BELOW, budget.ABOVE))
    every, _ = allocate_plan(p, p.options.fit)
    assert all(len(c) == len(every.candidates) for c in every.curves.values())
    assert every.k == lazy.k
    assert all(lazy.curves[s][k] == every.curves[s][k] for s in lazy.curves for k in lazy.curves[s])


def test_windows_widen_at_the_edge_a_choice_sits_on_and_down_when_nothing_fits() -> None:
    """budget.widened: the next K of the candidates joins a window whose edge was chosen (not past the
    candidates' edge); with no choice within the spike budget every window gains its next smaller K; None when
    nothing can be added."""
    graph = SiteGraph(("a", "b", "c"), {"a": frozenset(), "b": frozenset("a"), "c": frozenset("b")})
    outer = tuple(range(1, 8))
    windows = {"a": [2, 3, 4, 5], "b": [2, 3, 4, 5], "c": [6, 7]}
    curves = {s: {k: 2.0**-k for k in w} for s, w in windows.items()}
    spikes = {s: {k: 0.1 * k for k in w} for s, w in windows.items()}
    chooser = Chooser(graph, curves, spikes, dict.fromkeys(graph.order, 1.0), 12, None, candidates=outer)
    chosen = chooser.finish({"a": 2, "b": 4, "c": 7}, (4, 0.1))
    assert budget.widened(windows, chooser, chosen, outer) == {"a": [1, 2, 3, 4, 5], "b": [2, 3, 4, 5], "c": [6, 7]}
    assert budget.widened(windows, chooser, None, outer) == {"a": [1, 2, 3, 4, 5], "b": [1, 2, 3, 4, 5],
                                                             "c": [5, 6, 7]}
    inside = chooser.finish({"a": 3, "b": 4, "c": 7}, (4, 0.1))
    assert budget.widened(windows, chooser, inside, outer) is None
    # no uniform K within the budgets among the K every site has: each window gains its next smaller K
    shared = {"a": [3, 4, 5], "b": [3, 4, 5], "c": [3, 4, 5]}
    chooser = Chooser(graph, {s: {k: 2.0**-k for k in w} for s, w in shared.items()},
                      {s: {k: 0.1 * k for k in w} for s, w in shared.items()}, dict.fromkeys(graph.order, 1.0), 12,
                      None, candidates=outer)
    assert budget.widened(shared, chooser, chooser.finish({"a": 4, "b": 4, "c": 4}, None), outer) == {
        "a": [2, 3, 4, 5], "b": [2, 3, 4, 5], "c": [2, 3, 4, 5]}
