"""Mutation fuzzing of converted models: AmosGate nodes with corrupted attributes and outputs, run natively.

    .venv/bin/python benchmarks/fuzz_gates.py [--cases 500] [--seed 0]

Each case takes a model converted here (Relu, Sigmoid, HardSwish and x*Sigmoid(x) at K = 4..8, and a PRelu with
one slope per channel: a per-channel gate), changes one of its AmosGate nodes (k, the length, type or values of
thresholds, resets and weights, the axis, a dropped attribute, the function overload, the outputs: an omitted or
extra spikes output) and runs `amos-onnx validate ORIGINAL MUTATED --data` on it in a forked process, so the native
op's failures show as what they are. A crash is a signal (a segfault, say), an exit other than 0, 1 (outputs
differ) or 2 (refused), or a traceback; the target is zero. fuzz.py runs these cases after its own.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import AttributeProto, TensorProto, helper

import amos_onnx
from amos_onnx.cli import main

PARAMS = ("thresholds", "resets", "weights")


def converted(folder: Path) -> list[tuple[Path, Path, Path]]:
    """(original, converted, data) for each base model, converted data-free in the function form."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, (8, 6, 4)).astype(np.float32)
    bases = []
    cases = [("Relu", 4, []), ("Sigmoid", 6, []), ("HardSwish", 8, []), ("silu", 5, []),
             ("PRelu", 4, [np.linspace(0.1, 0.6, 6, dtype=np.float32).reshape(6, 1)])]
    for op, k, consts in cases:
        nodes, inits = [], []
        if op == "silu":
            nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])]
        else:
            names = [f"c{i}" for i in range(len(consts))]
            inits = [onnx.numpy_helper.from_array(c, n) for c, n in zip(consts, names)]
            nodes = [helper.make_node(op, ["x", *names], ["y"], name="act")]
        graph = helper.make_graph(nodes, op, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 4])], inits)
        original, out, data = folder / f"{op}.onnx", folder / f"{op}_spiking.onnx", folder / f"{op}.npz"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(original))
        np.savez(data, x=x)
        amos_onnx.convert(original, out, data if op == "PRelu" else None, k=k, per_channel=op == "PRelu")
        bases.append((original, out, data))
    return bases


def mutate_gate(model: onnx.ModelProto, rng: np.random.Generator) -> tuple[onnx.ModelProto, str]:
    """A copy of the model with one change to its first AmosGate node."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    node = next(n for n in copy.graph.node if n.op_type == "AmosGate")
    attrs = {a.name: a for a in node.attribute}
    kind = ["k", "length", "type", "value", "axis", "drop", "overload", "outputs"][int(rng.integers(8))]
    if kind == "k":
        attrs["k"].i = int(rng.choice([-1, 0, 1, 2, 3, 7, 9, 64, 65, 2**40, -2**40]))
    elif kind == "length":
        values = attrs[PARAMS[int(rng.integers(3))]].floats
        if len(values) and rng.random() < 0.5:
            del values[int(rng.integers(len(values))):]
        else:
            values.extend(rng.normal(0, 1, int(rng.integers(1, 9))).tolist())
    elif kind == "type":
        name = PARAMS[int(rng.integers(3))]
        node.attribute.remove(attrs[name])
        value = [[1, 2, 3], 1.5, "abc", None][int(rng.integers(4))]
        node.attribute.append(helper.make_attribute(name, value) if value is not None
                              else AttributeProto(name=name, type=AttributeProto.FLOATS))  # an empty list
    elif kind == "value":
        values = attrs[PARAMS[int(rng.integers(3))]].floats
        if len(values):
            values[int(rng.integers(len(values)))] = float(rng.choice([np.nan, np.inf, -np.inf, 3e38, -0.0, 1e-45]))
    elif kind == "axis":
        if "axis" in attrs:
            node.attribute.remove(attrs["axis"])
        node.attribute.append(helper.make_attribute("axis", int(rng.choice([-2, -1, 0, 1, 2, 3, 5, 2**40]))))
    elif kind == "drop":
        node.attribute.remove(list(node.attribute)[int(rng.integers(len(node.attribute)))])
    elif kind == "overload":
        node.overload = str(rng.choice(["", "k1", "k3", "k4", "k99", "k4c0", "k4c1", "zz"]))
    else:
        outputs = [["y", ""], ["y", "spikes"], ["y", "spikes", "extra"], ["", "spikes"], ["y", "", "extra"]]
        del node.output[1:]
        node.output.extend(outputs[int(rng.integers(len(outputs)))][1:])
        if node.output[0] == "y" and rng.random() < 0.3:
            node.output[0] = ""
    return copy, kind


def _one(original: Path, mutated: Path, data: Path) -> int:
    """validate in a forked child: its exit code, or 128 + the signal that killed it, or 3 for a traceback."""
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 3
        try:
            result = CliRunner().invoke(main, ["validate", str(original), str(mutated), "--data", str(data)])
            escaped = result.exception is not None and not isinstance(result.exception, SystemExit)
            code = 3 if escaped else result.exit_code
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def run(cases: int, seed: int, folder: Path) -> tuple[Counter, list[str]]:
    """Outcomes (kind, exit code) and a line for every crash. The base models are converted in a spawned process
    and every case runs in a child forked from this one, which runs no onnxruntime session itself (a forked child
    of a process that has can hang)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # this process runs no session before forking
        bases = pool.apply(converted, (folder / "bases",))
    rng = np.random.default_rng(seed)
    outcomes: Counter = Counter()
    crashes = []
    for case in range(cases):
        original, out, data = bases[case % len(bases)]
        model, kind = mutate_gate(onnx.load(str(out)), rng)
        mutated = folder / "mutated.onnx"
        mutated.write_bytes(model.SerializeToString())
        code = _one(original, mutated, data)
        crashed = code not in (0, 1, 2)
        outcomes[(kind, "crash" if crashed else code)] += 1
        if crashed:
            crashes.append(f"case {case} ({kind}, {original.stem}): exit {code}")
    return outcomes, crashes


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        found, lines = run(args.cases, args.seed, Path(tmp))
    print("\n".join(lines[:20]))
    print(sorted(found.items(), key=str))
    raise SystemExit(1 if lines else 0)
