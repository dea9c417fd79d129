"""Manifests (path,label CSV files written by verify_split) and loading their images for the model."""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from captcha_mlops.parallel import parallel_map
from captcha_mlops.paths import ROOT
from captcha_mlops.preprocess import CHANNELS, ColorMode, to_array


def write_manifest(path: Path, rows: list[tuple[Path, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "label"])
        writer.writerows((str(p.relative_to(ROOT)), label) for p, label in rows)


def read_manifest(path: Path) -> list[tuple[Path, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return [(ROOT / row["path"], row["label"]) for row in csv.DictReader(file)]


class ImageFormat(Protocol):
    """What the shared preprocessing needs to know: `data.*` params in training, a model's meta.json in serving."""

    width: int
    height: int
    color_mode: ColorMode


def _load_one(path: Path, form: ImageFormat) -> np.ndarray:
    with Image.open(path) as image:
        return to_array(image, form.width, form.height, form.color_mode)


def load_images(paths: list[Path], form: ImageFormat, desc: str = "load") -> np.ndarray:
    """uint8 (n, height, width, channels): the images as the model sees them, via the shared preprocessing."""
    arrays = list(parallel_map(functools.partial(_load_one, form=form), paths, total=len(paths), desc=desc))
    return np.stack(arrays) if arrays else np.zeros((0, form.height, form.width, CHANNELS[form.color_mode]), np.uint8)
