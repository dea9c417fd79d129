"""The service's settings: CAPTCHA_* variables, validated, errors naming the variable."""

from pathlib import Path

import pytest

from captcha_mlops.preprocess import MAX_PIXELS
from captcha_mlops.settings import ServiceSettings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ServiceSettings.model_fields:
        monkeypatch.delenv(f"CAPTCHA_{name.upper()}", raising=False)


def test_defaults() -> None:
    settings = load_settings()
    assert settings.types == ["alnum4"] and settings.api_key == "" and settings.save_dir is None
    assert settings.max_pixels == MAX_PIXELS  # one pixel limit, preprocess's


def test_read_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CAPTCHA_TYPES", " alnum4, digits5 ,")
    monkeypatch.setenv("CAPTCHA_WORKERS", "2")
    monkeypatch.setenv("CAPTCHA_SAVE_DIR", str(tmp_path / "kept"))
    monkeypatch.setenv("CAPTCHA_QUEUE_DEADLINE_MS", "250")
    settings = load_settings()
    assert settings.types == ["alnum4", "digits5"] and settings.workers == 2
    assert settings.save_dir == (tmp_path / "kept").resolve() and settings.queue_deadline_ms == 250


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CAPTCHA_WORKERS", "0", "CAPTCHA_WORKERS='0': Input should be greater than 0"),
        ("CAPTCHA_MAX_BATCH_SIZE", "many", "CAPTCHA_MAX_BATCH_SIZE='many': Input should be a valid integer"),
        ("CAPTCHA_TYPES", "", "CAPTCHA_TYPES='': names no captcha type"),
        ("CAPTCHA_TYPES", ",", "CAPTCHA_TYPES=',': names no captcha type"),
        ("CAPTCHA_TYPES", "alnum4,../x", "CAPTCHA_TYPES='alnum4,../x': '../x' is not a captcha type name"),
    ],
)
def test_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value).startswith(message)


def test_an_empty_save_dir_keeps_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPTCHA_SAVE_DIR", "")
    assert load_settings().save_dir is None
