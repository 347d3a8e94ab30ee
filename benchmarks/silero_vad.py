"""Silero VAD (the `silero-vad` 6.2.3 wheel's silero_vad.onnx) converted from the command line with calibration
data, against the original on a speech clip.

    .venv/bin/python benchmarks/silero_vad.py [--k 10] [--write]

The model reads 512 new samples at 16 kHz (plus 64 of context) and a recurrent state [2, N, 128] whose samples
lie on axis 1, with the sample rate as a scalar; its 12 activations and 4 LSTMs (written out as Scans of their
gates' 5 activations each: 32 sites in all) sit in the If branches for 16 and 8 kHz, where the calibration samples
what the branch that runs sees, at every step inside the Scans (the 16 kHz one here; the 8 kHz gates stay
data-free). The
clip (benchmarks/speech.py: five sentences spoken by espeak-ng between pauses of faint noise, about 30 s) runs
chunk by chunk through the original as its Python wrapper runs it; the inputs it saw (each chunk with its state)
are the calibration data, and `amos-onnx convert --calib --batch-axis state=1` converts it. The converted model
then runs the clip on its own state: its speech decisions at 0.5 against the original's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pypi_models  # noqa: E402
import speech  # noqa: E402

from amos_onnx.runtime import session  # noqa: E402

SILERO = ("silero-vad", "6.2.3", "silero_vad/data/silero_vad.onnx")
CHUNK, CONTEXT = 512, 64


def probabilities(model: Path, audio: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Speech probability per chunk, the model's state carried from chunk to chunk (batch 1), and the inputs it
    was fed, stacked as calibration data (input [N, 576], state [2, N, 128], sr)."""
    sess = session(model)
    state, context = np.zeros((2, 1, 128), np.float32), np.zeros((1, CONTEXT), np.float32)
    probs, inputs, states = [], [], []
    for start in range(0, audio.size, CHUNK):
        x = np.concatenate([context, audio[None, start:start + CHUNK]], axis=1)
        inputs.append(x[0])
        states.append(state[:, 0])
        out, state = sess.run(None, {"input": x, "state": state, "sr": np.array(speech.RATE, np.int64)})
        context = x[:, -CONTEXT:]
        probs.append(float(out[0, 0]))
    fed = {"input": np.stack(inputs), "state": np.stack(states, axis=1), "sr": np.array(speech.RATE, np.int64)}
    return np.array(probs), fed


def compare(k: int, folder: Path) -> dict[str, object]:
    """Convert with calibration from the command line and compare decisions; the figures."""
    model = pypi_models.model_file(*SILERO)
    audio = speech.clip()
    original, fed = probabilities(model, audio)
    np.savez(folder / "calib.npz", **fed)
    out = folder / "silero_spiking.onnx"
    done = subprocess.run([sys.executable, "-m", "amos_onnx", "convert", str(model), str(out), "--calib",
                           str(folder / "calib.npz"), "--batch-axis", "state=1", "--k", str(k), "-q"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"convert failed: {done.stderr}")
    converted, _ = probabilities(out, audio)
    return {"k": k, "seconds": audio.size / speech.RATE, "chunks": original.size,
            "speech": float(np.mean(original > 0.5)),
            "agreement": float(np.mean((converted > 0.5) == (original > 0.5))),
            "max_diff": float(np.max(np.abs(converted - original))),
            "mean_diff": float(np.mean(np.abs(converted - original))), "summary": done.stdout.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = compare(args.k, Path(tmp))
    line = (f"K={r['k']}: speech decisions at 0.5 agree on {100 * r['agreement']:.2f}% of {r['chunks']} chunks "
            f"({r['seconds']:.1f} s, {100 * r['speech']:.0f}% speech by the original); speech probability "
            f"differs by {r['mean_diff']:.4f} on average, {r['max_diff']:.3f} at most")
    print(r["summary"])
    print(line)
    if args.write:
        import results

        results.write_section("silero_vad", "\n".join([
            "## Silero VAD with a recurrent state and If branches",
            "", f"`benchmarks/silero_vad.py --k {args.k} --write` ({results.machine()}): " + __doc__.split("\n\n")[2]
            .replace("\n", " "), "", line + ".", "", "```", str(r["summary"]), "```"]))


if __name__ == "__main__":
    main()
