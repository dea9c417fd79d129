"""Labels live in file names: `label_serial.ext` (what generate writes) or `label.ext`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np


def label_from_name(path: str | Path) -> str:
    """`2e8j_17322d3d.png` -> `2e8j`; `2e8j.png` -> `2e8j`. Only the first `_` separates."""
    stem = Path(path).stem
    return stem.split("_", 1)[0]


class Codec:
    """Maps a label to one class index per position and back.

    Every position has len(charset) + 1 classes: the extra one, PAD, marks "no character here", which is
    how a fixed-size output reads variable-length captchas (e.g. 4 to 6 characters).
    """

    def __init__(self, charset: str, max_length: int) -> None:
        self.charset = charset
        self.max_length = max_length
        self.pad = len(charset)
        self.num_classes = len(charset) + 1
        self._index = {char: i for i, char in enumerate(charset)}

    def unknown_chars(self, label: str) -> set[str]:
        return set(label) - self._index.keys()

    def encode(self, label: str) -> np.ndarray:
        if len(label) > self.max_length:
            raise ValueError(f"label {label!r} is longer than max_length={self.max_length}")
        indices = [self._index[char] for char in label]
        return np.array(indices + [self.pad] * (self.max_length - len(label)), dtype=np.int32)

    def encode_many(self, labels: Iterable[str]) -> np.ndarray:
        return np.stack([self.encode(label) for label in labels]).astype(np.int32)

    def decode(self, probabilities: np.ndarray) -> tuple[str, list[float]]:
        """(max_length, num_classes) probabilities -> text and the confidence of each character read."""
        best = probabilities.argmax(axis=-1)
        chars, confidences = [], []
        for position, index in enumerate(best):
            if index != self.pad:
                chars.append(self.charset[index])
                confidences.append(float(probabilities[position, index]))
        return "".join(chars), confidences


def collect_charset(labels: Iterable[str]) -> str:
    """The sorted set of characters used by `labels` (the seed's labels.json, without its quoting bug)."""
    return "".join(sorted(set("".join(labels))))
