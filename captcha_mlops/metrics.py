"""The two headline numbers: character accuracy (share of characters read right) and image accuracy
(share of captchas read right as a whole). Keras versions for training, NumPy versions for evaluation."""

from __future__ import annotations

import numpy as np
from keras import ops


def char_accuracy(y_true, y_pred):
    """Keras metric on one-hot targets: right characters / true characters (PAD positions excluded)."""
    truth, guess = ops.argmax(y_true, axis=-1), ops.argmax(y_pred, axis=-1)
    is_char = ops.cast(truth != ops.shape(y_true)[-1] - 1, "float32")
    right = ops.cast(truth == guess, "float32") * is_char
    return ops.sum(right) / ops.maximum(ops.sum(is_char), 1.0)


def image_accuracy(y_true, y_pred):
    """Keras metric on one-hot targets: a captcha is right when every position, PAD included, is."""
    right = ops.all(ops.argmax(y_true, axis=-1) == ops.argmax(y_pred, axis=-1), axis=-1)
    return ops.mean(ops.cast(right, "float32"))


def text_accuracies(truths: list[str], guesses: list[str]) -> tuple[float, float]:
    """(char accuracy, image accuracy) of read texts against labels, position by position."""
    if not truths:
        return 0.0, 0.0
    chars = sum(len(t) for t in truths)
    right_chars = sum(a == b for t, g in zip(truths, guesses) for a, b in zip(t, g))
    right_images = sum(t == g for t, g in zip(truths, guesses))
    return right_chars / max(chars, 1), right_images / len(truths)


def latency_summary(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1000.0
    return {
        "mean_ms": float(values.mean()),
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
    }
