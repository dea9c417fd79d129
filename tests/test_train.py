"""Training survives an interruption, and bad params stop a stage before it does anything."""

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import yaml

from tests.conftest import project_env, run


def test_interrupted_training_resumes_in_the_same_mlflow_run(project_factory: Callable[..., Path]) -> None:
    root = project_factory("resume", {"train": {"epochs": 3, "batch_size": 32, "patience": 10, "acc_stop": 1.1}})
    run(["dvc", "repro", "verify_split"], root)
    checkpoint = root / "checkpoints/train/training_metadata.json"
    train = subprocess.Popen(
        [sys.executable, "-m", "stages.train"],
        cwd=root,
        env=project_env(root),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and train.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert checkpoint.exists(), "an epoch checkpoint is written while training"
    train.send_signal(signal.SIGKILL)  # a crash, not a polite stop
    train.wait()
    run_id = (root / "checkpoints/train/mlflow_run_id").read_text()

    output = run([sys.executable, "-m", "stages.train"], root)

    assert f"resuming interrupted MLflow run {run_id}" in output
    assert json.loads((root / "models/meta.json").read_text())["run_id"] == run_id
    mlflow.set_tracking_uri(project_env(root)["MLFLOW_TRACKING_URI"])
    epochs = [m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "val_image_accuracy")]
    assert sorted(set(epochs)) == [1, 2, 3] and len(epochs) < 6, "resumed where it stopped, not from scratch"
    assert not (root / "checkpoints/train").exists(), "checkpoints are removed once training completes"


def test_a_bad_param_stops_the_stage_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {"steps": "many"}}))
    result = subprocess.run([sys.executable, "-m", "stages.generate"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0
    assert "train.steps: expected int, got 'many'" in result.stderr
    assert not (tmp_path / "data").exists()
