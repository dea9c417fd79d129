"""dvc.yaml lists every module a stage runs: a code change must re-run each stage whose results it can change."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from captcha_mlops.params import TrainParams
from tests.conftest import REPO

PACKAGES = ("captcha_mlops", "stages")
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
NOT_PRETRAINING = {  # the train keys pretrain does not read
    *("steps", "batch_size", "max_minutes"),  # it sets its own budget (stages/pretrain.py)
    *("self_training_steps", "self_training_confidence", "self_training_views"),  # only train self-trains
}


def imported_files(module: Path) -> set[str]:
    """The project's own source files that `module` imports directly, relative to the repo."""
    files = set()
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] in PACKAGES and (REPO / f"{name.replace('.', '/')}.py").is_file():
                files.add(f"{name.replace('.', '/')}.py")
    return files


def code_run_by(entry: str) -> set[str]:
    """Every project source file that `python -m <entry>` imports, directly or not."""
    seen: set[str] = set()
    todo = [f"{entry.replace('.', '/')}.py"]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += imported_files(REPO / path)
    return seen


def listed_and_run(name: str) -> tuple[set[str], set[str]]:
    """The source files dvc.yaml lists for stage `name`, and those its command runs."""
    stage = STAGES[name]
    listed = {dep for dep in stage["deps"] if dep.endswith(".py")}
    return listed, code_run_by(stage["cmd"].removeprefix("python -m "))


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_depends_on_all_the_code_it_runs(name: str) -> None:
    listed, runs = listed_and_run(name)
    missing = runs - listed
    assert not missing, f"dvc.yaml: stage {name} runs {sorted(missing)} but does not list it in deps"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_lists_no_code_it_does_not_run(name: str) -> None:
    """A listed module the stage no longer imports would re-run it, a training perhaps, for nothing."""
    listed, runs = listed_and_run(name)
    unused = listed - runs
    assert not unused, f"dvc.yaml: stage {name} lists {sorted(unused)} that it does not import"


def test_the_import_scan_sees_through_from_package_imports() -> None:
    assert "stages/pretrain.py" in code_run_by("stages.train")  # `from stages import pretrain`
    assert "captcha_mlops/preprocess.py" in code_run_by("stages.evaluate")  # via recognizer


def test_pretrain_depends_on_the_train_keys_it_reads_and_no_others() -> None:
    """A train key pretrain ignores must not re-run it: `dvc exp run -S train.steps=3000` on a few hundred labels
    would pretrain again, 17 minutes, for nothing; a new train key has to be sorted onto one side or the other."""
    listed = {key.removeprefix("train.") for key in STAGES["pretrain"]["params"] if key.startswith("train.")}
    assert listed == set(TrainParams.model_fields) - NOT_PRETRAINING
