"""Shared fixtures: a tiny copy of the project, and the pipeline run on it once per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's dvc, bentoml, mlflow
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]  # commits in throwaway repos

# Small enough for a 2-core CI machine, big enough that every stage does real work.
TINY_PARAMS = {
    "generate": {"count": 300},
    "model": {"filters": [8, 16, 32, 32], "rnn_units": 32},  # narrower: a tiny train took 61 s, now 40 (AVX2 EPYC)
    "train": {"steps": 20, "validate_every": 10, "batch_size": 32, "log_every_n_steps": 2},
    "evaluate": {"batch_size": 64, "gallery_size": 4},
    "package": {"min_test_image_accuracy": 0.0},  # 20 steps learn nothing: serving tests need a model anyway
}


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """Run a command; on failure show its output in the assertion message."""
    result = subprocess.run(
        args, cwd=cwd, env=env or project_env(cwd), capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def project_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "BENTOML_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    env["BENTOML_HOME"] = str(root / ".bentoml")
    env["DVC_NO_ANALYTICS"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def override(params: dict, changes: dict) -> dict:
    for section, values in changes.items():
        params.setdefault(section, {}).update(values)
    return params


def make_project(destination: Path, changes: dict | None = None) -> Path:
    """Copy the working tree (tracked and untracked, not ignored) into a new git repo with tiny params."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file() and not name.startswith(("tests/", "bench/results/", "reports/", "dvc.lock")):
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    params_file = destination / "params.yaml"
    params = override(yaml.safe_load(params_file.read_text()), TINY_PARAMS | (changes or {}))
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], destination)
    run(["git", "add", "-A"], destination)
    run([*GIT, "commit", "-qm", "tiny project"], destination)
    return destination


@pytest.fixture(scope="session")
def project_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    def factory(name: str = "project", changes: dict | None = None) -> Path:
        return make_project(tmp_path_factory.mktemp(name), changes)

    return factory


@pytest.fixture(scope="session")
def pipeline_project(project_factory: Callable[..., Path]) -> Path:
    """A tiny project on which `dvc repro` has run once: data, models, reports and an MLflow run exist."""
    root = project_factory("pipeline")
    run(["dvc", "repro"], root)
    return root


# Serving fixtures (session-scoped: one `bentoml serve` for all test modules) are registered here, once.
from tests.serving_fixtures import packaged, server  # noqa: E402, F401
