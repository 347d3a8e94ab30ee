"""Fashion-MNIST from Debian's dataset-fashion-mnist package, fetched once into .cache/fashion-mnist.

    .venv/bin/python benchmarks/fashion_data.py     # fetch and print the split sizes

`apt-get download` takes the .deb from Debian's archive (no root needed), `dpkg-deb -x` unpacks it into the
cache, and the four idx files are read with numpy. Images come back as float32 (N, 1, 28, 28), normalised
with the training set's mean and standard deviation; labels as int64.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache/fashion-mnist"
PACKAGE = "dataset-fashion-mnist"
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
MEAN, STD = 0.2860, 0.3530  # the training images' pixel mean and standard deviation (on [0, 1])
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _folder() -> Path:
    """The folder with the idx files, downloading and unpacking Debian's package the first time."""
    folder = CACHE / "usr/share/datasets/fashion-mnist"
    if all((folder / f).is_file() for pair in FILES.values() for f in pair):
        return folder
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        subprocess.run(["apt-get", "download", PACKAGE], cwd=tmp, check=True, capture_output=True)
        deb = next(Path(tmp).glob(f"{PACKAGE}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(CACHE)], check=True)
    return folder


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (N, 1, 28, 28) normalised, labels int64) of 'train' (60,000) or 'test' (10,000)."""
    images, labels = (_idx(_folder() / f) for f in FILES[split])
    x = ((images.astype(np.float32) / 255.0 - MEAN) / STD)[:, None]
    return x, labels.astype(np.int64)


if __name__ == "__main__":
    for split in FILES:
        x, y = load(split)
        print(split, x.shape, y.shape, np.bincount(y).tolist(), file=sys.stdout)
