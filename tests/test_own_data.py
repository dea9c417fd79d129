"""The README's own-images recipe on a tiny own-drawn set: the network starts from the pretrain stage's,
that start is recorded in MLflow, adding labels retrains without pretraining again, a set that grows
past `pretrain.below_images` trains from scratch, unlabelled images reach self-training, and a train key
pretraining does not read does not re-run it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import mlflow
import yaml

from bench.styles import STYLES
from tests.conftest import override, project_env, run

STYLE = STYLES["speckle5"]
RECIPE = {
    "data": {
        "captcha_type": "own5",
        "color_mode": "rgb",  # the recipe's option for coloured glyphs: the stages read colour end to end
        "charset_from_data": True,
        "min_length": STYLE.min_length,
        "max_length": STYLE.max_length,
        "width": STYLE.width,
        "height": STYLE.height,
    },
    "generate": {"count": 0},
    "pretrain": {"images": 200, "steps": 10, "batch_size": 16, "below_images": 95},
}


def test_own_images_train_from_the_pretrained_network_and_reuse_it(project_factory: Callable[..., Path]) -> None:
    root = project_factory("own", RECIPE)
    STYLE.write(root / "data/new", 80, seed=1)

    output = run(["dvc", "repro", "train"], root)

    assert "Running stage 'pretrain'" in output and "starting from the network pretrained" in output
    pretrained = json.loads((root / "models/pretrained/pretrained.json").read_text())
    assert pretrained["images"] == 200 and pretrained["charset"] == (root / "data/split/charset.txt").read_text()
    mlflow.set_tracking_uri(project_env(root)["MLFLOW_TRACKING_URI"])
    meta = json.loads((root / "models/meta.json").read_text())
    assert meta["color_mode"] == "rgb"
    trained = mlflow.get_run(meta["run_id"])
    assert trained.data.tags["pretrained_run_id"] == pretrained["run_id"]
    pretraining = mlflow.get_run(pretrained["run_id"])
    assert pretraining.data.tags["stage"] == "pretrain" and pretraining.data.params["pretrain.images"] == "200"
    assert "val_image_accuracy" in pretraining.data.metrics

    STYLE.write(root / "data/new", 10, seed=2)  # the user labels some more
    output = run(["dvc", "repro", "train"], root)

    assert "Stage 'pretrain' didn't change, skipping" in output
    assert "Running stage 'train'" in output
    retrained = mlflow.get_run(json.loads((root / "models/meta.json").read_text())["run_id"])
    assert retrained.info.run_id != trained.info.run_id
    assert retrained.data.tags["pretrained_run_id"] == pretrained["run_id"]

    STYLE.write(root / "data/new", 10, seed=3)  # 100 images: past pretrain.below_images
    for index, path in enumerate(STYLE.write(root / "downloads", 12, seed=4)):  # and some without labels
        path.rename(root / f"data/unlabelled/download-{index}{path.suffix}")

    output = run(["dvc", "repro", "train"], root)

    assert "Running stage 'pretrain'" in output and "starting from the network pretrained" not in output
    record = json.loads((root / "models/pretrained/pretrained.json").read_text())
    assert record["run_id"] == "" and "pretrain.below_images=95 images or more" in record["skipped"]
    from_scratch = mlflow.get_run(json.loads((root / "models/meta.json").read_text())["run_id"])
    assert from_scratch.data.tags["pretrained_run_id"] == "none"
    assert "train: self-training on" in output and "of 12 unlabelled images" in output
    logged = from_scratch.data.params
    assert logged["self_training.unlabelled_images"] == "12" and 0 <= int(logged["self_training.readings_used"]) <= 12
    used = (root / "reports/readings_used.csv").read_text().splitlines()
    assert used[0] == "path,label" and len(used) - 1 == int(logged["self_training.readings_used"])
    assert all(row.startswith("data/unlabelled/download-") for row in used[1:])


def test_generated_training_data_skips_pretraining(pipeline_project: Path) -> None:
    record = json.loads((pipeline_project / "models/pretrained/pretrained.json").read_text())
    assert record["run_id"] == "" and "generate.count > 0" in record["skipped"]
    mlflow.set_tracking_uri(project_env(pipeline_project)["MLFLOW_TRACKING_URI"])
    meta = json.loads((pipeline_project / "models/meta.json").read_text())
    assert mlflow.get_run(meta["run_id"]).data.tags["pretrained_run_id"] == "none"


def test_only_the_train_keys_a_fit_reads_rerun_pretraining(pipeline_project: Path) -> None:
    """`dvc exp run -S train.steps=3000` on a few hundred labels retrains without pretraining again."""
    params_file = pipeline_project / "params.yaml"
    shipped = params_file.read_text()

    def stale_stages(train_changes: dict) -> set[str]:
        params = override(yaml.safe_load(shipped), {"train": train_changes})
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        status = subprocess.run(
            ["dvc", "status", "--json"],
            cwd=pipeline_project,
            env=project_env(pipeline_project),
            capture_output=True,
            text=True,
            check=True,
        )
        return set(json.loads(status.stdout))

    try:
        assert stale_stages({"steps": 3000, "self_training_steps": 50}) == {"train"}
        assert stale_stages({"learning_rate": 0.001}) == {"pretrain", "train"}
    finally:
        params_file.write_text(shipped)
