"""How many labelled images does a site need? Test accuracy against the number of labels, per own-data style.

For each style of bench/styles.py and each label count N, does exactly what the README's own-images recipe
tells a user to, in a temporary clone of this repo (the workspace is left as it is): N labelled images into
`data/new/`, the `data.*` / `generate.*` keys of the recipe, `dvc repro evaluate`. The trained model is then
scored on a separate test set of `--test-images` images of the style that no point ever trains on (the
pipeline's own 5% test split of N images is too small to tell 0.99 from 0.95).

All points share one DVC cache, so the `pretrain` stage runs once per style (shape and charset) and the
other points reuse it from DVC's run cache, as a user's repeated `dvc repro` does. A point's `minutes` is its
whole `dvc repro`, pretraining included where it ran. Runs are tracked in this repo's MLflow store
(experiments `captcha-own_<style>`). Writes bench/results/learning_curve.json and learning_curve.png.

    python -m bench.learning_curve                                   # every style, 100..1600 labels
    python -m bench.learning_curve --styles speckle5 --labels 200 1000
    python -m bench.learning_curve --labels 200 --set pretrain.images=0   # the same without pretraining
    python -m bench.learning_curve --styles overlap6 --labels 1000 --draws 0 1 2   # three sets of 1,000 labels
    python -m bench.learning_curve --styles overlap6 --labels 1000 --unlabelled 4000   # and 4,000 without labels
    python -m bench.learning_curve --plot fbb303d b4f9294                # redraw the PNG from these commits' points
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import yaml
from PIL import Image

from bench.git import commit as head
from bench.styles import STYLES, Style
from captcha_mlops.dataset import read_manifest
from captcha_mlops.labels import label_from_name
from captcha_mlops.metrics import text_accuracies
from captcha_mlops.params import load_params
from captcha_mlops.paths import ROOT, tracking_uri

RESULTS = ROOT / "bench" / "results"
TEST_SEED, LABELLED_SEED = 1, 2  # separate image streams: no test image is ever a labelled one (draw d: 2 + d)
UNLABELLED_SEED = 100  # nor an unlabelled one (draw d: 100 + d)


def recipe(style: Style) -> dict[str, Any]:
    """The README's own-images recipe for a style: the only keys a user sets."""
    return {
        "data.captcha_type": f"own_{style.name}",
        "data.charset_from_data": True,
        "data.min_length": style.min_length,
        "data.max_length": style.max_length,
        "data.width": style.width,
        "data.height": style.height,
        "generate.count": 0,
    }


def apply(params: dict, overrides: dict[str, Any]) -> dict:
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        if key not in params[section]:
            raise SystemExit(f"{dotted} is not a key of params.yaml")
        params[section][key] = value
    return params


def read_images(clone: Path, paths: list[Path]) -> list:
    """The `Reading` of each image by the model trained in `clone`, as its `evaluate`, and the service after it,
    read: in the clone's `evaluate.views` of the images its `evaluate.views_below` finds unsure."""
    from captcha_mlops.recognizer import Recognizer  # TensorFlow only once a model is used

    reading = load_params(clone / "params.yaml").evaluate
    recognizer = Recognizer.load(clone / "models", reading.views, reading.views_below)
    readings = []
    for start in range(0, len(paths), 256):
        readings += recognizer.read_images([Image.open(path) for path in paths[start : start + 256]])
    return readings


def score(clone: Path, test_paths: list[Path]) -> tuple[float, float, list[list[str]]]:
    """(char, image) accuracy of the model trained in `clone` on the style's held-out test images, and its misreadings
    ([truth, reading] pairs: which images stay misread as labels are added, README "Where overlap6 fails")."""
    guesses = [reading.text for reading in read_images(clone, test_paths)]
    truths = [label_from_name(p) for p in test_paths]
    misread = [[truth, guess] for truth, guess in zip(truths, guesses) if truth != guess]
    return *text_accuracies(truths, guesses), misread


def run_point(
    commit: str,
    style: Style,
    labelled: list[Path],
    tests: list[Path],
    cache: Path,
    extra: dict,
    read: list[Path] | None = None,
    unlabelled: list[Path] = (),
) -> dict:
    """The README recipe on `labelled` in a fresh clone at `commit`; scored on `tests`. With `read`, the
    point also holds the trained model's reading of those images (`readings`), as the service would give it.
    `unlabelled`: images put in data/unlabelled/ under names that do not hold their labels."""
    overrides = {**recipe(style), **extra}
    with tempfile.TemporaryDirectory(prefix="curve-") as workdir:
        clone = Path(workdir) / "repo"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        subprocess.run(["git", "checkout", "-q", commit], cwd=clone, check=True)
        (clone / "data" / "new").mkdir(parents=True, exist_ok=True)
        for path in labelled:
            shutil.copyfile(path, clone / "data" / "new" / path.name)
        for index, path in enumerate(unlabelled):
            shutil.copyfile(path, clone / "data" / "unlabelled" / f"plain-{index:05d}{path.suffix}")
        params_file = clone / "params.yaml"
        params_file.write_text(yaml.safe_dump(apply(yaml.safe_load(params_file.read_text()), overrides)))
        venv_bin = Path(sys.executable).parent  # dvc, and the python its stages run
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(), "DVC_NO_ANALYTICS": "1"}
        env["PATH"] = f"{venv_bin}{os.pathsep}{env['PATH']}"
        subprocess.run(["dvc", "cache", "dir", str(cache)], cwd=clone, env=env, check=True)
        started = time.monotonic()
        subprocess.run(["dvc", "repro", "evaluate"], cwd=clone, env=env, check=True)
        minutes = (time.monotonic() - started) / 60
        char_accuracy, image_accuracy, misread = score(clone, tests)
        readings = read_images(clone, read) if read else None
        trained = json.loads((clone / "reports" / "train_metrics.json").read_text())
        used = read_manifest(clone / "reports" / "readings_used.csv")
        pretrained = json.loads((clone / "models" / "pretrained" / "pretrained.json").read_text())
        verified = json.loads((clone / "reports" / "anomalies.json").read_text())
    truth = {f"plain-{index:05d}{path.suffix}": label_from_name(path) for index, path in enumerate(unlabelled)}
    given = {
        "unlabelled_images": len(unlabelled),
        "unlabelled_also_labelled": verified["unlabelled_also_labelled"],
        # Of the readings self-training used, the share that were right (the names of the images hold their labels).
        "readings_right": round(sum(truth[path.name] == text for path, text in used) / max(1, len(used)), 4),
    }
    point = {
        "style": style.name,
        "labels": len(labelled),
        **(given if unlabelled else {}),
        "commit": commit[:12],
        "test_images": len(tests),
        "test_image_accuracy": round(image_accuracy, 4),
        "test_char_accuracy": round(char_accuracy, 4),
        "misread": misread,
        "minutes": round(minutes, 1),
        "overrides": overrides,
        "train": trained,
        "pretrained_run_id": pretrained["run_id"],
    }
    return point if readings is None else point | {"readings": readings}


def plot_series(axis: plt.Axes, name: str, rows: list[dict]) -> None:
    """One curve: the mean test accuracy at each label count, a bar from the worst to the best draw."""
    by_labels: dict[int, list[float]] = {}
    for row in rows:
        by_labels.setdefault(row["labels"], []).append(row["test_image_accuracy"])
    counts = sorted(by_labels)
    means = [sum(by_labels[n]) / len(by_labels[n]) for n in counts]
    spread = [  # at least 0: the mean of equal draws can come out a rounding error above them
        [max(0.0, m - min(by_labels[n])) for n, m in zip(counts, means)],
        [max(0.0, max(by_labels[n]) - m) for n, m in zip(counts, means)],
    ]
    axis.errorbar(counts, means, yerr=spread, fmt="o-", capsize=3, label=name)


def series_name(point: dict) -> str:
    """A point's style and what its overrides add to the style's recipe: the same name, the same curve."""
    added = {k: v for k, v in point["overrides"].items() if recipe(STYLES[point["style"]]).get(k) != v}
    unlabelled = [f"+{point['unlabelled_images']:,} unlabelled"] if point.get("unlabelled_images") else []
    return ", ".join([point["style"], *unlabelled, *(f"{k}={v}" for k, v in sorted(added.items()))])


def plot(points: list[dict], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    series: dict[str, list[dict]] = {}
    for point in points:
        series.setdefault(series_name(point), []).append(point)
    for name, rows in sorted(series.items()):
        plot_series(axis, name, rows)
    axis.set_xscale("log")
    counts = sorted({point["labels"] for point in points})
    axis.set_xticks(counts, [f"{count:,}" for count in counts])
    axis.minorticks_off()
    axis.set_xlabel("labelled images (README recipe)")
    axis.set_ylabel(f"test image accuracy ({points[0]['test_images']} images)")
    lowest = min(point["test_image_accuracy"] for point in points)
    axis.set_ylim(max(0.0, round(lowest - 0.05, 1)), 1.005)
    axis.axhline(0.99, color="grey", linewidth=0.8, linestyle=":")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    axis.set_title("How many labelled captchas a site needs")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def draw_samples(path: Path, per_style: int = 3) -> None:
    """A few images of each style, one style a row: what the curve was measured on."""
    rng = random.Random(0)
    rows = [[style.draw(style.label(rng), rng) for _ in range(per_style)] for style in STYLES.values()]
    width = max(sum(image.width for image in row) + 8 * per_style for row in rows)
    sheet = Image.new("RGB", (width, sum(row[0].height + 8 for row in rows)), "white")
    y = 0
    for row in rows:
        x = 0
        for image in row:
            sheet.paste(image.convert("RGB"), (x, y))
            x += image.width + 8
        y += row[0].height + 8
    sheet.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--styles", nargs="+", default=list(STYLES), choices=list(STYLES))
    parser.add_argument("--labels", nargs="+", type=int, default=[100, 200, 400, 1000, 1600])
    parser.add_argument("--test-images", type=int, default=400)
    parser.add_argument(
        "--draws", nargs="+", type=int, default=[0], help="labelled sets drawn per point: each another site's sample"
    )
    parser.add_argument("--unlabelled", type=int, default=0, help="images without labels each point also gets")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more params.yaml overrides")
    parser.add_argument("--out", type=Path, default=RESULTS / "learning_curve.json", help="adds to it if it exists")
    parser.add_argument(
        "--dvc-cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "captcha-mlops-curve-cache",
        help="the DVC cache all points share: kept, so a later run with the same code reuses its pretraining",
    )
    parser.add_argument(
        "--plot",
        nargs="+",
        metavar="COMMIT",
        help="measure nothing: redraw the PNG from the points of these commits (prefixes) in --out",
    )
    args = parser.parse_args()
    if args.plot:
        points = json.loads(args.out.read_text())["points"]
        chosen = [point for point in points if point.get("commit", "").startswith(tuple(args.plot))]
        if not chosen:
            raise SystemExit(f"no points of {' '.join(args.plot)} in {args.out}")
        plot(chosen, args.out.with_suffix(".png"))
        return
    extra = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}

    previous = json.loads(args.out.read_text()) if args.out.exists() else {"points": []}
    command = "python -m bench.learning_curve " + " ".join(sys.argv[1:])
    ran_on = machine()
    # Every point runs the same code, whatever is committed meanwhile (a code change re-runs pretraining).
    commit = head()
    points = []
    with tempfile.TemporaryDirectory(prefix="curve-data-") as workdir:
        cache = args.dvc_cache
        for name in args.styles:
            style = STYLES[name]
            tests = style.write(Path(workdir) / name / "test", args.test_images, TEST_SEED)
            for draw in args.draws:
                folder = Path(workdir) / name / f"labelled-{draw}"
                pool = style.write(folder, max(args.labels), LABELLED_SEED + draw)
                plain_folder = Path(workdir) / name / f"unlabelled-{draw}"
                plain = style.write(plain_folder, args.unlabelled, UNLABELLED_SEED + draw)
                for labels in sorted(args.labels):
                    point = {
                        "command": command,
                        "machine": ran_on,
                        **run_point(commit, style, pool[:labels], tests, cache, extra, unlabelled=plain),
                        "draw": draw,
                    }
                    print(f"bench: {json.dumps({k: v for k, v in point.items() if k != 'train'})}", flush=True)
                    points.append(point)
                    save(args.out, previous, points)  # after every point: an interrupted run keeps them
    plot(points, args.out.with_suffix(".png"))  # this run's points: earlier ones may be of other code
    draw_samples(args.out.with_name(f"{args.out.stem}_styles.png"))


def point_key(point: dict) -> tuple:
    overrides = json.dumps(point["overrides"], sort_keys=True)
    return (
        point.get("commit", ""),
        point["style"],
        point["labels"],
        point.get("unlabelled_images", 0),
        overrides,
        point.get("draw", 0),
    )


def machine() -> str:
    """The CPU, the instructions its speed depends on and the precision `train.precision: auto` trains in on it:
    they set a point's minutes, and the points of one results file come from different machines (two CPUs named
    "AMD EPYC" trained over three times apart: one has AVX-512, the other AVX2 only)."""
    from captcha_mlops.training import cpu_flags, resolve_precision  # TensorFlow only once a model is used

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        flags = cpu_flags(cpuinfo)
        extensions = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if flag in flags]
        cpu = f"{names[0] if names else cpu} ({', '.join(extensions) or 'no AVX2'})"
    return f"{cpu}, {os.cpu_count()} CPU cores, training in {resolve_precision('auto')}"


def save(out: Path, previous: dict, points: list[dict]) -> None:
    """Write the measured points into `out` beside the earlier ones (the README compares commits), replacing
    those of the same commit, style, labels and overrides; the file's other keys are kept."""
    measured = {point_key(p) for p in points}
    kept = [p for p in previous["points"] if point_key(p) not in measured]
    results = {
        **previous,
        "points": sorted(kept + points, key=lambda p: (p["style"], json.dumps(p["overrides"]), p["labels"])),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
