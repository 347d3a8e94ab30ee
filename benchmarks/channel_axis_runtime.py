"""The native op's per-channel gates with the channels on the last axis against axis 1, in one run.

    .venv/bin/python benchmarks/channel_axis_runtime.py [--write]

`convert --per-channel` puts a transformer's channels on the last axis ([batch, tokens, features]); convolution
features sit on axis 1. One per-channel AmosGate node (K=6, 768 channels) on 32 x 128 x 768 inputs, either way
round, run in onnxruntime with the native op and in the function form (2 threads, median of 20 runs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results  # noqa: E402

from amos_onnx.gate import GateParams, simulate  # noqa: E402
from amos_onnx.rewrite import emit  # noqa: E402
from amos_onnx.runtime import session  # noqa: E402

CHANNELS, K, REPS = 768, 6, 20


def gate_model(params: GateParams, shape: list[int]):  # type: ignore[no-untyped-def]
    node = emit.gate_node("x", "y", params, len(shape), "g/amos", "per-channel gate")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    opsets = [helper.make_opsetid("", 17)]
    return helper.make_model(graph, opset_imports=opsets + [helper.make_opsetid(emit.DOMAIN, emit.DOMAIN_VERSION)],
                             functions=[emit.function_proto(emit.overload_of(params, len(shape)), opsets)],
                             ir_version=10)


def timed(sess, x: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    sess.run(["y"], {"x": x})
    times = []
    for _ in range(REPS):
        start = time.perf_counter()
        sess.run(["y"], {"x": x})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    T = np.sort(rng.normal(0, 1, (CHANNELS, K)), axis=1)
    h, d = rng.normal(0, 1, (CHANNELS, K)), rng.normal(0, 1, (CHANNELS, K))
    rows = []
    for axis, shape in ((2, [32, 128, CHANNELS]), (1, [32, CHANNELS, 128])):
        params = GateParams(T, h, d, axis=axis)
        model = gate_model(params, shape)
        x = rng.normal(0, 2, shape).astype(np.float32)
        native, function = session(model, native=True, threads=2), session(model, native=False, threads=2)
        same = np.array_equal(native.run(["y"], {"x": x})[0], simulate(params, x)[0])
        rows.append((axis, shape, timed(native, x), timed(function, x), same))
        print(f"axis {axis} {shape}: native {1000 * rows[-1][2]:.2f} ms, function form {1000 * rows[-1][3]:.1f} ms, "
              f"bit-identical to numpy: {same}", flush=True)
    last, first = rows
    lines = ["| channels on | input | native op (ms) | function form (ms) | native, bit-identical |",
             "|---|---|---|---|---|"]
    lines += [f"| axis {a} | {s} | {1000 * n:.2f} | {1000 * f:.1f} | {same} |" for a, s, n, f, same in rows]
    summary = (f"The last axis takes {last[2] / first[2]:.1f}x axis 1's time in the native op; the function form "
               f"takes {last[3] / last[2]:.0f}x the native op's on the last axis.")
    print(summary)
    if args.write:
        results.write_section("channel_axis_runtime", "\n".join([
            "## Per-channel gates on the last axis", "",
            f"`benchmarks/channel_axis_runtime.py --write` ({results.machine()}): one per-channel AmosGate node "
            f"(K={K}, {CHANNELS} channels), median of {REPS} runs with 2 threads, in one run.", "", *lines, "",
            summary]))


if __name__ == "__main__":
    main()
