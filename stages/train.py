"""Stage 3: train the CNN on the train manifest, tracked in MLflow; write models/ (model.keras + meta.json).

Checkpoints go to checkpoints/ every epoch; if training is interrupted, the next run resumes from the
last one, in the same MLflow run. Training stops at `train.epochs`, when validation image accuracy
reaches `train.acc_stop`, after `train.patience` epochs without improvement, or once `train.max_minutes`
are used; the best weights by validation image accuracy are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from captcha_mlops.dataset import load_images, read_manifest
from captcha_mlops.labels import Codec
from captcha_mlops.metrics import char_accuracy, image_accuracy
from captcha_mlops.model import build_model, ctc_loss, on_decoded, training_model
from captcha_mlops.params import Params, TrainParams, load_params
from captcha_mlops.paths import MODELS, REPORTS, ROOT, SPLIT
from captcha_mlops.recognizer import MODEL_FILE, ModelMeta
from captcha_mlops.tracking import use_experiment

CHECKPOINTS = ROOT / "checkpoints" / "train"
RUN_ID_FILE = CHECKPOINTS / "mlflow_run_id"
TRAIN_LOG = REPORTS / "train_log.csv"


class MlflowLogger(keras.callbacks.Callback):
    """Training loss/accuracies every N optimizer steps, and every epoch's train + validation metrics."""

    def __init__(self, every_n_steps: int) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        step = int(self.model.optimizer.iterations.numpy())
        if logs and step % self.every_n_steps == 0:
            mlflow.log_metrics({f"step_{k}": float(v) for k, v in logs.items()}, step=step, synchronous=False)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = {k: float(v) for k, v in (logs or {}).items()}
        metrics["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        mlflow.log_metrics(metrics, step=epoch + 1, synchronous=False)


class StopAtAccuracy(keras.callbacks.Callback):
    """The seed's acc_stop: good enough is good enough."""

    def __init__(self, target: float) -> None:
        super().__init__()
        self.target = target

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if (logs or {}).get("val_image_accuracy", 0.0) >= self.target:
            print(f"\nval_image_accuracy reached acc_stop={self.target}: stopping")
            self.model.stop_training = True


class TimeBudget(keras.callbacks.Callback):
    """Stop after the first epoch that ends past `minutes` (used to compare models at equal cost)."""

    def __init__(self, minutes: float) -> None:
        super().__init__()
        self.seconds = minutes * 60
        self.started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.seconds and time.monotonic() - self.started >= self.seconds:
            print(f"\ntime budget of {self.seconds / 60:g} minutes used: stopping")
            self.model.stop_training = True


def make_dataset(
    images: np.ndarray, targets: np.ndarray, num_classes: int, batch_size: int, *, training: bool, seed: int
) -> tf.data.Dataset:
    dataset = tf.data.Dataset.from_tensor_slices((images, targets))
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    augment = augmentation(seed) if training else None

    def prepare(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if augment is not None:
            x = tf.cast(tf.clip_by_value(tf.round(augment(tf.cast(x, tf.float32), training=True)), 0, 255), tf.uint8)
        return x, tf.one_hot(y, num_classes)

    return dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def augmentation(seed: int) -> keras.Sequential:
    """Small geometric and contrast jitter: real sites crop and scale captchas a little differently."""
    return keras.Sequential(
        [
            keras.layers.RandomTranslation(0.06, 0.04, fill_mode="nearest", seed=seed),
            keras.layers.RandomRotation(0.015, fill_mode="nearest", seed=seed),
            keras.layers.RandomContrast(0.2, value_range=(0, 255), seed=seed),
        ],
        name="augment",
    )


def compile_model(model: keras.Model, train: TrainParams, steps_per_epoch: int, arch: str) -> None:
    metrics = [char_accuracy, image_accuracy]
    if arch == "seed":
        # As the original: independent sigmoids, binary cross-entropy, Adam at a fixed 1e-4.
        model.compile(keras.optimizers.Adam(1e-4), keras.losses.BinaryCrossentropy(), metrics=metrics)
        return
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=train.learning_rate / 10,
        warmup_target=train.learning_rate,
        warmup_steps=steps_per_epoch,  # one epoch of warm-up keeps early batch-norm statistics sane
        decay_steps=max(1, steps_per_epoch * (train.epochs - 1)),
        alpha=0.01,
    )
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=train.label_smoothing)
    if arch == "ctc":
        loss, metrics = ctc_loss, [on_decoded(metric) for metric in metrics]
    model.compile(keras.optimizers.AdamW(schedule, weight_decay=1e-4), loss, metrics=metrics)


def signature(meta: ModelMeta, num_classes: int) -> ModelSignature:
    image = TensorSpec(np.dtype(np.uint8), (-1, meta.height, meta.width, 1), "image")
    chars = TensorSpec(np.dtype(np.float32), (-1, meta.max_length, num_classes), "chars")
    return ModelSignature(inputs=Schema([image]), outputs=Schema([chars]))


def data_version() -> str:
    """A short hash of the split manifests and charset: which images trained and tested the model."""
    digest = hashlib.sha256()
    for name in ("train.csv", "test.csv", "charset.txt"):
        digest.update((SPLIT / name).read_bytes())
    return digest.hexdigest()[:12]


def start_run(params: Params) -> mlflow.ActiveRun:
    """A new MLflow run, or the interrupted one when its checkpoint is still there."""
    use_experiment(params.data.name)
    if RUN_ID_FILE.exists() and any(CHECKPOINTS.glob("*.weights.h5")):
        run_id = RUN_ID_FILE.read_text().strip()
        print(f"train: resuming interrupted MLflow run {run_id} from {CHECKPOINTS}")
        return mlflow.start_run(run_id=run_id)
    shutil.rmtree(CHECKPOINTS, ignore_errors=True)
    TRAIN_LOG.unlink(missing_ok=True)
    CHECKPOINTS.mkdir(parents=True)
    run = mlflow.start_run(run_name=f"{params.model.arch}-{time.strftime('%Y%m%d-%H%M%S')}")
    RUN_ID_FILE.write_text(run.info.run_id)
    mlflow.log_params(params.as_flat_dict())
    return run


def main() -> None:
    params = load_params()
    data, train = params.data, params.train
    keras.utils.set_random_seed(train.seed)
    charset = (SPLIT / "charset.txt").read_text(encoding="utf-8")
    codec = Codec(charset, data.max_length)

    rows = read_manifest(SPLIT / "train.csv")
    order = np.random.default_rng(train.seed).permutation(len(rows))
    n_val = max(1, round(len(rows) * train.validation_ratio))
    images = load_images([p for p, _ in rows], data.width, data.height, desc="load train")
    targets = codec.encode_many(label for _, label in rows)
    val_idx, train_idx = order[:n_val], order[n_val:]
    train_ds = make_dataset(
        images[train_idx],
        targets[train_idx],
        codec.num_classes,
        train.batch_size,
        training=train.augment,
        seed=train.seed,
    )
    val_ds = make_dataset(images[val_idx], targets[val_idx], codec.num_classes, 256, training=False, seed=train.seed)
    steps_per_epoch = int(np.ceil(len(train_idx) / train.batch_size))

    model = build_model(params.model, data.height, data.width, data.max_length, codec.num_classes)
    trained = training_model(model)  # shares the model's layers: fitting it trains the model
    compile_model(trained, train, steps_per_epoch, params.model.arch)
    REPORTS.mkdir(parents=True, exist_ok=True)

    with start_run(params) as run:
        device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
        mlflow.set_tags({"device": device, "data_version": data_version(), "arch": params.model.arch})
        mlflow.log_params({"train_images": len(train_idx), "validation_images": n_val}, synchronous=False)
        print(f"train: {len(train_idx)} train / {n_val} validation images on {device}, run {run.info.run_id}")
        started = time.monotonic()
        history = trained.fit(
            train_ds,
            validation_data=val_ds,
            epochs=train.epochs,
            shuffle=False,  # make_dataset shuffles, reproducibly for train.seed
            verbose=2,
            callbacks=[
                keras.callbacks.BackupAndRestore(str(CHECKPOINTS)),
                MlflowLogger(train.log_every_n_steps),
                keras.callbacks.CSVLogger(str(TRAIN_LOG), append=True),
                StopAtAccuracy(train.acc_stop),
                TimeBudget(train.max_minutes),
                keras.callbacks.EarlyStopping(
                    "val_image_accuracy", mode="max", patience=train.patience, restore_best_weights=True
                ),
            ],
        )
        seconds = time.monotonic() - started
        save_model(model, params, codec, run.info.run_id)
        summary = {
            "epochs": len(history.history["loss"]),
            "train_seconds": round(seconds, 1),
            "val_image_accuracy": max(history.history["val_image_accuracy"]),
            "val_char_accuracy": max(history.history["val_char_accuracy"]),
        }
        mlflow.log_metrics({f"best_{k}": v for k, v in summary.items() if k.startswith("val_")})
        (REPORTS / "train_metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        mlflow.log_artifact(str(TRAIN_LOG))
    shutil.rmtree(CHECKPOINTS, ignore_errors=True)
    print(f"train: {summary}")


def save_model(model: keras.Model, params: Params, codec: Codec, run_id: str) -> None:
    data = params.data
    meta = ModelMeta(
        name=data.name,
        charset=codec.charset,
        min_length=data.min_length,
        max_length=data.max_length,
        width=data.width,
        height=data.height,
        arch=params.model.arch,
        run_id=run_id,
        data_version=data_version(),
    )
    shutil.rmtree(MODELS, ignore_errors=True)
    MODELS.mkdir(parents=True)
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
