"""Training survives an interruption, and bad params stop a stage before it does anything."""

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
import yaml

from captcha_mlops.params import Params
from stages.train import log_columns
from tests.conftest import project_env, run

RESUMABLE = {"train": {"steps": 30, "validate_every": 10, "batch_size": 32, "patience_steps": 100, "acc_stop": 1.1}}


def interrupt_training(root: Path) -> str:
    """Start `train`, kill it once it has saved a checkpoint (a crash, not a polite stop); its MLflow run id."""
    run(["dvc", "repro", "pretrain"], root)
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
    assert checkpoint.exists(), "a checkpoint is written every validation round"
    train.send_signal(signal.SIGKILL)
    train.wait()
    return (root / "checkpoints/train/mlflow_run_id").read_text()


def test_interrupted_training_resumes_in_the_same_mlflow_run(project_factory: Callable[..., Path]) -> None:
    root = project_factory("resume", RESUMABLE)
    run_id = interrupt_training(root)

    output = run([sys.executable, "-m", "stages.train"], root)

    assert f"resuming interrupted MLflow run {run_id}" in output
    assert json.loads((root / "models/meta.json").read_text())["run_id"] == run_id
    mlflow.set_tracking_uri(project_env(root)["MLFLOW_TRACKING_URI"])
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "val_image_accuracy")]
    assert sorted(set(steps)) == [10, 20, 30] and len(steps) < 6, "resumed where it stopped, not from scratch"
    assert not (root / "checkpoints/train").exists(), "checkpoints are removed once training completes"


def test_changed_params_start_a_new_run_instead_of_resuming(project_factory: Callable[..., Path]) -> None:
    root = project_factory("resume-changed", RESUMABLE)
    old_run_id = interrupt_training(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["learning_rate"] = 0.001
    (root / "params.yaml").write_text(yaml.safe_dump(params))

    output = run([sys.executable, "-m", "stages.train"], root)

    assert "changed since the interrupted run: starting a new run" in output
    new_run_id = json.loads((root / "models/meta.json").read_text())["run_id"]
    assert new_run_id != old_run_id
    mlflow.set_tracking_uri(project_env(root)["MLFLOW_TRACKING_URI"])
    assert mlflow.get_run(new_run_id).data.params["train.learning_rate"] == "0.001"
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(new_run_id, "val_image_accuracy")]
    assert steps == [10, 20, 30], "trained from the start, none of the old run's steps"


def test_a_bad_param_stops_the_stage_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {"steps": "many"}}))
    result = subprocess.run([sys.executable, "-m", "stages.generate"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0
    assert "train.steps: Input should be a valid integer (got 'many')" in result.stderr
    assert not (tmp_path / "data").exists()


def test_a_narrow_captcha_is_trained_with_narrower_columns_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = Params.model_validate({"data": {"width": 80, "height": 30, "min_length": 6, "max_length": 6}})
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("narrow")  # not the experiment an earlier test left active in another store
    with mlflow.start_run() as active:
        log_columns(params)
    assert mlflow.get_run(active.info.run_id).data.params["column_pixels_used"] == "4"
    assert (
        "80 pixels give too few 8-pixel columns for 6 characters: the network reads columns of 4 pixels (20 columns)"
        in (capsys.readouterr().out)
    )
