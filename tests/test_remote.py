"""A DVC remote: what one clone pushes, a fresh clone pulls, and its `dvc repro` has nothing to do."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.conftest import BIN, GIT, project_env, run

PULLED = ["data/split/train.csv", "models/model.keras", "models/meta.json", "models/bento_model.json"]


def test_a_fresh_clone_pulls_the_pipeline_and_repro_retrains_nothing(pipeline_project: Path, tmp_path: Path) -> None:
    # A copy of the session's pipeline run, not a run of its own: a tiny `dvc repro` is minutes on a 2-core CPU.
    root = tmp_path / "pushed"
    shutil.copytree(pipeline_project, root, symlinks=True)
    assert "Running stage" not in run(["dvc", "repro"], root), "the copy is up to date, as the original"
    run(["dvc", "remote", "add", "--default", "storage", str(tmp_path / "remote")], root)
    run(["git", "add", "-A"], root)
    run([*GIT, "commit", "-qm", "pipeline run, remote"], root)
    run(["dvc", "push"], root)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], tmp_path)
    run(["dvc", "pull"], clone, env=project_env(clone))
    for name in PULLED:
        assert (clone / name).read_bytes() == (root / name).read_bytes(), name
    assert "Data and pipelines are up to date" in run(["dvc", "status"], clone, env=project_env(clone))
    output = run(["dvc", "repro"], clone, env=project_env(clone))
    assert "Running stage" not in output, output
    assert not (clone / "mlflow.db").exists()  # nothing trained, evaluated or packaged


def test_make_pull_says_when_there_is_no_remote_or_it_cannot_be_read(
    project_factory: Callable[..., Path], tmp_path: Path
) -> None:
    root = project_factory("no_remote")
    pull = [str(BIN / "python"), "-m", "captcha_mlops.remote", "pull"]
    result = subprocess.run(pull, cwd=root, env=project_env(root), capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "no default DVC remote; add one: dvc remote add" in result.stderr

    missing = tmp_path / "never-created"
    run(["dvc", "remote", "add", "--default", "storage", str(missing)], root)
    result = subprocess.run(pull, cwd=root, env=project_env(root), capture_output=True, text=True, check=False)
    assert result.returncode == 1 and f"DVC remote 'storage' ({missing}) cannot be read" in result.stderr
