"""MLflow wiring shared by the stages: one store, one experiment per captcha type."""

from __future__ import annotations

from pathlib import Path

import mlflow
import mlflow.data
import pandas
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from sqlalchemy.engine import make_url

from captcha_mlops.paths import main_checkout_root, tracking_uri

EXPERIMENT_KIND = "mlflow.experimentKind"  # the tag MLflow's UI reads to choose an experiment's layout
MODEL_TRAINING = "custom_model_development"


def registered_name(captcha_type: str) -> str:
    """The MLflow registered model (and BentoML model) name for a captcha type."""
    return f"captcha-{captcha_type}"


def use_experiment(captcha_type: str) -> str:
    """Point MLflow at the project's store and the captcha type's experiment; return the experiment id."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    name = registered_name(captcha_type)
    if mlflow.get_experiment_by_name(name) is None:
        try:
            mlflow.create_experiment(name, artifact_location=artifact_location(uri, name))
        except MlflowException as error:  # a stage running beside this one created it first
            if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
    experiment = mlflow.set_experiment(name)
    location = Path(experiment.artifact_location.removeprefix("file://"))
    if main_checkout_root(location) != location:  # under .dvc/tmp/exps/
        raise SystemExit(
            f"MLflow experiment {name!r} keeps its runs' artifacts in {experiment.artifact_location}, inside a "
            "temporary copy of the repo that DVC deletes (it was made by `dvc exp run --temp/--queue` before the "
            "project put artifacts beside the store): this run's model would be lost. Rename it, and the next run "
            f"makes it anew: mlflow experiments rename --experiment-id {experiment.experiment_id} "
            f"--new-name {name}-lost-artifacts"
        )
    if experiment.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
        # Else MLflow 3's UI opens the experiment on its GenAI overview (traces, prompts) instead of the runs.
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
    return experiment.experiment_id


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment of a local sqlite store keeps its artifacts: `mlruns/<experiment>` beside the
    database. MLflow's default is `mlruns/` in the working directory of the process that first creates the
    experiment, which for `dvc exp run --temp/--queue` is a copy of the repo DVC deletes afterwards: every later
    run's model would go there and be lost. Other stores (a tracking server, a file store, an in-memory
    database) decide for themselves: None."""
    if not uri.startswith("sqlite"):  # a server, a file store, databricks: not all of them are SQLAlchemy URLs
        return None
    url = make_url(uri)  # as MLflow's sqlite store reads it: sqlite+pysqlite:///..., ?timeout=...
    if url.database in (None, "", ":memory:"):
        return None
    return str(Path(url.database).resolve().parent / "mlruns" / experiment)


def log_manifests(manifests: dict[str, Path]) -> None:
    """The split manifests (path,label) as MLflow dataset inputs of the active run: its Datasets column."""
    for context, path in manifests.items():
        frame = pandas.read_csv(path, dtype=str, keep_default_na=False)
        dataset = mlflow.data.from_pandas(frame, source=str(path), name=f"{path.parent.name}/{path.name}")
        mlflow.log_input(dataset, context=context)
