"""Time steps per input: K per site chosen for a latency budget (convert --latency) against one K for every site,
and against the rate-coded peer's accuracy at T steps.

    .venv/bin/python benchmarks/latency_budget.py [--nets vgg,resnet,effnet] [--images 2000] [--write]
        [--modes plain bias-corrected reconstructed] [--chains 1] [--spike-penalty 0]

- The networks of fashion_nets.py, calibrated on fashion_k.py's 2,000 training images (seed 0), convert's
  defaults otherwise. Uniform: --k K for K = 2..8 (latency per input: K times the gates on the deepest path).
  Budgeted: --latency N at each of those latencies and at the issue's targets (VGG 24, ResNet 48, EfficientNet 90
  steps). Three modes: plain (--no-reconstruct), with --bias-correction, and reconstructed (convert's default with
  calibration: weight reconstruction).
- Accuracy on the peer benchmark's test images (fashion_peer.test_subset(--images)) for the ReLU networks, on the
  full 10,000-image test set for the EfficientNet-style one (its target's set; the peer converts ReLU only), and
  the test images whose class differs from the ANN's; mean spikes per gate from the native op's spike counts on
  the same images.
- Conversion time: each conversion runs in a fresh process that imports amos-onnx only (as the CLI does; this
  one holds torch, whose objects slow every garbage collection), timed around convert(); the budgeted ones
  against the calibrated conversion at convert's default K in the same mode,
  in this run: the budget's cost as a ratio. At the targets also the median ratio of REPEATS pairs (the default
  K's conversion, then the budget's), timed alternately: one conversion's time moves by a few tenths with the
  machine's load.
- The peer: SpikingJelly's accuracy against T, from fashion_peer.py's last run (.cache/fashion-peer/<net>.json:
  run fashion_peer.py first; without it the plots go without the peer, and the section says so).

Writes benchmarks/latency_budget_<net>.png (accuracy against time steps per input) and, with --write, its section
of RESULTS.md. --chains and --spike-penalty are convert's, for every conversion of the run (uniform, budgeted and
the default K it is timed against); with either, or with fewer --modes, the plots and the section are its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fashion_data  # noqa: E402
import fashion_k  # noqa: E402
import fashion_nets  # noqa: E402
from results import machine, write_section  # noqa: E402

from amos_onnx.report.files import latency  # noqa: E402

PEER_CACHE = fashion_data.ROOT / ".cache/fashion-peer"
OUT = Path(__file__).resolve().parent
KS = range(2, 9)
TARGETS = {"vgg": (24, 0.5), "resnet": (48, 0.5), "effnet": (90, 0.3)}  # steps per input, points of the ANN
# plain: no compensation; reconstructed: convert's default with calibration (weight reconstruction)
MODES = {"plain": {"reconstruct": False}, "bias-corrected": {"bias_correction": True}, "reconstructed": {}}


def test_set(name: str, images: int) -> tuple[np.ndarray, np.ndarray, str]:
    if name == "effnet":
        x, y = fashion_data.load("test")
        return x, y, "the full 10,000-image test set"
    import fashion_peer

    x, y = fashion_peer.test_subset(images)
    return x, y, f"the peer benchmark's {images} test images"


def kl(reference: np.ndarray, logits: np.ndarray) -> float:
    """Mean KL divergence of softmax(logits) from softmax(reference), millinats per image."""
    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z.astype(np.float64) - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    a, b = log_softmax(reference), log_softmax(logits)
    return 1000 * float(np.mean(np.sum(np.exp(a) * (a - b), axis=1)))


# convert() in a fresh process: its wall time and the report's budget
PROBE = """
import json, sys, time
import amos_onnx
start = time.perf_counter()
report = amos_onnx.convert(sys.argv[1], sys.argv[2], sys.argv[3], progress=False, **json.loads(sys.argv[4]))
print(json.dumps({"seconds": time.perf_counter() - start, "budget": report.budget}))
"""


def probe(path: Path, calib: Path, out: Path, options: dict[str, object]) -> dict[str, object]:
    """convert() with `options` in a fresh process (PROBE): its wall time and the report's budget."""
    done = subprocess.run([sys.executable, "-c", PROBE, str(path), str(out), str(calib), json.dumps(options)],
                          check=True, capture_output=True, text=True).stdout
    return json.loads(done.strip().splitlines()[-1])  # type: ignore[no-any-return]


REPEATS = 3  # conversion pairs (the default K, then the budget) timed alternately at each target


def timing(path: Path, calib: Path, out: Path, extra: dict[str, object], steps: int,
           spikes: float) -> dict[str, float]:
    """At the target: the median over REPEATS alternating pairs of fresh-process conversions of the budgeted
    conversion's time over the default K's in the same mode, --latency alone and with --spike-budget."""
    ratios: dict[str, list[float]] = {"latency": [], "bounded": []}
    for _ in range(REPEATS):
        for key, more in (("latency", {"latency": steps}), ("bounded", {"latency": steps, "spike_budget": spikes})):
            reference = float(probe(path, calib, out, extra)["seconds"])  # type: ignore[arg-type]
            ratios[key].append(float(probe(path, calib, out, {**extra, **more})["seconds"]) / reference)  # type: ignore[arg-type]
    return {key: float(np.median(values)) for key, values in ratios.items()}


def measure(path: Path, calib: Path, out: Path, x: np.ndarray, y: np.ndarray, ann: np.ndarray,
            **options: object) -> dict[str, object]:
    """Convert with `options` (in a fresh process, PROBE), run on x: accuracy, KL from the ANN's logits `ann`, the
    images whose class differs from the ANN's, spikes, time, latency."""
    report: dict = probe(path, calib, out, options)  # type: ignore[type-arg]
    converted = onnx.load(out)
    logits, spikes, _ = fashion_k.run_spiking(converted, x)
    row = {"accuracy": float((logits.argmax(1) == y).mean()), "kl": kl(ann, logits), "spikes_per_gate": spikes,
           "seconds": report["seconds"], "latency_steps": latency(converted)["latency_steps"],
           "differ": int(np.count_nonzero(logits.argmax(1) != ann.argmax(1)))}
    if report["budget"] is not None:
        row["k"] = report["budget"]["k"]
        row["measured_together"] = report["budget"]["measured_together"]
    return row


def network(name: str, images: int, folder: Path, modes: dict[str, dict[str, object]] = MODES) -> dict[str, object]:
    """Every mode's reference (default K), uniform and budgeted conversions of one network (`modes`: convert's
    keywords per mode)."""
    path, _ = fashion_nets.network(name)
    x, y, where = test_set(name, images)
    calib = folder / "calib.npz"
    np.savez(calib, image=fashion_k.calibration_images())
    logits = fashion_k.run_original(path, x)
    ann = float((logits.argmax(1) == y).mean())
    res: dict[str, object] = {"name": name, "ann": ann, "where": where, "modes": {}}
    for mode, extra in modes.items():
        reference = measure(path, calib, folder / "r.onnx", x, y, logits, **extra)
        uniform = [dict(measure(path, calib, folder / "u.onnx", x, y, logits, k=k, **extra), k=k) for k in KS]
        depth = uniform[0]["latency_steps"] // KS[0]  # type: ignore[operator]
        budgets = sorted({depth * k for k in KS} | {TARGETS[name][0]})
        budgeted = [dict(measure(path, calib, folder / "b.onnx", x, y, logits, latency=n, **extra), budget=n)
                    for n in budgets]
        res["modes"][mode] = {"reference": reference, "uniform": uniform, "budgeted": budgeted}  # type: ignore[index]
        # The target with the spikes of the uniform conversion it replaces as a --spike-budget too.
        steps, _ = TARGETS[name]
        spikes = float(replaced(res, mode)["spikes_per_gate"])  # type: ignore[arg-type]
        bounded = measure(path, calib, folder / "b.onnx", x, y, logits, latency=steps, spike_budget=spikes, **extra)
        res["modes"][mode]["bounded"] = dict(bounded, budget=steps, spike_budget=spikes)  # type: ignore[index]
        res["modes"][mode]["timing"] = timing(path, calib, folder / "t.onnx", extra, steps, spikes)  # type: ignore[index]
        for r in budgeted:
            print(f"{name} {mode} latency {r['budget']}: {100 * r['accuracy']:.2f}% (ANN {100 * ann:.2f}%), "  # type: ignore[operator]
                  f"{r['spikes_per_gate']:.3f} spikes/gate, {r['seconds']:.1f} s", flush=True)
    return res


def replaced(res: dict, mode: str) -> dict:
    """The uniform conversion a budget replaces: the smallest uniform K within the target's points of the ANN on
    these images, else convert's default K in that mode."""
    points = TARGETS[res["name"]][1]
    rows = res["modes"][mode]
    within = [u for u in rows["uniform"] if 100 * (res["ann"] - u["accuracy"]) <= points]
    return min(within, key=lambda r: r["latency_steps"]) if within else dict(rows["reference"], k="default")


def peer_curves(name: str) -> dict[str, dict[int, float]] | None:
    path = PEER_CACHE / f"{name}.json"
    if name == "effnet":
        return None
    if not path.exists():
        print(f"{path}: no peer results (run benchmarks/fashion_peer.py first); {name}'s plot goes without them",
              file=sys.stderr)
        return None
    recipes = json.loads(path.read_text())["peer"]["recipes"]
    return {label: {int(t): a for t, a in rec["accuracy"].items()} for label, rec in recipes.items()}


def plot(name: str, res: dict, peer: dict[str, dict[int, float]] | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ann = 100 * res["ann"]
    for label, acc in (peer or {}).items():
        ts = sorted(acc)
        ax.semilogx(ts, [100 * acc[t] for t in ts], "o:", base=2, label=f"SpikingJelly {label} (T)", alpha=0.7)
    styles = {"plain": ("s-", "^-"), "bias-corrected": ("s--", "^--"), "reconstructed": ("s-.", "^-.")}
    for mode, rows in res["modes"].items():
        uniform, budgeted = styles[mode]
        ax.semilogx([r["latency_steps"] for r in rows["uniform"]], [100 * r["accuracy"] for r in rows["uniform"]],
                    uniform, base=2, label=f"amos-onnx uniform K, {mode}")
        ax.semilogx([r["latency_steps"] for r in rows["budgeted"]], [100 * r["accuracy"] for r in rows["budgeted"]],
                    budgeted, base=2, label=f"amos-onnx --latency, {mode}")
    ax.axhline(ann, color="k", lw=0.8, label=f"ANN {ann:.2f}%")
    ax.axhline(ann - TARGETS[name][1], color="k", lw=0.5, ls=":")
    ax.axvline(TARGETS[name][0], color="k", lw=0.5, ls=":")
    ax.set_ylim(ann - 10, ann + 1)
    ax.set(xlabel="time steps per input", ylabel="accuracy (%)", title=f"{name}: accuracy against latency "
           f"({res['where']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    k = f"K={row['k']}, " if isinstance(row.get("k"), int) else ""
    return (f"{k}{row['latency_steps']} steps: {100 * row['accuracy']:.2f}% / KL {row['kl']:.1f} / "
            f"{row['differ']} differ / {row['spikes_per_gate']:.2f}")


def pairs(res: dict) -> list[tuple[str, dict, dict | None]]:
    """Per mode and budget: the budgeted conversion and the uniform K with the most steps within the same budget
    (None when none fits)."""
    found = []
    for mode, rows in res["modes"].items():
        for b in rows["budgeted"]:
            fitting = [u for u in rows["uniform"] if u["latency_steps"] <= b["budget"]]
            found.append((mode, b, max(fitting, key=lambda r: r["latency_steps"]) if fitting else None))
    return found


def curve_lines(name: str, res: dict) -> list[str]:
    """Per budget: the budgeted conversion beside the uniform K with the most steps within the same budget."""
    lines = []
    for mode, b, u in pairs(res):
        diff = f"{100 * (b['accuracy'] - u['accuracy']):+.2f} / {b['kl'] / u['kl']:.2f}x" if u else "-"
        lines.append(f"| {name} | {mode} | {b['budget']} | {_cell(u)} | {_cell(b)} | {diff} |")
    return lines


def below_lines(results: list[dict]) -> list[str]:
    """The budgets where the budgeted conversion is less accurate than the uniform one, with the test images
    whose class differs from the ANN's in each."""
    below = [(res["name"], mode, b, u) for res in results for mode, b, u in pairs(res)
             if u is not None and b["accuracy"] < u["accuracy"]]
    if not below:
        return ["At every budget the budgeted conversion is at least as accurate as the uniform one.", ""]
    closer = sum(1 for *_, b, u in below if b["differ"] <= u["differ"])
    cases = "; ".join(f"{name} {mode} {b['budget']} steps: {100 * (b['accuracy'] - u['accuracy']):+.2f} points, "
                      f"{b['differ']} against {u['differ']}" for name, mode, b, u in below)
    return [f"Less accurate than the uniform K within the same budget at {len(below)} of "
            f"{sum(len(pairs(res)) for res in results)} budgets; at {closer} of them the budgeted conversion's "
            f"class differs from the ANN's on no more test images than the uniform one's (test images whose class "
            f"differs from the ANN's, budgeted against uniform: {cases}).", ""]


def target_lines(name: str, res: dict) -> list[str]:
    """At the issue's target latency: the gap to the ANN, spikes against the uniform conversion it replaces
    (replaced()), and met or not; --latency alone, and with that conversion's spikes as --spike-budget."""
    steps, points = TARGETS[name]
    lines = []
    for mode, rows in res["modes"].items():
        was = replaced(res, mode)
        for b, key in ((next(r for r in rows["budgeted"] if r["budget"] == steps), "latency"),
                       (rows["bounded"], "bounded")):
            gap = 100 * (res["ann"] - b["accuracy"])
            met = gap <= points and b["spikes_per_gate"] <= was["spikes_per_gate"] and b["latency_steps"] <= steps
            flags = f"--latency {steps}" + (f" --spike-budget {b['spike_budget']:.3f}" if "spike_budget" in b else "")
            reference = rows["reference"]["seconds"]
            lines.append(f"| {name} | {mode} | <= {steps} steps, within {points} | {flags} | {b['latency_steps']} "
                         f"steps: {100 * b['accuracy']:.2f}% ({gap:+.2f} below the ANN's {100 * res['ann']:.2f}%), "
                         f"{b['spikes_per_gate']:.3f} spikes/gate | K={was['k']} ({was['latency_steps']} steps): "
                         f"{100 * was['accuracy']:.2f}%, {was['spikes_per_gate']:.3f} spikes/gate | "
                         f"{'yes' if met else 'no'} | {b['seconds']:.1f} s against the default K's {reference:.1f} "
                         f"s; median of {REPEATS} alternating pairs {rows['timing'][key]:.2f}x |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="vgg,resnet,effnet")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--chains", type=int, default=1, help="convert's --chains for every conversion")
    parser.add_argument("--spike-penalty", type=float, default=0.0, help="convert's --spike-penalty for every one")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    common = {**({"chains": args.chains} if args.chains != 1 else {}),
              **({"spike_penalty": args.spike_penalty} if args.spike_penalty else {})}
    modes = {mode: {**MODES[mode], **common} for mode in args.modes}
    options = "".join(f" --{key.replace('_', '-')} {value:g}" for key, value in common.items())
    flags = (f" --modes {' '.join(args.modes)}" if args.modes != list(MODES) else "") + options
    suffix = flags.replace(" --", "_").replace(" ", "_").replace("-", "_")
    cache = fashion_data.ROOT / ".cache/latency-budget"
    cache.mkdir(parents=True, exist_ok=True)
    curves, targets, missing, results = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.nets.split(","):
            peer = peer_curves(name)
            if peer is None and name != "effnet":
                missing.append(name)
            res = network(name, args.images, Path(tmp), modes)
            (cache / f"{name}{suffix}.json").write_text(json.dumps(res, indent=1))
            plot(name, res, peer, OUT / f"latency_budget_{name}{suffix}.png")
            results.append(res)
            curves += curve_lines(name, res)
            targets += target_lines(name, res)
    text = "\n".join([
        "## K per site for a latency budget against one K for every site" + flags.replace(" --", ", --"),
        "",
        f"Command: `.venv/bin/python benchmarks/latency_budget.py --nets {args.nets} --images {args.images}{flags} "
        f"--write` ({machine()}; the networks of fashion_nets.py, calibrated on fashion_k.py's 2,000 training images, "
        f"seed 0, convert's defaults otherwise{', every conversion with' + options if common else ''}, focus on). "
        "Uniform: `--k K`; budgeted: `--latency N` (each site fitted at "
        "the candidate K around N over the gates on the deepest path, its gate alone in place measured on the "
        "kept calibration samples, K chosen per site under the path constraint). Accuracy on the peer "
        "benchmark's test images (VGG, ResNet) or the full test set (EfficientNet), spikes per gate from the native "
        "op. Cells: latency per input, accuracy / KL divergence of the softmax from the ANN's (millinats per image) / "
        "test images whose class differs from the ANN's / mean spikes per gate; each budget beside the uniform K "
        "with the most steps within it. Modes: plain (`--no-reconstruct`: no compensation), bias-corrected "
        "(`--bias-correction`), reconstructed (convert's default with calibration: weight reconstruction).",
        "",
        "| network | mode | budget (steps per input) | uniform K within it | --latency | accuracy difference (points) "
        "/ KL ratio |",
        "|---|---|---|---|---|---|", *curves, "", *below_lines(results),
        "The targets (a budget that beats local threshold balancing's 32 and 64 steps by a quarter; the "
        "EfficientNet-style network at half its uniform K=10's 180 steps), each with no more spikes per gate than "
        "the uniform conversion it replaces (the smallest uniform K within the same points, else convert's default "
        "K), and the conversion's time against the calibrated conversion at convert's default K in the same mode, in "
        "the same run (each conversion in a fresh process that imports amos-onnx only, timed around convert(); "
        f"first the conversions measured for the table, then the median ratio of {REPEATS} pairs of conversions, "
        "the default K's then the budget's, timed alternately); "
        "the second row of each gives that conversion's spikes per gate on these images as `--spike-budget` too "
        "(the budget counts spikes on the calibration samples):",
        "",
        "| network | mode | target | options | result | the uniform conversion it replaces | met | conversion time |",
        "|---|---|---|---|---|---|---|---|", *targets, "",
        *([f"The plots of {', '.join(missing)} go without the peer's curves: no fashion_peer.py run on record "
           "here.", ""] if missing else []),
        *[f"![{n}](latency_budget_{n}{suffix}.png)" for n in args.nets.split(",")]])
    print(text)
    if args.write:
        write_section("latency_budget" + suffix, text)


if __name__ == "__main__":
    main()
