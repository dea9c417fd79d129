"""Stage 5: promote the best MLflow run of a captcha type and package it for serving.

Picks the run of experiment `captcha-<captcha_type>` with the highest `test_image_accuracy` among runs that logged a
model, registers that model as `captcha-<captcha_type>` (alias `champion`), downloads it FROM MLflow and imports it
into the BentoML model store as `captcha-<captcha_type>`, reading views of each image as its accuracy was measured
with (`evaluate.views`, `evaluate.views_below`). So the champion is served, not necessarily the model that the
workspace just trained. Writes models/bento_model.json, the record of what was packaged.

    python -m stages.package                 # data.captcha_type from params.yaml
    python -m stages.package --captcha-type digits5  # any other captcha type tracked in the same MLflow store
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import bentoml
import mlflow
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion

from captcha_mlops.model_meta import META_FILE, MODEL_FILE, ModelMeta
from captcha_mlops.params import load_params
from captcha_mlops.paths import MODELS, tracking_uri
from captcha_mlops.tracking import registered_name

ALIAS = "champion"
METRIC = "test_image_accuracy"
VIEWS_METRIC = "test_views"  # evaluate's `evaluate.views`: how many views of each image METRIC was read with
VIEWS_BELOW_METRIC = "test_views_below"  # ... of the images whose own reading had a character less sure than this
RECORD = MODELS / "bento_model.json"


class PackageError(RuntimeError):
    """Nothing to package: no evaluated run with a logged model, or none good enough to serve."""


def champion_run(client: mlflow.MlflowClient, experiment_name: str) -> tuple[Run, str]:
    """The best evaluated run that logged a model (newest first on a tie), and that model's URI."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise PackageError(f"no MLflow experiment {experiment_name!r} in {tracking_uri()}")
    model_uris = {m.source_run_id: m.model_uri for m in client.search_logged_models([experiment.experiment_id])}
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"metrics.{METRIC} >= 0",
        order_by=[f"metrics.{METRIC} DESC", "attributes.start_time DESC"],
    )
    for run in runs:
        if run.info.run_id in model_uris:
            return run, model_uris[run.info.run_id]
    raise PackageError(f"no run of {experiment_name!r} has both a logged model and {METRIC}")


def register_champion(client: mlflow.MlflowClient, name: str, run: Run, model_uri: str) -> ModelVersion:
    """Register the run's model (once: re-running reuses its version) and point the alias at it."""
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run.info.run_id}'")
    version = existing[0] if existing else mlflow.register_model(model_uri, name)
    client.set_registered_model_alias(name, ALIAS, version.version)
    return version


def download(client: mlflow.MlflowClient, name: str, run: Run, workdir: Path) -> tuple[Path, ModelMeta]:
    """model.keras of the champion (through the registry alias) and its meta.json (a run artifact)."""
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@{ALIAS}", dst_path=str(workdir / "mlflow")))
    keras_files = list(model_dir.rglob(MODEL_FILE))
    if len(keras_files) != 1:
        raise PackageError(f"expected one {MODEL_FILE} in the MLflow model of run {run.info.run_id}, got {keras_files}")
    meta_dir = Path(client.download_artifacts(run.info.run_id, META_FILE, str(workdir)))
    meta = ModelMeta.read(meta_dir.parent if meta_dir.is_file() else meta_dir)
    return keras_files[0], meta


def latest_bento_model(tag_name: str) -> bentoml.Model | None:
    try:
        return bentoml.models.get(f"{tag_name}:latest")
    except bentoml.exceptions.NotFound:
        return None


def check_floor(run: Run, floor: float) -> None:
    """A champion that reads too few captchas right is no champion: refuse to promote or serve it."""
    accuracy = run.data.metrics[METRIC]
    if accuracy < floor:
        raise PackageError(
            f"the best run ({run.info.run_id}) reads {accuracy:.3f} of its test captchas right, below "
            f"package.min_test_image_accuracy={floor}: not promoted to {ALIAS!r}, nothing packaged. "
            "See what `train` said about the run; more labelled images usually help (README: how many images)."
        )


def package(captcha_type: str, min_accuracy: float) -> dict[str, Any]:
    """Register the champion of `captcha_type` and make it BentoML's latest `captcha-<type>`; return the record.

    The record depends only on what is packaged, so packaging the same champion again rewrites it byte for byte
    (DVC then sees nothing new downstream)."""
    mlflow.set_tracking_uri(tracking_uri())
    client = mlflow.MlflowClient()
    name = registered_name(captcha_type)
    run, model_uri = champion_run(client, name)
    check_floor(run, min_accuracy)
    version = register_champion(client, name, run, model_uri)
    views = int(run.data.metrics.get(VIEWS_METRIC, 0))  # read as its accuracy was measured
    views_below = run.data.metrics.get(VIEWS_BELOW_METRIC, 1.0)  # runs from before the setting read every image's
    labels = {
        "captcha_type": captcha_type,
        "mlflow_run_id": run.info.run_id,
        "mlflow_registered_model": name,
        "mlflow_version": str(version.version),
        "views": str(views),
        "views_below": str(views_below),
    }
    record: dict[str, Any] = {
        **labels,
        "mlflow_alias": ALIAS,
        "mlflow_model_uri": model_uri,
        "test_image_accuracy": run.data.metrics.get(METRIC),
        "test_char_accuracy": run.data.metrics.get("test_char_accuracy"),
    }

    latest = latest_bento_model(name)
    if latest is not None and latest.info.labels == labels:
        # Same champion as last time: a new BentoML version would only change what `:latest` means.
        print(f"package: {latest.tag} already holds run {run.info.run_id}")
        return {**record, "bento_tag": str(latest.tag)}

    with tempfile.TemporaryDirectory() as workdir:
        keras_file, meta = download(client, name, run, Path(workdir))
        meta = dataclasses.replace(meta, views=views, views_below=views_below)
        metadata = {**dataclasses.asdict(meta), **record}
        with bentoml.models.create(name, labels=labels, metadata=metadata) as bento_model:
            shutil.copyfile(keras_file, bento_model.path_of(MODEL_FILE))
            meta.write(bento_model.path)
    print(f"package: imported run {run.info.run_id} into the BentoML store as {bento_model.tag}")
    return {**record, "bento_tag": str(bento_model.tag)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captcha-type", help="default: data.captcha_type in params.yaml")
    parser.add_argument(
        "--record", type=Path, help=f"where to write the record (default: {RECORD} for data.captcha_type)"
    )
    args = parser.parse_args()
    params = load_params()
    captcha_type = args.captcha_type or params.data.captcha_type
    try:
        record = package(captcha_type, params.package.min_test_image_accuracy)
    except PackageError as error:
        raise SystemExit(f"package: {error}") from None
    record_path = args.record or (RECORD if captcha_type == params.data.captcha_type else None)
    if record_path is not None:
        record_path.parent.mkdir(parents=True, exist_ok=True)
        record_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"package: {json.dumps(record)}")


if __name__ == "__main__":
    main()
