"""MLflow wiring shared by the stages: one store, one experiment per captcha type."""

from __future__ import annotations

from pathlib import Path

import mlflow
import mlflow.data
import pandas

from captcha_mlops.paths import tracking_uri

EXPERIMENT_KIND = "mlflow.experimentKind"  # the tag MLflow's UI reads to choose an experiment's layout
MODEL_TRAINING = "custom_model_development"


def registered_name(captcha_type: str) -> str:
    """The MLflow registered model (and BentoML model) name for a captcha type."""
    return f"captcha-{captcha_type}"


def use_experiment(captcha_type: str) -> str:
    """Point MLflow at the project's store and the captcha type's experiment; return the experiment id."""
    mlflow.set_tracking_uri(tracking_uri())
    experiment = mlflow.set_experiment(registered_name(captcha_type))
    if experiment.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
        # Else MLflow 3's UI opens the experiment on its GenAI overview (traces, prompts) instead of the runs.
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
    return experiment.experiment_id


def log_manifests(manifests: dict[str, Path]) -> None:
    """The split manifests (path,label) as MLflow dataset inputs of the active run: its Datasets column."""
    for context, path in manifests.items():
        frame = pandas.read_csv(path, dtype=str, keep_default_na=False)
        dataset = mlflow.data.from_pandas(frame, source=str(path), name=f"{path.parent.name}/{path.name}")
        mlflow.log_input(dataset, context=context)
