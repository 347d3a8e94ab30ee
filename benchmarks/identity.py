"""Byte identity of converted files across a change of the converter's code (the house redesign's proof).

    .venv/bin/python benchmarks/identity.py --out before.json [--source DIR]   # hashes with the code in DIR
    .venv/bin/python benchmarks/identity.py --out after.json --check before.json [--write]

Converts the digits example and the Fashion-MNIST networks (benchmarks/fashion_nets.py, trained into
.cache/fashion-nets first) through the command line, `python -m amos_onnx convert`, with a fixed seed: at two
K, data-free and calibrated, with --per-channel and with --spike-penalty. Prints and writes one SHA-256 per
converted file; --source runs another checkout's amos_onnx (a worktree of the pre-redesign commit, say) on the
same inputs; --check compares with an earlier run's JSON and exits 1 on any difference; --write records that
comparison in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fashion_data  # noqa: E402
import results  # noqa: E402

ROOT = fashion_data.ROOT
NETS = ROOT / ".cache/fashion-nets"
DIGITS = ROOT / "examples/digits"
CALIBRATION = 500  # Fashion-MNIST training images drawn (seed 0) for the calibrated cases
KS = (4, 8)
VARIANTS = {"data-free": [], "calib": ["--calib"], "per-channel": ["--calib", "--per-channel"],
            "penalty": ["--calib", "--spike-penalty", "0.005"]}


def _cases(calib: Path) -> list[tuple[str, Path, list[str]]]:
    """(name, model, convert options) of every conversion compared."""
    models = [("digits", DIGITS / "digits_cnn.onnx", DIGITS / "digits_train.npz")]
    models += [(f"fashion-{net}", NETS / f"{net}.onnx", calib) for net in ("vgg", "resnet", "effnet", "gelu")]
    cases = []
    for name, model, data in models:
        for k in KS:
            for variant, flags in VARIANTS.items():
                cases.append((f"{name} K={k} {variant}", model, ["--k", str(k), "--seed", "0", *_fill(flags, data)]))
    return cases


def _fill(flags: list[str], data: Path) -> list[str]:
    out: list[str] = []
    for flag in flags:
        out += [flag, str(data)] if flag == "--calib" else [flag]
    return out


def _calibration(folder: Path) -> Path:
    x, _ = fashion_data.load("train")
    pick = np.random.default_rng(0).choice(len(x), CALIBRATION, replace=False)
    path = folder / "fashion_calib.npz"
    np.savez(path, image=x[np.sort(pick)])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout whose amos_onnx converts")
    parser.add_argument("--check", type=Path, default=None, help="an earlier run's JSON to compare with")
    parser.add_argument("--write", action="store_true", help="record the comparison in RESULTS.md (with --check)")
    parser.add_argument("--label", default=None, help="what code made the --check file (a commit, say)")
    args = parser.parse_args()
    missing = [n for n in ("vgg", "resnet", "effnet", "gelu") if not (NETS / f"{n}.onnx").is_file()]
    if missing:
        subprocess.run([sys.executable, str(ROOT / "benchmarks/fashion_nets.py"), "--nets", ",".join(missing)],
                       check=True)
    env = {**os.environ, "PYTHONPATH": str(args.source.resolve())}
    hashes: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        calib = _calibration(Path(tmp))
        for name, model, options in _cases(calib):
            out = Path(tmp) / "out.onnx"
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "amos_onnx", "convert", str(model), str(out), "-q", *options],
                           check=True, env=env, cwd=tmp, stdout=subprocess.DEVNULL)
            hashes[name] = hashlib.sha256(out.read_bytes()).hexdigest()
            print(f"{name}: {hashes[name][:16]} ({time.perf_counter() - start:.1f} s)", flush=True)
            out.unlink()
    args.out.write_text(json.dumps(hashes, indent=1) + "\n")
    if args.check is not None:
        before = json.loads(args.check.read_text())
        differ = [n for n in before if hashes.get(n) != before[n]]
        verdict = (f"{len(before) - len(differ)} of {len(before)} converted files byte-identical"
                   + (f"; differ: {', '.join(differ)}" if differ else ""))
        print(verdict)
        if args.write:
            _write(verdict, hashes, before, args)
        sys.exit(1 if differ else 0)


def _write(verdict: str, hashes: dict[str, str], before: dict[str, str], args: argparse.Namespace) -> None:
    rows = [f"| {name} | `{before[name][:16]}` | `{hashes.get(name, 'missing')[:16]}` |" for name in before]
    results.write_section("identity", f"""
## Converted files across a change of the code

`{' '.join(sys.argv)}` ({results.machine()}): the digits example and the four Fashion-MNIST networks converted
through the command line at K = {' and '.join(map(str, KS))}, data-free, calibrated ({CALIBRATION} training images,
seed 0; the digits example on its own training set), with `--per-channel` and with `--spike-penalty 0.005`,
once with {args.label or f"the code that wrote {args.check}"} and once with this checkout. **{verdict}.**

| conversion | SHA-256 before (first 16) | SHA-256 now (first 16) |
|---|---|---|
""" + "\n".join(rows))


if __name__ == "__main__":
    main()
