"""A trained model and everything needed to read captchas with it, as evaluation and serving use it.

A model directory holds `model.keras` and `meta.json`; the metadata (charset, lengths, image size) is
written by training and read here, so serving can never disagree with training about them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from captcha_mlops.labels import Codec
from captcha_mlops.model import GreedyCtcDecode
from captcha_mlops.preprocess import to_array

MODEL_FILE = "model.keras"
META_FILE = "meta.json"


@dataclasses.dataclass(frozen=True)
class ModelMeta:
    """What serving must know about a model; stored beside it (and in MLflow and the BentoML store)."""

    captcha_type: str
    charset: str
    min_length: int
    max_length: int
    width: int
    height: int
    arch: str
    run_id: str = ""
    data_version: str = ""

    @property
    def codec(self) -> Codec:
        return Codec(self.charset, self.max_length)

    @classmethod
    def read(cls, model_dir: str | Path) -> ModelMeta:
        raw = json.loads((Path(model_dir) / META_FILE).read_text(encoding="utf-8"))
        raw.setdefault("captcha_type", raw.get("name"))  # models trained before the field's rename
        return cls(**{field.name: raw[field.name] for field in dataclasses.fields(cls) if field.name in raw})

    def write(self, model_dir: str | Path) -> None:
        text = json.dumps(dataclasses.asdict(self), indent=2, ensure_ascii=False)
        (Path(model_dir) / META_FILE).write_text(text + "\n", encoding="utf-8")


@dataclasses.dataclass(frozen=True)
class Reading:
    text: str
    confidences: list[float]
    valid: bool  # as many characters as the model's captchas have (min_length..max_length)


class Recognizer:
    def __init__(self, model: keras.Model, meta: ModelMeta) -> None:
        self.model = model
        self.meta = meta
        self.codec = meta.codec
        # One traced graph for every batch size: no retracing per request, so memory stays flat.
        spec = tf.TensorSpec((None, meta.height, meta.width, 1), tf.uint8)
        self._forward = tf.function(lambda batch: model(batch, training=False), input_signature=[spec])

    @classmethod
    def load(cls, model_dir: str | Path) -> Recognizer:
        model_dir = Path(model_dir)
        custom_objects = {"GreedyCtcDecode": GreedyCtcDecode}  # the `ctc` network's last layer
        model = keras.saving.load_model(model_dir / MODEL_FILE, compile=False, custom_objects=custom_objects)
        return cls(model, ModelMeta.read(model_dir))

    def prepare(self, image: Image.Image) -> np.ndarray:
        return to_array(image, self.meta.width, self.meta.height)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (n, height, width, 1) -> (n, max_length, num_classes)."""
        if len(batch) == 0:
            return np.zeros((0, self.meta.max_length, self.codec.num_classes), np.float32)
        return self._forward(tf.convert_to_tensor(batch, tf.uint8)).numpy()

    def read_arrays(self, batch: np.ndarray) -> list[Reading]:
        readings = []
        for probabilities in self.probabilities(batch):
            text, confidences = self.codec.decode(probabilities)
            valid = self.meta.min_length <= len(text) <= self.meta.max_length
            readings.append(Reading(text, confidences, valid))
        return readings

    def read_images(self, images: Sequence[Image.Image]) -> list[Reading]:
        if not images:
            return []
        return self.read_arrays(np.stack([self.prepare(image) for image in images]))
