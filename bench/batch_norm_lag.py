"""Why validation dipped: the weights, or batch norm's moving statistics trailing them?

Trains the project's network on its `data/split/train.csv` (run `dvc repro verify_split` first) as `train` does,
and every 50 steps reads the validation images three ways: with the moving statistics as they are, and with
statistics measured afresh under the current weights on 30 batches of training images, unaugmented or augmented.
If the fresh readings rise steadily where the moving ones dip, the dips are the statistics' lag.
This is the diagnostic behind `FreshBatchNorm` (captcha_mlops/training.py), which `fit` now applies before every
validation; this loop trains without it, so it shows the lag at any commit. Writes
bench/results/batch_norm_lag.json.

    python -m bench.batch_norm_lag --steps 400
"""

from __future__ import annotations

import argparse
import json

import keras

from bench.git import commit
from captcha_mlops.dataset import load_images, read_manifest
from captcha_mlops.labels import Codec
from captcha_mlops.model import build_model, training_model
from captcha_mlops.params import load_params
from captcha_mlops.paths import ROOT, SPLIT
from captcha_mlops.preprocess import CHANNELS
from captcha_mlops.training import compile_model, make_dataset, validation_split

REFRESH_BATCHES = 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--out", default=str(ROOT / "bench/results/batch_norm_lag.json"))
    args = parser.parse_args()
    params = load_params()
    data, train = params.data, params.train
    keras.utils.set_random_seed(train.seed)
    codec = Codec((SPLIT / "charset.txt").read_text(encoding="utf-8"), data.max_length)
    rows = read_manifest(SPLIT / "train.csv")
    images = load_images([p for p, _ in rows], data, desc="load")
    targets = codec.encode_many(label for _, label in rows)
    val, fit_idx = validation_split(len(images), train)

    channels = CHANNELS[data.color_mode]
    model = build_model(params.model, data.height, data.width, data.max_length, codec.num_classes, channels)
    trained = training_model(model)
    compile_model(trained, train, train.steps, params.model.arch)
    batches = iter(make_dataset(images[fit_idx], targets[fit_idx], codec.num_classes, 128, training=True, seed=0))
    val_ds = make_dataset(images[val], targets[val], codec.num_classes, 256, training=False, seed=0)
    sample = fit_idx[: REFRESH_BATCHES * 128]
    plain = make_dataset(images[sample], targets[sample], codec.num_classes, 128, training=False, seed=0)
    augmented = make_dataset(images[fit_idx], targets[fit_idx], codec.num_classes, 128, training=True, seed=1)

    def val_accuracy() -> float:
        right = 0
        for x, y in val_ds:
            right += int((model(x, training=False).numpy().argmax(-1) == y.numpy().argmax(-1)).all(-1).sum())
        return right / len(val)

    def with_fresh_statistics(dataset: object) -> float:
        saved = [weight.numpy() for weight in model.weights]
        for index, (x, _) in enumerate(dataset):  # type: ignore[arg-type]
            if index >= REFRESH_BATCHES:
                break
            trained(x, training=True)  # momentum 0.9: after 30 batches the old statistics weigh 0.04
        accuracy = val_accuracy()
        for weight, value in zip(model.weights, saved):
            weight.assign(value)
        return accuracy

    rows_out = []
    for step in range(1, args.steps + 1):
        x, y = next(batches)
        trained.train_on_batch(x, y)
        if step % args.every == 0:
            row = {
                "step": step,
                "val_moving_statistics": round(val_accuracy(), 4),
                "val_fresh_statistics_plain": round(with_fresh_statistics(plain), 4),
                "val_fresh_statistics_augmented": round(with_fresh_statistics(augmented), 4),
            }
            print(json.dumps(row), flush=True)
            rows_out.append(row)
    result = {"command": "python -m bench.batch_norm_lag", "commit": commit(), "rounds": rows_out}
    with open(args.out, "w") as file:
        file.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
