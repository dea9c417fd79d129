"""Does `train.deterministic` make training repeatable, and what does it cost?

Trains the network of one draw of a style's labelled images (bench/draws.py: those of bench/learning_curve.py's
point, less the pipeline's test split) from scratch as the `train` stage does, `--runs` times with
`train.deterministic` off and as many times with it on, alternately (off, on, off, on: a drift of the machine
falls on both), each in a process of its own (the switch is for the whole process), always with seed 0, and
scores each network on the style's 400 held-out test images. Repeatable means the same weights (a hash of
them) every time; the cost is the ratio of the training seconds of each on-run to the off-run before it.

    python -m bench.repeatability --runs 2 --steps 300

Writes bench/results/repeatability.json (a run replaces the row of the same commit, style, labels, draw and steps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

import mlflow

from bench.draws import load_draw, record, scratch, style_params
from bench.git import commit
from bench.learning_curve import RESULTS
from bench.styles import STYLES
from captcha_mlops.training import weights_sha256


def one_run(style: str, labels: int, draw: int, steps: int, deterministic: bool) -> dict:
    """Train and score one network in this process; what `main` compares."""
    params = style_params(STYLES[style])
    changes = {"deterministic": deterministic} | ({"steps": steps} if steps else {})
    params = params.model_copy(update={"train": params.train.model_copy(update=changes)})
    with scratch("repeatability") as workdir:
        sample = load_draw(STYLES[style], params, labels, 0, draw, workdir)
        with mlflow.start_run():
            model, summary = sample.trained(params, workdir / "log.csv")
    char_accuracy, image_accuracy = sample.score(model)
    return {
        "deterministic": deterministic,
        "weights_sha256": weights_sha256(model)[:16],
        "test_image_accuracy": round(image_accuracy, 4),
        "test_char_accuracy": round(char_accuracy, 4),
        "steps": summary["steps"],
        "train_seconds": summary["train_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--style", default="overlap6", choices=list(STYLES))
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--draw", type=int, default=0)
    parser.add_argument("--runs", type=int, default=2, help="trainings with the switch off, and as many with it on")
    parser.add_argument("--steps", type=int, default=0, help="a shorter budget than train.steps (0: train.steps)")
    parser.add_argument("--one", choices=["off", "on"], help=argparse.SUPPRESS)  # a child process: one training
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.style, args.labels, args.draw, args.steps, args.one == "on")))
        return

    runs = []
    for _ in range(args.runs):
        for switch in ("off", "on"):
            child = [sys.executable, "-m", "bench.repeatability", "--style", args.style, "--labels", str(args.labels)]
            child += ["--draw", str(args.draw), "--steps", str(args.steps), "--one", switch]
            done = subprocess.run(child, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"bench: the training with the switch {switch} failed:\n{done.stderr[-3000:]}")
            runs.append(json.loads(done.stdout.splitlines()[-1]))
            print(f"bench: {json.dumps(runs[-1])}", flush=True)
    off = [run for run in runs if not run["deterministic"]]
    on = [run for run in runs if run["deterministic"]]
    ratios = [b["train_seconds"] / a["train_seconds"] for a, b in zip(off, on)]
    row = {
        "commit": commit(),
        "style": args.style,
        "labels": args.labels,
        "draw": args.draw,
        "steps": runs[0]["steps"],
        "runs": runs,
        "distinct_weights_off": len({run["weights_sha256"] for run in off}),
        "distinct_weights_on": len({run["weights_sha256"] for run in on}),
        "train_seconds_ratio_on_to_off": {
            "median": round(statistics.median(ratios), 3),
            "min": round(min(ratios), 3),
            "max": round(max(ratios), 3),
        },
    }
    record(RESULTS / "repeatability.json", row, ("commit", "style", "labels", "draw", "steps"), "bench.repeatability")
    print(f"bench: {json.dumps({k: v for k, v in row.items() if k != 'runs'})}")


if __name__ == "__main__":
    main()
