"""Does a moving average of the weights read better than the weights? Several averages of one training.

For each draw of a style's labelled images (bench/draws.py, as bench/paired_training.py), trains one network with
params.yaml and keeps, beside it, exponential moving averages of its weights for each `--momenta` (Keras'
`use_ema` rule: after each step, average = momentum * average + (1 - momentum) * weights). An average only
watches: training, and so the params.yaml network, is the same with or without it (an average validated in the
weights' place would change when a run stops only where the stops apply: from 200 validation images, 4,000
labels on). Each average is then put in the network's place, batch-norm statistics are measured for it as `fit`
measures them, and it reads the style's 400 held-out test images. One training per draw for all the averages,
on exactly the same trajectory.

    python -m bench.weight_average --momenta 0.99 0.995 0.998 --draws 0 1 2

Writes bench/results/weight_average.json (rows of the same commit, style, labels and draw are replaced): per draw
the test image accuracy and misread count of the params.yaml network and of each average.
"""

from __future__ import annotations

import argparse
import time

import keras
import mlflow
import numpy as np

from bench.draws import Draw, load_draw, record, scratch, style_params
from bench.git import commit
from bench.learning_curve import RESULTS
from bench.styles import STYLES
from captcha_mlops.metrics import text_accuracies
from captcha_mlops.training import FreshBatchNorm, batch_norm_dataset, validation_split


class Averages(keras.callbacks.Callback):
    """Moving averages of the trainable weights, one per momentum, updated after every step."""

    def __init__(self, momenta: list[float]) -> None:
        super().__init__()
        self.momenta = momenta
        self.averages: dict[float, list[np.ndarray]] = {}

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        weights = [variable.numpy() for variable in self.model.trainable_variables]
        for momentum in self.momenta:
            if momentum not in self.averages:  # the first step: Keras starts the average at the weights
                self.averages[momentum] = [w.copy() for w in weights]
                continue
            for average, w in zip(self.averages[momentum], weights):
                average *= momentum
                average += (1 - momentum) * w


def score(sample: Draw, model: keras.Model) -> dict:
    readings = sample.readings(model)
    _, image_accuracy = text_accuracies(sample.test_truth, readings)
    return {
        "test_image_accuracy": round(image_accuracy, 4),
        "misread": sum(truth != reading for truth, reading in zip(sample.test_truth, readings)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--style", default="overlap6", choices=list(STYLES))
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--draws", nargs="+", type=int, default=[0])
    parser.add_argument("--momenta", nargs="+", type=float, default=[0.99, 0.995, 0.998])
    args = parser.parse_args()
    style = STYLES[args.style]
    params = style_params(style)
    with scratch("weight_average") as workdir:
        for draw in args.draws:
            sample = load_draw(style, params, args.labels, 0, draw, workdir)
            averages = Averages(args.momenta)
            started = time.monotonic()
            with mlflow.start_run(run_name=f"weight-average-{draw}"):
                model, _ = sample.trained(params, workdir / f"log-{draw}.csv", [averages])
            row = {"commit": commit(), "style": style.name, "labels": args.labels, "draw": draw}
            row["training_minutes"] = round((time.monotonic() - started) / 60, 1)
            row["params.yaml"] = score(sample, model)
            _, train_idx = validation_split(len(sample.images), params.train)
            norm_images = batch_norm_dataset(sample.images, sample.targets, train_idx, sample.codec.num_classes)
            refresh = FreshBatchNorm(norm_images)  # measures batch-norm statistics as `fit` does
            refresh.set_model(model)
            for momentum, average in averages.averages.items():
                for variable, weights in zip(model.trainable_variables, average):
                    variable.assign(weights)
                refresh.on_test_begin()
                row[f"average {momentum}"] = score(sample, model)
            print(f"bench: {row}", flush=True)
            record(RESULTS / "weight_average.json", row, ("commit", "style", "labels", "draw"), "bench.weight_average")


if __name__ == "__main__":
    main()
