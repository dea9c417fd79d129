"""End to end: `dvc repro` on a tiny copy of the project, then the DVC and MLflow views of it."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import mlflow

from captcha_mlops.training import weights_sha256
from tests.conftest import project_env, run


def test_repro_writes_data_models_metrics_and_an_mlflow_run(pipeline_project: Path) -> None:
    root = pipeline_project
    assert len(list((root / "data/origin").glob("*_*.png"))) == 300
    assert (root / "models/model.keras").is_file()
    meta = json.loads((root / "models/meta.json").read_text())
    assert meta["width"] == 100 and meta["height"] == 60 and meta["max_length"] == 4
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert metrics["test_images"] > 0
    assert 0.0 <= metrics["image_accuracy"] <= metrics["char_accuracy"] <= 1.0
    assert (root / "reports/failures.png").stat().st_size > 0

    mlflow.set_tracking_uri(project_env(root)["MLFLOW_TRACKING_URI"])
    run_data = mlflow.get_run(meta["run_id"]).data
    assert run_data.params["train.steps"] == "20"
    assert run_data.params["column_pixels_used"] == "8"  # 100 pixels, 4 characters: model.column_pixels as set
    assert "test_image_accuracy" in run_data.metrics and "val_image_accuracy" in run_data.metrics
    assert run_data.tags["weights_sha256"] == weights_sha256(keras.models.load_model(root / "models/model.keras"))
    history = mlflow.MlflowClient().get_metric_history(meta["run_id"], "step_loss")
    assert history, "per-step training loss is logged"
    # The UI opens on the runs (not the GenAI overview) and lists which images trained and tested the run.
    assert mlflow.get_experiment_by_name("captcha-alnum4").tags["mlflow.experimentKind"] == "custom_model_development"
    inputs = {(i.dataset.name, i.tags[0].value) for i in mlflow.get_run(meta["run_id"]).inputs.dataset_inputs}
    assert inputs == {("split/train.csv", "training"), ("split/test.csv", "test")}


def test_repro_again_is_a_no_op(pipeline_project: Path) -> None:
    output = run(["dvc", "repro"], pipeline_project)
    assert "didn't change, skipping" in output
    assert "Running stage" not in output


def test_experiment_shows_in_dvc_and_mlflow(pipeline_project: Path) -> None:
    root = pipeline_project
    # No MLFLOW_TRACKING_URI: the default store must be found from inside DVC's temporary copy of the repo.
    env = {k: v for k, v in project_env(root).items() if k != "MLFLOW_TRACKING_URI"}
    run(
        ["dvc", "exp", "run", "--temp", "-n", "more-data", "-S", "generate.count=340", "-S", "train.steps=30"],
        root,
        env,
    )
    experiments = json.loads(run(["dvc", "exp", "show", "--json"], root))
    names = [exp["name"] for rev in experiments for exp in (rev.get("experiments") or [])]
    assert "more-data" in names
    mlflow.set_tracking_uri(project_env(root)["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["captcha-alnum4"], filter_string="params.`train.steps` = '30'")
    assert len(runs) == 1 and runs.iloc[0]["metrics.test_image_accuracy"] >= 0
