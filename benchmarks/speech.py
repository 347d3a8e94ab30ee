"""A speech clip for voice activity detection: English sentences spoken by espeak-ng (Debian's, fetched into
.cache/espeak by fetch_espeak.sh), between seeded pauses of faint noise, at 16 kHz. Used by
benchmarks/silero_vad.py and the slow test tier."""

from __future__ import annotations

import os
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "espeak"
RATE = 16_000
SENTENCES = ("Voice activity detection finds the parts of a recording where someone speaks.",
             "A spiking network fires each neuron at most once per input.",
             "The quick brown fox jumps over the lazy dog near the river bank.",
             "Please leave a message after the tone and we will call you back.",
             "Seven hundred and twenty three samples were recorded on Tuesday morning.")


def _espeak() -> tuple[Path, dict[str, str]]:
    """The espeak-ng binary (fetched on first use) and the environment it runs in."""
    done = subprocess.run(["bash", str(Path(__file__).with_name("fetch_espeak.sh")), str(CACHE)], check=True,
                          capture_output=True, text=True)
    binary = Path(done.stdout.strip().splitlines()[-1])
    libs = CACHE / "root/usr/lib/x86_64-linux-gnu"
    env = dict(os.environ, LD_LIBRARY_PATH=f"{CACHE / 'stub'}:{libs}")
    return binary, env


def spoken(text: str) -> np.ndarray:
    """`text` spoken by espeak-ng at 150 words a minute, resampled to RATE (linear interpolation), in [-1, 1]."""
    binary, env = _espeak()
    data_path = CACHE / "root/usr/lib/x86_64-linux-gnu"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        subprocess.run([str(binary), f"--path={data_path}", "-s", "150", "-w", str(out), text], env=env, check=True)
        with wave.open(str(out)) as handle:
            rate = handle.getframerate()
            samples = np.frombuffer(handle.readframes(handle.getnframes()), np.int16).astype(np.float64) / 32768
    times = np.arange(0, len(samples) / rate, 1 / RATE)
    return np.interp(times, np.arange(len(samples)) / rate, samples)


def clip(seed: int = 0) -> np.ndarray:
    """The sentences at half volume, each after 0.8-2 s of noise (standard deviation 0.003), a last second of
    noise after them, float32 at RATE, cut to whole 512-sample chunks (about 30 s)."""
    rng = np.random.default_rng(seed)
    parts = []
    for sentence in SENTENCES:
        pause = int(RATE * rng.uniform(0.8, 2.0))
        parts.append(rng.normal(0, 0.003, pause))
        speech = spoken(sentence)
        parts.append(0.5 * speech + rng.normal(0, 0.003, speech.size))
    parts.append(rng.normal(0, 0.003, RATE))
    audio = np.concatenate(parts).astype(np.float32)
    return audio[: audio.size // 512 * 512]
