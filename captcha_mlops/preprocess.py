"""The one preprocessing function: training, evaluation and serving all call `to_array`, so an image is
turned into model input the same way everywhere, whatever its size or mode."""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

# Images above this many pixels are refused before they are decoded (a decompression bomb guard): 2000x2000,
# far above any captcha. The service's CAPTCHA_MAX_PIXELS starts from it.
MAX_PIXELS = 4_000_000

ColorMode = Literal["grayscale", "rgb"]  # `data.color_mode`: what the network reads
CHANNELS: dict[str, int] = {"grayscale": 1, "rgb": 3}


class BadImage(ValueError):
    """The bytes are not an image we can read."""


def open_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode `data` into a loaded single-frame image, or raise BadImage saying why."""
    if not data:
        raise BadImage("empty file")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise BadImage(f"image is {width}x{height}: more than {max_pixels} pixels")
        image.seek(0)  # animated GIF/WebP: the first frame
        image.load()
    except BadImage:
        raise
    except UnidentifiedImageError:  # its message is the repr of our buffer: nothing a client can use
        raise BadImage("not a readable image (no image format Pillow knows)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise BadImage(f"not a readable image ({error})") from None
    return image


def flattened(image: Image.Image) -> Image.Image:
    """Any mode -> one Pillow converts to "L" and "RGB" as shown: transparent pixels become white, as on a web
    page, and 16-bit and float pixels are scaled to 8 bits."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = image.convert("F").point(lambda v: v / 256).convert("L")
    return image


def to_array(image: Image.Image, width: int, height: int, color_mode: ColorMode = "grayscale") -> np.ndarray:
    """Image of any size/mode -> uint8 (height, width, channels), the model's input: one channel of gray, or
    ("rgb") three of colour, for sites that tell overlapping glyphs apart by their colours.

    Scaling to [0, 1] is the model's first layer, so a batch of training images stays uint8 in memory.
    """
    pixels = flattened(image).convert("L" if color_mode == "grayscale" else "RGB")
    if pixels.size != (width, height):
        pixels = pixels.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(pixels, dtype=np.uint8).reshape(height, width, CHANNELS[color_mode])
