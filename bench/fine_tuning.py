"""Ways to fine-tune on few labels, side by side: the recipe's against three common remedies for small sets.

One process, one pretrained network (the `pretrain` stage's MLflow run for the style), the style's labelled
images, then `captcha_mlops.training.fit` as the `train` stage calls it, once per variant, each changed only
where named (by patching `training` for this process); every model is scored on the style's 400 held-out
test images, as bench/learning_curve.py scores them.

- `recipe`: `fit` as it is.
- `rehearsal`: half of every batch drawn from `--synthetic` captchas of the pretraining kind, so the network
  keeps what synthetic data taught it while it learns the site.
- `strong-augmentation`: twice the rotation, plus zoom, shear and random erasing.
- `averaged-weights`: validate, keep and serve an exponential moving average of the weights (momentum 0.99).

    python -m bench.fine_tuning --pretrained RUN_ID --variant recipe --labels 200 --seed 1
    python -m bench.fine_tuning --pretrained RUN_ID --labels 1000 --test-every-round   # which round to keep?

Each call adds one result to bench/results/fine_tuning.json; with `--test-every-round` it holds every validation
round's validation accuracy and loss beside the test accuracy of that round's weights (README, "Which weights
are kept").
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf
from PIL import Image

from bench.git import commit
from bench.learning_curve import LABELLED_SEED, RESULTS, TEST_SEED
from bench.styles import STYLES
from captcha_mlops import training
from captcha_mlops.dataset import load_images
from captcha_mlops.labels import Codec, label_from_name
from captcha_mlops.metrics import text_accuracies
from captcha_mlops.model import build_model
from captcha_mlops.model_meta import ModelMeta
from captcha_mlops.parallel import parallel_map
from captcha_mlops.params import DataParams, ModelParams, TrainParams
from captcha_mlops.paths import tracking_uri
from captcha_mlops.recognizer import Recognizer
from captcha_mlops.synth import PRETRAIN_FONTS
from stages.pretrain import synthesize

VARIANTS = ("recipe", "rehearsal", "strong-augmentation", "averaged-weights")


def strong_augmentation(seed: int) -> keras.Sequential:
    return keras.Sequential(
        [
            keras.layers.RandomTranslation(0.06, 0.04, fill_mode="nearest", seed=seed),
            keras.layers.RandomRotation(0.03, fill_mode="nearest", seed=seed),
            keras.layers.RandomZoom((-0.1, 0.1), fill_mode="nearest", seed=seed),
            keras.layers.RandomShear(0.15, fill_mode="nearest", seed=seed),
            keras.layers.RandomContrast(0.3, value_range=(0, 255), seed=seed),
            keras.layers.RandomErasing(factor=0.5, scale=(0.02, 0.08), value_range=(0, 255), seed=seed),
        ]
    )


def rehearse(synthetic: tuple[np.ndarray, np.ndarray]) -> None:
    """Training batches half the labelled images, half `synthetic` ones."""
    own_dataset = training.make_dataset

    def mixed(images, targets, num_classes, batch_size, *, training, seed, augment=True):
        if not training:
            return own_dataset(images, targets, num_classes, batch_size, training=False, seed=seed)
        parts = [
            own_dataset(x, y, num_classes, batch_size, training=True, seed=seed, augment=augment).unbatch()
            for x, y in ((images, targets), synthetic)
        ]
        return tf.data.Dataset.sample_from_datasets(parts, [0.5, 0.5], seed=seed).batch(batch_size).prefetch(2)

    training.make_dataset = mixed


def average_weights() -> keras.callbacks.Callback:
    """AdamW keeps a moving average of the weights; each validation (and so the kept model) reads it.
    The callback returned puts the raw weights back once the stops have read the averaged round."""
    keras.optimizers.AdamW = functools.partial(keras.optimizers.AdamW, use_ema=True, ema_momentum=0.99)
    measure_batch_norm = training.FreshBatchNorm.on_test_begin
    raw: list[np.ndarray] = []

    def on_test_begin(self: training.FreshBatchNorm, logs: dict | None = None) -> None:
        optimizer = self.model.optimizer
        raw[:] = [variable.numpy() for variable in optimizer._trainable_variables]
        for variable, average in zip(optimizer._trainable_variables, optimizer._model_variables_moving_average):
            variable.assign(average)
        measure_batch_norm(self, logs)

    class Restore(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            for variable, value in zip(self.model.optimizer._trainable_variables, raw):
                variable.assign(value)

    training.FreshBatchNorm.on_test_begin = on_test_begin
    return Restore()


def test_every_round(recognizer: Recognizer, tests: list[Path], rounds: list[dict]) -> keras.callbacks.Callback:
    """After each validation round (batch-norm statistics fresh), the round's test accuracy into `rounds`."""
    truth = [label_from_name(path) for path in tests]
    images = [Image.open(path) for path in tests]

    class TestAccuracy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            _, accuracy = text_accuracies(truth, [r.text for r in recognizer.read_images(images)])
            step = int(self.model.optimizer.iterations.numpy())
            rounds.append({"step": step, **{k: round(float(logs[k]), 4) for k in ("val_image_accuracy", "val_loss")}})
            rounds[-1]["test_image_accuracy"] = round(accuracy, 4)

    return TestAccuracy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--style", default="overlap6", choices=list(STYLES))
    parser.add_argument("--pretrained", required=True, help="MLflow run id of a pretrain stage for the style")
    parser.add_argument("--variant", default="recipe", choices=VARIANTS)
    parser.add_argument("--labels", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synthetic", type=int, default=6000, help="rehearsal: synthetic captchas drawn")
    parser.add_argument("--test-every-round", action="store_true", help="record each round's test accuracy")
    args = parser.parse_args()
    style = STYLES[args.style]
    mlflow.set_tracking_uri(tracking_uri())

    with tempfile.TemporaryDirectory(prefix="fine-tuning-") as workdir:
        tests = style.write(Path(workdir) / "test", 400, TEST_SEED)
        labelled = style.write(Path(workdir) / "labelled", args.labels, LABELLED_SEED)
        pretrained = mlflow.artifacts.download_artifacts(
            run_id=args.pretrained, artifact_path="pretrained", dst_path=workdir
        )
        charset = "".join(sorted({char for path in labelled for char in label_from_name(path)}))
        data = DataParams(
            captcha_type=f"own_{style.name}",
            charset=charset,
            min_length=style.min_length,
            max_length=style.max_length,
            width=style.width,
            height=style.height,
        )
        codec = Codec(charset, data.max_length)
        keras.utils.set_random_seed(args.seed)
        images = load_images(labelled, data)
        targets = codec.encode_many(label_from_name(path) for path in labelled)
        model = build_model(ModelParams(), data.height, data.width, data.max_length, codec.num_classes)
        model.load_weights(Path(pretrained) / "model.weights.h5")

        callbacks = []
        if args.variant == "rehearsal":
            task = functools.partial(synthesize, data=data, charset=charset, fonts=PRETRAIN_FONTS, seed=7)
            drawn = list(parallel_map(task, range(args.synthetic), total=args.synthetic))
            pixels = np.frombuffer(b"".join(p for _, p in drawn), np.uint8)
            rehearse((pixels.reshape(-1, data.height, data.width, 1), codec.encode_many(t for t, _ in drawn)))
        elif args.variant == "strong-augmentation":
            training.augmentation = strong_augmentation
        elif args.variant == "averaged-weights":
            callbacks.append(average_weights())

        meta = ModelMeta(data.captcha_type, charset, data.min_length, data.max_length, data.width, data.height, "ctc")
        recognizer = Recognizer(model, meta)
        rounds: list[dict] = []
        if args.test_every_round:
            callbacks.append(test_every_round(recognizer, tests, rounds))

        started = time.monotonic()
        train = TrainParams(seed=args.seed)
        log = Path(workdir) / "log.csv"
        summary = training.fit(model, images, targets, codec.num_classes, "ctc", train, log, callbacks=callbacks)
        readings = recognizer.read_images([Image.open(path) for path in tests])
    char_accuracy, image_accuracy = text_accuracies([label_from_name(p) for p in tests], [r.text for r in readings])
    result = {
        "commit": commit(),
        "style": style.name,
        "variant": args.variant,
        "labels": args.labels,
        "seed": args.seed,
        "test_images": len(tests),
        "test_image_accuracy": round(image_accuracy, 4),
        "test_char_accuracy": round(char_accuracy, 4),
        "minutes": round((time.monotonic() - started) / 60, 1),
        "stopped_at_step": summary["steps"],
        "pretrained_run_id": args.pretrained,
        **({"rounds": rounds} if rounds else {}),
    }
    print(f"bench: {json.dumps(result)}", flush=True)
    out = RESULTS / "fine_tuning.json"
    results = json.loads(out.read_text()) if out.exists() else {"command": "python -m bench.fine_tuning", "results": []}
    results["results"].append(result)  # the file's other keys (its command, notes) are kept
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
