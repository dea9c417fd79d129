"""Where MLflow keeps a run's artifacts when the stage runs in a copy of the repo that DVC deletes afterwards."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from captcha_mlops.tracking import artifact_location, use_experiment


def test_a_new_experiment_keeps_its_artifacts_beside_the_store_not_in_the_temporary_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    main = tmp_path / "main"
    copy = main / ".dvc" / "tmp" / "exps" / "tmpabc123"  # where `dvc exp run --temp` runs a stage
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{main / 'mlflow.db'}")

    experiment_id = use_experiment("own_site")
    with mlflow.start_run(experiment_id=experiment_id):
        mlflow.log_text("a model's file", "model/weights.txt")

    assert mlflow.get_experiment(experiment_id).artifact_location == str(main / "mlruns" / "captcha-own_site")
    assert [path.name for path in (main / "mlruns").rglob("weights.txt")] == ["weights.txt"]
    assert not (copy / "mlruns").exists()
    assert use_experiment("own_site") == experiment_id  # the second stage finds it


def test_artifact_location_resolves_a_relative_store_and_leaves_servers_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    beside_the_store = str(tmp_path / "mlruns" / "captcha-x")
    assert artifact_location("sqlite:///mlflow.db", "captcha-x") == beside_the_store
    assert artifact_location("sqlite+pysqlite:///mlflow.db?timeout=20", "captcha-x") == beside_the_store
    assert artifact_location("sqlite:///:memory:", "captcha-x") is None
    assert artifact_location("http://127.0.0.1:5000", "captcha-x") is None
    assert artifact_location("postgresql://mlflow@127.0.0.1:5432/mlflow", "captcha-x") is None
    assert artifact_location("./mlruns", "captcha-x") is None  # a file store: a path, not a SQLAlchemy URL


def test_an_experiment_whose_artifacts_went_to_a_deleted_copy_stops_the_run_saying_how_to_fix_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    lost = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123" / "mlruns" / "1"  # as MLflow made it before
    mlflow.create_experiment("captcha-own_site", artifact_location=str(lost))

    with pytest.raises(SystemExit, match="mlflow experiments rename --experiment-id 1 "):
        use_experiment("own_site")
