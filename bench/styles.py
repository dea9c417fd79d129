"""Own-data captcha styles for the benchmarks: drawn by hand with Pillow, unlike the `captcha` library's.

Each stands for a real site a user might face; all differ from the library the pipeline pretrains on, and
from each other, in size, length, charset, fonts, colours and noise:

- `speckle5`: 200x50, 5 characters of 23456789A-Z (no I/O), dark glyphs in two fonts rotated ±30° on a light
  speckled background, crossing lines, blur, JPEG.
- `overlap6`: 160x60, 4 to 6 characters of lowercase letters and digits without look-alikes, light serif and
  italic glyphs that overlap their neighbours on a dark gradient, a sine warp, arcs, PNG.
- `noise6`: 180x50, 6 characters of digits and mixed-case letters (case counts; no letter whose two cases
  differ only in size), dark sans glyphs of a colour each on heavy coloured dot noise, lines crossing them,
  one of them in a glyph's own colour, GIF.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import matplotlib
import numpy as np
from captcha.image import DEFAULT_FONTS
from PIL import Image, ImageDraw, ImageFilter, ImageFont

MATPLOTLIB_FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"


class Drawer(Protocol):
    """Draws a captcha of `label`; with `glyph_masks`, appends each glyph's coverage to it as well."""

    def __call__(self, label: str, rng: random.Random, glyph_masks: list[Image.Image] | None = None) -> Image.Image: ...


@dataclasses.dataclass(frozen=True)
class Drawing:
    label: str
    image: Image.Image
    save_options: dict
    glyph_masks: list[Image.Image] | None  # each glyph's coverage as drawn (0-255), first drawn first


@dataclasses.dataclass(frozen=True)
class Style:
    name: str
    charset: str
    min_length: int
    max_length: int
    width: int
    height: int
    suffix: str
    draw: Drawer

    def label(self, rng: random.Random) -> str:
        return "".join(rng.choice(self.charset) for _ in range(rng.randint(self.min_length, self.max_length)))

    def drawings(self, count: int, seed: int, glyph_masks: bool = False) -> Iterator[Drawing]:
        """`count` captchas, the same for the same seed (the masks change nothing drawn)."""
        rng = random.Random(f"{self.name}:{seed}")
        for _ in range(count):
            label = self.label(rng)
            masks: list[Image.Image] | None = [] if glyph_masks else None
            image = self.draw(label, rng, masks)
            save_options = {"quality": rng.randint(60, 90)} if self.suffix == "jpg" else {}
            yield Drawing(label, image, save_options, masks)

    def write(self, folder: Path, count: int, seed: int) -> list[Path]:
        """`count` labelled images `label_serial.suffix` in `folder`, the same for the same seed."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, drawing in enumerate(self.drawings(count, seed)):
            path = folder / f"{drawing.label}_{seed}-{index:05d}.{self.suffix}"
            drawing.image.save(path, **drawing.save_options)
            paths.append(path)
        return paths


def visible_shares(glyph_masks: list[Image.Image]) -> list[float]:
    """For each glyph, the share of its ink (coverage over half) that no glyph drawn after it covers."""
    ink = np.stack([np.asarray(mask) > 127 for mask in glyph_masks])
    return [share_outside(glyph, ink[index + 1 :].any(axis=0)) for index, glyph in enumerate(ink)]


def apart_shares(glyph_masks: list[Image.Image]) -> list[float]:
    """For each glyph, the share of its ink that neither touches nor lies under or over another glyph's ink:
    the strokes that can't be taken for a neighbour's."""
    ink = np.stack([np.asarray(mask) > 127 for mask in glyph_masks])
    return [share_outside(glyph, grown(np.delete(ink, index, axis=0).any(axis=0))) for index, glyph in enumerate(ink)]


def share_outside(glyph: np.ndarray, region: np.ndarray) -> float:
    return float(1 - (glyph & region).sum() / max(glyph.sum(), 1))


def grown(ink: np.ndarray) -> np.ndarray:
    """`ink` and the pixels next to it (their 8 neighbours)."""
    height, width = ink.shape
    padded = np.pad(ink, 1)
    return np.logical_or.reduce([padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)])


def draw_speckle5(label: str, rng: random.Random, glyph_masks: list[Image.Image] | None = None) -> Image.Image:
    width, height = 200, 50
    image = Image.new("RGB", (width, height), tuple(rng.randint(200, 255) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(150, 300)):  # speckle
        xy = (rng.randrange(width), rng.randrange(height))
        draw.point(xy, fill=tuple(rng.randint(100, 220) for _ in range(3)))
    step = (width - 20) / len(label)
    for index, char in enumerate(label):
        size = rng.randint(28, 36)
        font = rng.choice([ImageFont.truetype(DEFAULT_FONTS[0], size), ImageFont.load_default(size)])
        glyph = Image.new("RGBA", (48, 52), (0, 0, 0, 0))
        ImageDraw.Draw(glyph).text((8, 2), char, font=font, fill=(*[rng.randint(0, 110) for _ in range(3)], 255))
        glyph = glyph.rotate(rng.uniform(-30, 30), resample=Image.Resampling.BICUBIC)
        corner = (int(10 + index * step + rng.uniform(-4, 4)), rng.randint(-6, 2))
        image.paste(glyph, corner, glyph)
        if glyph_masks is not None:
            glyph_masks.append(coverage(glyph, corner, image.size))
    for _ in range(rng.randint(2, 4)):  # interference lines crossing the text
        points = [(0, rng.randrange(height)), (width // 2, rng.randrange(height)), (width, rng.randrange(height))]
        draw.line(points, fill=tuple(rng.randint(40, 160) for _ in range(3)), width=rng.randint(1, 2))
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.8)))


OVERLAP6_FONTS = ("DejaVuSerif-Bold.ttf", "DejaVuSerif-BoldItalic.ttf", "STIXGeneralBol.ttf", "cmb10.ttf")


def draw_overlap6(label: str, rng: random.Random, glyph_masks: list[Image.Image] | None = None) -> Image.Image:
    """An overlap6 captcha of `label`; with `glyph_masks`, appends each glyph's coverage (its alpha, placed and
    warped as drawn, 0-255) to it, so bench/hard_images.py can tell how much of a glyph its neighbours hide."""
    width, height = 160, 60
    top, bottom = [tuple(rng.randint(10, 90) for _ in range(3)) for _ in range(2)]
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for y in range(height):  # vertical gradient
        t = y / (height - 1)
        draw.line([(0, y), (width, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom)))
    font_file = str(MATPLOTLIB_FONTS / rng.choice(OVERLAP6_FONTS))
    text = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    placed = []
    x = rng.uniform(4, 14)
    advance = (width - 2 * x) / len(label)
    for char in label:
        font = ImageFont.truetype(font_file, rng.randint(30, 38))
        glyph = Image.new("RGBA", (50, 60), (0, 0, 0, 0))
        colour = (*[rng.randint(170, 255) for _ in range(3)], 255)
        ImageDraw.Draw(glyph).text((10, 4), char, font=font, fill=colour)
        glyph = glyph.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BICUBIC)
        corner = (int(x) - 10, rng.randint(-2, 8))
        text.alpha_composite(glyph, corner)
        placed.append((glyph, corner))
        x += advance * rng.uniform(0.75, 0.95)  # less than a glyph's width: neighbours overlap
    phase, amplitude = rng.uniform(0, 2 * math.pi), rng.uniform(1.5, 3.5)
    warped = sine_warped(text, phase, amplitude)
    image.paste(warped, (0, 0), warped)
    if glyph_masks is not None:
        glyph_masks += [sine_warped(coverage(glyph, corner, text.size), phase, amplitude) for glyph, corner in placed]
    for _ in range(rng.randint(2, 3)):  # arcs through the text
        box = sorted(rng.randint(-40, width + 40) for _ in range(2))
        vertical = sorted(rng.randint(-20, height + 20) for _ in range(2))
        box = [box[0], vertical[0], box[1] + 20, vertical[1] + 20]
        draw.arc(box, rng.randint(0, 180), rng.randint(180, 360), fill=(200, 200, 200), width=rng.randint(1, 2))
    return image


NOISE6_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSans-Oblique.ttf")


def draw_noise6(label: str, rng: random.Random, glyph_masks: list[Image.Image] | None = None) -> Image.Image:
    """A noise6 captcha of `label`: what many real sites draw, a text barely above its noise."""
    width, height = 180, 50
    image = Image.new("RGB", (width, height), tuple(rng.randint(190, 255) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(width * height // 4):  # a quarter of the pixels, any colour: the heavy noise
        draw.point((rng.randrange(width), rng.randrange(height)), fill=tuple(rng.randint(0, 255) for _ in range(3)))
    colours = []
    step = (width - 16) / len(label)
    for index, char in enumerate(label):
        font = ImageFont.truetype(str(MATPLOTLIB_FONTS / rng.choice(NOISE6_FONTS)), rng.randint(26, 34))
        colour = (*[rng.randint(0, 120) for _ in range(3)], 255)
        colours.append(colour[:3])
        glyph = Image.new("RGBA", (44, 50), (0, 0, 0, 0))
        ImageDraw.Draw(glyph).text((8, 2), char, font=font, fill=colour)
        glyph = glyph.rotate(rng.uniform(-25, 25), resample=Image.Resampling.BICUBIC)
        corner = (math.floor(index * step + rng.uniform(-3, 3)), rng.randint(-6, 4))
        image.paste(glyph, corner, glyph)
        if glyph_masks is not None:
            glyph_masks.append(coverage(glyph, corner, image.size))
    line_colours = [rng.choice(colours)] + [
        tuple(rng.randint(0, 160) for _ in range(3)) for _ in range(rng.randint(2, 4))
    ]
    for colour in line_colours:  # the first in a glyph's colour: telling text from noise by colour fails
        points = [(x, rng.randrange(height)) for x in (0, width // 3, 2 * width // 3, width)]
        draw.line(points, fill=colour, width=rng.randint(1, 2))
    return image


def coverage(glyph: Image.Image, corner: tuple[int, int], size: tuple[int, int]) -> Image.Image:
    """An RGBA glyph's alpha, placed at `corner` on a blank canvas of `size`: where it was drawn."""
    canvas = Image.new("L", size)
    canvas.paste(glyph.getchannel("A"), corner)
    return canvas


def sine_warped(image: Image.Image, phase: float, amplitude: float) -> Image.Image:
    """`image` with each column shifted up or down along a sine wave."""
    warped = Image.new(image.mode, image.size)
    for column in range(image.width):
        shift = round(amplitude * math.sin(phase + column / 12))
        warped.paste(image.crop((column, 0, column + 1, image.height)), (column, shift))
    return warped


STYLES = {
    style.name: style
    for style in (
        Style("speckle5", "23456789ABCDEFGHJKLMNPQRSTUVWXYZ", 5, 5, 200, 50, "jpg", draw_speckle5),
        Style("overlap6", "abcdefhjkmnprstuvwxy345678", 4, 6, 160, 60, "png", draw_overlap6),
        Style("noise6", "23456789abdefghjmnqrtyABDEFGHJLMNQRTY", 6, 6, 180, 50, "gif", draw_noise6),
    )
}
