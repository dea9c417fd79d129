"""What a model directory holds besides the network: the files' names and `meta.json`, the model's metadata.

Apart from recognizer.py so that what only reads or writes the metadata (`package`, `train`'s record) does not
import TensorFlow, a 10 s start on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from captcha_mlops.labels import Codec
from captcha_mlops.preprocess import CHANNELS, ColorMode

MODEL_FILE = "model.keras"
META_FILE = "meta.json"

# The copies read besides the image, in order: (right, down) in fractions of the width and height and a turn in
# fractions of a full turn; `views: n` reads the first n. Opposites come in pairs so that every even count is
# balanced. Half the reach of training's jitter (`training.augmentation`: 0.04, 0.06 and 0.015): the network has
# learned to read such copies as well as the image, and a misreading rarely survives them all.
VIEWS = (
    (0.02, 0.0, 0.0),
    (-0.02, 0.0, 0.0),
    (0.0, 0.03, 0.0),
    (0.0, -0.03, 0.0),
    (0.0, 0.0, 0.0075),
    (0.0, 0.0, -0.0075),
    (0.02, 0.03, 0.0),
    (-0.02, -0.03, 0.0),
)


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
    views: int = 0
    views_below: float = 1.0  # views only for images whose own reading has a character less sure (1: every image)
    color_mode: ColorMode = "grayscale"  # models trained before data.color_mode read gray

    def __post_init__(self) -> None:
        if not 0 <= self.views <= len(VIEWS):
            raise ValueError(f"views: {self.views}, expected 0 to {len(VIEWS)}")
        if not 0 < self.views_below <= 1:
            raise ValueError(f"views_below: {self.views_below}, expected above 0 and at most 1")
        if self.color_mode not in CHANNELS:
            raise ValueError(f"color_mode: {self.color_mode!r}, expected one of {', '.join(CHANNELS)}")

    @property
    def channels(self) -> int:
        return CHANNELS[self.color_mode]

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
