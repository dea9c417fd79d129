"""Does a network read better when it reads each image several times, jittered, and takes the majority?

For each draw, trains one network on the style's labelled images as the `train` stage trains it from scratch
(bench/draws.py: the images of bench/learning_curve.py's point of that draw), reads the style's 400 held-out
test images once as they are and `--views` times more through training's own jitter (a new draw each time,
as self-training's agreement check reads unlabelled images), and scores the majority reading of the plain
image and its first 0, 2, 4, ... jittered copies. A tie keeps the plain reading. One network for every
count: the comparison is free of the spread between trainings.

    python -m bench.read_views --draws 0 1 2

Writes bench/results/read_views.json (the draws of this run replace those of the same commit, style and
labels): per draw and number of copies the test image and char accuracy and the misreadings.
"""

from __future__ import annotations

import argparse
import collections
import time
from collections.abc import Sequence

import mlflow

from bench.draws import commit, load_draw, record, scratch, style_params
from bench.learning_curve import RESULTS
from bench.styles import STYLES
from captcha_mlops.metrics import text_accuracies
from captcha_mlops.training import augmentation, readings_of_copies


def majority(plain: Sequence[str], *copies: Sequence[str]) -> list[str]:
    """Per image, the reading most views agree on; the plain reading where it ties for the most."""
    voted = []
    for index, reading in enumerate(plain):
        counts = collections.Counter([reading, *(copy[index] for copy in copies)])
        best, votes = counts.most_common(1)[0]
        voted.append(best if votes > counts[reading] else reading)
    return voted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--style", default="overlap6", choices=list(STYLES))
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--views", type=int, default=8, help="jittered copies read besides the plain image")
    parser.add_argument("--draws", nargs="+", type=int, default=[0])
    args = parser.parse_args()
    style = STYLES[args.style]
    params = style_params(style)
    with scratch("read_views") as workdir:
        for draw in args.draws:
            sample = load_draw(style, params, args.labels, 0, draw, workdir)
            with mlflow.start_run(run_name=f"draw-{draw}"):
                model, _ = sample.trained(params, workdir / f"log-{draw}.csv")
            started = time.monotonic()
            plain = sample.readings(model)
            jitter = augmentation(params.train.seed)
            copies = [readings_of_copies(model, sample.test_images, sample.codec, jitter) for _ in range(args.views)]
            seconds_per_view = (time.monotonic() - started) / (args.views + 1)
            row = {"commit": commit(), "style": style.name, "labels": args.labels, "draw": draw}
            row["seconds_per_view_of_400"] = round(seconds_per_view, 2)
            for count in range(0, args.views + 1, 2):
                readings = majority(plain, *copies[:count])
                char_accuracy, image_accuracy = text_accuracies(sample.test_truth, readings)
                row[f"copies_{count}"] = {
                    "test_image_accuracy": round(image_accuracy, 4),
                    "test_char_accuracy": round(char_accuracy, 4),
                    "misread": [[t, r] for t, r in zip(sample.test_truth, readings) if t != r],
                }
                print(f"bench: draw {draw}, {count} copies: {image_accuracy:.4f}", flush=True)
            record(RESULTS / "read_views.json", row, ("commit", "style", "labels", "draw"), "bench.read_views")


if __name__ == "__main__":
    main()
