"""A trained model and everything needed to read captchas with it, as evaluation and serving use it.

A model directory holds `model.keras` and `meta.json`; the metadata (charset, lengths, image size and colour) is
written by training and read here, so serving can never disagree with training about them. `views` is how
many shifted and turned copies of each image are read besides the image itself (the majority reading wins),
and `views_below` for which images: those whose own reading has a character less sure than it (1: every image).
`evaluate` sets both from `evaluate.*` and measures with them, `package` serves the champion as it was measured.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from captcha_mlops.model import GreedyCtcDecode
from captcha_mlops.model_meta import MODEL_FILE, VIEWS, ModelMeta
from captcha_mlops.preprocess import to_array


@dataclasses.dataclass(frozen=True)
class Reading:
    text: str
    confidences: list[float]
    valid: bool  # as many characters as the model's captchas have (min_length..max_length)
    agreement: float = 1.0  # the share of the views read (the image and, if it was unsure, its copies) that read `text`


def view_transforms(width: int, height: int, views: int) -> np.ndarray:
    """(views, 8) projective transforms (`keras.ops.image.affine_transform`'s) of the first `views` of VIEWS.

    Each maps a pixel of the copy to the pixel of the image it shows: shifted by (dx, dy), then turned by
    the angle about the centre.
    """
    transforms = []
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    for right, down, turn in VIEWS[:views]:
        cos, sin = math.cos(2 * math.pi * turn), math.sin(2 * math.pi * turn)
        source_x, source_y = centre_x + right * width, centre_y + down * height
        transforms.append(
            [
                cos,
                sin,
                centre_x - cos * source_x - sin * source_y,
                -sin,
                cos,
                centre_y + sin * source_x - cos * source_y,
                0,
                0,
            ]
        )
    return np.asarray(transforms, np.float32).reshape(views, 8)


def with_views(batch: tf.Tensor, transforms: np.ndarray) -> list[tf.Tensor]:
    """uint8 (n, height, width, channels) -> [the batch, its copy through each transform], each as uint8."""
    pixels = tf.cast(batch, tf.float32)
    copies = [
        keras.ops.image.affine_transform(pixels, transform, interpolation="bilinear", fill_mode="nearest")
        for transform in transforms
    ]
    return [batch, *(tf.cast(tf.round(copy), tf.uint8) for copy in copies)]


def majority(texts: Sequence[str]) -> str:
    """The text most views read; the first view's (the image as it is) where it ties for the most."""
    counts = Counter(texts)
    best, votes = counts.most_common(1)[0]
    return best if votes > counts[texts[0]] else texts[0]


def unsure(confidences: Sequence[float], views_below: float) -> bool:
    """Whether a reading with these `confidences` is checked in views: one of its characters is less sure than
    `views_below` (an empty reading is not sure at all), or `views_below` is 1, every reading."""
    return views_below >= 1 or min(confidences, default=0.0) < views_below


class Recognizer:
    def __init__(self, model: keras.Model, meta: ModelMeta) -> None:
        self.model = model
        self.meta = meta
        self.codec = meta.codec
        # One traced graph for every batch size: no retracing per request, so memory stays flat.
        spec = tf.TensorSpec((None, meta.height, meta.width, meta.channels), tf.uint8)
        self._read = tf.function(lambda batch: model(batch, training=False), input_signature=[spec])
        if meta.views:
            transforms = view_transforms(meta.width, meta.height, meta.views)
            # Each copy goes through the network as a batch of its own, not all in one `views` times larger
            # batch: the first conv's output alone is 1.2 MB an image (160x60, 32 channels, float32), 0.6 GB for
            # 8 copies of 64.
            self._read_copies = tf.function(
                lambda batch: tf.stack([model(copy, training=False) for copy in with_views(batch, transforms)[1:]]),
                input_signature=[spec],
            )

    @classmethod
    def load(cls, model_dir: str | Path, views: int | None = None, views_below: float | None = None) -> Recognizer:
        """The model of `model_dir`, reading views as its meta.json says, or `views` of the images whose own reading
        has a character less sure than `views_below`."""
        model_dir = Path(model_dir)
        custom_objects = {"GreedyCtcDecode": GreedyCtcDecode}  # the `ctc` network's last layer
        model = keras.saving.load_model(model_dir / MODEL_FILE, compile=False, custom_objects=custom_objects)
        meta = ModelMeta.read(model_dir)
        given = {"views": views, "views_below": views_below}
        return cls(
            model, dataclasses.replace(meta, **{key: value for key, value in given.items() if value is not None})
        )

    def prepare(self, image: Image.Image) -> np.ndarray:
        return to_array(image, self.meta.width, self.meta.height, self.meta.color_mode)

    def read_arrays(self, batch: np.ndarray) -> list[Reading]:
        """uint8 (n, height, width, channels) -> a reading of each image: its own, or, where that is unsure and the
        model reads views, the majority of its views'."""
        if len(batch) == 0:
            return []
        own = [self.codec.decode(scores) for scores in self._read(tf.convert_to_tensor(batch, tf.uint8)).numpy()]
        below = self.meta.views_below
        doubted = [i for i, (_, confidences) in enumerate(own) if unsure(confidences, below)] if self.meta.views else []
        copies: dict[int, list[tuple[str, list[float]]]] = {}
        if doubted:
            by_copy = self._read_copies(tf.convert_to_tensor(batch[doubted], tf.uint8)).numpy()  # (views, doubted, ...)
            for index, scores in zip(doubted, by_copy.swapaxes(0, 1)):
                copies[index] = [self.codec.decode(copy_scores) for copy_scores in scores]
        readings = []
        for index, reading in enumerate(own):
            decoded = [reading, *copies.get(index, [])]
            texts = [text for text, _ in decoded]
            text = majority(texts)
            confidences = decoded[texts.index(text)][1]
            valid = self.meta.min_length <= len(text) <= self.meta.max_length
            readings.append(Reading(text, confidences, valid, texts.count(text) / len(texts)))
        return readings

    def read_images(self, images: Sequence[Image.Image]) -> list[Reading]:
        if not images:
            return []
        return self.read_arrays(np.stack([self.prepare(image) for image in images]))
