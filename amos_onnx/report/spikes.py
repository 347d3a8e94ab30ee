"""Spike statistics measured on a converted model's real gate inputs, per gate node."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from amos_onnx.calibrate.reservoir import Reservoir
from amos_onnx.errors import ModelLoadError
from amos_onnx.gate import GateParams, simulate
from amos_onnx.rewrite import emit

SAMPLE_CAP = 20_000  # gate inputs kept per gate for the pictures


def gate_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The converted nodes (function form) of a model's top-level graph."""
    return [n for n in model.graph.node if n.domain == emit.DOMAIN and n.op_type == emit.OP_TYPE]


def gate_params(node: onnx.NodeProto) -> GateParams:
    """The GateParams stored on a converted node's attributes; a ModelLoadError naming the node when they do
    not make a gate (a hand-edited node: missing, mistyped or mis-sized attributes)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    try:
        k, axis = int(attrs["k"]), attrs.get("axis")
        arrays = [np.asarray(attrs[name], np.float32) for name in emit.PARAM_ATTRS]
        if axis is not None:
            arrays = [a.reshape(-1, k) for a in arrays]
        params = GateParams(arrays[0], arrays[1], arrays[2], axis=None if axis is None else int(axis))
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
    k: int
    output: str = ""
    spikes: int = 0  # neurons that fired, summed over all gate evaluations
    evaluations: int = 0  # gate evaluations: elements times samples
    silent: int = 0  # evaluations in which no neuron fired
    samples: Reservoir = field(default_factory=lambda: Reservoir(SAMPLE_CAP, np.random.default_rng(0)), repr=False)
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
        return {"node": self.node, "input": self.input, "output": self.output, "k": self.k,
                "gates_per_input": per_input, "neurons_per_input": per_input * self.k,
                "spikes_per_input": self.spikes / max(samples, 1), "mean_spikes_per_gate": self.mean_spikes,
                "silent_share": self.silent_share,
                "layer_rmse": float(np.sqrt(self.error_sq / self.error_count)) if measured else None,
                "layer_max_error": self.error_max if measured else None}


class SpikeCounter:
    """Counts spikes of every gate node from the inputs the gates receive, batch by batch."""

    def __init__(self, model: onnx.ModelProto, seed: int = 0) -> None:
        """seed: of each gate's sample reservoir (counters of different shards of the data need their own)."""
        self.nodes = gate_nodes(model)
        self.params = {n.name: gate_params(n) for n in self.nodes}
        self.stats = {n.name: GateStats(n.name, n.input[0], self.params[n.name].k, n.output[0],
                                        samples=Reservoir(SAMPLE_CAP, np.random.default_rng(seed)))
                      for n in self.nodes}

    @property
    def inputs(self) -> list[str]:
        return list(dict.fromkeys(n.input[0] for n in self.nodes))

    @property
    def outputs(self) -> list[str]:
        return list(dict.fromkeys(n.output[0] for n in self.nodes))

    def compare(self, converted: dict[str, np.ndarray], original: dict[str, np.ndarray]) -> None:
        """Accumulate each gate output's error against the original network's tensor of the same name."""
        for node in self.nodes:
            name = node.output[0]
            if name in converted and name in original and converted[name].shape == original[name].shape:
                err = converted[name].astype(np.float64) - original[name].astype(np.float64)
                stats = self.stats[node.name]
                stats.error_sq += float(np.sum(err**2))
                stats.error_count += err.size
                stats.error_max = max(stats.error_max, float(np.max(np.abs(err), initial=0.0)))

    def add(self, values: dict[str, np.ndarray]) -> None:
        for node in self.nodes:
            x = values[node.input[0]]
            _, s = simulate(self.params[node.name], x)
            stats = self.stats[node.name]
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
        if not self.nodes:
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
