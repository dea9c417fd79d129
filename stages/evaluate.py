"""Stage 4: the trained model on the WHOLE test split: accuracies, speed, confusions, failure gallery.

Writes reports/metrics.json (DVC metrics), reports/char_confusion.csv (DVC confusion plot),
reports/confusions.json and reports/failures.png, and logs all of it to the training's MLflow run.
"""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import mlflow
import numpy as np
from PIL import Image

from captcha_mlops.dataset import load_images, read_manifest
from captcha_mlops.metrics import latency_summary, text_accuracies
from captcha_mlops.params import load_params
from captcha_mlops.paths import MODELS, REPORTS, SPLIT
from captcha_mlops.recognizer import Recognizer
from captcha_mlops.tracking import use_experiment

LATENCY_SAMPLES = 200  # single-image timings: enough for a p99 of one or two slow calls


def read_all(recognizer: Recognizer, images: np.ndarray, batch_size: int) -> tuple[list[str], float]:
    """Texts for every image, and the batch throughput in images per second."""
    recognizer.read_arrays(images[:batch_size])  # warm-up: the first call traces the graph
    started = time.perf_counter()
    texts = []
    for start in range(0, len(images), batch_size):
        texts += [reading.text for reading in recognizer.read_arrays(images[start : start + batch_size])]
    return texts, len(images) / (time.perf_counter() - started)


def single_image_latencies(recognizer: Recognizer, paths: list[Path]) -> list[float]:
    """Seconds per image from decoded file to text, one image at a time, as a client's request sees it."""
    seconds = []
    for path in paths:
        with Image.open(path) as image:
            image.load()
            started = time.perf_counter()
            recognizer.read_images([image])
            seconds.append(time.perf_counter() - started)
    return seconds


MISSING = "∅"  # what a position the reading did not reach reads as


def position_pairs(truths: list[str], guesses: list[str]) -> Iterator[tuple[str, str]]:
    """(true char, read char) for every position of every truth, in order."""
    for truth, guess in zip(truths, guesses):
        for position, char in enumerate(truth):
            yield char, guess[position] if position < len(guess) else MISSING


def write_confusions(truths: list[str], guesses: list[str]) -> None:
    """The most frequent misreadings (reports/confusions.json) and every position (the confusion plot's CSV)."""
    pairs = list(position_pairs(truths, guesses))
    misread = Counter(pair for pair in pairs if pair[0] != pair[1]).most_common(30)
    top = [{"actual": actual, "predicted": read, "count": count} for (actual, read), count in misread]
    (REPORTS / "confusions.json").write_text(json.dumps(top, indent=2, ensure_ascii=False) + "\n")
    with (REPORTS / "char_confusion.csv").open("w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows([("actual", "predicted"), *pairs])


def draw_failures(path: Path, failures: list[tuple[Path, str, str]]) -> None:
    columns = 4
    rows = max(1, -(-len(failures) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 2.4, rows * 1.7), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (image_path, truth, guess) in zip(axes.flat, failures):
        with Image.open(image_path) as image:
            axis.imshow(image.convert("RGB"))
        axis.set_title(f"{truth} → {guess or MISSING}", fontsize=10, color="firebrick")
    if not failures:
        axes.flat[0].text(0.5, 0.5, "no failures", ha="center", va="center", fontsize=14)
    figure.suptitle(f"Misread test captchas (true → read), {len(failures)} shown")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def main() -> None:
    params = load_params()
    recognizer = Recognizer.load(MODELS, params.evaluate.views, params.evaluate.views_below)
    meta = recognizer.meta
    rows = read_manifest(SPLIT / "test.csv")
    paths, truths = [p for p, _ in rows], [label for _, label in rows]
    images = load_images(paths, meta, desc="load test")

    guesses, throughput = read_all(recognizer, images, params.evaluate.batch_size)
    char_acc, image_acc = text_accuracies(truths, guesses)
    latency = latency_summary(single_image_latencies(recognizer, paths[:LATENCY_SAMPLES]))
    metrics = {
        "test_images": len(rows),
        "char_accuracy": round(char_acc, 5),
        "image_accuracy": round(image_acc, 5),
        "latency_mean_ms": round(latency["mean_ms"], 3),
        "latency_p50_ms": round(latency["p50_ms"], 3),
        "latency_p99_ms": round(latency["p99_ms"], 3),
        "batch_throughput_per_s": round(throughput, 1),
        # package serves the model reading views as its accuracy was measured
        "views": params.evaluate.views,
        "views_below": params.evaluate.views_below,
    }

    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_confusions(truths, guesses)
    failures = [(p, t, g) for p, t, g in zip(paths, truths, guesses) if t != g]
    draw_failures(REPORTS / "failures.png", failures[: params.evaluate.gallery_size])

    use_experiment(meta.captcha_type)
    with mlflow.start_run(run_id=meta.run_id):
        mlflow.log_metrics({k if k.startswith("test_") else f"test_{k}": v for k, v in metrics.items()})
        for name in ("metrics.json", "confusions.json", "failures.png"):
            mlflow.log_artifact(str(REPORTS / name), artifact_path="evaluation")
    print(f"evaluate: {metrics}")


if __name__ == "__main__":
    main()
