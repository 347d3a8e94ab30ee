"""Random valid networks, calibrated, through `convert` with random options: no crash, a one-line error or a model
whose function form and native op agree to the bit.

    .venv/bin/python benchmarks/graph_fuzz.py [--cases 400] [--seed 0] [--grammar cnn|blocks] [--write]

fuzz.py corrupts the bytes of a few models and converts them data-free, so it never reaches the calibrated stages
(the budget, the focus, sequential refits, bias correction, weight reconstruction). Here each case builds a valid
network with graph_grammar.py (cnn: convolutional and dense networks; blocks: self-attention, MLPs, Cast detours,
If branches and LSTM, GRU and RNN layers), writes calibration data for it (1 to 40 samples, or none) and runs
`amos-onnx convert` in-process with a random set of options; a converted model then goes through `validate` on
held-out inputs, and one in four through `report` too. Outcomes:

- crash: an exit other than 0 or 2 (0, 1 or 2 for validate and report), or a traceback (the target is zero);
- error: exit 2 with a message of more than one line, or (convert) an output file left behind;
- mismatch: a written model whose function form and native op differ on held-out inputs;
- nonfinite: a written model with a non-finite output where the original's is finite;
- touched: the input model's bytes changed;
- unrunnable (not a defect): onnxruntime cannot run the original (a kernel the grammar used is missing).

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
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner, Result

sys.path.insert(0, str(Path(__file__).resolve().parent))
from graph_grammar import GRAMMARS  # noqa: E402
from results import machine, write_section  # noqa: E402

from amos_onnx.cli import main  # noqa: E402
from amos_onnx.runtime import session  # noqa: E402


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


def run_case(case: int, seed: int, folder: Path, runner: CliRunner, grammar: str = "cnn") -> tuple[str, str]:
    """One case of a grammar (GRAMMARS): its outcome (ok, refused, or a defect: crash, error, mismatch, nonfinite,
    touched) and what it was."""
    model, inputs = GRAMMARS[grammar](case, seed)
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
    judged = judge(result, (0, 2), what)
    if judged is not None:
        return judged
    if path.read_bytes() != before:
        return "touched", what
    if result.exit_code == 2:
        if out.exists():
            return "error", f"{what}: {result.output.strip()[:300]!r}, output left behind"
        return "refused", f"{what}: {result.output.strip()}"
    kind, line = _compare(path, out, inputs, rng, what)
    return (kind, line) if kind != "ok" else _measure(path, out, inputs, rng, runner, line)


def _compare(path: Path, out: Path, inputs: dict[str, tuple[int, ...]], rng: np.random.Generator,
             what: str) -> tuple[str, str]:
    feed = feeds(inputs, rng, 16, 1.0)
    try:
        original = session(path, native=False).run(None, feed)
    except Exception as exc:  # onnxruntime lacks a kernel the grammar used (not the converter's doing)
        return "unrunnable", f"{what}: the original does not run: {str(exc).splitlines()[0][:200]}"
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
        judged = judge(runner.invoke(main, command), (0, 1, 2), f"{what}; then {command[0]}")
        if judged is not None:
            return judged
    return "ok", what


def judge(result: Result, codes: tuple[int, ...], what: str) -> tuple[str, str] | None:
    """A command's defect: a crash (a traceback, or an exit outside `codes`), or an error (exit 2 with a message
    of more than one line); None when it ended as it may."""
    if crashed(result, codes):
        return "crash", f"{what}: exit {result.exit_code}, {type(result.exception).__name__}: " \
                        f"{str(result.exception)[:300]}"
    if result.exit_code == 2 and len(result.output.strip().splitlines()) != 1:
        return "error", f"{what}: {result.output.strip()[:300]!r}"
    return None


def crashed(result: Result, codes: tuple[int, ...] = (0, 2)) -> bool:
    """A traceback escaped the command, or it exited outside `codes` (fuzz.py's test too)."""
    return result.exit_code not in codes or (result.exception is not None
                                             and not isinstance(result.exception, SystemExit))


DEFECTS = ("crash", "error", "mismatch", "nonfinite", "touched")


def run(cases: Sequence[int], seed: int, folder: Path, grammar: str = "cnn") -> tuple[Counter, list[str]]:
    """Outcomes by kind, and a line for every defect."""
    runner = CliRunner()
    outcomes: Counter = Counter()
    defects: list[str] = []
    for case in cases:
        kind, line = run_case(case, seed, folder, runner, grammar)
        outcomes[kind] += 1
        if kind in DEFECTS:
            defects.append(f"{kind}: {line}")
    return outcomes, defects


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grammar", choices=sorted(GRAMMARS), default="cnn")
    parser.add_argument("--only", type=int, default=None,
                        help="run this case alone and print its outcome (a converted one with its relative error)")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.only is not None:
        with tempfile.TemporaryDirectory() as tmp:
            kind, line = run_case(args.only, args.seed, Path(tmp), CliRunner(), args.grammar)
        print(f"{kind}: {line}")
        sys.exit(1 if kind in DEFECTS else 0)
    cases = range(args.cases)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        outcomes, defects = run(cases, args.seed, Path(tmp), args.grammar)
    seconds = time.perf_counter() - start
    for line in defects:
        print(line)
    rows = "\n".join(f"| {kind} | {count} |" for kind, count in sorted(outcomes.items()))
    flag = "" if args.grammar == "cnn" else f" --grammar {args.grammar}"
    what = {"cnn": "convolutions, batch norms, residual, concatenated and squeeze-excitation blocks, pooling, "
                   "dense layers, layer norms",
            "blocks": "token sequences through self-attention, MLPs, activations computed in float16 or double "
                      "between Casts, If branches, and LSTM, GRU and RNN layers"}[args.grammar]
    text = (
        f"## Random calibrated networks through convert with random options ({args.grammar})\n\n"
        f"Command: `.venv/bin/python benchmarks/graph_fuzz.py --cases {args.cases} --seed {args.seed}{flag} "
        f"--write` ({machine()}; {len(cases)} networks built from graph_fuzz.py's {args.grammar} grammar ({what}), "
        f"each with its own calibration data and options, {seconds:.0f} s). "
        f"**Defects: {sum(outcomes[k] for k in DEFECTS)}** (a crash, a "
        "refusal of more than one line or with an output left behind, a function form and native op that differ, "
        "a non-finite output where the original's is finite, a changed input; target 0). ok: converted; "
        "refused: a one-line error, exit 2.\n\n| outcome | cases |\n|---|---|\n" + rows)
    print(text)
    if args.write:
        write_section("graph_fuzz" if args.grammar == "cnn" else f"graph_fuzz_{args.grammar}", text)
    sys.exit(1 if any(outcomes[k] for k in DEFECTS) else 0)


if __name__ == "__main__":
    os.environ.setdefault("AMOS_ONNX_JOBS", "1")  # small networks: fits in-process
    main_()
