"""One draw of a style's images, loaded as the `train` stage would get them: for the benches that train
networks side by side on the same images (bench/self_training.py, bench/paired_training.py).

The images are those of bench/learning_curve.py's point of the same draw: its labelled images less the
pipeline's test split, its unlabelled images, and the style's 400 held-out test images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import keras
import mlflow
import numpy as np

from bench.learning_curve import LABELLED_SEED, TEST_SEED, UNLABELLED_SEED, machine
from bench.styles import Style
from captcha_mlops.dataset import load_images
from captcha_mlops.labels import Codec, collect_charset, label_from_name
from captcha_mlops.metrics import text_accuracies
from captcha_mlops.model import build_model
from captcha_mlops.params import Params, load_params
from captcha_mlops.preprocess import CHANNELS
from captcha_mlops.training import fit, seed_everything
from stages.verify_split import in_test_split, list_inputs

TEST_IMAGES = 400


@dataclasses.dataclass(frozen=True)
class Draw:
    codec: Codec
    labelled: list[Path]  # the train split
    images: np.ndarray
    targets: np.ndarray
    unlabelled: list[Path]
    test_images: np.ndarray
    test_truth: list[str]

    def trained(
        self, params: Params, log_csv: Path, callbacks: Sequence[keras.callbacks.Callback] = ()
    ) -> tuple[keras.Model, dict]:
        """A network trained on the labels as the `train` stage trains it from scratch (before any
        self-training), and `fit`'s summary; `callbacks` watch the training."""
        data, train = params.data, params.train
        seed_everything(train)
        channels = CHANNELS[data.color_mode]
        model = build_model(params.model, data.height, data.width, data.max_length, self.codec.num_classes, channels)
        arch, num_classes = params.model.arch, self.codec.num_classes
        summary = fit(model, self.images, self.targets, num_classes, arch, train, log_csv, callbacks=callbacks)
        return model, summary

    def readings(self, model: keras.Model) -> list[str]:
        """`model`'s reading of each test image."""
        scores = model.predict(self.test_images, batch_size=256, verbose=0)
        return [self.codec.decode(s)[0] for s in scores]

    def score(self, model: keras.Model) -> tuple[float, float]:
        """(char, image) accuracy of `model` on the test images."""
        return text_accuracies(self.test_truth, self.readings(model))


def style_params(style: Style) -> Params:
    """params.yaml with the style's lengths and size, as the README recipe sets them."""
    params = load_params()
    shape = {"min_length": style.min_length, "max_length": style.max_length}
    data = params.data.model_copy(update=shape | {"width": style.width, "height": style.height})
    return params.model_copy(update={"data": data})


def load_draw(style: Style, params: Params, labels: int, unlabelled: int, draw: int, workdir: Path) -> Draw:
    folder = workdir / f"labelled-{draw}"
    style.write(folder, labels, LABELLED_SEED + draw)
    # Listed as verify_split lists them: the order decides fit's validation split and batches, so the network
    # trained here is the one the recipe's `train` stage trains on these images.
    pool, _ = list_inputs([folder])
    labelled = [path for path in pool if not in_test_split(path, params.verify_split.test_ratio)]
    tests = style.write(workdir / "test", TEST_IMAGES, TEST_SEED)
    data = params.data
    codec = Codec(collect_charset(label_from_name(path) for path in pool), data.max_length)  # as charset_from_data
    return Draw(
        codec=codec,
        labelled=labelled,
        images=load_images(labelled, data),
        targets=codec.encode_many(label_from_name(path) for path in labelled),
        unlabelled=style.write(workdir / f"unlabelled-{draw}", unlabelled, UNLABELLED_SEED + draw),
        test_images=load_images(tests, data),
        test_truth=[label_from_name(path) for path in tests],
    )


def record(out: Path, row: dict, keys: tuple[str, ...], bench: str) -> None:
    """Write `row` into the rows of the JSON file `out`, in place of a row that has the same `keys`, with the
    command that measured it (`python -m <bench>` and this process's arguments) and the machine it ran on
    (rows of one file come from different machines); the file's other keys are kept."""
    results = json.loads(out.read_text()) if out.exists() else {"rows": []}
    kept = [other for other in results["rows"] if [other.get(key) for key in keys] != [row[key] for key in keys]]
    measured = {**row, "command": " ".join(["python -m", bench, *sys.argv[1:]]), "machine": machine()}
    out.write_text(json.dumps({**results, "rows": [*kept, measured]}, indent=2) + "\n")


@contextlib.contextmanager
def scratch(bench: str) -> Iterator[Path]:
    """A temporary folder for a bench's images, tracked in an MLflow store of its own there (experiment
    `bench-<bench>`): the bench's fits are not the site's."""
    with tempfile.TemporaryDirectory(prefix=f"{bench}-") as workdir:
        mlflow.set_tracking_uri(f"sqlite:///{Path(workdir) / 'mlflow.db'}")
        mlflow.set_experiment(f"bench-{bench}")
        yield Path(workdir)
