"""Session fixtures for serving tests: two captcha types packaged into one BentoML store, and a real
`bentoml serve` of service.py on a free port. Import the fixtures into a test module to use them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from bench.serving import serving
from tests.conftest import BIN, TINY_PARAMS, project_env, run

API_KEY = "test-key-123"
CAPTCHA_TYPES = ["alnum4", "digits5"]
DIGITS5 = {
    "captcha_type": "digits5",
    "charset": "0123456789",
    "min_length": 5,
    "max_length": 5,
    "width": 120,
    "height": 50,
}
DIGITS5_VIEWS = 2  # digits5 is read in 2 views (evaluate.views), alnum4 in the default 4: each served as measured
MAX_BYTES = 200_000


@dataclass(frozen=True)
class Packaged:
    alnum4: Path  # project roots
    digits5: Path
    bento_home: Path  # the BentoML store both were packaged into

    def env(self, root: Path) -> dict[str, str]:
        return project_env(root) | {"BENTOML_HOME": str(self.bento_home)}


@dataclass(frozen=True)
class Server:
    url: str
    save_dir: Path
    packaged: Packaged
    process: psutil.Process  # `bentoml serve`; its workers are its children

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": API_KEY}, timeout=60, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def packaged(
    pipeline_project: Path, project_factory: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Packaged:
    """alnum4 (the pipeline project) and a tiny digits5 project, both packaged into one shared store."""
    evaluate = TINY_PARAMS["evaluate"] | {"views": DIGITS5_VIEWS}
    digits5 = project_factory("digits5", {"data": DIGITS5, "evaluate": evaluate})
    result = Packaged(pipeline_project, digits5, tmp_path_factory.mktemp("bento"))
    # --record elsewhere: the pipeline project's own models/bento_model.json stays what `dvc repro` wrote.
    record = tmp_path_factory.mktemp("record") / "bento_model.json"
    package = [str(BIN / "python"), "-m", "stages.package", "--record", str(record)]
    run(package, result.alnum4, env=result.env(result.alnum4))
    run(["dvc", "repro"], result.digits5, env=result.env(result.digits5))  # its package stage fills the same store
    return result


@pytest.fixture(scope="session")
def server(packaged: Packaged, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    save_dir = tmp_path_factory.mktemp("saved")
    env = packaged.env(packaged.alnum4) | {
        "CAPTCHA_TYPES": ",".join(CAPTCHA_TYPES),
        "CAPTCHA_API_KEY": API_KEY,
        "CAPTCHA_SAVE_DIR": str(save_dir),
        "CAPTCHA_MAX_BYTES": str(MAX_BYTES),
        "CAPTCHA_QUEUE_DEADLINE_MS": "5000",  # a busy 2-core CI machine: batch, don't shed load
    }
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with serving(env, log, cwd=packaged.alnum4) as (url, process):
        yield Server(url, save_dir, packaged, process)
