"""Which test images does every network misread? The ones left when labels and networks change.

Collects the misreadings of a style's held-out test images (bench/learning_curve.py's 400, the same for every
point) recorded by bench/learning_curve.py's points (from `--min-labels` labels on) and bench/paired_training.py's
networks, counts for each image how many of those networks misread it, and draws the images that at least half of
them misread, each with its label and the readings given. Whether a person reads them at a glance tells if more
labels or a better network could still read them, or if the style itself is ambiguous there.

It also redraws the test images with each glyph's coverage (bench/styles.py) and measures, for each image, its
least legible glyph: the share of the glyph's ink no later glyph covers (`least_visible_glyph`), and the share
that touches no other glyph's ink (`least_apart_glyph`). `by_band` groups the images by each measure and gives
the share of their readings that were misread: whether the networks fail where glyphs are hidden.

    python -m bench.hard_images --style overlap6

Writes bench/results/hard_images_<style>.json and .png.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from PIL import Image

from bench.draws import TEST_IMAGES
from bench.learning_curve import RESULTS, TEST_SEED, series_name
from bench.styles import STYLES, Drawing, apart_shares, visible_shares


def networks(style: str, min_labels: int) -> list[tuple[str, list[list[str]]]]:
    """(what a network was, its [truth, reading] misreadings) for every recorded network of `style`."""
    found = []
    for point in json.loads((RESULTS / "learning_curve.json").read_text())["points"]:
        if point["style"] == style and point["labels"] >= min_labels and "misread" in point:
            name = f"learning_curve {point['commit'][:7]} {series_name(point)}, {point['labels']} labels"
            found.append((f"{name}, draw {point.get('draw', 0)}", point["misread"]))
    for row in json.loads((RESULTS / "paired_training.json").read_text())["rows"]:
        if row["style"] == style and row["labels"] >= min_labels:
            for network in ("params.yaml", "overridden"):
                what = "params.yaml" if network == "params.yaml" else json.dumps(row["overrides"])
                name = f"paired_training {row['commit'][:7]} {what}, {row['labels']} labels, draw {row['draw']}"
                found.append((name, row[network]["misread"]))
    return found


def ranked(misreadings: Iterable[list[list[str]]]) -> list[dict]:
    """Each misread image (by its label) with how many networks misread it and their readings, most misread first."""
    readings: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for misread in misreadings:
        for truth, reading in misread:
            readings[truth][reading] += 1
    order = sorted(readings.items(), key=lambda item: (-item[1].total(), item[0]))
    return [{"truth": t, "misread_by": c.total(), "readings": dict(c.most_common())} for t, c in order]


LEGIBILITY = {"least_visible_glyph": visible_shares, "least_apart_glyph": apart_shares}


def legibility(drawing: Drawing) -> dict[str, float]:
    """A test image's least visible and least apart glyph share."""
    return {name: round(min(shares(drawing.glyph_masks)), 3) for name, shares in LEGIBILITY.items()}


def as_read(drawing: Drawing, suffix: str) -> Image.Image:
    """The image as the networks read it: saved as the style saves it (a JPEG's compression included)."""
    encoded = io.BytesIO()
    drawing.image.save(encoded, format=Image.registered_extensions()[f".{suffix}"], **drawing.save_options)
    return Image.open(encoded)


BANDS = (0.0, 0.8, 0.9, 0.95, 1.0)  # the last band holds the images whose every glyph is whole (share 1.0)


def by_band(images: list[dict], measures: dict[str, dict[str, float]], networks: int) -> dict[str, list[dict]]:
    """Per legibility measure, the test images in bands of their least legible glyph's share (from BANDS[i] up to
    BANDS[i + 1]): how many, and the share of their readings (one per network) that were misread."""
    misread_by = {image["truth"]: image["misread_by"] for image in images}
    bands = {}
    for name in LEGIBILITY:
        bands[name] = []
        for low, high in zip(BANDS, [*BANDS[1:], float("inf")]):
            band = [label for label, measure in measures.items() if low <= measure[name] < high]
            misread = sum(misread_by.get(label, 0) for label in band)
            share = round(misread / (len(band) * networks), 4) if band else None
            bands[name].append({"from": low, "below": high, "images": len(band), "misread_share": share})
    return bands


def draw_sheet(images: list[dict], tests: dict[str, Image.Image], count: int, path: Path) -> None:
    columns = 2
    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.0 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image in zip(axes.flat, images):
        axis.imshow(tests[image["truth"]].convert("RGB"))
        readings = ", ".join(f"{text or '∅'} ({n})" for text, n in list(image["readings"].items())[:4])
        shares = f"{image['least_visible_glyph']:.0%} uncovered, {image['least_apart_glyph']:.0%} apart"
        title = f"{image['truth']} — misread by {image['misread_by']}/{count}\nleast legible glyph: {shares}"
        axis.set_title(f"{title}\n{readings}", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--style", default="overlap6", choices=list(STYLES))
    parser.add_argument("--min-labels", type=int, default=1000)
    args = parser.parse_args()
    found = networks(args.style, args.min_labels)
    if not found:
        raise SystemExit(f"no recorded misreadings of {args.style} from {args.min_labels} labels on")
    images = ranked(misread for _, misread in found)
    style = STYLES[args.style]
    drawings = {drawing.label: drawing for drawing in style.drawings(TEST_IMAGES, TEST_SEED, glyph_masks=True)}
    if len(drawings) < TEST_IMAGES:  # the misreadings name an image by its label
        raise SystemExit(f"two of {args.style}'s test images share a label: they can't be told apart")
    measures = {label: legibility(drawing) for label, drawing in drawings.items()}
    for image in images:
        image.update(measures[image["truth"]])
    hard = [image for image in images if 2 * image["misread_by"] >= len(found)]
    out = RESULTS / f"hard_images_{args.style}"
    summary = {
        "command": f"python -m bench.hard_images --style {args.style} --min-labels {args.min_labels}",
        "networks": [name for name, _ in found],
        "test_images": TEST_IMAGES,
        "misread_by_at_least_half": len(hard),
        "misread_by_all": sum(image["misread_by"] == len(found) for image in images),
        "least_legible_test_image": {name: min(m[name] for m in measures.values()) for name in LEGIBILITY},
        "by_band": by_band(images, measures, len(found)),
        "images": images,
    }
    tests = {image["truth"]: as_read(drawings[image["truth"]], style.suffix) for image in hard}
    draw_sheet(hard, tests, len(found), out.with_suffix(".png"))
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "images"}, indent=2))


if __name__ == "__main__":
    main()
