"""Is training slower because of the code or the machine? One training step of two commits, side by side.

Checks each commit out into a temporary worktree, and in turn (A B A B ...) times `train_on_batch` on batches of
128 images of this checkout's `data/split/train.csv` (run `dvc repro verify_split` first) with that commit's
network, dataset, optimizer and training precision: the median of steps 10-50. Alternating rounds on one
machine, so the ratio means something where absolute times drift. Writes bench/results/step_time.json.

    python -m bench.step_time --commits 65450e9 HEAD --rounds 2

Or one commit in two training precisions (`train.precision`), e.g. to see whether this CPU computes bfloat16
faster than float32:

    python -m bench.step_time --commits HEAD --precisions float32 mixed_bfloat16 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.git import commit as resolve
from bench.learning_curve import machine
from captcha_mlops.paths import ROOT

# Run inside a commit's worktree: its own modules, this checkout's data. Early commits kept the dataset and
# optimizer code in stages/train.py and counted the schedule in epochs.
STEP = """
import json, sys, time
import numpy as np, keras
from captcha_mlops.params import load_params
from captcha_mlops.labels import Codec
from captcha_mlops.dataset import load_images, read_manifest
from captcha_mlops.model import build_model, training_model
params = load_params(); data = params.data
from pathlib import Path
codec = Codec(Path("data/split/charset.txt").read_text(), data.max_length)
rows = read_manifest(Path("data/split/train.csv"))[:4000]
images = load_images([p for p, _ in rows], data, desc="load")
targets = codec.encode_many(label for _, label in rows)
try:
    from captcha_mlops.training import make_dataset, compile_model
    schedule_steps = 1500
except ImportError:
    from stages.train import make_dataset, compile_model
    schedule_steps = 141
keras.utils.set_random_seed(0)
model = training_model(build_model(params.model, data.height, data.width, data.max_length, codec.num_classes))
try:  # the precision `fit` trains in, at commits that choose one
    from captcha_mlops.training import computing_in, resolve_precision
    model = computing_in(model, resolve_precision(sys.argv[1] if len(sys.argv) > 1 else params.train.precision))
except ImportError:
    pass
compile_model(model, params.train, schedule_steps, "ctc")
batches = iter(make_dataset(images, targets, codec.num_classes, 128, training=True, seed=0).repeat())
times = []
for _ in range(50):
    x, y = next(batches)
    started = time.perf_counter()
    model.train_on_batch(x, y)
    times.append(time.perf_counter() - started)
print(json.dumps(round(1000 * float(np.median(times[10:])), 1)))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", nargs="+", default=["65450e9", "HEAD"], help="two, or one with --precisions")
    parser.add_argument("--precisions", nargs="*", default=[], help="train.precision values to compare (else params)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/step_time.json")
    args = parser.parse_args()
    commits = [resolve(commit) for commit in args.commits]  # HEAD -> the commit it was
    variants = [(commit, precision) for commit in commits for precision in args.precisions or [None]]
    if len(variants) != 2:
        parser.error("compare two: --commits A B, or --commits A --precisions P Q")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    names = [" ".join(part for part in variant if part) for variant in variants]
    times: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="step-time-") as workdir:
        trees = {}
        for commit in commits:
            tree = Path(workdir) / commit
            subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tree), commit], cwd=ROOT, check=True)
            (tree / "data").mkdir(exist_ok=True)
            for part in ("origin", "split"):  # the manifests name data/origin/... relative to the root
                (tree / "data" / part).symlink_to(ROOT / "data" / part)
            trees[commit] = tree
        try:
            for _ in range(args.rounds):
                for name, (commit, precision) in zip(names, variants):
                    command = [sys.executable, "-c", STEP, *([precision] if precision else [])]
                    tree = trees[commit]
                    result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=True)
                    times[name].append(json.loads(result.stdout.strip().splitlines()[-1]))
                    print(f"{name}: {times[name][-1]} ms a step", flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    first, second = names
    result = {
        "command": "python -m bench.step_time " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "ms_per_step": times,
        "ratio_second_to_first": round(sum(times[second]) / sum(times[first]), 3),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
