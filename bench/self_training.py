"""Which readings of unlabelled images should self-training train on? Rules side by side, on one network.

For each draw: the network is trained once on the style's labelled images, as the `train` stage trains it
(params.yaml's `model` and `train`, the same images `verify_split` would put in the train split: the same
labelled and unlabelled images as bench/learning_curve.py's point of that draw). Then each rule self-trains a
copy of that one network with the `train` stage's own `self_train` (the readings `readings_to_train_on` keeps,
then `train.self_training_steps` at half the learning rate), and every copy is scored on the style's 400
held-out test images. One network for all rules: the comparison is free of the spread between trainings, which
is as large as what a rule changes.

- `confidence`: a reading is used when every character of it is read at least 0.9 sure (the rule until
  09b3eb4: `train.self_training_confidence: 0.9`, `train.self_training_views: 0`).
- `agreement`: params.yaml's rule (a reading is used when the network reads the same in
  `train.self_training_views` jittered copies of the image).

    python -m bench.self_training --draws 0 1

Writes bench/results/self_training.json (the draws of this run replace those of the same commit): per draw the
network's test accuracy before self-training and, per rule, the readings used, the share of them that were
right (the images' names hold their labels) and the test accuracy after.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mlflow

from bench.draws import load_draw, record, scratch, style_params
from bench.git import commit
from bench.learning_curve import RESULTS
from bench.styles import STYLES, Style
from captcha_mlops.labels import label_from_name
from captcha_mlops.params import Params
from captcha_mlops.training import seed_everything
from stages.train import self_train

RULES = {"confidence": {"self_training_confidence": 0.9, "self_training_views": 0}, "agreement": {}}


def run_draw(style: Style, params: Params, labels: int, unlabelled: int, draw: int, workdir: Path) -> dict:
    sample = load_draw(style, params, labels, unlabelled, draw, workdir)
    train = params.train
    started = time.monotonic()
    with mlflow.start_run(run_name=f"teacher-{draw}"):
        model, first = sample.trained(params, workdir / f"log-{draw}.csv")
    _, before = sample.score(model)
    minutes = round((time.monotonic() - started) / 60, 1)
    row = {"draw": draw, "labelled_train_images": len(sample.labelled), "unlabelled_images": unlabelled}
    row |= {"test_image_accuracy_before": round(before, 4), "teacher_minutes": minutes}
    taught = model.get_weights()
    for name, changes in RULES.items():
        rule = params.model_copy(update={"train": train.model_copy(update=changes)})
        seed_everything(train)
        model.set_weights(taught)
        log = workdir / f"log-{draw}-{name}.csv"
        with mlflow.start_run(run_name=f"{name}-{draw}"):
            _, readings = self_train(
                model, sample.images, sample.targets, sample.codec, rule, sample.unlabelled, first, log
            )
        right = sum(label_from_name(path) == text for path, text in readings)
        char_accuracy, image_accuracy = sample.score(model)
        row[name] = {
            "confidence": rule.train.self_training_confidence,
            "views": rule.train.self_training_views,
            "readings_used": len(readings),
            "readings_right": round(right / max(1, len(readings)), 4),
            "test_image_accuracy": round(image_accuracy, 4),
            "test_char_accuracy": round(char_accuracy, 4),
        }
        print(f"bench: draw {draw} {name}: {json.dumps(row[name])}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--style", default="overlap6", choices=list(STYLES))
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--unlabelled", type=int, default=4000)
    parser.add_argument("--draws", nargs="+", type=int, default=[0])
    args = parser.parse_args()
    style = STYLES[args.style]
    params = style_params(style)
    out = RESULTS / "self_training.json"
    with scratch("self_training") as workdir:
        for draw in args.draws:
            row = {"commit": commit(), "style": style.name, "labels": args.labels}
            row |= run_draw(style, params, args.labels, args.unlabelled, draw, workdir)
            record(out, row, ("commit", "style", "labels", "draw"), "bench.self_training")


if __name__ == "__main__":
    main()
