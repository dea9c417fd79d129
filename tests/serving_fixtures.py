"""Session fixtures for serving tests: two captcha types packaged into one BentoML store, and a real
`bentoml serve` of service.py on a free port. Import the fixtures into a test module to use them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import BIN, project_env, run

API_KEY = "test-key-123"
MODELS = ["alnum4", "digits5"]
DIGITS5 = {"name": "digits5", "charset": "0123456789", "min_length": 5, "max_length": 5, "width": 120, "height": 50}
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

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": API_KEY}, timeout=60, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def packaged(
    pipeline_project: Path, project_factory: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Packaged:
    """alnum4 (the pipeline project) and a tiny digits5 project, both packaged into one shared store."""
    result = Packaged(pipeline_project, project_factory("digits5", {"data": DIGITS5}), tmp_path_factory.mktemp("bento"))
    # --record elsewhere: the pipeline project's own models/bento_model.json stays what `dvc repro` wrote.
    record = tmp_path_factory.mktemp("record") / "bento_model.json"
    package = [str(BIN / "python"), "-m", "stages.package", "--record", str(record)]
    run(package, result.alnum4, env=result.env(result.alnum4))
    run(["dvc", "repro"], result.digits5, env=result.env(result.digits5))  # its package stage fills the same store
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def server(packaged: Packaged, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port, save_dir = free_port(), tmp_path_factory.mktemp("saved")
    env = packaged.env(packaged.alnum4) | {
        "CAPTCHA_MODELS": ",".join(MODELS),
        "CAPTCHA_API_KEY": API_KEY,
        "CAPTCHA_SAVE_DIR": str(save_dir),
        "CAPTCHA_MAX_BYTES": str(MAX_BYTES),
        "CAPTCHA_MAX_LATENCY_MS": "5000",  # a busy 2-core CI machine: batch, don't shed load
    }
    log = (tmp_path_factory.mktemp("serve") / "serve.log").open("w")
    process = subprocess.Popen(
        [str(BIN / "bentoml"), "serve", "service:Captcha", "--host", "127.0.0.1", "--port", str(port)],
        cwd=packaged.alnum4,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the worker processes go down with it
    )
    result = Server(f"http://127.0.0.1:{port}", save_dir, packaged)
    try:
        wait_until_serving(result, process, Path(log.name))
        yield result
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def wait_until_serving(server: Server, process: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    """Poll until a real recognition succeeds: /readyz alone can answer before the Reader has its models."""
    deadline = time.monotonic() + timeout
    with server.client() as client:
        while time.monotonic() < deadline:
            assert process.poll() is None, f"bentoml serve exited:\n{log.read_text()[-5000:]}"
            try:
                image = client.get("/captcha/").content
                if client.post("/recognize", files={"image_file": ("x.png", image)}).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)  # poll interval, not a synchronization guess
    raise AssertionError(f"service not ready after {timeout}s:\n{log.read_text()[-5000:]}")
