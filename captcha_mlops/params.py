"""Typed access to params.yaml: a wrong type, a bad value or an unknown key fails fast, naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from captcha_mlops.paths import ROOT


class ParamsError(ValueError):
    """params.yaml does not match the schema below."""


RENAMED = {"data.name": "data.captcha_type"}  # keys of older params.yaml files, for the error message


class Section(BaseModel):
    # Strict: YAML's `true` is no width and "10" no count (an int still passes for a float).
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class DataParams(Section):
    captcha_type: str = Field("alnum4", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")  # an identifier: it names files and models
    charset: str = "0123456789abcdefghijklmnopqrstuvwxyz"
    charset_from_data: bool = False
    min_length: int = Field(4, ge=1)
    max_length: int = Field(4, ge=1)
    width: int = Field(100, ge=16)
    height: int = Field(60, ge=16)
    color_mode: Literal["grayscale", "rgb"] = "grayscale"

    @field_validator("charset")
    @classmethod
    def _usable_charset(cls, charset: str) -> str:
        if len(set(charset)) != len(charset):
            raise ValueError("has repeated characters")
        if "_" in charset:
            raise ValueError("cannot hold '_': it separates label and serial in file names")
        return charset

    @field_validator("max_length")
    @classmethod
    def _not_below_min_length(cls, max_length: int, info: ValidationInfo) -> int:
        if max_length < info.data.get("min_length", 1):
            raise ValueError("must be >= data.min_length")
        return max_length


class GenerateParams(Section):
    count: int = Field(20000, ge=0)
    seed: int = 42
    format: Literal["png", "jpg", "jpeg"] = "png"
    fonts: list[str] = []
    workers: int = Field(0, ge=0)


class VerifySplitParams(Section):
    extra_dirs: list[str] = ["data/new"]
    unlabelled_dirs: list[str] = ["data/unlabelled"]
    formats: list[str] = ["png", "jpg", "jpeg", "gif", "bmp", "webp"]
    test_ratio: float = Field(0.05, gt=0, lt=1)
    resize: bool = True


class ModelParams(Section):
    arch: Literal["ctc", "compact", "seed"] = "ctc"
    filters: list[int] = [32, 64, 128, 192]
    convs_per_block: int = Field(2, ge=1)
    first_block_convs: int = Field(1, ge=1)
    dropout: float = Field(0.3, ge=0, lt=1)
    rnn_units: int = Field(128, ge=1)
    rnn_layers: int = Field(1, ge=1)
    column_pixels: Literal[2, 4, 8, 16, 32] = 8


class PretrainParams(Section):
    images: int = Field(20000, ge=0)
    steps: int = Field(3000, ge=1)
    below_images: int = Field(1000, ge=0)
    batch_size: int = Field(32, ge=1)
    fonts: list[str] = []


class TrainParams(Section):
    steps: int = Field(1500, ge=1)
    batch_size: int = Field(64, ge=1)
    validate_every: int = Field(100, ge=1)
    learning_rate: float = Field(0.002, gt=0)
    label_smoothing: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    augment: bool = True
    validation_ratio: float = Field(0.05, gt=0, lt=1)
    acc_stop: float = 0.995
    patience_steps: int = Field(500, ge=1)
    self_training_steps: int = Field(500, ge=0)
    self_training_confidence: float = Field(0.0, ge=0, le=1)
    self_training_views: int = Field(4, ge=0)
    max_minutes: float = Field(0.0, ge=0)
    log_every_n_steps: int = Field(20, ge=1)
    precision: Literal["auto", "float32", "mixed_bfloat16"] = "auto"
    seed: int = 0
    deterministic: bool = True


class EvaluateParams(Section):
    batch_size: int = Field(256, ge=1)
    views: int = Field(4, ge=0, le=8)  # at most the copies captcha_mlops.model_meta.VIEWS defines
    views_below: float = Field(0.99, gt=0, le=1)
    gallery_size: int = Field(24, ge=0)


class PackageParams(Section):
    min_test_image_accuracy: float = Field(0.5, ge=0, le=1)


class Params(Section):
    data: DataParams = DataParams()
    generate: GenerateParams = GenerateParams()
    verify_split: VerifySplitParams = VerifySplitParams()
    model: ModelParams = ModelParams()
    pretrain: PretrainParams = PretrainParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    package: PackageParams = PackageParams()

    def as_flat_dict(self) -> dict[str, Any]:
        """`section.key` -> value, the shape MLflow params and `dvc exp run -S` use."""
        sections = self.model_dump().items()
        return {f"{section}.{key}": value for section, values in sections for key, value in values.items()}


def load_params(path: str | Path = ROOT / "params.yaml") -> Params:
    """Read and validate params.yaml; raise ParamsError naming each offending key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path} not found") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{path} is not valid YAML: {error}") from None
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError("; ".join(_describe(e) for e in error.errors(include_url=False))) from None


def _describe(error: Any) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "params.yaml"
    if error["type"] != "extra_forbidden":
        message = error["msg"].removeprefix("Value error, ")
        return f"{key}: {message} (got {error['input']!r})"
    section = Params
    for part in error["loc"][:-1]:
        section = section.model_fields[part].annotation
    message = f"unknown key {key} (known keys: {', '.join(section.model_fields)})"
    if key in RENAMED:
        return f"{message}; it is now {RENAMED[key]}"
    # Params are grouped by stage: `data.count` is most likely `generate.count`.
    elsewhere = [known for known in Params().as_flat_dict() if known.rpartition(".")[2] == error["loc"][-1]]
    return f"{message}; did you mean {' or '.join(elsewhere)}?" if elsewhere else message
