"""What do K reviewed labels buy: the K least sure readings (the review page's order) or K at random?

For one own-data style of bench/styles.py, as bench.learning_curve runs a point (the README recipe in a fresh
clone, scored on a held-out test set no run trains on):

1. train on N labelled images (the start);
2. the start model reads M unlabelled images, and each reading is kept as the service keeps it
   (`captcha_mlops.kept`, with its confidences);
3. K of them are labelled with their true labels through the same `KeptImages.label` the review page calls:
   the K least sure first (`KeptImages.pending`, the page's order), or K drawn at random;
4. retrain from the N + K labels, once per choice, and score both;
5. retrain from the least sure choice's N + K labels once more, with every kept image copied to data/unlabelled/
   as the README says (`cp $KEPT/<type>/pending/*.png`, before the review): verify_split leaves out the K that
   became labelled images, and train self-trains on the rest.

Writes bench/results/flywheel.json (and adds nothing to the workspace; runs are tracked in this repo's
MLflow store, experiment `captcha-own_<style>`).

    python -m bench.flywheel                                    # overlap6, N=200, M=1000, K=100
    python -m bench.flywheel --style speckle5 --start 100 --unlabelled 500 --review 50
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image

from bench.git import commit as head
from bench.learning_curve import LABELLED_SEED, RESULTS, TEST_SEED, run_point
from bench.styles import STYLES
from captcha_mlops.kept import CaptchaType, KeptImages
from captcha_mlops.labels import label_from_name

UNLABELLED_SEED = 3  # a third image stream: neither a test nor a start image


def summary(point: dict) -> dict:
    return {k: point[k] for k in ("labels", "test_images", "test_image_accuracy", "test_char_accuracy", "minutes")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--style", default="overlap6", choices=list(STYLES))
    parser.add_argument("--start", type=int, default=200, help="N: labelled images the start model trains on")
    parser.add_argument("--unlabelled", type=int, default=1000, help="M: images the start model reads")
    parser.add_argument("--review", type=int, default=100, help="K: of those, labelled by a reviewer")
    parser.add_argument("--test-images", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0, help="for the random choice")
    parser.add_argument("--out", type=Path, default=RESULTS / "flywheel.json")
    parser.add_argument(
        "--dvc-cache", type=Path, default=Path(tempfile.gettempdir()) / "captcha-mlops-curve-cache"
    )  # bench.learning_curve's: the same code reuses its pretraining
    args = parser.parse_args()
    style = STYLES[args.style]
    commit = head()

    with tempfile.TemporaryDirectory(prefix="flywheel-") as workdir:
        work = Path(workdir)
        tests = style.write(work / "test", args.test_images, TEST_SEED)
        start = style.write(work / "start", args.start, LABELLED_SEED)
        unlabelled = style.write(work / "unlabelled", args.unlabelled, UNLABELLED_SEED)

        before = run_point(commit, style, start, tests, args.dvc_cache, {}, read=unlabelled)
        print(f"bench: start {json.dumps(summary(before))}", flush=True)

        arms = {}
        for choice in ("least_sure", "random"):
            kept = KeptImages(work / f"kept-{choice}")
            type_name = f"own_{style.name}"
            kept.declare(CaptchaType(type_name, style.charset, style.min_length, style.max_length))
            truth = {}
            for path, reading in zip(unlabelled, before["readings"]):
                with Image.open(path) as image:
                    record = kept.keep(image, type_name, "start", reading.text, reading.confidences, reading.valid)
                truth[record.id] = label_from_name(path)
            queue = kept.pending(type_name, args.unlabelled)
            if choice == "least_sure":  # what `cp $KEPT/<type>/pending/*.png` copies, before the review
                (work / "pending").mkdir()
                copied = [Path(shutil.copy(kept.image_path(type_name, r.id), work / "pending")) for r in queue]
            rng = random.Random(args.seed)
            chosen = queue[: args.review] if choice == "least_sure" else rng.sample(queue, args.review)
            reviewed = [kept.label(type_name, r.id, truth[r.id], work / f"new-{choice}") for r in chosen]
            wrong = sum(r.text != truth[r.id] for r in chosen)
            after = run_point(commit, style, start + reviewed, tests, args.dvc_cache, {})
            arms[choice] = {
                "reviewed": args.review,
                "start_model_misread_of_reviewed": wrong,
                "mean_confidence_of_reviewed": round(sum(r.confidence for r in chosen) / len(chosen), 4),
                **summary(after),
            }
            print(f"bench: {choice} {json.dumps(arms[choice])}", flush=True)
            if choice == "least_sure":
                after = run_point(commit, style, start + reviewed, tests, args.dvc_cache, {}, unlabelled=copied)
                arms["least_sure_and_rest_unlabelled"] = {
                    **arms[choice],
                    "unlabelled_copied": len(copied),
                    "unlabelled_also_labelled": after["unlabelled_also_labelled"],
                    "readings_used": after["train"].get("readings_used", 0),
                    **summary(after),
                }
                print(f"bench: + rest unlabelled {json.dumps(arms['least_sure_and_rest_unlabelled'])}", flush=True)

    start_misread = sum(r.text != label_from_name(p) for p, r in zip(unlabelled, before["readings"]))
    results = {
        "command": "python -m bench.flywheel " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "commit": commit,
        "style": style.name,
        "start": {**summary(before), "unlabelled_read": args.unlabelled, "unlabelled_misread": start_misread},
        "arms": arms,
        "gain_least_sure_over_random": round(
            arms["least_sure"]["test_image_accuracy"] - arms["random"]["test_image_accuracy"], 4
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
