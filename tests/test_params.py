from pathlib import Path

import pytest
import yaml

from captcha_mlops.params import Params, ParamsError, load_params
from tests.conftest import REPO


def write(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_shipped_params_load_and_flatten() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.data.width == 100 and params.data.height == 60
    assert params.verify_split.test_ratio == pytest.approx(1 / 20)  # the seed's 19:1
    assert params.as_flat_dict()["train.steps"] == params.train.steps


def test_missing_sections_take_defaults(tmp_path: Path) -> None:
    assert load_params(write(tmp_path, {"train": {"steps": 3}})) == Params(train=Params().train.__class__(steps=3))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"train": {"steps": "ten"}}, "train.steps: expected int, got 'ten'"),
        ({"train": {"epoch": 3}}, "unknown key train.epoch"),
        ({"trian": {}}, "unknown key trian"),
        ({"data": {"count": 500}}, "unknown key data.count .* did you mean generate.count"),
        ({"data": {"width": True}}, "data.width: expected int"),
        ({"generate": {"fonts": "a.ttf"}}, "generate.fonts: expected a list"),
        ({"data": {"min_length": 5, "max_length": 4}}, "data.min_length"),
        ({"data": {"charset": "ab_c"}}, "data.charset"),
        ({"model": {"arch": "resnet"}}, "model.arch"),
        ({"verify_split": {"test_ratio": 0}}, "verify_split.test_ratio"),
        ({"train": []}, "train: expected a mapping"),
        ({"serve": {"model_threads": 0}}, "serve.model_threads: must be >= 1"),
    ],
)
def test_bad_params_fail_fast_naming_the_key(tmp_path: Path, params: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_params(write(tmp_path, params))


def test_float_fields_accept_integers(tmp_path: Path) -> None:
    assert load_params(write(tmp_path, {"train": {"learning_rate": 1}})).train.learning_rate == 1.0
