"""The team set-up: the pipeline against `mlflow server` on PostgreSQL, started by the project's own command.

Marked `server` (PostgreSQL must be installed; a few minutes): run by hand with `pytest -m server`.
"""

from __future__ import annotations

import json
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import psutil
import pytest

from tests.conftest import BIN, GIT, project_env, run

pytestmark = pytest.mark.server


@pytest.fixture
def tracking_server() -> Iterator[tuple[str, Path, dict]]:
    # Not pytest's tmp_path: as root PostgreSQL runs as `postgres`, which may not enter root's 0700 folders.
    folder = Path(tempfile.mkdtemp(prefix="tracking-"))
    folder.chmod(folder.stat().st_mode | stat.S_IRWXU | stat.S_IXOTH | stat.S_IROTH)
    command = [str(BIN / "python"), "-m", "captcha_mlops.tracking_server"]
    run([*command, "start", "--dir", str(folder / "t")], folder)
    state = json.loads((folder / "t" / "server.json").read_text())
    try:
        yield state["tracking_uri"], folder / "t", state
    finally:
        run([*command, "stop", "--dir", str(folder / "t")], folder)
    assert not psutil.pid_exists(state["mlflow_pid"]) or psutil.Process(state["mlflow_pid"]).status() == "zombie"
    for port in (int(state["tracking_uri"].rsplit(":", 1)[1]), state["postgres_port"]):
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still listening"


def test_the_pipeline_and_two_queued_experiments_land_on_the_server(
    tracking_server: tuple[str, Path, dict], project_factory: Callable[..., Path]
) -> None:
    url, folder, _ = tracking_server
    root = project_factory("team")
    env = project_env(root) | {"MLFLOW_TRACKING_URI": url}
    run(["dvc", "repro"], root, env=env)
    meta = json.loads((root / "models/meta.json").read_text())
    assert not (root / "mlflow.db").exists()  # nothing went to the embedded store

    mlflow.set_tracking_uri(url)
    client = mlflow.MlflowClient()
    trained = client.get_run(meta["run_id"])
    assert trained.data.params["train.steps"] == "20" and "test_image_accuracy" in trained.data.metrics
    assert [m.step for m in client.get_metric_history(trained.info.run_id, "val_image_accuracy")] == [10, 20]
    assert client.get_model_version_by_alias("captcha-alnum4", "champion").run_id == trained.info.run_id
    stored = [p.relative_to(folder / "artifacts").as_posix() for p in (folder / "artifacts").rglob("*") if p.is_file()]
    assert any(p.endswith("model.keras") for p in stored) and any(p.endswith("failures.png") for p in stored)
    record = json.loads((root / "models/bento_model.json").read_text())  # package imported from the server
    assert record["mlflow_run_id"] == trained.info.run_id
    assert (root / ".bentoml/models/captcha-alnum4" / record["bento_tag"].split(":")[1] / "model.keras").is_file()

    # Queued experiments run in temporary copies of the repo: only a server keeps their runs.
    run(["git", "add", "-A"], root, env=env)
    run([*GIT, "commit", "-qm", "run"], root, env=env)
    for seed in (1, 2):
        run(["dvc", "exp", "run", "--queue", "-S", f"train.seed={seed}"], root, env=env)
    run(["dvc", "queue", "start", "-j", "2"], root, env=env)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], root, env=env)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert status.count("Success") == 2, status
    experiment = client.get_experiment_by_name("captcha-alnum4")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'train'")
    seeds = sorted(r.data.params.get("train.seed") for r in runs if r.data.params.get("train.seed"))
    assert seeds == ["0", "1", "2"], seeds
    assert all("test_image_accuracy" in r.data.metrics for r in runs)  # each queued run was evaluated too
