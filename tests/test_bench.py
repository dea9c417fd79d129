"""Cheap checks of the by-hand benchmarks' pieces (bench.serving runs for real in tests/test_load.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import psutil
import pytest
import yaml
from PIL import Image

from bench.accuracy import accuracy_ratio
from bench.draws import TEST_IMAGES, load_draw, record, style_params
from bench.hard_images import by_band, ranked
from bench.learning_curve import LABELLED_SEED, apply, plot, recipe, save, series_name
from bench.serving import cpu_meter, with_cpu
from bench.styles import STYLES, Style, apart_shares, visible_shares
from bench.weight_average import Averages
from captcha_mlops.dataset import read_manifest
from captcha_mlops.labels import label_from_name
from tests.conftest import run


@pytest.mark.parametrize("style", STYLES.values(), ids=list(STYLES))
def test_own_data_styles_make_valid_user_images_reproducibly(style: Style, tmp_path: Path) -> None:
    files = style.write(tmp_path / "a", 6, seed=3)
    assert [p.name for p in files] == [p.name for p in style.write(tmp_path / "b", 6, seed=3)]
    for file in files:
        label = label_from_name(file.name)
        assert style.min_length <= len(label) <= style.max_length and set(label) <= set(style.charset), file.name
        with Image.open(file) as image:
            assert image.size == (style.width, style.height)
        assert file.read_bytes() == (tmp_path / "b" / file.name).read_bytes()  # same seed, same set
    other = {p.read_bytes() for p in style.write(tmp_path / "c", 6, seed=4)}
    assert not other & {p.read_bytes() for p in files}, "another seed, other images"


def test_the_learning_curve_recipe_only_sets_what_the_readme_tells_a_user_to() -> None:
    for style in STYLES.values():
        keys = set(recipe(style))
        assert all(key.startswith(("data.", "generate.", "verify_split.")) for key in keys)
        assert recipe(style)["generate.count"] == 0 and recipe(style)["data.charset_from_data"] is True


def test_learning_curve_results_keep_other_commits_points_and_the_files_notes(tmp_path: Path) -> None:
    def point(commit: str, accuracy: float) -> dict:
        return {"commit": commit, "style": "overlap6", "labels": 200, "overrides": {}, "test_image_accuracy": accuracy}

    out = tmp_path / "curve.json"
    previous = {"note": "how the old points were measured", "points": [point("aaa", 0.8), point("bbb", 0.85)]}

    save(out, previous, [point("bbb", 0.9)])

    written = json.loads(out.read_text())
    assert written["note"] == previous["note"]
    assert sorted((p["commit"], p["test_image_accuracy"]) for p in written["points"]) == [("aaa", 0.8), ("bbb", 0.9)]


def test_each_draw_of_labelled_images_is_a_point_of_its_own(tmp_path: Path) -> None:
    def point(draw: int | None, accuracy: float) -> dict:
        drawn = {} if draw is None else {"draw": draw}  # points from before --draws are draw 0
        fields = {"commit": "ccc", "style": "overlap6", "labels": 1000, "overrides": {}}
        return fields | drawn | {"test_image_accuracy": accuracy}

    out = tmp_path / "curve.json"
    save(out, {"points": [point(None, 0.95)]}, [point(1, 0.96), point(2, 0.97)])
    save(out, json.loads(out.read_text()), [point(0, 0.94)])

    written = json.loads(out.read_text())["points"]
    assert sorted((p.get("draw", 0), p["test_image_accuracy"]) for p in written) == [(0, 0.94), (1, 0.96), (2, 0.97)]


def test_a_learning_curve_point_is_named_by_what_it_adds_to_the_recipe() -> None:
    overlap6 = recipe(STYLES["overlap6"])
    extra = {"pretrain.images": 0, "model.convs_per_block": 2}

    assert series_name({"style": "overlap6", "overrides": overlap6}) == "overlap6"
    assert series_name({"style": "overlap6", "overrides": {**overlap6, **extra}}) == (
        "overlap6, model.convs_per_block=2, pretrain.images=0"
    )


def test_a_bench_row_replaces_only_the_one_with_the_same_keys(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"note": "on earlier rows", "rows": []}))
    for row in ({"commit": "a", "draw": 0, "read": 0.9}, {"commit": "a", "draw": 1, "read": 0.8}):
        record(out, row, ("commit", "draw"), "bench.example")
    record(out, {"commit": "a", "draw": 0, "read": 0.95}, ("commit", "draw"), "bench.example")
    results = json.loads(out.read_text())
    assert sorted((row["draw"], row["read"]) for row in results["rows"]) == [(0, 0.95), (1, 0.8)]
    assert all(
        row["command"].startswith("python -m bench.example") and "CPU cores" in row["machine"]
        for row in results["rows"]
    )
    assert results["note"] == "on earlier rows"


def test_hard_images_rank_the_images_most_networks_misread_first() -> None:
    first = [["mrxhep", "mxhep"], ["x7bc", "7bc"]]
    second = [["mrxhep", "mjxhep"], ["hfdncm", "hfdhcm"]]
    third = [["mrxhep", "mxhep"], ["x7bc", "7bc"]]
    images = ranked([first, second, third])
    assert [(image["truth"], image["misread_by"]) for image in images] == [("mrxhep", 3), ("x7bc", 2), ("hfdncm", 1)]
    assert images[0]["readings"] == {"mxhep": 2, "mjxhep": 1}


@pytest.mark.parametrize("style", STYLES.values(), ids=list(STYLES))
def test_glyph_masks_change_nothing_drawn_and_cover_each_glyph(style: Style) -> None:
    plain = [(d.label, d.image.tobytes()) for d in style.drawings(4, seed=3)]
    masked = list(style.drawings(4, seed=3, glyph_masks=True))
    assert [(d.label, d.image.tobytes()) for d in masked] == plain
    for drawing in masked:
        assert len(drawing.glyph_masks) == len(drawing.label)
        assert all(np.asarray(mask).max() == 255 for mask in drawing.glyph_masks), "each glyph leaves ink"


def test_a_glyph_drawn_half_over_another_leaves_it_half_visible() -> None:
    def square(left: int) -> Image.Image:
        mask = np.zeros((20, 40), np.uint8)
        mask[5:15, left : left + 10] = 255
        return Image.fromarray(mask)

    first, second, far = square(0), square(5), square(28)  # `second` over the right half of `first`
    assert visible_shares([first, second, far]) == [0.5, 1.0, 1.0]
    # Ink next to another glyph's counts as not apart: `second`'s column 10, next to `first`'s last (9), too.
    assert apart_shares([first, second, far]) == [0.4, 0.4, 1.0]


def test_legibility_bands_count_the_misreadings_of_their_images() -> None:
    shares = [0.5, 0.85, 0.86, 0.97, 1.0, 1.0]
    measures = {
        label: {"least_visible_glyph": share, "least_apart_glyph": 1.0} for label, share in zip("abcdef", shares)
    }
    images = [{"truth": "a", "misread_by": 2}, {"truth": "c", "misread_by": 1}, {"truth": "f", "misread_by": 1}]
    visible = by_band(images, measures, networks=2)["least_visible_glyph"]
    assert [band["images"] for band in visible] == [1, 2, 0, 1, 2]  # below 0.8, 0.8-0.9, 0.9-0.95, 0.95-1, whole
    assert [band["misread_share"] for band in visible] == [1.0, 0.25, None, 0.0, 0.25]
    assert by_band(images, measures, networks=2)["least_apart_glyph"][-1]["images"] == 6


def test_accuracy_ratio_is_undefined_when_the_seed_reads_nothing() -> None:
    assert accuracy_ratio({"test_image_accuracy": 0.9}, {"test_image_accuracy": 0.3}) == 3.0
    assert accuracy_ratio({"test_image_accuracy": 0.9}, {"test_image_accuracy": 0.0}) is None


def test_server_cpu_per_request_is_cores_over_throughput() -> None:
    cores = {"server": 1.5, "load_generator": 0.1}
    assert with_cpu({"throughput_per_s": 500.0}, cores)["server_cpu_ms_per_request"] == 3.0
    assert with_cpu({"throughput_per_s": 0.0}, cores)["server_cpu_ms_per_request"] is None  # every request failed


def spin(seconds: float) -> None:
    """Busy for `seconds` of this process's CPU time, not of the clock: as much work on a loaded machine as on an
    idle one, where a clock-timed spin got too little CPU to measure beside a training."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_cpu_meter_counts_this_process_and_the_server_tree_apart() -> None:
    """The load generator's work is not counted as the server's, nor the server's as the load generator's: each
    side spins in turn while the other waits, blocked on a pipe."""
    server_script = "\n".join(  # waits for a line, spins as `spin(0.3)` does, says so, waits to exit
        [
            "import sys, time",
            "print(flush=True)",
            "sys.stdin.readline()",
            "end = time.process_time() + 0.3",
            "while time.process_time() < end: pass",
            "print(flush=True)",
            "sys.stdin.readline()",
        ]
    )
    server = subprocess.Popen([sys.executable, "-c", server_script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        server.stdout.readline()  # started: its start-up is not in what is measured
        cores = cpu_meter(psutil.Process(server.pid))
        spin(0.3)  # the load generator works, the server waits
        while_the_load_generator_works = cores()
        server.stdin.write(b"\n")
        server.stdin.flush()
        server.stdout.readline()  # the server works, this process waits
        while_the_server_works = cores()
    finally:
        server.kill()
        server.wait()
    assert while_the_load_generator_works["load_generator"] > 0.05, while_the_load_generator_works
    assert while_the_load_generator_works["server"] < 0.05, while_the_load_generator_works
    assert while_the_server_works["server"] > 0.05, while_the_server_works
    assert while_the_server_works["load_generator"] < 0.05, while_the_server_works


def test_the_curve_draws_draws_that_read_the_same(tmp_path: Path) -> None:
    """Three draws of 0.99 each: their mean is a rounding error above 0.99, and the bar must not go negative."""
    overrides = recipe(STYLES["overlap6"])
    points = [
        {"style": "overlap6", "labels": 1000, "test_images": 400, "test_image_accuracy": 0.99, "overrides": overrides}
    ] * 3
    plot(points, tmp_path / "curve.png")
    assert Image.open(tmp_path / "curve.png").size[0] > 0


def test_weight_averages_follow_keras_ema_rule() -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.9), "mse")
    averages = Averages([0.9, 0.5])
    x, y = np.random.default_rng(0).normal(size=(40, 3)), np.zeros((40, 2))
    keras_average = []

    class KerasAverage(keras.callbacks.Callback):  # its own, still there after fit put it in place
        def on_train_end(self, logs: dict | None = None) -> None:
            keras_average.extend(v.numpy() for v in self.model.optimizer._model_variables_moving_average)

    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False, callbacks=[averages, KerasAverage()])

    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(averages.averages[0.9], keras_average))
    assert not all(np.allclose(a, b, atol=1e-6) for a, b in zip(averages.averages[0.5], keras_average))


def test_a_bench_draw_trains_on_what_verify_split_gives_train_and_in_its_order(tmp_path: Path) -> None:
    """The order of the images decides fit's validation split and batches: a bench trains the recipe's network
    only if it gets the recipe's train split, image for image, in verify_split's order."""
    style = STYLES["speckle5"]
    params = style_params(style)
    draw = load_draw(style, params, labels=60, unlabelled=0, draw=1, workdir=tmp_path / "bench")
    project = tmp_path / "project"
    drawn = style.write(project / "data/new", 60, LABELLED_SEED + 1)  # draw 1's images, as a user would bring them
    (project / "params.yaml").write_text(yaml.safe_dump(apply(params.model_dump(), recipe(style))))

    run([sys.executable, "-m", "stages.verify_split"], project)

    split = read_manifest(project / "data/split/train.csv")
    assert [path.name for path in draw.labelled] == [path.name for path, _ in split]
    assert [path.name for path in drawn] != sorted(path.name for path in drawn)  # drawing order is another one
    assert draw.codec.charset == (project / "data/split/charset.txt").read_text()
    assert draw.targets.tolist() == draw.codec.encode_many(label for _, label in split).tolist()
    assert len(draw.images) == len(split) and len(draw.test_images) == len(draw.test_truth) == TEST_IMAGES
