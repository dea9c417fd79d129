"""Where things live. Every path is absolute, so stages run the same from any working directory
(including the temporary copies `dvc exp run --temp/--queue` makes)."""

from __future__ import annotations

import os
from pathlib import Path

# The project root: the directory holding params.yaml. DVC runs stages from there; tests may point elsewhere.
ROOT = Path(os.environ.get("CAPTCHA_ROOT", Path.cwd())).resolve()

DATA = ROOT / "data"
ORIGIN = DATA / "origin"  # generate's output
SPLIT = DATA / "split"  # verify_split's manifests and report
# verify_split's word to pretrain: which side of `pretrain.below_images` the set is on. It holds no count,
# so it changes (and DVC re-runs pretrain) only when the set crosses that line, not with every label.
PRETRAINING = SPLIT / "pretraining.json"
UNLABELLED = SPLIT / "unlabelled.csv"  # images without labels, for self-training (verify_split.unlabelled_dirs)
MODELS = ROOT / "models"
PRETRAINED = MODELS / "pretrained"  # pretrain's output
REPORTS = ROOT / "reports"


def tracking_uri() -> str:
    """The MLflow store: $MLFLOW_TRACKING_URI, else sqlite mlflow.db at the root of the main checkout.

    `dvc exp run --temp/--queue` runs a stage in a copy of the repo under .dvc/tmp/exps/...; resolving
    the root through that path keeps every run in the one store that `mlflow ui` shows.
    """
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    return f"sqlite:///{main_checkout_root() / 'mlflow.db'}"


def main_checkout_root(root: Path = ROOT) -> Path:
    parts = root.parts
    for index in range(len(parts) - 2):
        if parts[index : index + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:index])
    return root
