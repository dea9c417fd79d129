"""How a network is fitted, shared by the `pretrain` and `train` stages.

The budget is `train.steps` optimizer steps, whatever the number of images: 1,000 labelled images get as
many updates as 20,000 generated ones, where an epoch budget gave them 1/20 as many and stopped a run before it
had started learning. Validation runs every `train.validate_every` steps; a Keras "epoch" is that interval.

The model kept is the last round's, at the end of the learning-rate schedule, not the round that read its
validation set best: with the few dozen validation images of a few hundred labels that "best" is a lucky
round, earlier and at a higher learning rate (1,000 overlap6 labels: the best round read 0.9325 of 400 test
images, the last 0.9625; README, "Which weights are kept").
"""

from __future__ import annotations

import csv
import functools
import hashlib
import math
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf

from captcha_mlops.labels import Codec
from captcha_mlops.metrics import char_accuracy, image_accuracy
from captcha_mlops.model import ctc_loss, on_decoded, training_model
from captcha_mlops.params import TrainParams

# Fewer images than this many batches' worth halve the batch (down to SMALLEST_BATCH): a small set is seen
# in more, noisier steps, which generalizes better than a few large ones (bench/results/learning_curve.json).
BATCHES_PER_PASS = 16
SMALLEST_BATCH = 16
# A validation set smaller than this is too coarse to stop on (one image of 10 moves accuracy by 0.1).
SMALLEST_VALIDATION = 30
# Fewer validation images than this cannot tell a plateau from noise: one image moves accuracy by over 0.005.
TELLING_VALIDATION = 200
# Below this validation image accuracy, a run has not learned to read (see `not_learning_hint`).
NOT_LEARNING = 0.05
VALIDATION_BATCH = 256
BATCH_NORM_SAMPLE = 1024  # training images batch-norm statistics are measured on before each validation


def seed_everything(train: TrainParams) -> None:
    """Seed Python, NumPy and TensorFlow with `train.seed`; with `train.deterministic`, also make every op and
    the input pipeline repeatable, so that the same data, params and code train the same weights on the same
    machine and `dvc repro` reproduces a model.

    Without it the augmentation, mapped over batches in parallel, draws its random numbers in whichever order
    its threads happen to run: two trainings of one seed read overlap6's 400 test images up to 0.015 apart
    (README, "Repeatable training"). TensorFlow then runs that map one batch at a time and picks deterministic
    kernels: 1.0x to 1.26x the training seconds in two runs on 2 cores (bench/repeatability.py). The switch is
    for the whole process and cannot be turned off again.
    """
    keras.utils.set_random_seed(train.seed)
    if train.deterministic:
        tf.config.experimental.enable_op_determinism()


def weights_sha256(model: keras.Model) -> str:
    """A fingerprint of `model`'s weights: two trainings trained the same network when theirs are equal (the
    `train` stage tags its MLflow run with it)."""
    return hashlib.sha256(b"".join(weights.tobytes() for weights in model.get_weights())).hexdigest()


# CPU flags (/proc/cpuinfo) of instructions that multiply bfloat16 natively: AMX (Intel Sapphire Rapids on) and
# AVX-512's bfloat16 dot products (AMD Zen 4 on, Intel Cooper Lake).
BFLOAT16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def resolve_precision(precision: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """`train.precision` made concrete: "auto" is mixed_bfloat16 where the hardware computes bfloat16 natively.

    That is a GPU of compute capability 8 or more (Ampere on), or, without a GPU, a CPU with one of
    BFLOAT16_CPU_FLAGS: one training step took 0.72x the float32 time with AMX and 0.71x with AVX-512's
    bfloat16 (README, "Time"). Elsewhere bfloat16 is emulated, so "auto" is float32.
    """
    if precision != "auto":
        return precision
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))
        return "mixed_bfloat16" if capability >= (8, 0) else "float32"
    return "mixed_bfloat16" if cpu_flags(cpuinfo) & BFLOAT16_CPU_FLAGS else "float32"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's instruction-set flags: the first `flags` line of /proc/cpuinfo (none where there is none)."""
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return frozenset(next((line.partition(":")[2].split() for line in lines if line.startswith("flags")), []))


def computing_in(model: keras.Model, precision: str) -> keras.Model:
    """`model` itself for float32; else a copy of it, weights included, whose layers compute in `precision`.

    The variables stay float32 (Keras' mixed policies), and so do the output layers: the loss and the
    metrics read float32 scores. `fit` copies the copy's weights back into `model` every round, so the model
    saved and served is the float32 network, whatever trained it.
    """
    if precision == "float32":
        return model
    outputs = {layer.name for layer in model.layers if any(layer.output is output for output in model.outputs)}

    def in_precision(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if layer.name not in outputs:
            config["dtype"] = precision
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=in_precision)
    copy.set_weights(model.get_weights())
    return copy


def batch_size_for(train_images: int, largest: int) -> int:
    """`largest`, halved while the set holds fewer than BATCHES_PER_PASS batches (never below SMALLEST_BATCH)."""
    size = largest
    while size > SMALLEST_BATCH and size * BATCHES_PER_PASS > train_images:
        size //= 2
    return size


def validation_count(images: int, ratio: float) -> int:
    """`ratio` of the images, but at least SMALLEST_VALIDATION where that leaves 4/5 of them to train on."""
    return max(1, round(images * ratio), min(SMALLEST_VALIDATION, images // 5))


def validation_split(images: int, train: TrainParams) -> tuple[np.ndarray, np.ndarray]:
    """The (validation, training) indices of `images` images: a permutation seeded by `train.seed`, its first
    `validation_count` held out, so the same images and seed always hold out the same ones."""
    order = np.random.default_rng(train.seed).permutation(images)
    held_out = validation_count(images, train.validation_ratio)
    return order[:held_out], order[held_out:]


def make_dataset(
    images: np.ndarray,
    targets: np.ndarray,
    num_classes: int,
    batch_size: int,
    *,
    training: bool,
    seed: int,
    augment: bool = True,
) -> tf.data.Dataset:
    """Batches of (uint8 image, one-hot target); for training shuffled, endless and (`augment`) augmented."""
    dataset = tf.data.Dataset.from_tensor_slices((images, targets))
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).repeat()
    dataset = dataset.batch(batch_size)
    jitter = augmentation(seed) if training and augment else None

    def prepare(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return (x if jitter is None else jittered(jitter, x)), tf.one_hot(y, num_classes)

    return dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def batch_norm_dataset(
    images: np.ndarray, targets: np.ndarray, train_idx: np.ndarray, num_classes: int
) -> tf.data.Dataset:
    """The images `FreshBatchNorm` measures batch-norm statistics on before each validation: the first
    BATCH_NORM_SAMPLE training images, as they are (not augmented)."""
    sample = train_idx[:BATCH_NORM_SAMPLE]
    return make_dataset(images[sample], targets[sample], num_classes, VALIDATION_BATCH, training=False, seed=0)


def jittered(jitter: keras.Sequential, images: tf.Tensor) -> tf.Tensor:
    """A batch of uint8 images through `jitter` (an `augmentation`), back to uint8."""
    return tf.cast(tf.clip_by_value(tf.round(jitter(tf.cast(images, tf.float32), training=True)), 0, 255), tf.uint8)


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


def compile_model(model: keras.Model, train: TrainParams, steps: int, arch: str) -> None:
    """Loss, metrics and optimizer for `steps` optimizer steps.

    The learning rate warms up over the first tenth of the steps (early batch-norm statistics are wild), then
    follows a cosine to 1% of its peak. Gradients are clipped to norm 1: CTC through the GRU now and then
    gives a batch a gradient tens of times the usual size, and one such step at the peak rate undid epochs of
    validation accuracy (0.74 -> 0.28 in the main job before clipping).
    """
    metrics = [char_accuracy, image_accuracy]
    if arch == "seed":
        # As the original: independent sigmoids, binary cross-entropy, Adam at a fixed 1e-4.
        model.compile(keras.optimizers.Adam(1e-4), keras.losses.BinaryCrossentropy(), metrics=metrics)
        return
    warmup = max(1, steps // 10)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=train.learning_rate / 10,
        warmup_target=train.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(1, steps - warmup),
        alpha=0.01,
    )
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=train.label_smoothing)
    if arch == "ctc":
        loss, metrics = ctc_loss, [on_decoded(metric) for metric in metrics]
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=train.weight_decay, global_clipnorm=1.0)
    model.compile(optimizer, loss, metrics=metrics)


def steps_per_round(train: TrainParams) -> int:
    """Steps between validations: `validate_every`, or the whole budget when that is smaller."""
    return min(train.validate_every, train.steps)


def validation_rounds(train: TrainParams) -> int:
    """Validation rounds in the budget; the budget is rounded up to a whole number of them."""
    return math.ceil(train.steps / steps_per_round(train))


class CopyWeights(keras.callbacks.Callback):
    """After each round, the weights of the network being fitted into `target` (see `computing_in`)."""

    def __init__(self, target: keras.Model) -> None:
        super().__init__()
        self.target = target

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.target.set_weights(self.model.get_weights())


class StepLog(keras.callbacks.Callback):
    """Every validation round's metrics, by optimizer step: to MLflow and to a CSV file (`dvc plots`)."""

    def __init__(self, csv_path: Path, every_n_steps: int, first_step: int = 0) -> None:
        super().__init__()
        self.csv_path = csv_path
        self.every_n_steps = every_n_steps
        self.first_step = first_step  # where a second fit in the same run (self-training) goes on from

    def step(self) -> int:
        return self.first_step + int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        step = self.step()
        if logs and step % self.every_n_steps == 0:
            mlflow.log_metrics({f"step_{k}": float(v) for k, v in logs.items()}, step=step, synchronous=False)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        row = {"step": self.step(), **{k: round(float(v), 5) for k, v in (logs or {}).items()}}
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        # Synchronous, and before BackupAndRestore saves the round: a crash must not lose a round it calls done.
        mlflow.log_metrics({k: v for k, v in row.items() if k != "step"}, step=row["step"])
        is_new = not self.csv_path.exists()
        with self.csv_path.open("a", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(row))
            if is_new:
                writer.writeheader()
            writer.writerow(row)


class FreshBatchNorm(keras.callbacks.Callback):
    """Before each validation, batch-norm statistics measured under the current weights.

    Batch norm's moving averages trail weights that change fast, so a network validated on them reads worse
    than it is, and by a different amount each round: in the main job validation image accuracy went
    0.78 -> 0.64 between steps 300 and 350 while the same weights with statistics measured afresh went
    0.87 -> 0.90 (README, Results). The statistics are the plain mean over `images` (a fixed sample of
    unaugmented training images); validation, the stops, the saved model and serving all use them.
    """

    def __init__(self, images: tf.data.Dataset) -> None:
        super().__init__()
        self.images = images

    def on_test_begin(self, logs: dict | None = None) -> None:
        norms = [layer for layer in self.model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        momenta = [layer.momentum for layer in norms]
        for count, (batch, _) in enumerate(self.images if norms else [], start=1):
            for layer in norms:
                layer.momentum = (count - 1) / count  # the running mean of the batches' statistics
            self.model(batch, training=True)
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum


class PlateauStop(keras.callbacks.Callback):
    """Stop once validation has not improved for `patience_steps`, where the validation set can tell.

    Better is a higher validation image accuracy, or the same with a lower validation loss. It takes at least
    TELLING_VALIDATION images to tell: on the 30 to 50 images of a few hundred labels' validation set one image
    moves accuracy by 0.02 to 0.03, a "plateau" is noise, and a stop there ends the run before the low learning
    rates at the end of the schedule, where test accuracy still rose while validation read flat
    (README, "Which weights are kept"). Patience only counts once the run has read some validation captcha
    right (a run still at 0 has not started learning), and not before `start_step`, while the warm-up's high
    learning rate still shakes validation accuracy. The weights kept are those of the last round either way.
    """

    def __init__(self, patience_steps: int, start_step: int, validation_images: int) -> None:
        super().__init__()
        self.patience_steps = patience_steps
        self.start_step = start_step
        self.active = validation_images >= TELLING_VALIDATION
        self.best = (0.0, -math.inf)  # (validation image accuracy, -validation loss)
        self.best_step = 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        score = (float(logs.get("val_image_accuracy", 0.0)), -float(logs.get("val_loss", math.inf)))
        step = int(self.model.optimizer.iterations.numpy())
        if score > self.best:
            self.best, self.best_step = score, step
            return
        waited = step - self.best_step
        if self.active and self.best[0] > 0 and step >= self.start_step and waited >= self.patience_steps:
            print(f"\nno validation improvement for {waited} steps: stopping")
            self.model.stop_training = True


class StopAtAccuracy(keras.callbacks.Callback):
    """The seed's acc_stop: good enough is good enough, where the validation set can tell.

    Fewer than 1 / (1 - target) validation images cannot: 48 images read all right say little about 0.995,
    and stopping there ended a 1,000-label run at step 700 of 1,500 with 0.97 test accuracy.
    """

    def __init__(self, target: float, validation_images: int) -> None:
        super().__init__()
        self.target = target
        self.active = target < 1 and validation_images >= 1 / (1 - target)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.active and (logs or {}).get("val_image_accuracy", 0.0) >= self.target:
            print(f"\nval_image_accuracy reached acc_stop={self.target}: stopping")
            self.model.stop_training = True


class TimeBudget(keras.callbacks.Callback):
    """Stop after the first validation round that ends past `minutes` (to compare models at equal cost)."""

    def __init__(self, minutes: float) -> None:
        super().__init__()
        self.seconds = minutes * 60
        self.started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.seconds and time.monotonic() - self.started >= self.seconds:
            print(f"\ntime budget of {self.seconds / 60:g} minutes used: stopping")
            self.model.stop_training = True


def stops(train: TrainParams, validation_images: int) -> list[keras.callbacks.Callback]:
    """The ways a run ends before its budget: plateau, target accuracy, wall-clock time."""
    return [
        PlateauStop(train.patience_steps, start_step=train.steps // 3, validation_images=validation_images),
        StopAtAccuracy(train.acc_stop, validation_images),
        TimeBudget(train.max_minutes),
    ]


def not_learning_hint(val_image_accuracy: float, train_images: int, charset: str) -> str | None:
    """What to check when a run did not learn to read (None when it did)."""
    if val_image_accuracy >= NOT_LEARNING:
        return None
    return (
        f"training did not learn to read: validation image accuracy {val_image_accuracy:.3f} "
        f"after training on {train_images} images. Check, in this order:\n"
        "  - labels: open a few images in data/split/train.csv and compare them with their label;\n"
        f"  - charset: {len(charset)} characters in data/split/charset.txt ({charset[:60]!r}); a wrong "
        "data.charset or mixed-case labels double the classes;\n"
        "  - image size and length: data.width/height should keep the characters legible, "
        "data.min_length/max_length match the labels;\n"
        "  - more labels: see the README's 'How many images do I need?'."
    )


def pseudo_labels(
    probabilities: np.ndarray, codec: Codec, min_length: int, confidence: float
) -> tuple[np.ndarray, list[str]]:
    """Which of a network's readings to train on as labels, and their text: those of a possible length
    whose every character was read at least `confidence` sure (`readings_to_train_on` also asks them to hold
    in jittered copies of the image)."""
    kept, texts = [], []
    for index, scores in enumerate(probabilities):
        text, confidences = codec.decode(scores)
        if len(text) >= min_length and min(confidences) >= confidence:
            kept.append(index)
            texts.append(text)
    return np.array(kept, dtype=np.int64), texts


def readings_to_train_on(
    model: keras.Model,
    images: np.ndarray,
    codec: Codec,
    min_length: int,
    confidence: float,
    views: int,
    seed: int,
    batch_size: int = VALIDATION_BATCH,
) -> tuple[np.ndarray, list[str]]:
    """`pseudo_labels` of `model`'s readings of `images`, less those it reads otherwise in any of `views` jittered
    copies of the image (training's own augmentation, a new draw per view).

    Its confidence alone is a poor guide: a network that has learned its labels by heart is sure of most of its
    misreadings, and a wrong reading trained on teaches it its own mistake. A misreading rarely survives being
    read again shifted and turned a little; a right one does. On overlap6 (1,000 labels, 4,000 unlabelled
    images, bench/self_training.py) 97.6 to 98.2% of the readings sure at 0.9 were right, 99.2 to 99.4% of those
    that held in 4 copies, and more images held than were that sure (README, "Which readings to train on").
    """
    probabilities = model.predict(images, batch_size=batch_size, verbose=0)
    kept, texts = pseudo_labels(probabilities, codec, min_length, confidence)
    jitter = augmentation(seed)
    for _ in range(views):
        if not len(kept):
            break
        again = readings_of_copies(model, images[kept], codec, jitter, batch_size)
        same = [index for index, (text, other) in enumerate(zip(texts, again)) if text == other]
        kept, texts = kept[same], [texts[index] for index in same]
    return kept, texts


def readings_of_copies(
    model: keras.Model, images: np.ndarray, codec: Codec, jitter: keras.Sequential, batch_size: int = VALIDATION_BATCH
) -> list[str]:
    """`model`'s reading of each of `images` through a new draw of `jitter` (an `augmentation`)."""
    copies = tf.data.Dataset.from_tensor_slices(images).batch(batch_size).map(functools.partial(jittered, jitter))
    return [codec.decode(scores)[0] for scores in model.predict(copies, verbose=0)]


def fit(
    model: keras.Model,
    images: np.ndarray,
    targets: np.ndarray,
    num_classes: int,
    arch: str,
    train: TrainParams,
    log_csv: Path,
    checkpoints: Path | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    train_only: tuple[np.ndarray, np.ndarray] | None = None,
    log_prefix: str = "",
    first_step: int = 0,
) -> dict[str, float]:
    """Train `model` for `train.steps` steps (or until a stop), hold out a validation set, return a summary
    (the validation accuracies are the last round's: the weights `model` is left with).

    `checkpoints`: a folder to save every validation round to and resume from after an interruption.
    `callbacks`: more Keras callbacks (benchmarks, tests), called after the stops have read each round.
    `train_only`: more (images, targets) to train on but never to validate on (self-training's readings).
    `log_prefix`, `first_step`: for a second fit in the same MLflow run, its params' prefix and first step.
    """
    val_idx, train_idx = validation_split(len(images), train)
    n_val = len(val_idx)
    train_images, train_targets = images[train_idx], targets[train_idx]
    if train_only is not None:
        train_images = np.concatenate([train_images, train_only[0]])
        train_targets = np.concatenate([train_targets, train_only[1]])
    batch_size = batch_size_for(len(train_images), train.batch_size)  # the largest, for a large set
    train_ds = make_dataset(
        train_images,
        train_targets,
        num_classes,
        batch_size,
        training=True,
        seed=train.seed,
        augment=train.augment,
    )
    val_ds = make_dataset(
        images[val_idx], targets[val_idx], num_classes, VALIDATION_BATCH, training=False, seed=train.seed
    )
    trained = training_model(model)  # shares the model's layers: fitting it trains the model
    precision = resolve_precision(train.precision)
    fitted = computing_in(trained, precision)
    compile_model(fitted, train, validation_rounds(train) * steps_per_round(train), arch)
    used = {
        "train_images": len(train_images),
        "validation_images": n_val,
        "batch_size_used": batch_size,
        "precision_used": precision,
    }
    mlflow.log_params({f"{log_prefix}{key}": value for key, value in used.items()}, synchronous=False)
    print(
        f"fit: {len(train_images)} train / {n_val} validation images, batch {batch_size}, "
        f"{train.steps} steps, {precision}"
    )
    norm_ds = batch_norm_dataset(images, targets, train_idx, num_classes)
    every_round = [FreshBatchNorm(norm_ds), StepLog(log_csv, train.log_every_n_steps, first_step), *stops(train, n_val)]
    if fitted is not trained:
        every_round.append(CopyWeights(trained))
    every_round += callbacks
    if checkpoints is not None:  # last, so a saved round has already been logged
        every_round.append(keras.callbacks.BackupAndRestore(str(checkpoints)))
    started = time.monotonic()
    try:
        history = fitted.fit(
            train_ds,
            validation_data=val_ds,
            epochs=validation_rounds(train),
            steps_per_epoch=steps_per_round(train),
            shuffle=False,  # make_dataset shuffles, reproducibly for train.seed
            verbose=2,
            callbacks=every_round,
        )
    except tf.errors.UnimplementedError as error:
        if train.deterministic and "determinism" in str(error).lower():
            raise RuntimeError(
                f"{error.message}\nThis device has no repeatable kernel for an op the network uses: "
                "set train.deterministic: false in params.yaml to train with the faster, unrepeatable one."
            ) from error
        raise
    return {
        "steps": int(fitted.optimizer.iterations.numpy()),
        "batch_size": batch_size,
        "train_images": len(train_images),
        "train_seconds": round(time.monotonic() - started, 1),
        # The kept model's: the last round's.
        "val_image_accuracy": history.history["val_image_accuracy"][-1],
        "val_char_accuracy": history.history["val_char_accuracy"][-1],
    }
