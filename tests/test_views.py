"""Reading each image in several views (`evaluate.views`): the copies, the vote, and the settings that carry it."""

import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from pydantic import ValidationError

from captcha_mlops.labels import Codec
from captcha_mlops.model_meta import VIEWS, ModelMeta
from captcha_mlops.params import EvaluateParams
from captcha_mlops.recognizer import Recognizer, majority, view_transforms, with_views

HEIGHT, WIDTH = 20, 100  # the horizontal views shift 0.02 * 100 = 2 whole pixels
DOT = (10, 50)


def dotted() -> np.ndarray:
    image = np.zeros((1, HEIGHT, WIDTH, 1), np.uint8)
    image[0, DOT[0], DOT[1]] = 255
    return image


def test_views_are_the_image_then_its_shifted_copies() -> None:
    views = np.concatenate(with_views(tf.constant(dotted()), view_transforms(WIDTH, HEIGHT, 2)))
    assert views.shape == (3, HEIGHT, WIDTH, 1)
    np.testing.assert_array_equal(views[0], dotted()[0])
    assert [tuple(np.argwhere(view[..., 0] == 255)[0]) for view in views] == [DOT, (10, 52), (10, 48)]


def test_every_view_keeps_the_image_in_the_frame() -> None:
    image = np.full((1, HEIGHT, WIDTH, 1), 200, np.uint8)
    views = np.concatenate(with_views(tf.constant(image), view_transforms(WIDTH, HEIGHT, len(VIEWS))))
    assert (views == 200).all()  # edges repeated, never a black border the network has not seen in training


def test_the_majority_wins_and_a_tie_keeps_the_image_s_reading() -> None:
    assert majority(["ab"]) == "ab"
    assert majority(["ab", "ax", "ax"]) == "ax"
    assert majority(["ab", "ax", "ay"]) == "ab"
    assert majority(["ab", "ax", "ax", "ab", "ay"]) == "ab"


def dot_reader(tmp_path: Path, codec: Codec) -> Path:
    """A model that reads "1111" where the dot is, "2222" anywhere else."""
    inputs = keras.Input((HEIGHT, WIDTH, 1), dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    classes = codec.num_classes
    kernel = np.zeros((HEIGHT * WIDTH, codec.max_length * classes), np.float32)
    bias = np.zeros(codec.max_length * classes, np.float32)
    for position in range(codec.max_length):
        kernel[DOT[0] * WIDTH + DOT[1], position * classes + codec.charset.index("1")] = 10.0
        bias[position * classes + codec.charset.index("2")] = 5.0
    initializers = {
        "kernel_initializer": keras.initializers.Constant(kernel),
        "bias_initializer": keras.initializers.Constant(bias),
    }
    x = keras.layers.Dense(codec.max_length * classes, **initializers)(x)
    outputs = keras.layers.Softmax()(keras.layers.Reshape((codec.max_length, classes))(x))
    keras.Model(inputs, outputs).save(tmp_path / "model.keras")
    ModelMeta("t", codec.charset, 4, 4, WIDTH, HEIGHT, "compact").write(tmp_path)
    return tmp_path


def test_a_recognizer_with_views_reads_what_most_views_read(tmp_path: Path) -> None:
    codec = Codec("0123456789", max_length=4)
    model_dir = dot_reader(tmp_path, codec)
    (alone,) = Recognizer.load(model_dir).read_arrays(dotted())
    (voted,) = Recognizer.load(model_dir, views=2).read_arrays(dotted())  # both copies shift the dot away
    assert (alone.text, alone.agreement) == ("1111", 1.0)
    assert (voted.text, voted.agreement, voted.valid) == ("2222", pytest.approx(2 / 3), True)
    other_classes = codec.num_classes - 1
    assert voted.confidences == pytest.approx([math.exp(5) / (math.exp(5) + other_classes)] * 4)  # a copy's


def test_only_an_unsure_reading_is_read_in_views(tmp_path: Path) -> None:
    """The dot's own reading, "1111", is 0.993 sure of each character: views_below 0.99 takes it as it is (its
    copies are not read), 0.999 reads the copies too, and they outvote it."""
    codec = Codec("0123456789", max_length=4)
    model_dir = dot_reader(tmp_path, codec)
    (sure,) = Recognizer.load(model_dir, views=2, views_below=0.99).read_arrays(dotted())
    (unsure,) = Recognizer.load(model_dir, views=2, views_below=0.999).read_arrays(dotted())
    assert min(sure.confidences) == pytest.approx(math.exp(10) / (math.exp(10) + math.exp(5) + codec.num_classes - 2))
    assert (sure.text, sure.agreement) == ("1111", 1.0)
    assert (unsure.text, unsure.agreement) == ("2222", pytest.approx(2 / 3))


def test_views_are_bounded_by_the_copies_there_are() -> None:
    assert EvaluateParams(views=len(VIEWS)).views == len(VIEWS)
    with pytest.raises(ValidationError):
        EvaluateParams(views=len(VIEWS) + 1)
    with pytest.raises(ValueError, match="views"):
        ModelMeta("t", "01", 4, 4, WIDTH, HEIGHT, "ctc", views=len(VIEWS) + 1)
    with pytest.raises(ValueError, match="views_below: 0, expected above 0"):
        ModelMeta("t", "01", 4, 4, WIDTH, HEIGHT, "ctc", views_below=0)
