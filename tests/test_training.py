"""The training loop: a budget in steps whatever the data size, small batches for small sets, stops that
never end a run which has not started learning, and a clear word when a run learned nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest

from captcha_mlops.labels import Codec
from captcha_mlops.model import build_model, training_model
from captcha_mlops.params import ModelParams, TrainParams
from captcha_mlops.training import (
    FreshBatchNorm,
    PlateauStop,
    StopAtAccuracy,
    batch_size_for,
    computing_in,
    fit,
    make_dataset,
    not_learning_hint,
    pseudo_labels,
    readings_to_train_on,
    resolve_precision,
    validation_count,
    validation_split,
)

CODEC = Codec("0123456789", max_length=4)


def random_set(count: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, 32, 64, 1), dtype=np.uint8)
    labels = ["".join(rng.choice(list(CODEC.charset), 4)) for _ in range(count)]
    return images, CODEC.encode_many(labels)


@pytest.mark.parametrize(("count", "steps", "logged_at"), [(60, 12, [4, 8, 12]), (600, 12, [4, 8, 12]), (60, 3, [3])])
def test_the_budget_is_optimizer_steps_whatever_the_number_of_images(
    count: int, steps: int, logged_at: list[int], tmp_path: Path
) -> None:
    images, targets = random_set(count)
    model = build_model(ModelParams(filters=[8, 8, 8]), 32, 64, CODEC.max_length, CODEC.num_classes)
    train = TrainParams(steps=steps, validate_every=4, batch_size=64, acc_stop=1.1, log_every_n_steps=1)

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("budget")  # not the experiment another test left active, which this store lacks
    with mlflow.start_run():
        summary = fit(model, images, targets, CODEC.num_classes, "ctc", train, tmp_path / "log.csv")

    assert summary["steps"] == steps  # a budget below validate_every is one shorter round, not a longer one
    logged = np.genfromtxt(tmp_path / "log.csv", delimiter=",", names=True, ndmin=1)
    assert [int(step) for step in logged["step"]] == logged_at
    assert summary["batch_size"] == batch_size_for(summary["train_images"], 64)


@pytest.mark.parametrize(
    ("flags", "auto"),
    [
        ("fpu sse2 avx2 fma", "float32"),  # AVX2 only: bfloat16 would be emulated
        ("avx2 avx512f avx512_vnni", "float32"),  # AVX-512 without its bfloat16 instructions
        ("avx2 avx512f avx512_bf16", "mixed_bfloat16"),  # AMD Zen 4
        ("avx512f avx512_bf16 amx_bf16 amx_tile", "mixed_bfloat16"),  # Intel Sapphire Rapids
    ],
)
def test_auto_precision_is_bfloat16_only_where_the_cpu_multiplies_it_natively(
    tmp_path: Path, flags: str, auto: str
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: a CPU\nflags\t\t: {flags}\n")
    assert resolve_precision("auto", cpuinfo) == auto
    assert resolve_precision("float32", cpuinfo) == "float32"  # what a user sets stays
    assert resolve_precision("auto", tmp_path / "no-cpuinfo") == "float32"  # not Linux


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_the_model_kept_is_the_last_rounds(tmp_path: Path, precision: str) -> None:
    images, targets = random_set(60)
    model = build_model(ModelParams(filters=[8, 8, 8]), 32, 64, CODEC.max_length, CODEC.num_classes)
    rounds: list[list[np.ndarray]] = []

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            rounds.append(self.model.get_weights())

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("kept")
    train = TrainParams(steps=12, validate_every=4, precision=precision)
    with mlflow.start_run():
        fit(model, images, targets, CODEC.num_classes, "ctc", train, tmp_path / "log", callbacks=[Snapshot()])

    assert len(rounds) == 3
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}  # what is saved and served
    kept = training_model(model).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(kept, rounds[-1]))
    assert not all(np.array_equal(a, b) for a, b in zip(kept, rounds[0]))


def test_small_sets_get_small_batches() -> None:
    assert batch_size_for(19_000, 128) == 128
    assert batch_size_for(950, 128) == 32  # a site's 1,000 labels: ~30 updates per pass
    assert batch_size_for(100, 128) == 16  # never below 16: batch norm needs a few images
    assert batch_size_for(100, 8) == 8  # a smaller largest is kept


def test_validation_is_large_enough_to_stop_on() -> None:
    assert validation_count(20_000, 0.05) == 1000
    assert validation_count(950, 0.05) == 48
    assert validation_count(200, 0.05) == 30  # 5% would be 10: one image would move accuracy by 0.1
    assert validation_count(40, 0.05) == 8  # at most a fifth of a tiny set


def test_the_same_images_and_seed_hold_out_the_same_validation_images() -> None:
    held_out, trained_on = validation_split(950, TrainParams(seed=3))
    assert len(held_out) == validation_count(950, 0.05)
    assert sorted([*held_out, *trained_on]) == list(range(950))  # every image once
    again, _ = validation_split(950, TrainParams(seed=3))
    other, _ = validation_split(950, TrainParams(seed=4))
    assert list(again) == list(held_out) and list(other) != list(held_out)


class Round:
    """Drives a PlateauStop as `fit` would: one validation round at a time."""

    def __init__(self, stop: PlateauStop, steps_per_round: int) -> None:
        self.model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        self.model.compile("sgd", "mse")
        self.model.stop_training = False
        self.stop, self.steps_per_round = stop, steps_per_round
        stop.set_model(self.model)

    def __call__(self, accuracy: float, loss: float = 1.0) -> bool:
        self.model.optimizer.iterations.assign_add(self.steps_per_round)
        self.stop.on_epoch_end(0, {"val_image_accuracy": accuracy, "val_loss": loss})
        return self.model.stop_training


def test_plateau_stop_waits_while_nothing_is_learned_then_stops_on_a_plateau() -> None:
    rounds = Round(PlateauStop(patience_steps=300, start_step=0, validation_images=1000), steps_per_round=100)
    assert not any(rounds(0.0) for _ in range(20)), "2,000 steps at 0: not started learning, not a plateau"
    assert not rounds(0.4)
    assert not rounds(0.6)
    assert not rounds(0.5)
    assert not rounds(0.55)
    assert rounds(0.58), "300 steps without beating 0.6"


def test_plateau_stop_does_not_stop_during_the_first_part_of_the_budget() -> None:
    rounds = Round(PlateauStop(patience_steps=100, start_step=1000, validation_images=1000), steps_per_round=100)
    assert not rounds(0.3)
    assert not any(rounds(0.2) for _ in range(8)), "before step 1000"
    assert rounds(0.2)


def test_plateau_stop_counts_the_same_accuracy_with_a_lower_loss_as_progress() -> None:
    rounds = Round(PlateauStop(patience_steps=300, start_step=0, validation_images=1000), steps_per_round=100)
    assert not any(rounds(0.9, loss) for loss in (0.5, 0.4, 0.3, 0.2, 0.1))
    assert not rounds(0.9, 0.2)
    assert not rounds(0.9, 0.2)
    assert rounds(0.9, 0.2), "300 steps without beating (0.9, 0.1)"


def test_plateau_stop_needs_a_validation_set_that_can_tell_a_plateau() -> None:
    rounds = Round(PlateauStop(patience_steps=100, start_step=0, validation_images=48), steps_per_round=100)
    assert not rounds(0.98)
    assert not any(rounds(0.96) for _ in range(10)), "48 images: one image is 0.02, a flat stretch is noise"


def test_acc_stop_needs_a_validation_set_that_can_measure_it() -> None:
    assert StopAtAccuracy(0.995, validation_images=1000).active
    assert not StopAtAccuracy(0.995, validation_images=48).active  # all 48 right says little about 0.995
    assert StopAtAccuracy(0.9, validation_images=48).active
    assert not StopAtAccuracy(1.1, validation_images=10**6).active  # a target above 1 turns it off


def test_a_run_that_learned_nothing_is_told_what_to_check() -> None:
    hint = not_learning_hint(0.0, 190, "23456789ABC")
    assert hint is not None
    for check in ("labels", "charset", "data.width", "more labels", "190 images"):
        assert check in hint
    assert not_learning_hint(0.5, 190, "23456789ABC") is None


def test_validation_sees_batch_norm_statistics_of_the_current_weights() -> None:
    images, targets = random_set(64)
    model = build_model(ModelParams(filters=[8, 8, 8]), 32, 64, CODEC.max_length, CODEC.num_classes)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:  # statistics of weights long gone
        layer.moving_mean.assign(np.full(layer.moving_mean.shape, 50.0, np.float32))
    batches = make_dataset(images, targets, CODEC.num_classes, 16, training=False, seed=0)
    refresh = FreshBatchNorm(batches)
    refresh.set_model(model)

    refresh.on_test_begin()

    first = norms[0]
    features = keras.Model(model.input, first.input)(images, training=True).numpy()
    assert np.allclose(first.moving_mean.numpy(), features.mean(axis=(0, 1, 2)), atol=1e-3), "the mean of the 4 batches"
    assert all(layer.momentum == 0.9 for layer in norms), "the training momentum is left as it was"


@pytest.mark.parametrize("arch", ["ctc", "compact"])
def test_mixed_precision_computes_in_bfloat16_and_answers_float32(arch: str) -> None:
    model = training_model(build_model(ModelParams(arch=arch, filters=[8, 8, 8]), 32, 64, 4, CODEC.num_classes))
    mixed = computing_in(model, "mixed_bfloat16")

    hidden = [layer for layer in mixed.layers[1:] if layer.name not in mixed.output_names]
    assert {layer.compute_dtype for layer in hidden} == {"bfloat16"}
    assert {variable.dtype for variable in mixed.weights} == {"float32"}  # a copy back loses nothing
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 64, 1), dtype=np.uint8)
    scores = keras.ops.convert_to_numpy(mixed(images))
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, keras.ops.convert_to_numpy(model(images)), atol=0.05)
    assert computing_in(model, "float32") is model


def scores(*columns: tuple[int, float]) -> np.ndarray:
    """Per-position probabilities reading `columns` as (class, its probability), PAD for the rest."""
    out = np.zeros((CODEC.max_length, CODEC.num_classes), np.float32)
    out[:, CODEC.pad] = 1.0
    for position, (klass, probability) in enumerate(columns):
        out[position] = (1 - probability) / (CODEC.num_classes - 1)
        out[position, klass] = probability
    return out


def test_self_training_uses_only_readings_sure_of_every_character_and_long_enough() -> None:
    sure, unsure = 0.97, 0.6
    readings = np.stack(
        [
            scores((1, sure), (2, sure), (3, sure), (4, sure)),  # "1234": used
            scores((1, sure), (2, unsure), (3, sure), (4, sure)),  # one unsure character: not used
            scores((5, sure), (6, sure)),  # too short for min_length 3: not used
            scores((7, sure), (8, sure), (9, sure)),  # "789": used
        ]
    )

    kept, texts = pseudo_labels(readings, CODEC, min_length=3, confidence=0.9)

    assert kept.tolist() == [0, 3] and texts == ["1234", "789"]
    assert pseudo_labels(readings, CODEC, min_length=3, confidence=0.5)[0].tolist() == [0, 1, 3]


class CentrePixelReader(keras.Model):
    """Reads "1234" where the image's centre pixel is bright, else "5678", sure of every character."""

    def call(self, images):
        height, width = images.shape[1], images.shape[2]
        bright = keras.ops.cast(images[:, height // 2, width // 2, 0] > 127, "float32")[:, None, None]
        sure = [(klass, 0.99) for klass in range(1, 5)]
        return bright * scores(*sure) + (1 - bright) * scores(*[(klass + 4, p) for klass, p in sure])


def test_self_training_leaves_out_readings_that_change_in_jittered_copies() -> None:
    images = np.zeros((3, 32, 64, 1), np.uint8)
    images[0] = 255  # all bright: read "1234" however it is shifted or turned
    images[1, :, 32] = 255  # one bright column through the centre: a shift of a pixel reads "5678" instead
    # images[2] all dark: "5678" in every copy

    reader = CentrePixelReader()
    kept, texts = readings_to_train_on(reader, images, CODEC, min_length=4, confidence=0.9, views=4, seed=0)

    assert kept.tolist() == [0, 2] and texts == ["1234", "5678"]
    everything = readings_to_train_on(reader, images, CODEC, min_length=4, confidence=0.9, views=0, seed=0)
    assert everything[0].tolist() == [0, 1, 2] and everything[1] == ["1234", "1234", "5678"]


def test_train_only_images_are_trained_on_never_validated_on_and_logged_apart(tmp_path: Path) -> None:
    images, targets = random_set(100)
    extra_images, extra_targets = random_set(40)
    model = build_model(ModelParams(filters=[8, 8, 8]), 32, 64, CODEC.max_length, CODEC.num_classes)
    train = TrainParams(steps=4, validate_every=4, acc_stop=1.1)

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("train-only")
    with mlflow.start_run() as run:
        first = fit(model, images, targets, CODEC.num_classes, "ctc", train, tmp_path / "log.csv")
        second = fit(
            model,
            images,
            targets,
            CODEC.num_classes,
            "ctc",
            train,
            tmp_path / "log.csv",
            train_only=(extra_images, extra_targets),
            log_prefix="self_training.",
            first_step=first["steps"],
        )

    assert second["train_images"] == first["train_images"] + 40
    logged = mlflow.get_run(run.info.run_id).data.params
    assert logged["train_images"] == str(first["train_images"])
    assert logged["self_training.train_images"] == str(second["train_images"])
    assert logged["self_training.validation_images"] == logged["validation_images"]  # the labelled ones only
    steps = np.genfromtxt(tmp_path / "log.csv", delimiter=",", names=True, ndmin=1)["step"]
    assert [int(step) for step in steps] == [4, 8]  # one log, the second fit after the first


# One tiny training of seed 0 in a process of its own (the determinism switch is for the whole process): the
# augmentation runs over batches of 16 in parallel, where thread order used to decide its random numbers.
TRAIN_AND_HASH = """
import sys
from pathlib import Path
import mlflow
from captcha_mlops.model import build_model
from captcha_mlops.params import ModelParams, TrainParams
from captcha_mlops.training import fit, seed_everything, weights_sha256
from tests.test_training import CODEC, random_set
images, targets = random_set(200)
train = TrainParams(steps=12, validate_every=6, batch_size=16, acc_stop=1.1)
seed_everything(train)
model = build_model(ModelParams(filters=[8, 8, 8]), 32, 64, CODEC.max_length, CODEC.num_classes)
mlflow.set_tracking_uri(f"sqlite:///{sys.argv[1]}/mlflow.db")
mlflow.set_experiment("repeatable")
with mlflow.start_run():
    fit(model, images, targets, CODEC.num_classes, "ctc", train, Path(sys.argv[1]) / "log.csv")
print(weights_sha256(model))
"""


def test_two_trainings_of_the_same_seed_train_the_same_weights(tmp_path: Path) -> None:
    hashes = []
    for run in ("first", "second"):
        (tmp_path / run).mkdir()
        done = subprocess.run(
            [sys.executable, "-c", TRAIN_AND_HASH, str(tmp_path / run)],
            capture_output=True,
            text=True,
            check=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},  # not another test's store
        )
        hashes.append(done.stdout.split()[-1])
    assert hashes[0] == hashes[1]
