"""Does a change of params read better? Networks trained side by side on the same images.

For each draw of a style's labelled images (bench/draws.py: those of bench/learning_curve.py's point of that
draw, less the pipeline's test split), trains one network with params.yaml and one with params.yaml and the
`--set` overrides, each as the `train` stage trains it from scratch, the same seed, and scores both on the
style's 400 held-out test images. The same images for both: the comparison is free of which images a draw
happened to label, not of the spread between two trainings (about 0.01 at 1,000 labels), so run several draws.

    python -m bench.paired_training --set model.column_pixels=4 --draws 0 1 2

Writes bench/results/paired_training.json (the rows of this run replace those of the same commit, style,
labels, overrides and draw): per draw and network the test image and char accuracy, image accuracy per
captcha length, the misreadings and the training minutes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mlflow
import yaml

from bench.draws import Draw, load_draw, record, scratch, style_params
from bench.git import commit
from bench.learning_curve import RESULTS, apply
from bench.styles import STYLES
from captcha_mlops.metrics import text_accuracies
from captcha_mlops.params import Params


def measure(sample: Draw, params: Params, log_csv: Path) -> dict:
    started = time.monotonic()
    model, _ = sample.trained(params, log_csv)
    minutes = (time.monotonic() - started) / 60
    readings = sample.readings(model)
    by_length: dict[int, list[bool]] = {}
    for truth, reading in zip(sample.test_truth, readings):
        by_length.setdefault(len(truth), []).append(truth == reading)
    char_accuracy, image_accuracy = text_accuracies(sample.test_truth, readings)
    return {
        "test_image_accuracy": round(image_accuracy, 4),
        "test_char_accuracy": round(char_accuracy, 4),
        "image_accuracy_by_length": {n: round(sum(r) / len(r), 4) for n, r in sorted(by_length.items())},
        "misread": [[truth, reading] for truth, reading in zip(sample.test_truth, readings) if truth != reading],
        "minutes": round(minutes, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--style", default="overlap6", choices=list(STYLES))
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--draws", nargs="+", type=int, default=[0])
    parser.add_argument("--set", nargs="+", required=True, metavar="KEY=VALUE", help="params.yaml overrides")
    args = parser.parse_args()
    style = STYLES[args.style]
    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    shipped = style_params(style)
    changed = Params.model_validate(apply(shipped.model_dump(), overrides))
    out = RESULTS / "paired_training.json"
    with scratch("paired_training") as workdir:
        for draw in args.draws:
            sample = load_draw(style, shipped, args.labels, 0, draw, workdir)
            row = {"commit": commit(), "style": style.name, "labels": args.labels, "overrides": overrides, "draw": draw}
            row["labelled_train_images"] = len(sample.labelled)
            for name, params in (("params.yaml", shipped), ("overridden", changed)):
                if params.data != shipped.data:  # the same images, loaded as these params have the network read them
                    sample = load_draw(style, params, args.labels, 0, draw, workdir)
                with mlflow.start_run(run_name=f"{name}-{draw}"):
                    row[name] = measure(sample, params, workdir / f"log-{draw}-{name}.csv")
                print(f"bench: draw {draw} {name}: {json.dumps(row[name])}", flush=True)
            record(out, row, ("commit", "style", "labels", "overrides", "draw"), "bench.paired_training")


if __name__ == "__main__":
    main()
