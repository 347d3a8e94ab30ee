"""Spike statistics measured on a converted model's real gate inputs, per gate node: the top-level graph's and
those inside If branches and Scan bodies (their inputs brought out as calibration brings out a site's, a Scan's
stacked over its steps); gates inside Loop bodies are not counted."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from amos_onnx.calibrate.branches import CARRIERS, expose_value, if_path, merged_steps, scans_in
from amos_onnx.calibrate.reservoir import Reservoir
from amos_onnx.errors import ModelLoadError
from amos_onnx.fit.kernel import simulate
from amos_onnx.gate import GateParams
from amos_onnx.rewrite import emit

SAMPLE_CAP = 20_000  # gate inputs kept per gate for the pictures


def gate_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The converted nodes (function form) of a model's top-level graph."""
    return [n for n in model.graph.node if _is_gate(n)]


def _is_gate(node: onnx.NodeProto) -> bool:
    return node.domain == emit.DOMAIN and node.op_type == emit.OP_TYPE


GraphPath = tuple[tuple[str, str], ...]  # the If/Scan nodes (first output) and graph attributes down to a subgraph


@dataclass(frozen=True)
class Counted:
    """A gate node the counter counts: `key` names it in the counts (its node name; where that repeats, with the
    If or Scan holding it, and a number where names still repeat), `value` is the run output holding its inputs
    (its input at the top level, else the graph output exposed_model adds) and `scans` the Scans on its way up,
    whose steps stack its inputs along axes ahead of its own (merged into its first axis when counted, as
    calibration merges a site's)."""

    key: str
    node: onnx.NodeProto
    path: GraphPath
    value: str
    scans: int

    @property
    def inside(self) -> str | None:
        """Where a gate in a subgraph is (_where); None at top level."""
        return _where(self.path) or None


def _where(path: GraphPath) -> str:
    """"<If or Scan's first output> <attribute>" per level of a path."""
    return " / ".join(f"{holder} {attr}" for holder, attr in path)


def counted_gates(model: onnx.ModelProto) -> tuple[list[Counted], int]:
    """The gates the counter counts, top-level first, and how many gates inside Loop bodies it cannot count."""
    found = [(node, ()) for node in gate_nodes(model)] + list(_inner(model.graph, ()))
    gates: list[Counted] = []
    keys: set[str] = set()
    loops = 0
    for node, path in found:
        chain = if_path(model.graph, path) if path else []
        if chain is None:
            loops += 1
            continue
        key = node.name
        if key in keys:  # a name repeated in another branch or body
            key = f"{key} (in {_where(path)})" if path else key
            key = key if key not in keys else f"{key} #{len(gates)}"
        keys.add(key)
        value = node.input[0] if not path else f"amos/spikes/{len(gates)}/0"  # expose_value's name for it
        gates.append(Counted(key, node, path, value, scans_in(chain)))
    return gates, loops


def _inner(graph: onnx.GraphProto, path: GraphPath) -> list[tuple[onnx.NodeProto, GraphPath]]:
    found: list[tuple[onnx.NodeProto, GraphPath]] = []
    for node in graph.node:
        if path and _is_gate(node):
            found.append((node, path))
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                # a Loop's path is kept too: if_path refuses it, so its gates are counted as not reachable
                inner = (*path, (node.output[0] if node.output else "", attr.name))
                found += _inner(attr.g, inner) if node.op_type in (*CARRIERS, "Loop") else []
    return found


def exposed_model(model: onnx.ModelProto, gates: list[Counted]) -> onnx.ModelProto:
    """A copy of the model whose graph outputs also bring out the inputs of the gates inside subgraphs (each as its
    Counted.value); the model itself when there are none."""
    inner = [g for g in gates if g.path]
    if not inner:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for gate in inner:
        chain = if_path(copy.graph, gate.path)
        assert chain is not None
        made = expose_value(copy, chain, gate.node.input[0], onnx.TensorProto.FLOAT, gate.value.removesuffix("/0"))
        assert made == gate.value
    return copy


def gate_params(node: onnx.NodeProto) -> GateParams:
    """The GateParams stored on a converted node's attributes; a ModelLoadError naming the node when they do
    not make a gate (a hand-edited node: missing, mistyped or mis-sized attributes)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    try:
        k, axis, chains = int(attrs["k"]), attrs.get("axis"), int(attrs.get("chains", 1))
        arrays = [np.asarray(attrs[name], np.float32) for name in emit.param_attrs(chains)]
        if axis is not None:
            arrays = [a.reshape(-1, k) for a in arrays]
        params = GateParams(arrays[0], arrays[1], arrays[2], axis=None if axis is None else int(axis), chains=chains)
    except (KeyError, ValueError, TypeError) as exc:
        text = f"attribute {exc} is missing" if isinstance(exc, KeyError) else str(exc)
        raise ModelLoadError(f"node '{node.name}': its AmosGate attributes do not make a gate: {text}") from None
    if params.k != k:
        raise ModelLoadError(f"node '{node.name}': its AmosGate attributes do not make a gate: k = {k} with "
                             f"{params.k} parameters per channel")
    return params


@dataclass
class GateStats:
    """Counts for one gate node over every input it saw."""

    node: str
    input: str
    k: int  # neurons per chain: the gate's latency in steps
    output: str = ""
    inside: str | None = None  # the If branch or Scan body holding it (Counted.inside); None at top level
    spikes: int = 0  # neurons that fired, summed over all gate evaluations
    evaluations: int = 0  # gate evaluations: elements times samples
    silent: int = 0  # evaluations in which no neuron fired
    samples: Reservoir = field(default_factory=lambda: Reservoir(SAMPLE_CAP, np.random.default_rng(0)), repr=False)
    chains: int = 1  # circuits of k neurons side by side (gate.GateParams.chains)
    # the gate's output against the original network's tensor of the same name (error accumulated upstream)
    error_sq: float = 0.0
    error_count: int = 0
    error_max: float = 0.0

    @property
    def mean_spikes(self) -> float:
        return self.spikes / max(self.evaluations, 1)

    @property
    def silent_share(self) -> float:
        return self.silent / max(self.evaluations, 1)

    def to_dict(self, samples: int) -> dict[str, object]:
        per_input = self.evaluations / max(samples, 1)
        measured = self.error_count > 0
        return {"node": self.node, "input": self.input, "output": self.output, "inside": self.inside, "k": self.k,
                **({"chains": self.chains} if self.chains > 1 else {}),
                "gates_per_input": per_input, "neurons_per_input": per_input * self.k * self.chains,
                "spikes_per_input": self.spikes / max(samples, 1), "mean_spikes_per_gate": self.mean_spikes,
                "silent_share": self.silent_share,
                "layer_rmse": float(np.sqrt(self.error_sq / self.error_count)) if measured else None,
                "layer_max_error": self.error_max if measured else None}


class SpikeCounter:
    """Counts spikes of every gate node (counted_gates) from the inputs the gates receive, batch by batch: the runs
    are of exposed_model(model, counter.gates), whose outputs hold the inputs of the gates inside subgraphs."""

    def __init__(self, model: onnx.ModelProto, seed: int = 0) -> None:
        """seed: of each gate's sample reservoir (counters of different shards of the data need their own)."""
        self.gates, self.uncounted = counted_gates(model)
        self.params = {g.key: gate_params(g.node) for g in self.gates}
        self.stats = {g.key: GateStats(g.key, g.node.input[0], self.params[g.key].k, g.node.output[0], g.inside,
                                       samples=Reservoir(SAMPLE_CAP, np.random.default_rng(seed)),
                                       chains=self.params[g.key].chains)
                      for g in self.gates}

    @property
    def keys(self) -> list[str]:
        return [g.key for g in self.gates]

    @property
    def inputs(self) -> list[str]:
        """The run outputs (or model inputs) holding the gates' inputs."""
        return list(dict.fromkeys(g.value for g in self.gates))

    @property
    def outputs(self) -> list[str]:
        """The top-level gates' outputs (the tensors a layer's error is measured at)."""
        return list(dict.fromkeys(g.node.output[0] for g in self.gates if not g.path))

    def compare(self, converted: dict[str, np.ndarray], original: dict[str, np.ndarray]) -> None:
        """Accumulate each gate output's error against the original network's tensor of the same name."""
        for gate in self.gates:
            name = gate.node.output[0]
            if gate.path or name not in converted or name not in original:
                continue
            if converted[name].shape == original[name].shape:
                err = converted[name].astype(np.float64) - original[name].astype(np.float64)
                stats = self.stats[gate.key]
                stats.error_sq += float(np.sum(err**2))
                stats.error_count += err.size
                stats.error_max = max(stats.error_max, float(np.max(np.abs(err), initial=0.0)))

    def add(self, values: dict[str, np.ndarray]) -> None:
        for gate in self.gates:
            x = merged_steps(values[gate.value], gate.scans)  # a Scan's steps merged into the first axis
            if x.size == 0:  # an If's branch not taken
                continue
            _, s = simulate(self.params[gate.key], x)
            stats = self.stats[gate.key]
            stats.spikes += int(s.sum())
            stats.evaluations += s.size
            stats.silent += int(np.count_nonzero(s == 0))
            stats.samples.add(x)

    def merge(self, other: SpikeCounter) -> None:
        """Take in another counter's counts of the same model's gates (over other data)."""
        for name, stats in self.stats.items():
            theirs = other.stats[name]
            stats.spikes += theirs.spikes
            stats.evaluations += theirs.evaluations
            stats.silent += theirs.silent
            stats.error_sq += theirs.error_sq
            stats.error_count += theirs.error_count
            stats.error_max = max(stats.error_max, theirs.error_max)
            stats.samples.merge(theirs.samples)

    def mean_spikes(self) -> float | None:
        if not self.gates:
            return None
        return sum(s.spikes for s in self.stats.values()) / max(sum(s.evaluations for s in self.stats.values()), 1)


def with_spike_totals(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[tuple[str, str, str]]]:
    """A copy of a converted model whose gates also give the native op's spike counts, each summed in the graph:
    (model, [(gate node, spike-total output, element-count output)]). Runs only with the native op registered
    (the function form has no spike output); per batch, totals must stay below 2^31 spikes per gate."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    probes = []
    extra = []
    for node in gate_nodes(copy):
        spikes, total, count = f"{node.name}/spikes", f"{node.name}/spike_total", f"{node.name}/elements"
        node.output.append(spikes)
        extra += [helper.make_node("ReduceSum", [spikes], [total], keepdims=0, name=f"{node.name}/sum_spikes"),
                  helper.make_node("Size", [node.output[0]], [count], name=f"{node.name}/count")]
        copy.graph.output.extend([helper.make_tensor_value_info(total, onnx.TensorProto.INT32, []),
                                  helper.make_tensor_value_info(count, onnx.TensorProto.INT64, [])])
        probes.append((node.name, total, count))
    copy.graph.node.extend(extra)
    return copy, probes
