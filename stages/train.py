"""Stage 4: train the network on the train manifest, tracked in MLflow; write models/model.keras + meta.json.

It starts from the `pretrain` stage's network when there is one (see stages/pretrain.py). The budget is
`train.steps` optimizer steps (captcha_mlops.training). With unlabelled images of the site
(data/split/unlabelled.csv), it then self-trains: the network reads them, and `train.self_training_steps` more
steps train on the labels plus the readings it also reads the same in jittered copies (README, "Unlabelled images").

A checkpoint is saved every validation round of the first fit to checkpoints/; an interrupted run resumes
from it in the same MLflow run, but only if params, data and pretrained start are what they were: anything
else starts a new run. An interruption during self-training starts over.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from captcha_mlops.dataset import load_images, read_manifest, write_manifest
from captcha_mlops.labels import Codec
from captcha_mlops.model import build_model, column_pixels_for
from captcha_mlops.model_meta import MODEL_FILE, ModelMeta
from captcha_mlops.params import Params, load_params
from captcha_mlops.paths import MODELS, REPORTS, ROOT, SPLIT, UNLABELLED
from captcha_mlops.preprocess import CHANNELS
from captcha_mlops.tracking import log_manifests, use_experiment
from captcha_mlops.training import fit, not_learning_hint, readings_to_train_on, seed_everything, weights_sha256
from stages import pretrain

CHECKPOINTS = ROOT / "checkpoints" / "train"
RUN_ID_FILE = CHECKPOINTS / "mlflow_run_id"
FINGERPRINT_FILE = CHECKPOINTS / "fingerprint"
TRAIN_LOG = REPORTS / "train_log.csv"
READINGS_USED = REPORTS / "readings_used.csv"  # the unlabelled images self-training used, as the network read them


def signature(meta: ModelMeta, num_classes: int) -> ModelSignature:
    image = TensorSpec(np.dtype(np.uint8), (-1, meta.height, meta.width, meta.channels), "image")
    chars = TensorSpec(np.dtype(np.float32), (-1, meta.max_length, num_classes), "chars")
    return ModelSignature(inputs=Schema([image]), outputs=Schema([chars]))


def data_version() -> str:
    """A short hash of the split manifests and charset: which images trained and tested the model."""
    digest = hashlib.sha256()
    for name in ("train.csv", "test.csv", "charset.txt"):
        digest.update((SPLIT / name).read_bytes())
    if UNLABELLED.exists() and read_manifest(UNLABELLED):  # none: the version of a set without them
        digest.update(UNLABELLED.read_bytes())
    return digest.hexdigest()[:12]


def fingerprint(params: Params, data: str, pretrained_run: str) -> str:
    """What a checkpoint was trained on: params that shape training, the data, the pretrained start."""
    shaping = params.model_dump(include={"data", "model", "train"})
    text = json.dumps(shaping, sort_keys=True) + data + pretrained_run
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def start_run(params: Params, data: str, pretrained_run: str) -> mlflow.ActiveRun:
    """A new MLflow run, or the interrupted one when its checkpoint was made under the same params and data."""
    use_experiment(params.data.captcha_type)
    current = fingerprint(params, data, pretrained_run)
    has_checkpoint = (CHECKPOINTS / "training_metadata.json").exists()  # BackupAndRestore's, once per round
    if has_checkpoint and FINGERPRINT_FILE.read_text() == current:
        run_id = RUN_ID_FILE.read_text().strip()
        print(f"train: resuming interrupted MLflow run {run_id} from {CHECKPOINTS}")
        return mlflow.start_run(run_id=run_id)
    if has_checkpoint:
        print("train: params, data or pretrained start changed since the interrupted run: starting a new run")
    shutil.rmtree(CHECKPOINTS, ignore_errors=True)
    TRAIN_LOG.unlink(missing_ok=True)
    CHECKPOINTS.mkdir(parents=True)
    run = mlflow.start_run(run_name=f"{params.model.arch}-{time.strftime('%Y%m%d-%H%M%S')}")
    RUN_ID_FILE.write_text(run.info.run_id)
    FINGERPRINT_FILE.write_text(current)
    mlflow.log_params(params.as_flat_dict())
    return run


def pretrained_start(model: keras.Model) -> str:
    """Load the pretrain stage's weights into `model` when it made any; return its MLflow run id ('' if none)."""
    record = json.loads(pretrain.RECORD.read_text())
    if not record["run_id"]:
        return ""
    model.load_weights(pretrain.WEIGHTS)
    print(f"train: starting from the network pretrained on synthetic captchas (MLflow run {record['run_id']})")
    return record["run_id"]


def main() -> None:
    params = load_params()
    data, train = params.data, params.train
    seed_everything(train)
    charset = (SPLIT / "charset.txt").read_text(encoding="utf-8")
    codec = Codec(charset, data.max_length)
    rows = read_manifest(SPLIT / "train.csv")
    images = load_images([p for p, _ in rows], data, desc="load train")
    targets = codec.encode_many(label for _, label in rows)

    channels = CHANNELS[data.color_mode]
    model = build_model(params.model, data.height, data.width, data.max_length, codec.num_classes, channels)
    pretrained_run = pretrained_start(model)
    REPORTS.mkdir(parents=True, exist_ok=True)
    version = data_version()
    with start_run(params, version, pretrained_run) as run:
        device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
        tags = {"device": device, "data_version": version, "arch": params.model.arch, "stage": "train"}
        mlflow.set_tags({**tags, "pretrained_run_id": pretrained_run or "none"})
        if params.model.arch == "ctc":
            log_columns(params)
        log_manifests({"training": SPLIT / "train.csv", "test": SPLIT / "test.csv"})
        summary = fit(model, images, targets, codec.num_classes, params.model.arch, train, TRAIN_LOG, CHECKPOINTS)
        unlabelled = [path for path, _ in read_manifest(UNLABELLED)] if UNLABELLED.exists() else []
        readings: list[tuple[Path, str]] = []
        if unlabelled and train.self_training_steps:
            summary, readings = self_train(model, images, targets, codec, params, unlabelled, summary, TRAIN_LOG)
        write_manifest(READINGS_USED, readings)
        save_model(model, params, codec, run.info.run_id, version)
        mlflow.log_metrics({f"final_{k}": v for k, v in summary.items() if k.startswith("val_")})
        (REPORTS / "train_metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        mlflow.log_artifact(str(TRAIN_LOG))
        hint = not_learning_hint(summary["val_image_accuracy"], summary["train_images"], charset)
        mlflow.set_tags({"learned": "no" if hint else "yes", "weights_sha256": weights_sha256(model)})
    shutil.rmtree(CHECKPOINTS, ignore_errors=True)
    print(f"train: {summary}")
    if hint:
        print(f"\nWARNING train: {hint}\n")


def log_columns(params: Params) -> None:
    """The CTC column width the network was built with, said aloud where it is not model.column_pixels."""
    data, model = params.data, params.model
    pixels = column_pixels_for(model, data.width, data.max_length)
    mlflow.log_param("column_pixels_used", pixels)
    if pixels != model.column_pixels:
        print(
            f"train: {data.width} pixels give too few {model.column_pixels}-pixel columns for {data.max_length} "
            f"characters: the network reads columns of {pixels} pixels ({data.width // pixels} columns)"
        )


def self_train(
    model: keras.Model,
    images: np.ndarray,
    targets: np.ndarray,
    codec: Codec,
    params: Params,
    unlabelled: list[Path],
    first: dict,
    log_csv: Path,
) -> tuple[dict, list[tuple[Path, str]]]:
    """Read the unlabelled images with the trained `model`, then train it on the labels plus the readings it
    is sure of and reads the same in `train.self_training_views` jittered copies, for
    `train.self_training_steps` at half the learning rate, logging its rounds to `log_csv` after the first fit's; the
    summary of both fits, and the readings used."""
    data, train = params.data, params.train
    plain = load_images(unlabelled, data, desc="load unlabelled")
    kept, texts = readings_to_train_on(
        model,
        plain,
        codec,
        data.min_length,
        train.self_training_confidence,
        train.self_training_views,
        seed=train.seed,
        batch_size=params.evaluate.batch_size,
    )
    mlflow.log_params({"self_training.unlabelled_images": len(unlabelled), "self_training.readings_used": len(kept)})
    print(f"train: self-training on {len(kept)} of {len(unlabelled)} unlabelled images, read alike when jittered")
    if not len(kept):
        return first, []
    second = fit(
        model,
        images,
        targets,
        codec.num_classes,
        params.model.arch,
        train.model_copy(update={"steps": train.self_training_steps, "learning_rate": train.learning_rate / 2}),
        log_csv,
        train_only=(plain[kept], codec.encode_many(texts)),
        log_prefix="self_training.",
        first_step=first["steps"],
    )
    summary = {
        **second,
        "steps": first["steps"] + second["steps"],
        "train_seconds": first["train_seconds"] + second["train_seconds"],
        "labelled_train_images": first["train_images"],
        "readings_used": len(kept),
        "val_image_accuracy_before_self_training": first["val_image_accuracy"],
    }
    return summary, [(unlabelled[index], text) for index, text in zip(kept, texts)]


def save_model(model: keras.Model, params: Params, codec: Codec, run_id: str, version: str) -> None:
    data = params.data
    meta = ModelMeta(
        captcha_type=data.captcha_type,
        charset=codec.charset,
        min_length=data.min_length,
        max_length=data.max_length,
        width=data.width,
        height=data.height,
        arch=params.model.arch,
        run_id=run_id,
        data_version=version,
        color_mode=data.color_mode,
    )
    MODELS.mkdir(parents=True, exist_ok=True)  # the folder is shared with other stages' outputs: keep them
    model.save(MODELS / MODEL_FILE)
    meta.write(MODELS)
    mlflow.keras.log_model(
        model,
        name="model",
        signature=signature(meta, codec.num_classes),
        metadata={"captcha": meta.__dict__},
        # Stated rather than inferred: inference reloads the model in a subprocess, slow and noisy.
        pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
    )
    mlflow.log_artifact(str(MODELS / "meta.json"))


if __name__ == "__main__":
    main()
