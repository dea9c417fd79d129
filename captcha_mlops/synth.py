"""Captcha synthesis with the `captcha` library, reproducible for a seed.

`captcha` draws its randomness from the `secrets` module, which cannot be seeded; `seeded_captcha`
lends it a seeded generator for the duration of one image, so sample i of seed s is always the same
image whatever the number of worker processes.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import captcha.image
import matplotlib
from captcha.image import DEFAULT_FONTS, ImageCaptcha
from PIL import Image

_MATPLOTLIB_FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
PRETRAIN_FONTS = (
    *DEFAULT_FONTS,
    *(str(_MATPLOTLIB_FONTS / f"DejaVuSans{face}.ttf") for face in ("", "-Bold", "-Oblique", "-BoldOblique")),
    *(str(_MATPLOTLIB_FONTS / f"DejaVuSansMono{face}.ttf") for face in ("", "-Bold", "-Oblique", "-BoldOblique")),
)
"""Pretraining's fonts when `pretrain.fonts` is empty: the `captcha` library's one and the DejaVu Sans
families that ship with matplotlib (a dependency), upright and slanted, regular and bold. A site's glyphs
are seldom the library's; a network that has seen several shapes of each character adapts to new ones
from fewer labels."""


class _SeededSecrets:
    """The subset of the `secrets` API that captcha.image calls, backed by random.Random."""

    def __init__(self, rng: random.Random) -> None:
        self.randbelow = lambda n: rng.randrange(n)
        self.randbits = rng.getrandbits
        self.choice = rng.choice


@contextlib.contextmanager
def seeded_captcha(rng: random.Random) -> Iterator[None]:
    original = captcha.image.secrets
    captcha.image.secrets = _SeededSecrets(rng)  # type: ignore[assignment]
    try:
        yield
    finally:
        captcha.image.secrets = original


class CaptchaFactory:
    """Draws random labels from a charset and renders them as captcha images."""

    def __init__(
        self,
        charset: str,
        min_length: int,
        max_length: int,
        width: int,
        height: int,
        fonts: Sequence[str] = (),
    ) -> None:
        self.charset = charset
        self.lengths = range(min_length, max_length + 1)
        self.renderer = ImageCaptcha(width=width, height=height, fonts=list(fonts) or None)

    def random_label(self, rng: random.Random | None = None) -> str:
        rng = rng or random.SystemRandom()
        return "".join(rng.choice(self.charset) for _ in range(rng.choice(self.lengths)))

    def render(self, label: str) -> Image.Image:
        return self.renderer.generate_image(label)

    def sample(self, seed: int, index: int) -> tuple[str, Image.Image]:
        """Sample `index` of the stream for `seed`: same label and pixels on every machine and run."""
        rng = random.Random(f"{seed}:{index}")
        label = self.random_label(rng)
        with seeded_captcha(rng):
            return label, self.render(label)


@functools.cache
def factory_for(
    charset: str, min_length: int, max_length: int, width: int, height: int, fonts: tuple[str, ...] = ()
) -> CaptchaFactory:
    """One renderer per process and shape: loading fonts costs more than drawing a captcha."""
    return CaptchaFactory(charset, min_length, max_length, width, height, fonts)
