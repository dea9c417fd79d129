"""MLflow wiring shared by the stages: one store, one experiment per captcha type."""

from __future__ import annotations

import mlflow

from captcha_mlops.paths import tracking_uri


def registered_name(captcha_type: str) -> str:
    """The MLflow registered model (and BentoML model) name for a captcha type."""
    return f"captcha-{captcha_type}"


def use_experiment(captcha_type: str) -> str:
    """Point MLflow at the project's store and the captcha type's experiment; return the experiment id."""
    mlflow.set_tracking_uri(tracking_uri())
    experiment = mlflow.set_experiment(registered_name(captcha_type))
    return experiment.experiment_id
