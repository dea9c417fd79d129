"""The service's settings: one typed, validated object read from CAPTCHA_* environment variables.

Read once when service.py is imported (by `bentoml serve` and by `bentoml build`); a bad value stops the
service before it starts, with a message naming the variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import PositiveInt, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from captcha_mlops.preprocess import MAX_PIXELS

ENV_PREFIX = "CAPTCHA_"


class SettingsError(ValueError):
    """A CAPTCHA_* variable holds a value the service cannot run with."""


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True)

    # The captcha types served, comma-separated (CAPTCHA_TYPES=alnum4,digits5); the first is the default.
    types: Annotated[list[str], NoDecode] = ["alnum4"]
    api_key: str = ""  # empty: no key asked
    max_bytes: PositiveInt = 1024 * 1024
    max_pixels: PositiveInt = MAX_PIXELS
    save_dir: Path | None = None  # keep every image read here with its reading, for review (captcha_mlops.kept)
    max_batch_size: PositiveInt = 64  # images read in one model call (adaptive batching); 1 turns batching off
    queue_deadline_ms: PositiveInt = 1000  # a request queued longer for the model gets 503
    workers: PositiveInt = 1  # processes, each with every model: 2 served less on 2 cores (README, Serving)
    model_threads: PositiveInt = 1  # TensorFlow threads per process: the other cores receive and decode
    max_concurrency: PositiveInt = 128  # requests in progress per worker; more get 503 at once
    timeout_s: PositiveInt = 30

    @field_validator("types", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        return [name.strip() for name in value.split(",") if name.strip()] if isinstance(value, str) else value

    @field_validator("types")
    @classmethod
    def _captcha_types(cls, names: list[str]) -> list[str]:
        if not names:
            raise ValueError("names no captcha type; expected e.g. alnum4 or alnum4,digits5")
        if wrong := [name for name in names if not name.isidentifier()]:
            raise ValueError(
                f"{', '.join(map(repr, wrong))} is not a captcha type name (data.captcha_type in params.yaml)"
            )
        return names

    @field_validator("save_dir", mode="before")
    @classmethod
    def _empty_means_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("save_dir")
    @classmethod
    def _absolute(cls, folder: Path | None) -> Path | None:
        return folder.resolve() if folder is not None else None


def load_settings() -> ServiceSettings:
    """The settings from the environment, or SettingsError naming every wrong variable."""
    try:
        return ServiceSettings()
    except ValidationError as error:
        problems = [
            f"{ENV_PREFIX}{str(e['loc'][0]).upper()}={e['input']!r}: {e['msg'].removeprefix('Value error, ')}"
            for e in error.errors(include_url=False)
        ]
        raise SettingsError("; ".join(problems)) from None
