"""Random valid networks, calibrated, through `convert` with random options: no crash, a one-line error or a model
whose function form and native op agree to the bit.

    .venv/bin/python benchmarks/graph_fuzz.py [--cases 400] [--seed 0] [--write]

fuzz.py corrupts the bytes of a few models and converts them data-free, so it never reaches the calibrated stages
(the budget, the focus, sequential refits, bias correction, weight reconstruction). Here each case builds a valid
network from a seeded grammar (convolutions, batch norms, residual adds, concatenations, squeeze-excitation
products, poolings, Gemm and MatMul layers, layer norms, every activation the converter knows and some it does
not; outputs at gates, softmax heads, integer ArgMax outputs; one or two inputs), writes calibration data for it
(1 to 40 samples, or none) and runs `amos-onnx convert` in-process with a random set of options; a converted
model then goes through `validate` on held-out inputs, and one in four through `report` too. Outcomes:

- crash: an exit other than 0 or 2 (0, 1 or 2 for validate and report), or a traceback (the target is zero);
- error: exit 2 with a message of more than one line, or (convert) an output file left behind;
- mismatch: a written model whose function form and native op differ on held-out inputs;
- nonfinite: a written model with a non-finite output where the original's is finite;
- touched: the input model's bytes changed.

Anything but exit 0 or a clean exit 2 is a defect; each is listed with its case number, which rebuilds it
(`--only N`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import machine, write_section  # noqa: E402

from amos_onnx.cli import main  # noqa: E402
from amos_onnx.runtime import session  # noqa: E402

# Activations: op, the opset it needs, attributes; "silu" and "gelu_erf" are written as the exporters write them.
ACTIVATIONS: list[tuple[str, int, dict[str, object]]] = [
    ("Relu", 13, {}), ("LeakyRelu", 13, {"alpha": 0.1}), ("Sigmoid", 13, {}), ("Tanh", 13, {}), ("Elu", 13, {}),
    ("Selu", 13, {}), ("Softplus", 13, {}), ("Softsign", 13, {}), ("HardSigmoid", 13, {}), ("Celu", 13, {}),
    ("HardSwish", 14, {}), ("Mish", 18, {}), ("Gelu", 20, {}), ("relu6", 13, {}), ("silu", 13, {}),
    ("gelu_erf", 13, {}), ("Abs", 13, {}), ("Sin", 13, {})]


@dataclass
class Net:
    """A network under construction: nodes, initializers and the shape of each tensor (without the batch)."""

    rng: np.random.Generator
    opset: int
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    gates: list[str] = field(default_factory=list)  # activation outputs, candidates for graph outputs
    count: int = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, array: np.ndarray, prefix: str = "w") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], shape: tuple[int, ...], **attrs: object) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        self.shapes[out] = shape
        return out

    def weight(self, shape: tuple[int, ...], fan_in: int) -> str:
        return self.const(self.rng.normal(0, float(self.rng.choice([0.5, 1.0, 2.0])) / np.sqrt(fan_in), shape))

    def activation(self, x: str) -> str:
        usable = [a for a in ACTIVATIONS if a[1] <= self.opset]
        op, _, attrs = usable[int(self.rng.integers(len(usable)))]
        shape = self.shapes[x]
        if op == "relu6":
            out = self.node("Clip", [x, self.const(np.array(0.0)), self.const(np.array(6.0))], shape)
        elif op == "silu":
            out = self.node("Mul", [x, self.node("Sigmoid", [x], shape)], shape)
        elif op == "gelu_erf":
            half = self.node("Mul", [x, self.const(np.array(0.5))], shape)
            erf = self.node("Erf", [self.node("Div", [x, self.const(np.array(np.sqrt(2.0)))], shape)], shape)
            out = self.node("Mul", [half, self.node("Add", [erf, self.const(np.array(1.0))], shape)], shape)
        else:
            out = self.node(op, [x], shape, **attrs)
        self.gates.append(out)
        return out

    # --- image layers: tensors (C, H, W) ---

    def conv(self, x: str, cout: int, kernel: int = 3) -> str:
        c, h, w = self.shapes[x]
        inputs = [x, self.weight((cout, c, kernel, kernel), c * kernel * kernel)]
        if self.rng.random() < 0.7:
            inputs.append(self.const(self.rng.normal(0, 0.2, cout)))
        return self.node("Conv", inputs, (cout, h, w), pads=[kernel // 2] * 4)

    def batch_norm(self, x: str) -> str:
        c = self.shapes[x][0]
        stats = [self.rng.uniform(0.5, 1.5, c), self.rng.normal(0, 0.2, c), self.rng.normal(0, 0.2, c),
                 self.rng.uniform(0.5, 2.0, c)]
        return self.node("BatchNormalization", [x, *(self.const(s) for s in stats)], self.shapes[x])

    def image_layer(self, x: str) -> str:
        c, h, w = self.shapes[x]
        kind = ["conv", "conv_bn", "residual", "concat", "se", "pool", "act"][int(self.rng.integers(7))]
        if kind == "pool" and h >= 4:
            op = "MaxPool" if self.rng.random() < 0.5 else "AveragePool"
            return self.node(op, [x], (c, h // 2, w // 2), kernel_shape=[2, 2], strides=[2, 2])
        if kind == "residual":
            inner = self.conv(self.activation(self.conv(x, c)), c)
            return self.activation(self.node("Add", [x, inner], (c, h, w)))
        if kind == "concat":
            other = self.activation(self.conv(x, int(self.rng.integers(1, 5)), kernel=1))
            return self.node("Concat", [x, other], (c + self.shapes[other][0], h, w), axis=1)
        if kind == "se":
            r = max(1, c // 2)
            pooled = self.node("GlobalAveragePool", [x], (c, 1, 1))
            s = self.activation(self.conv(pooled, r, kernel=1))
            s = self.node("Sigmoid", [self.conv(s, c, kernel=1)], (c, 1, 1))
            self.gates.append(s)
            return self.node("Mul", [x, s], (c, h, w))
        if kind == "act":
            return self.activation(x)
        y = self.conv(x, int(self.rng.integers(2, 9)))
        return self.activation(self.batch_norm(y) if kind == "conv_bn" else y)

    # --- vector layers: tensors (F,) ---

    def linear(self, x: str, out: int) -> str:
        f = self.shapes[x][0]
        w, b = self.weight((f, out), f), self.const(self.rng.normal(0, 0.2, out), "b")
        if self.rng.random() < 0.5:
            return self.node("Gemm", [x, w, b], (out,))
        return self.node("Add", [self.node("MatMul", [x, w], (out,)), b], (out,))

    def vector_layer(self, x: str) -> str:
        f = self.shapes[x][0]
        kind = ["linear", "residual", "norm", "act"][int(self.rng.integers(4))]
        if kind == "residual":
            inner = self.linear(self.activation(self.linear(x, f)), f)
            return self.node("Add", [x, inner], (f,))
        if kind == "norm" and self.opset >= 17:
            scale, bias = self.const(self.rng.uniform(0.5, 1.5, f)), self.const(self.rng.normal(0, 0.1, f))
            return self.activation(self.node("LayerNormalization", [x, scale, bias], (f,), axis=-1))
        if kind == "act":
            return self.activation(x)
        return self.activation(self.linear(x, int(self.rng.integers(2, 9))))


def build(case: int, seed: int) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]]]:
    """Case `case`'s network (the same for the same seed) and its inputs' shapes (without the batch)."""
    rng = np.random.default_rng([seed, case])
    net = Net(rng, int(rng.choice([13, 17, 18, 20])))
    image = rng.random() < 0.6
    shape = ((int(rng.integers(1, 5)), int(rng.choice([4, 6, 8])), int(rng.choice([4, 6, 8]))) if image
             else (int(rng.integers(2, 9)),))
    inputs = {"x": shape}
    net.shapes["x"] = shape
    x = "x"
    if rng.random() < 0.2:  # a second input, added in
        inputs["x2"] = shape
        net.shapes["x2"] = shape
        x = net.node("Add", ["x", "x2"], shape)
    for _ in range(int(rng.integers(1, 6))):
        x = net.image_layer(x) if len(net.shapes[x]) == 3 else net.vector_layer(x)
    if len(net.shapes[x]) == 3:
        if rng.random() < 0.5:
            x = net.node("GlobalAveragePool", [x], (net.shapes[x][0], 1, 1))
        x = net.node("Flatten", [x], (int(np.prod(net.shapes[x])),))
        for _ in range(int(rng.integers(0, 3))):
            x = net.vector_layer(x)
    outputs: list[tuple[str, int]] = []
    head = rng.random()
    if head < 0.3:
        logits = net.linear(x, int(rng.integers(2, 6)))
        x = net.node("Softmax", [logits], net.shapes[logits], axis=-1)
    elif head < 0.45:  # an integer output only
        argmax = net.node("ArgMax", [net.linear(x, int(rng.integers(2, 6)))], (1,), axis=1)
        outputs.append((argmax, TensorProto.INT64))
        x = ""
    if x:
        outputs.append((x, TensorProto.FLOAT))
    if net.gates and rng.random() < 0.3:  # a gate's output is a graph output too
        gate = net.gates[int(rng.integers(len(net.gates)))]
        if gate not in dict(outputs):
            outputs.append((gate, TensorProto.FLOAT))
    graph = helper.make_graph(
        net.nodes, f"fuzz{case}",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *s]) for name, s in inputs.items()],
        [helper.make_tensor_value_info(name, dtype, ["N", *net.shapes[name]]) for name, dtype in outputs], net.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", net.opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model, inputs


def options(rng: np.random.Generator, calib: Path | None) -> list[str]:
    """A random set of convert's options; now and then one that cannot go with the others (--k with a budget,
    --channel-kicks without --per-channel, an option that needs --calib without it)."""
    opts: list[str] = []
    pick = rng.random
    if calib is not None:
        opts += ["--calib", str(calib)]
    budget: list[str] = []
    if pick() < 0.25:
        budget += ["--latency", str(int(rng.integers(1, 40)))]
    if pick() < 0.15:
        budget += ["--spike-budget", str(round(float(rng.uniform(0.2, 4.0)), 2))]
    k = pick() if not budget or pick() < 0.05 else 1.0
    if k < 0.25:
        opts += ["--k", str(int(rng.choice([1, 2, 3, 4, 6, 8, 12])))]
    elif k < 0.35:
        opts += ["--k", "auto"]
    elif k < 0.4:
        opts += ["--k-per-op", "Relu=3,Sigmoid=5,Composite=6"]
    per_channel = pick() < 0.3
    flags = [("--per-channel", per_channel), ("--channel-kicks 4", pick() < (0.4 if per_channel else 0.02))]
    flags += [(flag, pick() < chance) for flag, chance in (
        ("--sequential", 0.3), ("--no-reconstruct", 0.2), ("--bias-correction", 0.2), ("--emit inline", 0.2),
        ("--spike-penalty 0.01", 0.15), ("--range-weight 0.001", 0.15), ("--focus-kicks 0", 0.2), ("--kicks 2", 0.2),
        ("--only Relu,Sigmoid", 0.05), ("--skip Tanh,Elu", 0.05))]
    for flag, chosen in flags:
        if chosen:
            opts += flag.split()
    return opts + budget


def feeds(inputs: dict[str, tuple[int, ...]], rng: np.random.Generator, n: int, scale: float) -> dict[str, np.ndarray]:
    return {name: rng.normal(0, scale, (n, *shape)).astype(np.float32) for name, shape in inputs.items()}


def run_case(case: int, seed: int, folder: Path, runner: CliRunner) -> tuple[str, str]:
    """One case: its outcome (ok, refused, or a defect: crash, error, mismatch, nonfinite, touched) and what
    it was."""
    model, inputs = build(case, seed)
    rng = np.random.default_rng([seed, case, 1])
    path, out = folder / "model.onnx", folder / "out.onnx"
    onnx.save(model, path)
    out.unlink(missing_ok=True)
    calib = None
    if rng.random() < 0.9:
        calib = folder / "calib.npz"
        scale = float(rng.choice([0.3, 1.0, 3.0]))
        np.savez(calib, **feeds(inputs, rng, int(rng.choice([1, 3, 8, 40])), scale))  # type: ignore[arg-type]
    opts = options(rng, calib)
    before = path.read_bytes()
    result = runner.invoke(main, ["convert", str(path), str(out), "-q", *opts])
    what = f"case {case}: convert {' '.join(o if not o.endswith('.npz') else 'calib.npz' for o in opts)}"
    if result.exception is not None and not isinstance(result.exception, SystemExit) or \
            result.exit_code not in (0, 2):
        return "crash", f"{what}: exit {result.exit_code}, {type(result.exception).__name__}: " \
                        f"{str(result.exception)[:300]}"
    if path.read_bytes() != before:
        return "touched", what
    if result.exit_code == 2:
        message = result.output.strip()
        if len(message.splitlines()) != 1 or out.exists():
            return "error", f"{what}: {message[:300]!r}{', output left behind' if out.exists() else ''}"
        return "refused", f"{what}: {message}"
    kind, line = _compare(path, out, inputs, rng, what)
    return (kind, line) if kind != "ok" else _measure(path, out, inputs, rng, runner, line)


def _compare(path: Path, out: Path, inputs: dict[str, tuple[int, ...]], rng: np.random.Generator,
             what: str) -> tuple[str, str]:
    feed = feeds(inputs, rng, 16, 1.0)
    original = session(path, native=False).run(None, feed)
    function = session(out, native=False).run(None, feed)
    native = session(out, native=True).run(None, feed)
    errors = []
    for want, got, fused in zip(original, function, native):
        if got.tobytes() != fused.tobytes():
            return "mismatch", what
        if got.dtype.kind == "f" and bool(np.any(np.isfinite(want) & ~np.isfinite(got))):
            return "nonfinite", what
        if got.dtype.kind == "f" and bool(np.all(np.isfinite(want))):
            scale = max(float(np.mean(np.abs(want.astype(np.float64)))), 1e-6)
            errors.append(float(np.mean(np.abs(got.astype(np.float64) - want))) / scale)
    return "ok", what + (f" (relative error {max(errors):.3g})" if errors else "")


def _measure(path: Path, out: Path, inputs: dict[str, tuple[int, ...]], rng: np.random.Generator,
             runner: CliRunner, what: str) -> tuple[str, str]:
    """`validate` on held-out inputs, and for one case in four `report`: each ends in 0, 1 (validate's FAILED)
    or a one-line error (2), never a crash."""
    data = path.parent / "held_out.npz"
    np.savez(data, **feeds(inputs, rng, 16, 1.0))  # type: ignore[arg-type]
    commands = [["validate", str(path), str(out), "--data", str(data)]]
    if rng.random() < 0.25:
        commands.append(["report", str(path), str(out), "--data", str(data), "--out", str(path.parent / "report")])
    for command in commands:
        result = runner.invoke(main, command)
        if result.exception is not None and not isinstance(result.exception, SystemExit) or \
                result.exit_code not in (0, 1, 2):
            return "crash", f"{what}; then {command[0]}: exit {result.exit_code}, " \
                            f"{type(result.exception).__name__}: {str(result.exception)[:300]}"
        if result.exit_code == 2 and len(result.output.strip().splitlines()) != 1:
            return "error", f"{what}; then {command[0]}: {result.output.strip()[:300]!r}"
    return "ok", what


DEFECTS = ("crash", "error", "mismatch", "nonfinite", "touched")


def run(cases: Sequence[int], seed: int, folder: Path) -> tuple[Counter, list[str]]:
    """Outcomes by kind, and a line for every defect."""
    runner = CliRunner()
    outcomes: Counter = Counter()
    defects: list[str] = []
    for case in cases:
        kind, line = run_case(case, seed, folder, runner)
        outcomes[kind] += 1
        if kind in DEFECTS:
            defects.append(f"{kind}: {line}")
    return outcomes, defects


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", type=int, default=None, help="run this case alone (and print its outcome)")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    cases = range(args.only, args.only + 1) if args.only is not None else range(args.cases)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        outcomes, defects = run(cases, args.seed, Path(tmp))
    seconds = time.perf_counter() - start
    for line in defects:
        print(line)
    rows = "\n".join(f"| {kind} | {count} |" for kind, count in sorted(outcomes.items()))
    text = (
        "## Random calibrated networks through convert with random options\n\n"
        f"Command: `.venv/bin/python benchmarks/graph_fuzz.py --cases {args.cases} --seed {args.seed} --write` "
        f"({machine()}; {len(cases)} networks built from graph_fuzz.py's grammar, each with its own calibration "
        f"data and options, {seconds:.0f} s). **Defects: {sum(outcomes[k] for k in DEFECTS)}** (a crash, a "
        "refusal of more than one line or with an output left behind, a function form and native op that differ, "
        "a non-finite output where the original's is finite, a changed input; target 0). ok: converted; "
        "refused: a one-line error, exit 2.\n\n| outcome | cases |\n|---|---|\n" + rows)
    print(text)
    if args.write and args.only is None:
        write_section("graph_fuzz", text)
    sys.exit(1 if any(outcomes[k] for k in DEFECTS) else 0)


if __name__ == "__main__":
    os.environ.setdefault("AMOS_ONNX_JOBS", "1")  # small networks: fits in-process
    main_()
