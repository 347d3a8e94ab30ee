"""benchmarks/stability.py's everyday changes of an image: each does what its row says, seeded."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import stability  # noqa: E402


@pytest.fixture
def pixels() -> np.ndarray:
    y, x = np.mgrid[0:48, 0:64]
    disc = (y - 20) ** 2 + (x - 30) ** 2 < 120
    smooth = np.stack([2 * x + 40, 3 * y + 60, 180 - x - y + 40 * disc], axis=2)  # gradients and a disc
    return smooth.astype(np.uint8)


def test_the_shift_moves_every_column_one_pixel_left_and_repeats_the_last(pixels: np.ndarray) -> None:
    moved = stability.changed(pixels, "shift", np.random.default_rng(0))
    assert moved.shape == pixels.shape and moved.dtype == np.uint8
    np.testing.assert_array_equal(moved[:, :-1], pixels[:, 1:])
    np.testing.assert_array_equal(moved[:, -1], pixels[:, -1])


def test_the_level_change_moves_a_tenth_of_the_pixels_by_one_grey_level_in_every_channel(pixels: np.ndarray) -> None:
    moved = stability.changed(pixels, "level", np.random.default_rng(0))
    step = moved.astype(np.int16) - pixels
    assert set(np.unique(step)) <= {-1, 0, 1}
    touched = np.any(step != 0, axis=2)
    assert abs(touched.mean() - stability.LEVEL_SHARE) < 0.02  # 3,072 pixels: about 4 standard deviations
    assert np.all(step == step[..., :1])  # a grey level: the same step in every channel
    again = stability.changed(pixels, "level", np.random.default_rng(0))
    np.testing.assert_array_equal(moved, again)


def test_the_jpeg_round_trip_keeps_the_image_close_but_not_equal(pixels: np.ndarray) -> None:
    moved = stability.changed(pixels, "jpeg95", np.random.default_rng(0))
    assert moved.shape == pixels.shape and moved.dtype == np.uint8
    diff = np.abs(moved.astype(np.int16) - pixels)
    assert 0 < diff.mean() < 3.0, diff.mean()


def test_an_unknown_change_is_refused(pixels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown change 'blur'"):
        stability.changed(pixels, "blur", np.random.default_rng(0))


def test_a_folder_is_changed_image_by_image_under_the_same_names(tmp_path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    source = tmp_path / "in"
    source.mkdir()
    Image.fromarray(pixels).save(source / "a.png")
    Image.fromarray(pixels[::-1].copy()).save(source / "b.jpg", quality=100)
    target = stability.changed_folder(source, tmp_path / "out", "shift")
    assert sorted(p.name for p in target.iterdir()) == ["a.png", "b.png"]
    with Image.open(target / "a.png") as image:
        np.testing.assert_array_equal(np.asarray(image)[:, :-1], pixels[:, 1:])
    assert sorted(p.name for p in source.iterdir()) == ["a.png", "b.jpg"]  # the inputs are left as they were
