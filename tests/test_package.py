"""The package stage: MLflow champion -> registry alias -> BentoML store; and `bentoml build` of the service."""

from __future__ import annotations

import json
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path

import mlflow
import yaml

from tests.conftest import BIN, REPO, TINY_PARAMS, project_env, run
from tests.serving_fixtures import CAPTCHA_TYPES, Packaged


def bento_models(env: dict[str, str], root: Path) -> list[dict]:
    return json.loads(run([str(BIN / "bentoml"), "models", "list", "-o", "json"], root, env=env))


def coin(captcha_type: str) -> dict:
    """`data` of captchas of one of two letters: 60 steps learn them, 1 step reads at chance."""
    return {"captcha_type": captcha_type, "charset": "ab", "min_length": 1, "max_length": 1, "width": 48, "height": 32}


def change_params(root: Path, section: str, **values: object) -> None:
    params_file = root / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params[section].update(values)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def test_package_registers_champion_and_imports_it_into_bentoml(pipeline_project: Path) -> None:
    root = pipeline_project
    env = project_env(root)
    record = json.loads((root / "models/bento_model.json").read_text())  # written by `dvc repro`
    meta = json.loads((root / "models/meta.json").read_text())

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    champion = mlflow.MlflowClient().get_model_version_by_alias("captcha-alnum4", "champion")
    assert champion.run_id == meta["run_id"] == record["mlflow_run_id"]
    assert record["mlflow_version"] == str(champion.version)

    (model,) = [m for m in bento_models(env, root) if m["tag"] == record["bento_tag"]]
    assert model["tag"].startswith("captcha-alnum4:")
    model_dir = Path(env["BENTOML_HOME"], "models", *model["tag"].split(":"))
    assert (model_dir / "model.keras").stat().st_size > 0
    assert json.loads((model_dir / "meta.json").read_text())["charset"] == meta["charset"]
    info = yaml.safe_load((model_dir / "model.yaml").read_text())
    assert info["labels"]["mlflow_run_id"] == meta["run_id"]
    assert info["metadata"]["width"] == 100 and "test_image_accuracy" in info["metadata"]


def test_package_ignores_runs_without_a_model_and_is_idempotent(pipeline_project: Path) -> None:
    root = pipeline_project
    env = project_env(root)
    before = json.loads((root / "models/bento_model.json").read_text())
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment("captcha-alnum4")
    with mlflow.start_run(run_name="better-but-no-model"):
        mlflow.log_metric("test_image_accuracy", 2.0)  # beats any real run, yet has nothing to serve

    output = run([str(BIN / "python"), "-m", "stages.package"], root)
    after = json.loads((root / "models/bento_model.json").read_text())
    # Same run, same registered version (no second registration), same BentoML model (no second import).
    assert after == before, output
    assert "already holds run" in output
    assert len([m for m in bento_models(env, root) if m["tag"].startswith("captcha-alnum4:")]) == 1


def test_bentoml_build_packs_service_code_and_both_models(packaged: Packaged) -> None:
    root = packaged.alnum4
    env = packaged.env(root) | {"CAPTCHA_TYPES": ",".join(CAPTCHA_TYPES)}
    tag = run([str(BIN / "bentoml"), "build", "-o", "tag"], root, env=env).strip().splitlines()[-1]
    tag = tag.removeprefix("__tag__:")
    bento_dir = Path(run([str(BIN / "bentoml"), "get", tag, "-o", "path"], root, env=env).strip().splitlines()[-1])
    bento = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    # New-style bentos list models per service; `bentoml export`/`containerize` copy them from this store.
    packed = [m["tag"].split(":")[0] for service in bento["services"] for m in service["models"]]
    assert sorted(packed) == ["captcha-alnum4", "captcha-digits5"]
    assert tag.startswith("captcha:")
    for name in ("service.py", "captcha_mlops/preprocess.py", "captcha_mlops/recognizer.py"):
        assert (bento_dir / "src" / name).is_file(), name
    # One list of pins: the bento's are pyproject.toml's dependencies, without the pipeline's tools.
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    requirements = (bento_dir / "env/python/requirements.in").read_text().splitlines()
    assert set(pins) <= {line.split("#")[0].strip() for line in requirements}
    assert not any(line.startswith("dvc") for line in requirements)


def test_package_refuses_a_champion_below_the_accuracy_floor(pipeline_project: Path) -> None:
    root = pipeline_project
    env = project_env(root)
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("captcha-alnum4", "champion")
    params_file = root / "params.yaml"
    shipped = params_file.read_text()
    params = yaml.safe_load(shipped)
    params["package"]["min_test_image_accuracy"] = 1.0  # the tiny run reads far fewer right
    params_file.write_text(yaml.safe_dump(params))
    try:
        result = subprocess.run(
            [str(BIN / "python"), "-m", "stages.package"], cwd=root, env=env, capture_output=True, text=True
        )
    finally:
        params_file.write_text(shipped)
    assert result.returncode != 0
    assert "below package.min_test_image_accuracy=1.0: not promoted to 'champion'" in result.stderr
    assert "Traceback" not in result.stderr
    assert client.get_model_version_by_alias("captcha-alnum4", "champion").version == champion.version


def test_the_champion_is_packaged_again_for_a_new_reading_and_kept_over_a_worse_newer_run(
    project_factory: Callable[..., Path],
) -> None:
    """Three `dvc repro` of one captcha type (one project: each repro from scratch is minutes on a 2-core CPU).
    `evaluate.views` and `evaluate.views_below` reach the BentoML model's meta.json through the champion's MLflow
    run, and measuring it again with another count packages it again without training. A newer, barely trained run
    then leaves the champion, the registry alias and the BentoML model the first run's, and `package` says so."""
    train = TINY_PARAMS["train"] | {"steps": 60}
    evaluate = TINY_PARAMS["evaluate"] | {"views": 2, "views_below": 0.9}
    changes = {"data": coin("coin"), "generate": {"count": 200}, "train": train, "evaluate": evaluate}
    root = project_factory("champion", changes)
    env = project_env(root)
    run(["dvc", "repro"], root, env=env)
    first = json.loads((root / "models/bento_model.json").read_text())
    assert json.loads((root / "reports/metrics.json").read_text())["views"] == 2
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    assert client.get_run(first["mlflow_run_id"]).data.metrics["test_views"] == 2
    assert client.get_run(first["mlflow_run_id"]).data.metrics["test_views_below"] == 0.9

    change_params(root, "evaluate", views=0)
    output = run(["dvc", "repro"], root, env=env)
    second = json.loads((root / "models/bento_model.json").read_text())

    assert "Running stage 'train'" not in output  # a reading setting: nothing is trained again
    assert second["mlflow_run_id"] == first["mlflow_run_id"] and second["bento_tag"] != first["bento_tag"]
    for record, views in ((first, 2), (second, 0)):
        model_dir = Path(env["BENTOML_HOME"], "models", *record["bento_tag"].split(":"))
        meta = json.loads((model_dir / "meta.json").read_text())
        assert (meta["views"], meta["views_below"]) == (views, 0.9)
        assert (record["views"], record["views_below"]) == (str(views), "0.9")

    change_params(root, "train", steps=1, seed=1)
    output = run(["dvc", "repro"], root, env=env)
    newer = json.loads((root / "models/meta.json").read_text())["run_id"]

    trained = second["mlflow_run_id"]
    accuracy = {r: client.get_run(r).data.metrics["test_image_accuracy"] for r in (trained, newer)}
    assert accuracy[trained] > accuracy[newer], accuracy  # the premise: the first run is better
    assert json.loads((root / "models/bento_model.json").read_text()) == second
    assert client.get_model_version_by_alias("captcha-coin", "champion").run_id == trained
    assert f"already holds run {trained}" in output
