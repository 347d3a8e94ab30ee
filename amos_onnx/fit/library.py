"""Pre-fitted gates shipped with the package: data-free conversions cost no fitting time.

`library.json` holds, for every function the registry and the composite finder
name (default attributes and the common exporter variants) and K = 4..16, the
gate fitted on the function's default range. Entries are keyed by the
function's label, its range and K, and carry the fitter version that made
them: a library from another fitter version is ignored, never used silently.

Rebuild after changing the fitter or the registry:

    python -m amos_onnx.fit.library        # writes amos_onnx/fit/library.json
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from amos_onnx.find.gates import Activation
from amos_onnx.fit.search import FitResult, evaluate, fit, pad_start
from amos_onnx.gate import GateParams

log = logging.getLogger(__name__)

PATH = Path(__file__).with_name("library.json")
FITTER_VERSION = 10  # bump when the fitter's results change
# Local-search moves per shipped fit: fitted once, offline, so a longer search than a refit's is cheap.
LIBRARY_KICKS = 300
K_RANGE = range(4, 17)


def _key(label: str, lo: float, hi: float, relu_like: bool, k: int) -> str:
    return f"{label}|{lo:g}|{hi:g}|{int(relu_like)}|{k}"


@functools.lru_cache(maxsize=1)
def _entries() -> dict[str, dict]:
    if not PATH.is_file():
        return {}
    data = json.loads(PATH.read_text())
    if data.get("fitter_version") != FITTER_VERSION:
        log.warning("%s was made by fitter version %s, not %s: ignored", PATH, data.get("fitter_version"),
                    FITTER_VERSION)
        return {}
    return data["gates"]


def lookup(act: Activation, k: int) -> FitResult | None:
    """The pre-fitted gate for this function, range and K, or None."""
    entry = _entries().get(_key(act.label, act.lo, act.hi, act.relu_like, k))
    if entry is None:
        return None
    params = GateParams(entry["thresholds"], entry["resets"], entry["weights"])
    return FitResult(params, entry["mse"], entry["max_error"], entry["mean_spikes"], act.lo, act.hi)


def _representative_activations() -> list[Activation]:
    """The functions worth shipping: every registered op with default and common exporter attributes, and
    the named composites."""
    from amos_onnx.find.composite import KNOWN, describe
    from amos_onnx.find.gates import NodeContext
    from amos_onnx.find.gates import lookup as registry_lookup

    def single(op: str, opset: int, **attrs: object) -> Activation:
        import onnx_graphsurgeon as gs

        node = gs.Node(op, attrs=attrs, inputs=[gs.Variable("x", dtype=np.float32)], outputs=[gs.Variable("y")])
        matcher = registry_lookup("", op, opset)
        assert matcher is not None
        result = matcher(NodeContext(node, opset))
        assert isinstance(result, Activation), result
        return result

    acts = [
        single("Relu", 17), single("LeakyRelu", 17), single("LeakyRelu", 17, alpha=0.1),
        single("LeakyRelu", 17, alpha=0.2), single("Elu", 17), single("Selu", 17), single("Celu", 17),
        single("Softplus", 17), single("Softsign", 17), single("Sigmoid", 17), single("HardSigmoid", 17),
        single("HardSigmoid", 17, alpha=1 / 6, beta=0.5), single("Tanh", 17), single("HardSwish", 17),
        single("Gelu", 20), single("Gelu", 20, approximate="tanh"), single("Mish", 18),
        single("ThresholdedRelu", 17), single("Clip", 9, min=0.0, max=6.0),
    ]
    for func in KNOWN.values():
        _, label, relu_like = describe(func, [])
        acts.append(Activation(label, func, 16, relu_like=relu_like))
    return acts


def named_activations() -> dict[str, Activation]:
    """Functions `amos-onnx fit` knows by name: every registered op (default attributes) and the composites."""
    named: dict[str, Activation] = {}
    for act in _representative_activations():
        name = act.label.split("(")[0]
        named.setdefault(name, act)
    return named


def no_worse(act: Activation, k: int, result: FitResult, smaller: FitResult) -> FitResult:
    """`result`, or the smaller K's gate padded with silent neurons (the same function) when that one's dense-grid
    MSE is lower: a fit chooses on a coarser grid than the figures', and a larger K never ships a worse gate."""
    if result.mse <= smaller.mse:
        return result
    padded = GateParams(*pad_start(smaller.params, k, act.hi, act.hi - act.lo))
    return FitResult(padded, *evaluate(padded, act.func, act.lo, act.hi), act.lo, act.hi)


def _grow(job: tuple[Activation, range]) -> tuple[dict[str, dict], float]:
    """Every K of one function, each grown from the previous K's solution."""
    act, ks = job
    start = time.perf_counter()
    gates: dict[str, dict] = {}
    previous: list[FitResult] = []
    for k in ks:
        result = fit(act.func, k, act.lo, act.hi, relu_like=act.relu_like, warm=[r.params for r in previous],
                     kicks=LIBRARY_KICKS)
        if previous:
            result = no_worse(act, k, result, previous[0])
        previous = [result]  # grow K from the previous solution
        gates[_key(act.label, act.lo, act.hi, act.relu_like, k)] = {
            "thresholds": result.params.thresholds.tolist(),
            "resets": result.params.resets.tolist(),
            "weights": result.params.weights.tolist(),
            "mse": result.mse, "max_error": result.max_error, "mean_spikes": result.mean_spikes,
        }
    return gates, time.perf_counter() - start


def build(path: Path = PATH, ks: range = K_RANGE) -> None:
    """Fit every representative function for every K and write the library (one process per CPU; minutes)."""
    from amos_onnx.parallel import fork_map

    acts: dict[tuple[str, float, float, bool], Activation] = {}
    for act in _representative_activations():
        acts.setdefault((act.label, act.lo, act.hi, act.relu_like), act)
    gates: dict[str, dict] = {}
    for act, (found, seconds) in zip(acts.values(), fork_map(_grow, [(act, ks) for act in acts.values()])):
        gates.update(found)
        print(f"{act.label}: K={ks.start}..{ks.stop - 1} in {seconds:.0f} s", flush=True)
    text = json.dumps({"fitter_version": FITTER_VERSION, "gates": gates}, indent=0)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    _entries.cache_clear()


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else PATH)
