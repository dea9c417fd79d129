"""The networks. Both map a (height, width, 1) uint8 image to (max_length, num_classes) per-position
character probabilities, so training, evaluation and serving treat them alike."""

from __future__ import annotations

import keras
from keras import layers

from captcha_mlops.params import ModelParams


def build_model(params: ModelParams, height: int, width: int, max_length: int, num_classes: int) -> keras.Model:
    if params.arch == "seed":
        return seed_model(height, width, max_length, num_classes)
    return compact_model(params.filters, params.dropout, height, width, max_length, num_classes)


def compact_model(
    filters: list[int], dropout: float, height: int, width: int, max_length: int, num_classes: int
) -> keras.Model:
    """Conv blocks, each halving the image, then one softmax per character position.

    Four blocks turn 60x100 into a 3x6 grid whose cells each see about a third of a character; the
    position heads read the whole flattened grid, so each finds "its" character wherever the captcha
    library placed it. Batch norm follows every conv but the first: at full resolution it would cost
    half of the CPU training time for little gain. Batch-norm momentum is 0.9, not Keras' 0.99: with
    0.99 the moving statistics lag the weights so far in a 10-epoch run that validation accuracy stays at
    chance while training accuracy climbs.
    """
    inputs = keras.Input(shape=(height, width, 1), name="image", dtype="uint8")
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(filters[0], 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    for channels in filters[1:]:
        x = layers.Conv2D(channels, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(max_length * num_classes)(x)
    x = layers.Reshape((max_length, num_classes))(x)
    outputs = layers.Softmax(name="chars")(x)
    return keras.Model(inputs, outputs, name="compact")


def seed_model(height: int, width: int, max_length: int, num_classes: int) -> keras.Model:
    """The original cnn_captcha network: 3 x [conv3x3, ReLU, maxpool, dropout] -> FC 1024 -> sigmoid.

    Kept so `dvc exp run -S model.arch=seed` reproduces the baseline; trained with binary
    cross-entropy on one-hot targets and Adam 1e-4 as the original was (see train.compile_model).
    """
    inputs = keras.Input(shape=(height, width, 1), name="image", dtype="uint8")
    x = layers.Rescaling(1.0 / 255)(inputs)
    for channels in (32, 64, 128):
        x = layers.Conv2D(channels, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Dropout(0.25)(x)  # the seed's keep_prob 0.75
    x = layers.Flatten()(x)
    x = layers.Dense(1024, activation="relu")(x)
    x = layers.Dropout(0.25)(x)
    x = layers.Dense(max_length * num_classes, activation="sigmoid")(x)
    outputs = layers.Reshape((max_length, num_classes), name="chars")(x)
    return keras.Model(inputs, outputs, name="seed")
