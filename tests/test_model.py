"""The networks: every architecture answers in the same per-position form, and `ctc` decodes and trains."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from captcha_mlops.labels import Codec
from captcha_mlops.model import build_model, column_pixels_for, ctc_loss, greedy_ctc_decode, training_model
from captcha_mlops.model_meta import ModelMeta
from captcha_mlops.params import ModelParams, TrainParams
from captcha_mlops.preprocess import to_array
from captcha_mlops.recognizer import Recognizer
from captcha_mlops.synth import CaptchaFactory
from captcha_mlops.training import compile_model, make_dataset

CODEC = Codec("abc", max_length=3)  # classes a, b, c and PAD (CTC's blank)
BLANK = CODEC.pad


def step_scores(columns: list[int], score: float = 0.9) -> np.ndarray:
    """One batch item whose column i scores class columns[i] with `score`."""
    scores = np.full((1, len(columns), CODEC.num_classes), (1 - score) / (CODEC.num_classes - 1), np.float32)
    scores[0, np.arange(len(columns)), columns] = score
    return scores


@pytest.mark.parametrize(
    ("columns", "text"),
    [
        ([0, 0, BLANK, 1, 1, BLANK], "ab"),  # repeats collapse
        ([0, BLANK, 0, BLANK, 2, 2], "aac"),  # a blank separates two equal characters
        ([BLANK, BLANK, BLANK, BLANK], ""),
        ([0, 1, 2, 0, 1, 2], "abc"),  # more than max_length: the first ones are kept
    ],
)
def test_greedy_ctc_decode_gives_the_per_position_form(columns: list[int], text: str) -> None:
    decoded = keras.ops.convert_to_numpy(greedy_ctc_decode(step_scores(columns), CODEC.max_length))
    assert decoded.shape == (1, CODEC.max_length, CODEC.num_classes)
    read, confidences = CODEC.decode(decoded[0])
    assert read == text
    assert confidences == pytest.approx([0.9] * len(text))


def test_ctc_loss_is_low_for_the_right_reading_and_high_for_a_wrong_one() -> None:
    targets = np.eye(CODEC.num_classes, dtype=np.float32)[[CODEC.encode("ab")]]

    def loss(columns: list[int]) -> float:
        logits = np.log(step_scores(columns, score=0.97))
        return float(keras.ops.convert_to_numpy(ctc_loss(targets, logits))[0])

    assert loss([0, BLANK, 1, BLANK, BLANK]) < 0.5 < 5 < loss([1, BLANK, 0, BLANK, BLANK])


def test_narrow_captchas_get_narrower_columns_to_have_one_per_character_and_blank() -> None:
    # 80 pixels give 10 columns of 8 for 6 characters, CTC needs 11: columns of 4, 20 of them.
    assert column_pixels_for(ModelParams(), width=80, max_length=6) == 4
    model = build_model(ModelParams(), height=30, width=80, max_length=6, num_classes=37)
    assert model.get_layer("step_logits").output.shape == (None, 20, 37)
    assert column_pixels_for(ModelParams(), width=100, max_length=4) == 8  # enough: as model.column_pixels says
    with pytest.raises(ValueError, match=r"10 pixels are too narrow for 6 characters.*set data\.width"):
        build_model(ModelParams(), height=30, width=10, max_length=6, num_classes=37)


@pytest.mark.parametrize("arch", ["compact", "ctc"])
def test_an_image_too_small_to_halve_says_which_size_it_needs(arch: str) -> None:
    with pytest.raises(ValueError, match=r"64x15 pixels.*needs at least \d+x16; set data\.width and data\.height"):
        build_model(ModelParams(arch=arch), height=15, width=64, max_length=4, num_classes=37)


@pytest.mark.parametrize(("column_pixels", "columns"), [(16, 10), (8, 20), (4, 40)])
def test_ctc_reads_one_column_per_column_pixels_of_width(column_pixels: int, columns: int) -> None:
    model = build_model(ModelParams(column_pixels=column_pixels), height=60, width=160, max_length=5, num_classes=27)
    assert model.get_layer("step_logits").output.shape == (None, columns, 27)
    assert model.output.shape == (None, 5, 27)


def test_ctc_column_pixels_needs_as_many_conv_blocks() -> None:
    with pytest.raises(ValueError, match="3 conv blocks can't make 16-pixel columns"):
        build_model(ModelParams(filters=[8, 16, 24], column_pixels=16), 60, 400, 4, 11)


@pytest.mark.parametrize("arch", ["compact", "ctc"])
def test_convs_per_block_deepens_the_middle_blocks_only(arch: str) -> None:
    def conv_channels(convs_per_block: int) -> list[int]:
        params = ModelParams(arch=arch, filters=[8, 16, 24, 32], convs_per_block=convs_per_block)
        model = build_model(params, 40, 100, 5, 11)
        return [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]

    assert conv_channels(1) == [8, 16, 24, 32]
    assert conv_channels(2) == [8, 16, 16, 24, 24, 32]


@pytest.mark.parametrize("arch", ["compact", "ctc"])
def test_first_block_convs_deepens_the_first_block_only(arch: str) -> None:
    params = ModelParams(arch=arch, filters=[8, 16, 24, 32], convs_per_block=1, first_block_convs=2)
    model = build_model(params, 40, 100, 5, 11)
    assert [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)] == [8, 8, 16, 24, 32]
    # No batch norm at full resolution, where it costs the most: the first comes after the first pooling.
    kinds = [type(layer) for layer in model.layers]
    assert kinds.index(keras.layers.BatchNormalization) > kinds.index(keras.layers.MaxPooling2D)


@pytest.mark.parametrize("rnn_layers", [1, 2])
def test_ctc_stacks_rnn_layers_bidirectional_grus_each_reading_the_one_below(rnn_layers: int) -> None:
    model = build_model(ModelParams(filters=[8, 16, 24], rnn_units=12, rnn_layers=rnn_layers), 32, 64, 4, 11)
    grus = [layer for layer in model.layers if isinstance(layer, keras.layers.Bidirectional)]
    assert len(grus) == rnn_layers
    assert all(gru.output.shape == (None, 8, 24) for gru in grus)  # 8 columns, 12 units each way


@pytest.mark.parametrize("arch", ["compact", "ctc", "seed"])
def test_every_arch_trains_saves_and_reads_in_the_same_form(arch: str, tmp_path: Path) -> None:
    codec = Codec("0123456789", max_length=5)
    factory = CaptchaFactory(codec.charset, 4, 5, width=100, height=40)
    samples = [factory.sample(seed=1, index=i) for i in range(64)]
    images = np.stack([np.asarray(image.convert("L"))[..., None] for _, image in samples])
    targets = codec.encode_many(label for label, _ in samples)

    model = build_model(ModelParams(arch=arch), 40, 100, codec.max_length, codec.num_classes)
    trained = training_model(model)
    compile_model(trained, TrainParams(steps=2), steps=2, arch=arch)
    dataset = make_dataset(images, targets, codec.num_classes, 32, training=True, seed=0)
    history = trained.fit(dataset, steps_per_epoch=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert {"char_accuracy", "image_accuracy"} <= history.history.keys()

    model.save(tmp_path / "model.keras")
    ModelMeta("t", codec.charset, 4, 5, 100, 40, arch).write(tmp_path)
    readings = Recognizer.load(tmp_path).read_arrays(images[:3])
    assert [reading.text for reading in readings] == [codec.decode(p)[0] for p in model.predict(images[:3], verbose=0)]
    for reading in readings:
        assert set(reading.text) <= set(codec.charset) and len(reading.text) <= codec.max_length


def test_a_reading_of_the_wrong_length_is_marked_invalid(tmp_path: Path) -> None:
    """A 4-character model that reads nothing on a blank image answers "", and says it is no valid reading."""
    codec = Codec("0123456789", max_length=4)
    inputs = keras.Input((20, 40, 1), dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(0.0)(inputs))
    bias = np.tile(np.eye(codec.num_classes)[codec.pad] * 10, codec.max_length)  # PAD everywhere
    x = keras.layers.Dense(codec.max_length * codec.num_classes, bias_initializer=keras.initializers.Constant(bias))(x)
    outputs = keras.layers.Softmax()(keras.layers.Reshape((codec.max_length, codec.num_classes))(x))
    keras.Model(inputs, outputs).save(tmp_path / "model.keras")
    ModelMeta("t", codec.charset, 4, 4, 40, 20, "compact").write(tmp_path)

    (reading,) = Recognizer.load(tmp_path).read_arrays(np.zeros((1, 20, 40, 1), np.uint8))

    assert reading.text == "" and not reading.valid


def test_a_colour_model_reads_colour_images_as_it_trained_on_them(tmp_path: Path) -> None:
    """data.color_mode: rgb trains a network on three channels; its meta.json says so, and the recognizer
    brings any image to them with the shared preprocessing."""
    codec = Codec("0123456789", max_length=5)
    factory = CaptchaFactory(codec.charset, 4, 5, width=100, height=40)
    samples = [factory.sample(seed=1, index=i) for i in range(32)]
    images = np.stack([to_array(image, 100, 40, "rgb") for _, image in samples])
    model = build_model(ModelParams(filters=[8, 8, 8]), 40, 100, codec.max_length, codec.num_classes, channels=3)
    assert model.input_shape == (None, 40, 100, 3)
    trained = training_model(model)
    compile_model(trained, TrainParams(steps=2), steps=2, arch="ctc")
    trained.fit(
        make_dataset(images, codec.encode_many(t for t, _ in samples), codec.num_classes, 16, training=True, seed=0),
        steps_per_epoch=2,
        verbose=0,
    )

    model.save(tmp_path / "model.keras")
    ModelMeta("t", codec.charset, 4, 5, 100, 40, "ctc", color_mode="rgb").write(tmp_path)
    recognizer = Recognizer.load(tmp_path)
    assert recognizer.meta.channels == 3
    readings = recognizer.read_images([image.convert("P") for _, image in samples[:3]])  # any mode, read in colour
    expected = model.predict(
        np.stack([to_array(image.convert("P"), 100, 40, "rgb") for _, image in samples[:3]]), verbose=0
    )
    assert [reading.text for reading in readings] == [codec.decode(p)[0] for p in expected]


def test_meta_of_a_model_from_before_color_mode_reads_gray(tmp_path: Path) -> None:
    ModelMeta("t", "01", 4, 4, 40, 20, "ctc").write(tmp_path)
    raw = json.loads((tmp_path / "meta.json").read_text())
    del raw["color_mode"]
    (tmp_path / "meta.json").write_text(json.dumps(raw))
    assert ModelMeta.read(tmp_path).color_mode == "grayscale"
    with pytest.raises(ValueError, match="color_mode: 'cmyk', expected one of grayscale, rgb"):
        ModelMeta("t", "01", 4, 4, 40, 20, "ctc", color_mode="cmyk")


def test_meta_written_before_the_captcha_type_rename_still_reads(tmp_path: Path) -> None:
    meta = ModelMeta("digits5", "0123456789", 5, 5, 120, 50, "ctc")
    meta.write(tmp_path)
    old = (tmp_path / "meta.json").read_text().replace('"captcha_type"', '"name"')
    (tmp_path / "meta.json").write_text(old)
    assert ModelMeta.read(tmp_path) == meta
