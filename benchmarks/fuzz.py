"""Mutation fuzzing of `inspect` and `convert`: randomly corrupted copies of valid models.

    .venv/bin/python benchmarks/fuzz.py [--cases 3000] [--gate-cases 500] [--seed 0] [--write]

Each case takes one valid model (the digits CNN and small single-activation
models built here), corrupts its bytes (flip bytes, overwrite a run, truncate,
duplicate or delete a slice, splice two models) and runs `amos-onnx inspect`
and `amos-onnx convert` on it in-process. A crash is any exit other than 0 or 2,
or any exception escaping as a traceback; the target is zero. Then `--gate-cases` converted models with one
AmosGate node's attributes or outputs changed go through `validate` with the native op (fuzz_gates.py).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fuzz_gates  # noqa: E402
from graph_fuzz import crashed  # noqa: E402
from results import machine, write_section  # noqa: E402

from amos_onnx.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def seeds() -> list[bytes]:
    """Valid models to corrupt."""
    models = [(ROOT / "examples/digits/digits_cnn.onnx").read_bytes()]
    for op, opset in (("Relu", 13), ("Sigmoid", 13), ("Gelu", 20), ("HardSwish", 14)):
        graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], name="act")], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
        models.append(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString())
    silu = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])],
                             "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    models.append(helper.make_model(silu, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return models


def mutate(data: bytes, other: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    buf = bytearray(data)
    kind = ["flip", "overwrite", "truncate", "duplicate", "delete", "splice"][int(rng.integers(6))]
    n = len(buf)
    if kind == "flip":
        for i in rng.integers(0, n, int(rng.integers(1, 9))):
            buf[i] ^= 1 << int(rng.integers(8))
    elif kind == "overwrite":
        start, length = int(rng.integers(n)), int(rng.integers(1, 33))
        buf[start:start + length] = rng.integers(0, 256, min(length, n - start), dtype=np.uint8).tobytes()
    elif kind == "truncate":
        buf = buf[: int(rng.integers(n))]
    elif kind == "duplicate":
        start = int(rng.integers(n))
        buf[start:start] = buf[start:start + int(rng.integers(1, 257))]
    elif kind == "delete":
        start = int(rng.integers(n))
        del buf[start:start + int(rng.integers(1, 257))]
    else:
        cut = int(rng.integers(n))
        buf = buf[:cut] + other[int(rng.integers(len(other))):]
    return bytes(buf), kind


def run(cases: int, seed: int, folder: Path, jobs: int = 1) -> tuple[Counter, list[str]]:
    """Outcomes by kind and exit code, and a description of every crash. Each of `jobs` worker processes
    makes every corrupted model in case order from the one seeded generator and runs every jobs-th: together
    exactly the cases one process would run."""
    shards = [(seed, cases, j, jobs, folder / f"shard{j}") for j in range(jobs)]
    if jobs == 1:
        parts = [_run_shard(shards[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:  # fresh processes: no inherited threads
            parts = pool.map(_run_shard, shards)
    outcomes: Counter = Counter()
    crashes: list[str] = []
    for part_outcomes, part_crashes in parts:
        outcomes.update(part_outcomes)
        crashes += part_crashes
    return outcomes, sorted(crashes, key=lambda line: int(line.split()[1]))


def _run_shard(shard: tuple[int, int, int, int, Path]) -> tuple[Counter, list[str]]:
    seed, cases, first, step, folder = shard
    folder.mkdir(parents=True)
    if step > 1:
        os.environ["AMOS_ONNX_JOBS"] = "1"  # the shards already use every CPU: conversions fit in-process
    rng = np.random.default_rng(seed)
    models = seeds()
    outcomes: Counter = Counter()
    crashes = []
    runner = CliRunner()
    for case in range(cases):
        data, kind = mutate(models[case % len(models)], models[int(rng.integers(len(models)))], rng)
        if case % step != first:
            continue
        path = folder / "fuzz.onnx"
        path.write_bytes(data)
        for command in (["inspect", str(path)], ["convert", str(path), str(folder / "out.onnx")]):
            result = runner.invoke(main, command)
            broke = crashed(result)
            outcomes[(command[0], "crash" if broke else result.exit_code)] += 1
            if broke:
                crashes.append(f"case {case} ({kind}) {command[0]}: {type(result.exception).__name__}: "
                               f"{str(result.exception)[:200]}")
        (folder / "out.onnx").unlink(missing_ok=True)
    return outcomes, crashes


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)),
                        help="worker processes (the same cases, split between them)")
    parser.add_argument("--gate-cases", type=int, default=500, help="converted models with a changed AmosGate")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        outcomes, crashes = run(args.cases, args.seed, Path(tmp), max(1, args.jobs))
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        gate_outcomes, gate_crashes = fuzz_gates.run(args.gate_cases, args.seed, Path(tmp))
    gate_seconds = time.perf_counter() - start - seconds
    for line in (crashes + gate_crashes)[:20]:
        print(line)
    total_crashes = sum(v for (_, code), v in outcomes.items() if code == "crash")
    rows = "\n".join(f"| {cmd} | {code} | {count} |" for (cmd, code), count in sorted(outcomes.items(), key=str))
    gate_rows = "\n".join(f"| {kind} | {code} | {count} |"
                          for (kind, code), count in sorted(gate_outcomes.items(), key=str))
    text = (
        "## Mutation fuzzing of inspect and convert\n\n"
        f"Command: `.venv/bin/python benchmarks/fuzz.py --cases {args.cases} --gate-cases {args.gate_cases} "
        f"--seed {args.seed} --write` "
        f"({machine()}; {args.cases} corrupted models from {len(seeds())} valid ones, each through inspect and "
        f"convert, {seconds:.0f} s in {max(1, args.jobs)} processes).\n\n"
        f"**Crashes: {total_crashes}** of {2 * args.cases} runs (target 0; a crash is an exit other than 0 or 2, "
        "or a traceback).\n\n| command | exit code | runs |\n|---|---|---|\n" + rows + "\n\n"
        f"Converted models with one AmosGate node changed (fuzz_gates.py: k, the parameters' length, type or "
        f"values, the axis, a dropped attribute, the function overload, the outputs), each through `validate` "
        f"with the native op in a forked process ({gate_seconds:.0f} s): **crashes: {len(gate_crashes)}** of "
        f"{args.gate_cases} (a crash: a signal, an exit other than 0, 1 or 2, or a traceback).\n\n"
        "| change | exit code | runs |\n|---|---|---|\n" + gate_rows
    )
    print(text)
    if args.write:
        write_section("fuzz", text)
    sys.exit(1 if total_crashes or gate_crashes else 0)


if __name__ == "__main__":
    main_()
