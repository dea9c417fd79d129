"""Accuracy benchmark: our networks against the seed's, same data, same training time budget, one run.

Each architecture is trained and evaluated by the real pipeline as a DVC experiment (`dvc exp run --temp`,
so the workspace is left as it is; the generated data is shared through DVC's run cache), and tracked in
MLflow like any other run. Results go to bench/results/accuracy.json.

    python -m bench.accuracy                      # the issue's setting: 60k images, 40 min budget each
    python -m bench.accuracy --count 20000 --minutes 10
    python -m bench.accuracy --archs ctc --count 48000 --minutes 50 --steps 9000 --out bench/results/x.json

The results committed before the step budget (bench/results/accuracy*.json) were measured with `--epochs`, at the
commits the README names.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import mlflow

from captcha_mlops.params import load_params
from captcha_mlops.paths import ROOT, tracking_uri
from captcha_mlops.tracking import registered_name

RESULTS = ROOT / "bench" / "results" / "accuracy.json"


def run_experiment(name: str, overrides: dict[str, object]) -> float:
    """`dvc exp run --temp` with `-S key=value` overrides; returns its wall time in seconds."""
    command = ["dvc", "exp", "run", "--temp", "-n", name, "--force"]
    for key, value in overrides.items():
        command += ["-S", f"{key}={value}"]
    print("bench:", " ".join(command), flush=True)
    started = time.monotonic()
    subprocess.run(command, cwd=ROOT, check=True)
    return time.monotonic() - started


def latest_run(arch: str, since: float) -> dict[str, float | str]:
    """Metrics of the newest MLflow run of `arch` started after `since` (epoch seconds)."""
    mlflow.set_tracking_uri(tracking_uri())
    runs = mlflow.search_runs(
        experiment_names=[registered_name(load_params().data.captcha_type)],
        filter_string=f"tags.arch = '{arch}' and attributes.start_time > {int(since * 1000)}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if runs.empty:
        raise SystemExit(f"bench: no MLflow run of arch {arch} found after the experiment")
    row = runs.iloc[0]
    return {
        "mlflow_run_id": row["run_id"],
        "test_image_accuracy": float(row["metrics.test_image_accuracy"]),
        "test_char_accuracy": float(row["metrics.test_char_accuracy"]),
        "test_images": int(row["metrics.test_images"]),
        "steps": max(m.step for m in mlflow.MlflowClient().get_metric_history(row["run_id"], "val_image_accuracy")),
    }


def accuracy_ratio(ours: dict, seed: dict) -> float | None:
    """Our test image accuracy over the seed's; None when the seed read no test captcha entirely right."""
    if seed["test_image_accuracy"] == 0:
        return None
    return round(ours["test_image_accuracy"] / seed["test_image_accuracy"], 2)


def plot_curves(run_ids: dict[str, str], path: Path) -> None:
    """Validation image and character accuracy by optimizer step of each architecture, from MLflow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    client = mlflow.MlflowClient()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, metric in zip(axes, ("val_image_accuracy", "val_char_accuracy"), strict=True):
        for arch, run_id in run_ids.items():
            history = sorted(client.get_metric_history(run_id, metric), key=lambda m: m.step)
            axis.plot([m.step for m in history], [m.value for m in history], marker="o", label=arch)
        axis.set_xlabel("optimizer step")
        axis.set_title(metric.replace("_", " "))
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=60000, help="captchas generated (5%% become the test set)")
    parser.add_argument("--minutes", type=float, default=40, help="training time budget per architecture")
    parser.add_argument("--steps", type=int, default=20000, help="step cap (the time budget usually stops first)")
    parser.add_argument("--archs", nargs="+", choices=("ctc", "compact", "seed"), default=["ctc", "compact", "seed"])
    parser.add_argument("--out", type=Path, default=RESULTS, help="summary JSON; the curves PNG goes beside it")
    args = parser.parse_args()
    out = args.out.resolve()
    curves = out.with_name(f"{out.stem}_curves.png")

    shared = {"generate.count": args.count, "train.max_minutes": args.minutes, "train.steps": args.steps}
    results: dict[str, object] = {
        "command": " ".join(["python -m bench.accuracy", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
        "settings": shared,
    }
    for arch in args.archs:
        started = time.time()
        # The seed stops only on its budget, as the original did on its step cap.
        extra = {"train.patience_steps": args.steps} if arch == "seed" else {}
        seconds = run_experiment(f"bench-{arch}", {**shared, "model.arch": arch, **extra})
        results[arch] = {**latest_run(arch, started), "pipeline_minutes": round(seconds / 60, 1)}
        print(f"bench: {arch}: {results[arch]}", flush=True)

    if "seed" in results:
        for arch in set(args.archs) - {"seed"}:
            results[arch]["image_accuracy_ratio_to_seed"] = accuracy_ratio(results[arch], results["seed"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot_curves({arch: results[arch]["mlflow_run_id"] for arch in args.archs}, curves)
    print(f"bench: wrote {out} and {curves}")


if __name__ == "__main__":
    main()
