"""Does a network read better when it reads each image in several views and takes the majority?

For each draw, trains one network on the style's labelled images as the `train` stage trains it from scratch
(bench/draws.py: the images of bench/learning_curve.py's point of that draw) and reads the style's 400
held-out test images with `Recognizer`, as `evaluate` and the service read them, with `evaluate.views` set
to each of `--views` (0: the image alone; n: the image and the first n of the fixed shifted and turned
copies of `model_meta.VIEWS`, the majority reading wins). One network for every count: the comparison is
free of the spread between trainings. With `--unlabelled N`, the network then self-trains on N unlabelled
images as `train` does (params.yaml's rule) and is read again with each count: both remedies together.

    python -m bench.read_views --draws 0 1 2 --unlabelled 4000
    python -m bench.read_views --style speckle5 --views 0 4 --views-below 0.99   # and only the unsure readings' views

Writes bench/results/read_views.json (the draws of this run replace those of the same commit, style, labels and
unlabelled images): per draw, network and count of views the test image and char accuracy, the misreadings,
the seconds one reading of the 400 images took, and the accuracy had only the unsure readings taken the views'.
"""

from __future__ import annotations

import argparse
import time

import keras
import mlflow

from bench.draws import Draw, load_draw, record, scratch, style_params
from bench.git import commit
from bench.learning_curve import RESULTS
from bench.styles import STYLES
from captcha_mlops.metrics import text_accuracies
from captcha_mlops.model_meta import ModelMeta
from captcha_mlops.params import Params
from captcha_mlops.recognizer import Reading, Recognizer, unsure
from stages.train import self_train

UNSURE_BELOW = (0.5, 0.8, 0.9, 0.95, 0.99, 0.999)


def scores(
    model: keras.Model, sample: Draw, params: Params, counts: list[int], views_below: float = 1.0
) -> dict[str, dict]:
    """Per count of views, how `Recognizer` reads the test images with `model`; and, against the image alone
    (`counts` starts with 0), how it would read taking the views' reading only for the images whose own
    reading has a character less sure than each of `UNSURE_BELOW` ("unsure_below": accuracy and the share of
    images whose views are read). With `views_below` under 1, also how `Recognizer` reads that way, and how fast
    ("views_<n>_below_<views_below>")."""
    data = params.data
    form = data.model_dump(include={"min_length", "max_length", "width", "height", "color_mode"})
    settings = [(views, 1.0) for views in counts] + [
        (views, views_below) for views in counts if views and views_below < 1
    ]
    result: dict[str, dict] = {}
    alone: list[Reading] = []
    for views, below in settings:
        meta = ModelMeta("bench", sample.codec.charset, **form, arch=params.model.arch, views=views, views_below=below)
        recognizer = Recognizer(model, meta)
        recognizer.read_arrays(sample.test_images)  # trace, and let oneDNN set up for this batch size
        started = time.monotonic()
        readings = recognizer.read_arrays(sample.test_images)
        seconds = time.monotonic() - started
        texts = [reading.text for reading in readings]
        char_accuracy, image_accuracy = text_accuracies(sample.test_truth, texts)
        key = f"views_{views}" if below == 1 else f"views_{views}_below_{below}"
        result[key] = {
            "test_image_accuracy": round(image_accuracy, 4),
            "test_char_accuracy": round(char_accuracy, 4),
            "seconds": round(seconds, 2),
            "misread": [[t, r] for t, r in zip(sample.test_truth, texts) if t != r],
        }
        if views == 0:
            alone = readings
        elif alone and below == 1:
            result[key]["unsure_below"] = {
                str(threshold): gated(sample.test_truth, alone, texts, threshold) for threshold in UNSURE_BELOW
            }
        print(f"bench: {key}: {image_accuracy:.4f} ({seconds:.1f} s)", flush=True)
    return result


def gated(truth: list[str], alone: list[Reading], in_views: list[str], threshold: float) -> dict[str, float]:
    """Accuracy and share of views read when only readings with a character below `threshold` take the views'."""
    doubted = [unsure(reading.confidences, threshold) for reading in alone]  # as Recognizer decides
    texts = [views if doubt else reading.text for reading, views, doubt in zip(alone, in_views, doubted)]
    return {
        "test_image_accuracy": round(sum(t == r for t, r in zip(truth, texts)) / len(truth), 4),
        "reread": round(sum(doubted) / len(doubted), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--style", default="overlap6", choices=list(STYLES))
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--unlabelled", type=int, default=0, help="then self-train on this many and read again")
    parser.add_argument("--views", nargs="+", type=int, default=[0, 2, 4, 8], help="counts of views to score")
    parser.add_argument("--draws", nargs="+", type=int, default=[0])
    parser.add_argument(
        "--views-below", type=float, default=1.0, help="also read each count's views of only the readings this unsure"
    )
    args = parser.parse_args()
    style = STYLES[args.style]
    params = style_params(style)
    with scratch("read_views") as workdir:
        for draw in args.draws:
            sample = load_draw(style, params, args.labels, args.unlabelled, draw, workdir)
            row = {"commit": commit(), "style": style.name, "labels": args.labels, "draw": draw}
            row["unlabelled"] = args.unlabelled
            with mlflow.start_run(run_name=f"draw-{draw}"):
                model, first = sample.trained(params, workdir / f"log-{draw}.csv")
            row["labels_only"] = scores(model, sample, params, args.views, args.views_below)
            if args.unlabelled:
                with mlflow.start_run(run_name=f"self-trained-{draw}"):
                    log = workdir / f"log-{draw}-self.csv"
                    _, readings = self_train(
                        model, sample.images, sample.targets, sample.codec, params, sample.unlabelled, first, log
                    )
                row["readings_used"] = len(readings)
                row["self_trained"] = scores(model, sample, params, args.views, args.views_below)
            keys = ("commit", "style", "labels", "unlabelled", "draw")
            record(RESULTS / "read_views.json", row, keys, "bench.read_views")


if __name__ == "__main__":
    main()
