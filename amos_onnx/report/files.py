"""The report a user reads after converting: report.json, report.md and pictures in one folder.

Spikes come from running the converted model on data (per gate node: mean
spikes per gate, share of gates that never fire, neurons and spikes per input);
latency is the sum of K along the deepest path of gates, and a pipelined
network takes one input every max-K steps (the top-level graph's gates; those inside If
branches and Scan bodies are counted in the spikes, not in the latency). Synaptic operations (spikes times the
fan-out of the weights they reach) stand beside the original's multiply-accumulates
(costs.py). Per layer, the gate's output is compared with the original network's
tensor of the same name on the same inputs (the error accumulated up to that layer).
Pictures need matplotlib (`pip install amos-onnx[plot]`); without it the report
says how to get them.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from amos_onnx.find.gates import registered_ops
from amos_onnx.fit.choose import describe
from amos_onnx.gate import simulate
from amos_onnx.report.conversion import ConversionReport
from amos_onnx.report.costs import fan_outs, macs
from amos_onnx.report.spikes import gate_nodes, gate_params
from amos_onnx.report.validate import ValidationReport


def latency(model: onnx.ModelProto) -> dict[str, int]:
    """Time steps along the deepest path of gates (each gate costs its K) and the pipelined input interval."""
    ks = {n.name: gate_params(n).k for n in gate_nodes(model)}
    depth: dict[str, int] = {}
    for node in model.graph.node:
        start = max((depth.get(name, 0) for name in node.input if name), default=0)
        for name in node.output:
            depth[name] = start + ks.get(node.name, 0)
    deepest = max((depth.get(o.name, 0) for o in model.graph.output), default=0)
    return {"latency_steps": deepest, "pipelined_interval_steps": max(ks.values(), default=0)}


def _synaptic(gate: dict[str, object], fan_out: dict[str, float]) -> dict[str, float | None]:
    """A gate's fan-out and synaptic operations per input: its spikes times the fan-out of the weights they reach
    (report.costs.fan_outs, of the top-level graph's gates); None for a gate inside an If branch or Scan body."""
    if gate.get("inside") is not None:
        return {"fan_out": None, "synaptic_ops_per_input": None}
    reach = fan_out.get(str(gate["output"]), 0.0)
    return {"fan_out": reach, "synaptic_ops_per_input": float(gate["spikes_per_input"]) * reach}  # type: ignore[arg-type]


def model_figures(model: onnx.ModelProto) -> dict[str, object]:
    """Size of a model: nodes by op type, parameter count and multiply-accumulates per input."""
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    return {"nodes": len(model.graph.node), "ops": dict(Counter(n.op_type for n in model.graph.node)),
            "parameters": params, **macs(model)}


def build(validation: ValidationReport, original: onnx.ModelProto, converted: onnx.ModelProto,
          conversion: ConversionReport | None = None) -> dict[str, object]:
    """Every number of the report, as one JSON-ready dict."""
    fan_out = fan_outs(converted)
    gates: list[dict[str, Any]] = [{**g, **_synaptic(g, fan_out)} for g in validation.gates]
    totals = {
        "gates_per_input": sum(g["gates_per_input"] for g in gates),
        "neurons_per_input": sum(g["neurons_per_input"] for g in gates),
        "spikes_per_input": sum(g["spikes_per_input"] for g in gates),
        "mean_spikes_per_gate": validation.mean_spikes_per_gate,
        "synaptic_ops_per_input": sum(g["synaptic_ops_per_input"] or 0.0 for g in gates),
        "gates_inside_subgraphs": validation.gates_inside,
        **latency(converted),
    }
    validation_dict = json.loads(json.dumps(validation.to_dict()))
    return {
        "validation": validation_dict,
        "conversion": conversion.to_dict() if conversion else None,
        "original": model_figures(original),
        "converted": model_figures(converted),
        "totals": totals,
        "gates": gates,
    }


# What the original model's activation ops are counted from: the registry's op types, and Erf (GELU's erf form).
_ACTIVATION_OPS = {*registered_ops(), "Erf"}


def markdown(data: dict, pictures: list[str], note: str | None) -> str:
    v, t = data["validation"], data["totals"]
    lines = ["# Spiking conversion report", "", f"Data: {v['data']} ({v['samples']} samples); converted model ran the "
             f"{'native op' if v['native'] else 'function form'}.", ""]
    if v["accuracy_original"] is not None:
        lines += [f"Accuracy: original {100 * v['accuracy_original']:.2f}%, spiking "
                  f"{100 * v['accuracy_converted']:.2f}%.", ""]
    for o in v["outputs"]:
        lines.append(f"- {'PASSED' if o['passed'] else 'FAILED'} `{o['name']}`: max abs err {o['max_abs_error']:.4g}, "
                     f"mean abs err {o['mean_abs_error']:.4g}" +
                     (f", top-1 agreement {o['agreement']:.4f}" if o["agreement"] is not None else ""))
    lines += ["", "## Totals", "", "| figure | value |", "|---|---|"]
    for key in ("gates_per_input", "neurons_per_input", "spikes_per_input", "mean_spikes_per_gate",
                "synaptic_ops_per_input", "latency_steps", "pipelined_interval_steps"):
        value = "not counted (no AmosGate node)" if t[key] is None else t[key]
        lines.append(f"| {key.replace('_', ' ')} | {value:.4g} |" if isinstance(value, float) else
                     f"| {key.replace('_', ' ')} | {value} |")
    orig, conv = data["original"], data["converted"]
    activations = sum(count for op, count in orig["ops"].items() if op in _ACTIVATION_OPS)
    lines += [f"| original model: nodes / parameters / activation ops | {orig['nodes']} / {orig['parameters']} / "
              f"{activations} |",
              f"| original model: multiply-accumulates per input | {orig['macs_per_input']:.4g} |",
              f"| converted model: nodes / parameters | {conv['nodes']} / {conv['parameters']} |", ""]
    if orig["weighted_ops_without_shapes"]:
        lines += [f"{orig['weighted_ops_without_shapes']} weighted ops had no inferable shape and are not in the MAC "
                  "count.", ""]
    stages = (data["conversion"] or {}).get("stage_seconds") or {}
    if stages:
        lines += ["Conversion time: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in stages.items())
                  + f" (total {sum(stages.values()):.2f} s).", ""]
    lines += budget_lines((data["conversion"] or {}).get("budget"))
    fits = {s["node"]: s for s in (data["conversion"] or {}).get("sites", [])}
    both = any("layer_rmse_uncorrected" in g for g in data["gates"])
    lines += ["## Gates", "", "Layer RMSE: the gate's output against the original network's same tensor on the same "
              "inputs (error accumulated up to this layer)"
              + (", with the compensation (bias correction or weight reconstruction) and without it" if both else "")
              + ". Fit MSE: the gate against its "
              "function on the calibration samples.", "",
              "| gate node | K | gates/input | spikes/gate | silent share | spikes/input | synaptic ops/input | "
              "layer RMSE | " + ("without correction | " if both else "") + "fit | fit MSE |",
              "|---|---|---|---|---|---|---|---|" + ("---|" if both else "") + "---|---|"]
    for g in data["gates"]:
        site = fits.get(str(g["node"]).removesuffix("/amos"), {})
        mse = f"{site['mse']:.3g}" if site.get("mse") is not None else "-"
        synops = f"{g['synaptic_ops_per_input']:.4g}" if g["synaptic_ops_per_input"] is not None else "-"
        rmse = " | ".join(f"{g[key]:.3g}" if g.get(key) is not None else "-"
                          for key in ("layer_rmse", "layer_rmse_uncorrected")[:2 if both else 1])
        lines.append(f"| {g['node']} | {g['k']} | {g['gates_per_input']:.0f} | {g['mean_spikes_per_gate']:.3f} | "
                     f"{g['silent_share']:.3f} | {g['spikes_per_input']:.1f} | {synops} | "
                     f"{rmse} | {site.get('source') or '-'} | {mse} |")
    inner = t.get("gates_inside_subgraphs", 0)
    if inner:
        lines += ["", f"{inner} of these gates are inside If branches or Scan bodies (a Scan's counted over all its "
                  "steps): they are in the gates, neurons and spikes per input; synaptic operations and latency count "
                  "the top-level graph's gates only."]
    if v.get("uncounted_gates"):
        lines += ["", f"Not counted: {v['uncounted_gates']} gates inside Loop bodies."]
    lines.append("")
    lines += [f"![{p}]({p})" for p in pictures]
    if note:
        lines.append(note)
    return "\n".join(lines) + "\n"


def budget_lines(budget: dict | None) -> list[str]:
    """The time budget's choice (convert --latency / --spike-budget), as fit.budget.describe says it."""
    return ["## Time budget", "", f"K chosen per site: {describe(budget)}.", ""] if budget else []


def _error_picture(plt: object, gates: list[dict], fits: dict[str, dict], folder: Path) -> str | None:
    """Per layer: the accumulated output RMSE against the original network, and the gate's own fit MSE."""
    rows = [(str(g["node"]), g.get("layer_rmse"), fits.get(str(g["node"]).removesuffix("/amos"), {}).get("mse"))
            for g in gates]
    if not any(r[1] is not None or r[2] is not None for r in rows):
        return None
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(rows)), 4))  # type: ignore[attr-defined]
    x = np.arange(len(rows))
    rmse = [r[1] if r[1] is not None else np.nan for r in rows]
    fit_rmse = [np.sqrt(r[2]) if r[2] is not None else np.nan for r in rows]
    if any("layer_rmse_uncorrected" in g for g in gates):  # the compensation's effect, layer by layer
        before = [g.get("layer_rmse_uncorrected") for g in gates]
        ax.bar(x - 0.3, [v if v is not None else np.nan for v in before], width=0.3,
               label="layer RMSE without compensation (accumulated)")
        ax.bar(x, rmse, width=0.3, label="layer RMSE with compensation (accumulated)")
        ax.bar(x + 0.3, fit_rmse, width=0.3, label="gate fit RMSE on its calibration samples")
    else:
        ax.bar(x - 0.2, rmse, width=0.4, label="layer RMSE vs original network (accumulated)")
        ax.bar(x + 0.2, fit_rmse, width=0.4, label="gate fit RMSE on its calibration samples")
    ax.set_yscale("log")
    ax.set_xticks(x, [r[0] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("RMSE")
    ax.set_title("Error per layer")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "error_per_layer.png", dpi=110)
    plt.close(fig)  # type: ignore[attr-defined]
    return "error_per_layer.png"


def _pictures(validation: ValidationReport, folder: Path, gates: list[dict],
              fits: dict[str, dict]) -> tuple[list[str], str | None]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "Pictures need matplotlib: `pip install amos-onnx[plot]`, then run the report again."
    counter = validation.counter
    if counter is None or not counter.gates:
        return [], None
    names = []
    labels = counter.keys
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(labels)), 4))
    ax.bar(range(len(labels)), [counter.stats[key].mean_spikes for key in labels])
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("mean spikes per gate")
    ax.set_title("Spikes per layer")
    fig.tight_layout()
    fig.savefig(folder / "spikes_per_layer.png", dpi=110)
    plt.close(fig)
    names.append("spikes_per_layer.png")
    error = _error_picture(plt, gates, fits, folder)
    if error:
        names.append(error)
    for i, key in enumerate(labels):
        samples = counter.stats[key].samples.values
        if samples.size == 0:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        ax2 = ax.twinx()
        ax2.hist(samples, bins=80, color="0.85")
        ax2.set_yticks([])
        lo, hi = float(samples.min()), float(samples.max())
        x = np.linspace(lo - 0.1 * (hi - lo + 1e-6), hi + 0.1 * (hi - lo + 1e-6), 2000, dtype=np.float32)
        params = counter.params[key]
        if params.axis is None:
            ax.plot(x, simulate(params, x)[0], color="C0", label=f"gate, K={params.k}")
        ax.set_zorder(ax2.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.set_xlabel("gate input (histogram: inputs seen)")
        ax.set_ylabel("gate output")
        ax.set_title(key)
        fig.tight_layout()
        name = f"gate_{i:03d}.png"
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        names.append(name)
    return names, None


def write(folder: str | Path, validation: ValidationReport, original: onnx.ModelProto, converted: onnx.ModelProto,
          conversion: ConversionReport | None = None,
          uncorrected: ValidationReport | None = None) -> dict[str, object]:
    """Write report.json, report.md and the pictures into `folder` (created if missing). `uncorrected`: the
    validation of the same conversion without its compensation (bias correction or weight reconstruction); each
    gate then has "layer_rmse_uncorrected"."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = build(validation, original, converted, conversion)
    if uncorrected is not None:
        without = {str(g["node"]): g.get("layer_rmse") for g in uncorrected.gates}
        for g in data["gates"]:  # type: ignore[attr-defined]
            g["layer_rmse_uncorrected"] = without.get(str(g["node"]))
    fits = {s.node: {"mse": s.mse} for s in conversion.sites} if conversion else {}
    pictures, note = _pictures(validation, folder, data["gates"], fits)  # type: ignore[arg-type]
    data["pictures"] = pictures
    (folder / "report.json").write_text(json.dumps(data, indent=2, default=float))
    (folder / "report.md").write_text(markdown(data, pictures, note))
    return data
