from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from captcha_mlops.params import Params, ParamsError, load_params
from tests.conftest import REPO


def write(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_shipped_params_load_and_flatten() -> None:
    params = load_params(REPO / "params.yaml")
    # A key missing from a user's params.yaml takes its default: the defaults are the shipped values.
    assert params == Params()
    assert params.data.width == 100 and params.data.height == 60
    assert params.verify_split.test_ratio == pytest.approx(1 / 20)  # the seed's 19:1
    assert params.as_flat_dict()["train.steps"] == params.train.steps


def test_missing_sections_take_defaults(tmp_path: Path) -> None:
    assert load_params(write(tmp_path, {"train": {"steps": 3}})) == Params(train=Params().train.__class__(steps=3))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"train": {"steps": "ten"}}, "train.steps: Input should be a valid integer (got 'ten')"),
        ({"train": {"epoch": 3}}, "unknown key train.epoch (known keys: steps, batch_size"),
        ({"trian": {}}, "unknown key trian"),
        ({"data": {"count": 500}}, "unknown key data.count .* did you mean generate.count?"),
        ({"data": {"name": "own5"}}, "unknown key data.name .* it is now data.captcha_type"),
        ({"data": {"width": True}}, "data.width: Input should be a valid integer"),
        ({"data": {"width": 8}}, "data.width: Input should be greater than or equal to 16"),
        ({"generate": {"fonts": "a.ttf"}}, "generate.fonts: Input should be a valid list"),
        ({"data": {"min_length": 5, "max_length": 4}}, "data.max_length: must be >= data.min_length"),
        ({"data": {"charset": "ab_c"}}, "data.charset: cannot hold '_'"),
        ({"data": {"captcha_type": "my captcha"}}, "data.captcha_type: String should match pattern"),
        ({"model": {"arch": "resnet"}}, "model.arch: Input should be 'ctc', 'compact' or 'seed'"),
        ({"verify_split": {"test_ratio": 0}}, "verify_split.test_ratio: Input should be greater than 0"),
        ({"train": []}, "train: Input should be a valid dictionary"),
        ({"serve": {"workers": 2}}, "unknown key serve"),  # the service reads CAPTCHA_* variables instead
        ({"train": {"steps": 0, "batch_size": "big"}}, "train.steps: .*; train.batch_size: "),  # every error at once
    ],
)
def test_bad_params_fail_fast_naming_the_key(tmp_path: Path, params: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        load_params(write(tmp_path, params))


def test_float_fields_accept_integers(tmp_path: Path) -> None:
    assert load_params(write(tmp_path, {"train": {"learning_rate": 1}})).train.learning_rate == 1.0


def test_params_are_frozen() -> None:
    with pytest.raises(ValidationError, match="frozen"):
        Params().train.steps = 3  # type: ignore[misc]
