"""Bring-your-own-data benchmark: a small "real-world style" set trained by the same pipeline a user would run.

Makes `--count` labelled images (5 characters, 200x50, JPEG) with a drawing of its own — not the `captcha`
library the defaults train on: per-character rotation and jitter, coloured backgrounds, interference lines
and dots, blur, JPEG artefacts, two fonts that ship with the pinned packages. Then does what the README tells
a user to do, in a temporary clone of this repo (the workspace is left as it is): images into `data/new/`,
`generate.count: 0`, the charset collected from the labels, the image size and length set, `dvc repro`.
The run is tracked in this repo's MLflow store (experiment `captcha-own5`). Writes bench/results/own_data.json
and own_data_failures.png.

    python -m bench.own_data                # 1000 images
    python -m bench.own_data --count 3000   # how much more data buys
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

import yaml
from captcha.image import DEFAULT_FONTS
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from captcha_mlops.paths import ROOT, tracking_uri

RESULTS = ROOT / "bench" / "results"
CHARSET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # what sites use: no 0/O, 1/I look-alikes
WIDTH, HEIGHT, LENGTH = 200, 50, 5


def fonts(size: int) -> list[ImageFont.FreeTypeFont]:
    return [ImageFont.truetype(DEFAULT_FONTS[0], size), ImageFont.load_default(size)]  # type: ignore[list-item]


def draw_captcha(label: str, rng: random.Random) -> Image.Image:
    background = tuple(rng.randint(200, 255) for _ in range(3))
    image = Image.new("RGB", (WIDTH, HEIGHT), background)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(150, 300)):  # speckle
        xy = (rng.randrange(WIDTH), rng.randrange(HEIGHT))
        draw.point(xy, fill=tuple(rng.randint(100, 220) for _ in range(3)))
    step = (WIDTH - 20) / LENGTH
    for index, char in enumerate(label):
        font = rng.choice(fonts(rng.randint(28, 36)))
        glyph = Image.new("RGBA", (48, 52), (0, 0, 0, 0))
        ImageDraw.Draw(glyph).text((8, 2), char, font=font, fill=(*[rng.randint(0, 110) for _ in range(3)], 255))
        glyph = glyph.rotate(rng.uniform(-30, 30), resample=Image.Resampling.BICUBIC)
        x = int(10 + index * step + rng.uniform(-4, 4))
        image.paste(glyph, (x, rng.randint(-6, 2)), glyph)
    for _ in range(rng.randint(2, 4)):  # interference lines crossing the text
        points = [(0, rng.randrange(HEIGHT)), (WIDTH // 2, rng.randrange(HEIGHT)), (WIDTH, rng.randrange(HEIGHT))]
        draw.line(points, fill=tuple(rng.randint(40, 160) for _ in range(3)), width=rng.randint(1, 2))
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.8)))


def make_images(folder: Path, count: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        label = "".join(rng.choice(CHARSET) for _ in range(LENGTH))
        draw_captcha(label, rng).save(folder / f"{label}_{index:05d}.jpg", quality=rng.randint(60, 90))


def own_params(params: dict, epochs: int) -> dict:
    """The README's bring-your-own recipe, for this set."""
    params["data"].update(
        name="own5", charset_from_data=True, min_length=LENGTH, max_length=LENGTH, width=WIDTH, height=HEIGHT
    )
    params["generate"]["count"] = 0
    # Few images: small batches for more updates per epoch, patience for the noisier validation score.
    params["train"].update(epochs=epochs, batch_size=32, patience=12)
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000, help="labelled images to make (5%% become the test set)")
    parser.add_argument("--epochs", type=int, default=60, help="epoch cap (early stopping usually ends sooner)")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="own-data-") as workdir:
        clone = Path(workdir) / "repo"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        make_images(clone / "data" / "new", args.count)
        params_file = clone / "params.yaml"
        params_file.write_text(yaml.safe_dump(own_params(yaml.safe_load(params_file.read_text()), args.epochs)))
        venv_bin = Path(sys.executable).parent  # dvc, and the python its stages run
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri()}
        env["PATH"] = f"{venv_bin}{os.pathsep}{env['PATH']}"
        started = time.monotonic()
        subprocess.run(["dvc", "repro", "evaluate"], cwd=clone, env=env, check=True)  # package: a user's choice
        minutes = (time.monotonic() - started) / 60

        metrics = json.loads((clone / "reports" / "metrics.json").read_text())
        trained = json.loads((clone / "reports" / "train_metrics.json").read_text())
        run_id = json.loads((clone / "models" / "meta.json").read_text())["run_id"]
        manifests = {side: clone / "data" / "split" / f"{side}.csv" for side in ("train", "test")}
        split = {side: len(path.read_text().splitlines()) - 1 for side, path in manifests.items()}  # minus header
        shutil.copyfile(clone / "reports" / "failures.png", RESULTS / "own_data_failures.png")
        draw_captcha("AB3X7", random.Random(0)).save(RESULTS / "own_data_sample.png")

    results = {
        "command": "python -m bench.own_data " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "images": args.count,
        "split": split,
        "pipeline_minutes": round(minutes, 1),
        "mlflow_run_id": run_id,
        "train": trained,
        "test": metrics,
    }
    (RESULTS / "own_data.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"bench: {json.dumps({k: results[k] for k in ('split', 'pipeline_minutes')})}")
    print(f"bench: test {metrics}")


if __name__ == "__main__":
    main()
