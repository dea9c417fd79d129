"""Typed access to params.yaml: a wrong type or an unknown key fails fast, naming the key."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from captcha_mlops.paths import ROOT

T = TypeVar("T")


class ParamsError(ValueError):
    """params.yaml does not match the schema below."""


@dataclasses.dataclass(frozen=True)
class DataParams:
    name: str = "alnum4"
    charset: str = "0123456789abcdefghijklmnopqrstuvwxyz"
    charset_from_data: bool = False
    min_length: int = 4
    max_length: int = 4
    width: int = 100
    height: int = 60

    def __post_init__(self) -> None:
        _require(self.name.isidentifier(), "data.name", "must be a Python identifier, e.g. alnum4")
        _require(1 <= self.min_length <= self.max_length, "data.min_length", "must be 1..max_length")
        _require(self.width >= 16 and self.height >= 16, "data.width", "width and height must be >= 16")
        _require(len(set(self.charset)) == len(self.charset), "data.charset", "has repeated characters")
        _require("_" not in self.charset, "data.charset", "cannot hold '_': it separates label and serial")


@dataclasses.dataclass(frozen=True)
class GenerateParams:
    count: int = 20000
    seed: int = 42
    format: str = "png"
    fonts: list[str] = dataclasses.field(default_factory=list)
    workers: int = 0

    def __post_init__(self) -> None:
        _require(self.count >= 0, "generate.count", "must be >= 0")
        _require(self.format in ("png", "jpg", "jpeg"), "generate.format", "must be png, jpg or jpeg")


@dataclasses.dataclass(frozen=True)
class VerifySplitParams:
    extra_dirs: list[str] = dataclasses.field(default_factory=lambda: ["data/new"])
    formats: list[str] = dataclasses.field(default_factory=lambda: ["png", "jpg", "jpeg"])
    test_ratio: float = 0.05
    resize: bool = True

    def __post_init__(self) -> None:
        _require(0.0 < self.test_ratio < 1.0, "verify_split.test_ratio", "must be between 0 and 1")


@dataclasses.dataclass(frozen=True)
class ModelParams:
    arch: str = "ctc"
    filters: list[int] = dataclasses.field(default_factory=lambda: [32, 64, 128, 192])
    dropout: float = 0.3
    rnn_units: int = 128

    def __post_init__(self) -> None:
        _require(self.arch in ("compact", "ctc", "seed"), "model.arch", "must be 'compact', 'ctc' or 'seed'")
        _require(self.rnn_units > 0, "model.rnn_units", "must be > 0")
        _require(0.0 <= self.dropout < 1.0, "model.dropout", "must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class PretrainParams:
    images: int = 20000
    steps: int = 1500
    batch_size: int = 32
    fonts: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        _require(self.images >= 0, "pretrain.images", "must be >= 0 (0: no pretraining)")
        _require(self.steps >= 1, "pretrain.steps", "must be >= 1")
        _require(self.batch_size >= 1, "pretrain.batch_size", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class TrainParams:
    steps: int = 1500
    batch_size: int = 128
    validate_every: int = 100
    learning_rate: float = 0.002
    label_smoothing: float = 0.05
    augment: bool = True
    validation_ratio: float = 0.05
    acc_stop: float = 0.995
    patience_steps: int = 500
    max_minutes: float = 0.0
    log_every_n_steps: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.steps >= 1, "train.steps", "must be >= 1")
        _require(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _require(self.validate_every >= 1, "train.validate_every", "must be >= 1")
        _require(0.0 < self.validation_ratio < 1.0, "train.validation_ratio", "must be between 0 and 1")


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = 256
    gallery_size: int = 24


@dataclasses.dataclass(frozen=True)
class PackageParams:
    min_test_image_accuracy: float = 0.5

    def __post_init__(self) -> None:
        _require(0.0 <= self.min_test_image_accuracy <= 1.0, "package.min_test_image_accuracy", "must be in [0, 1]")


@dataclasses.dataclass(frozen=True)
class ServeParams:
    max_batch_size: int = 64
    max_latency_ms: int = 1000
    workers: int = 1
    model_threads: int = 1

    def __post_init__(self) -> None:
        _require(self.max_batch_size >= 1, "serve.max_batch_size", "must be >= 1 (1 turns batching off)")
        _require(self.max_latency_ms >= 1, "serve.max_latency_ms", "must be >= 1")
        _require(self.workers >= 1, "serve.workers", "must be >= 1")
        _require(self.model_threads >= 1, "serve.model_threads", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class Params:
    data: DataParams = dataclasses.field(default_factory=DataParams)
    generate: GenerateParams = dataclasses.field(default_factory=GenerateParams)
    verify_split: VerifySplitParams = dataclasses.field(default_factory=VerifySplitParams)
    model: ModelParams = dataclasses.field(default_factory=ModelParams)
    pretrain: PretrainParams = dataclasses.field(default_factory=PretrainParams)
    train: TrainParams = dataclasses.field(default_factory=TrainParams)
    evaluate: EvaluateParams = dataclasses.field(default_factory=EvaluateParams)
    package: PackageParams = dataclasses.field(default_factory=PackageParams)
    serve: ServeParams = dataclasses.field(default_factory=ServeParams)

    def as_flat_dict(self) -> dict[str, Any]:
        """`section.key` -> value, the shape MLflow params and `dvc exp run -S` use."""
        flat = {}
        for section, values in dataclasses.asdict(self).items():
            for key, value in values.items():
                flat[f"{section}.{key}"] = value
        return flat


def load_params(path: str | Path = ROOT / "params.yaml") -> Params:
    """Read and validate params.yaml; raise ParamsError naming the offending key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path} not found") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{path} is not valid YAML: {error}") from None
    return _build(Params, raw, prefix="")


def _build(cls: type[T], raw: Any, prefix: str) -> T:
    where = prefix.rstrip(".") or "params.yaml"
    if not isinstance(raw, dict):
        raise ParamsError(f"{where}: expected a mapping, got {type(raw).__name__}")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        message = f"unknown key {prefix}{unknown[0]} (known keys: {', '.join(fields)})"
        # Params are grouped by stage: `data.count` is most likely `generate.count`.
        elsewhere = [key for key in Params().as_flat_dict() if key.rpartition(".")[2] == unknown[0]]
        raise ParamsError(f"{message}; did you mean {' or '.join(elsewhere)}?" if elsewhere else message)
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        key, hint = f"{prefix}{name}", hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, prefix=f"{key}.")
        else:
            values[name] = _check_type(key, hint, value)
    return cls(**values)


def _check_type(key: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ParamsError(f"{key}: expected a list, got {value!r}")
        return [_check_type(f"{key}[{i}]", item_type, item) for i, item in enumerate(value)]
    # YAML reads 1 for a float field as int: accept it; but never bool where a number is meant.
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ParamsError(f"{key}: expected {hint.__name__}, got {value!r}")
    return value


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ParamsError(f"{key}: {message}")
