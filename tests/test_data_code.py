"""Labels, codec, preprocessing, synthesis: the code every stage and the service share."""

import io

import numpy as np
import pytest
from PIL import Image

from captcha_mlops.labels import Codec, collect_charset, label_from_name
from captcha_mlops.metrics import text_accuracies
from captcha_mlops.paths import main_checkout_root
from captcha_mlops.preprocess import BadImage, open_image, to_array
from captcha_mlops.synth import CaptchaFactory


@pytest.mark.parametrize(
    ("name", "label"),
    [("2e8j_17322d3d.png", "2e8j"), ("2e8j.jpg", "2e8j"), ("ab_c_d.png", "ab"), ("数字_1.png", "数字")],
)
def test_label_from_name(name: str, label: str) -> None:
    assert label_from_name(name) == label


def test_codec_round_trip_with_variable_length() -> None:
    codec = Codec("abc", max_length=4)
    encoded = codec.encode("cab")
    assert encoded.tolist() == [2, 0, 1, codec.pad]
    probabilities = np.eye(codec.num_classes)[encoded] * 0.9
    text, confidences = codec.decode(probabilities)
    assert text == "cab" and confidences == pytest.approx([0.9, 0.9, 0.9])
    with pytest.raises(ValueError, match="longer than max_length"):
        codec.encode("abcab")
    assert codec.unknown_chars("abz") == {"z"}


def test_collect_charset_is_sorted_unique() -> None:
    assert collect_charset(["ba", "c", "ab"]) == "abc"


def test_text_accuracies() -> None:
    assert text_accuracies(["abcd", "efgh"], ["abcd", "efgx"]) == (7 / 8, 1 / 2)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L", "CMYK", "1", "I;16"])
@pytest.mark.parametrize(("color_mode", "channels"), [("grayscale", 1), ("rgb", 3)])
def test_any_mode_and_size_becomes_model_input(mode: str, color_mode: str, channels: int) -> None:
    image = Image.new(mode, (37, 91))
    array = to_array(image, width=100, height=60, color_mode=color_mode)
    assert array.shape == (60, 100, channels) and array.dtype == np.uint8


@pytest.mark.parametrize("color_mode", ["grayscale", "rgb"])
def test_transparent_pixels_become_white(color_mode: str) -> None:
    assert to_array(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), 4, 4, color_mode).min() == 255


def test_rgb_keeps_the_colours_gray_makes_alike() -> None:
    """Pure red and the gray of its luminance: one pixel value in gray, told apart in colour (glyphs of
    different colours overlapping are what `data.color_mode: rgb` is for)."""
    red, its_gray = Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (76, 76, 76))
    assert (to_array(red, 4, 4) == to_array(its_gray, 4, 4)).all()
    assert to_array(red, 4, 4, "rgb")[0, 0].tolist() == [255, 0, 0]
    assert to_array(its_gray, 4, 4, "rgb")[0, 0].tolist() == [76, 76, 76]


def test_open_image_rejects_bad_bytes() -> None:
    with pytest.raises(BadImage, match="empty"):
        open_image(b"")
    with pytest.raises(BadImage, match=r"^not a readable image \(no image format Pillow knows\)$"):
        open_image(b"definitely not a png")
    buffer = io.BytesIO()
    Image.new("L", (300, 300)).save(buffer, "PNG")
    with pytest.raises(BadImage, match="more than 1000 pixels"):
        open_image(buffer.getvalue(), max_pixels=1000)
    with pytest.raises(BadImage, match="not a readable image"):
        open_image(buffer.getvalue()[:60])  # truncated


def test_synthesis_is_deterministic_per_seed_and_index() -> None:
    factory = CaptchaFactory("0123456789", 4, 6, 120, 50)
    label, image = factory.sample(seed=1, index=7)
    again_label, again = factory.sample(seed=1, index=7)
    assert label == again_label and image.tobytes() == again.tobytes()
    assert 4 <= len(label) <= 6 and set(label) <= set("0123456789")
    assert image.size == (120, 50)
    assert factory.sample(seed=2, index=7)[1].tobytes() != image.tobytes()


def test_experiment_copies_resolve_to_the_main_checkout(tmp_path) -> None:
    copy = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    assert main_checkout_root(copy) == tmp_path / "repo"
    assert main_checkout_root(tmp_path / "repo") == tmp_path / "repo"
