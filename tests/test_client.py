"""captcha_mlops.client against the served service."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from captcha_mlops.client import main
from tests.serving_fixtures import API_KEY, Server


def test_folder_reads_every_image_and_reports_accuracy(
    server: Server,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for source in sorted((server.packaged.digits5 / "data/origin").glob("*.png"))[:4]:
        shutil.copy(source, tmp_path)
    code = main(["--api-key", API_KEY, "folder", str(tmp_path), "--url", server.url, "--captcha-type", "digits5"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert len(lines) == 5 and re.fullmatch(r"accuracy: \d/4 = \d\.\d{4}", lines[-1])
    assert all(line.split("\t")[0].endswith(".png") for line in lines[:-1])


def test_online_fetches_reads_and_saves_under_the_reading(
    server: Server,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, out = server.url, str(tmp_path)
    captcha_url = f"{url}/captcha/?model=digits5"
    options = ["--url", url, "--captcha-type", "digits5", "--out", out, "--count", "3"]
    code = main(["--api-key", API_KEY, "online", "--captcha-url", captcha_url, *options])
    assert code == 0
    saved = sorted(tmp_path.iterdir())
    assert len(saved) == 3
    for path in saved:
        assert re.fullmatch(r"\d{0,5}_[0-9a-f]{32}\.png", path.name), path.name
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_a_refused_request_is_reported_with_the_servers_reason(server: Server, tmp_path: Path) -> None:
    (tmp_path / "1234_x.png").write_bytes(b"not an image")
    with pytest.raises(RuntimeError, match=r"422.*not a readable image"):
        main(["--api-key", API_KEY, "folder", str(tmp_path), "--url", server.url])
