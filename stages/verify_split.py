"""Stage 2: check every image (generated and user-supplied), report the bad ones, split the good 19:1.

Inputs are only read: nothing is moved, deleted or rewritten. The outputs are manifests under
data/split/ (train.csv, test.csv: path,label; unlabelled.csv: the usable images of
`verify_split.unlabelled_dirs`, for train's self-training, less any that is also a labelled image), the effective
charset, whether the set is small enough for the `pretrain` stage to help (pretraining.json), and a report of
anomalies.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from captcha_mlops.dataset import write_manifest
from captcha_mlops.labels import Codec, collect_charset, label_from_name
from captcha_mlops.parallel import parallel_map
from captcha_mlops.params import DataParams, PretrainParams, VerifySplitParams, load_params
from captcha_mlops.paths import ORIGIN, PRETRAINING, REPORTS, ROOT, SPLIT, UNLABELLED

# A DVC metric, committed like the other reports (so `dvc metrics diff` compares it with HEAD's).
ANOMALIES = REPORTS / "anomalies.json"
# Files that document a folder rather than being samples in it.
NOT_SAMPLES = {"README.md", ".gitkeep"}


def check_image(path: Path, data: DataParams, verify: VerifySplitParams) -> tuple[str, str | None]:
    """(label, None) for a usable labelled image, or (label, reason) for an anomaly. Charset is checked later."""
    label = label_from_name(path)
    if problem := format_problem(path, verify):
        return label, problem
    if not label:
        return label, "no label: name must be label_anything.ext or label.ext"
    if not data.min_length <= len(label) <= data.max_length:
        return label, f"label '{label}' has {len(label)} characters, expected {_lengths(data)}"
    return label, image_problem(path, data, verify)


def check_unlabelled(path: Path, data: DataParams, verify: VerifySplitParams) -> str | None:
    """None for an image the network can read (its name is not looked at), else why not."""
    return format_problem(path, verify) or image_problem(path, data, verify)


def format_problem(path: Path, verify: VerifySplitParams) -> str | None:
    if path.suffix.lower().lstrip(".") not in verify.formats:
        return f"suffix '{path.suffix}' not in {verify.formats}"
    return None


def image_problem(path: Path, data: DataParams, verify: VerifySplitParams) -> str | None:
    """Why the file cannot be used as an image of this size, or None."""
    try:
        with Image.open(path) as image:
            image.load()
            size = image.size
    except Exception as error:
        return f"cannot be read as an image ({type(error).__name__}: {error})"
    if size != (data.width, data.height) and not verify.resize:
        return f"size {size[0]}x{size[1]}, expected {data.width}x{data.height} (or set resize: true)"
    return None


def file_digest(path: Path) -> bytes:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").digest()


def without_labelled_copies(unlabelled: list[Path], labelled: list[Path]) -> tuple[list[Path], int]:
    """The unlabelled images that are not byte for byte a labelled one, and how many were.

    A copy of a labelled image could land in the test split and be self-trained on too, and a labelled image
    needs no reading: the review page copies each image it labels to data/new/, so a folder of the service's
    kept images can feed data/unlabelled/ as it is.
    """
    if not unlabelled:
        return [], 0
    labelled_digests = {file_digest(path) for path in labelled}  # 20,000 PNGs of 100x60: 3 s on 2 cores
    kept = [path for path in unlabelled if file_digest(path) not in labelled_digests]
    return kept, len(unlabelled) - len(kept)


def pretraining_wanted(images: int, pretrain: PretrainParams) -> dict[str, bool | str]:
    """Whether a set of `images` usable images is small enough for pretraining to help, and why."""
    if images < pretrain.below_images:
        return {"wanted": True, "why": f"fewer than pretrain.below_images={pretrain.below_images} images"}
    return {
        "wanted": False,
        "why": f"pretrain.below_images={pretrain.below_images} images or more: "
        "pretraining no longer helped there (README, 'How many images do I need?')",
    }


def in_test_split(path: Path, test_ratio: float) -> bool:
    """A file's side depends on its name alone, so adding samples never moves an existing one."""
    digest = hashlib.sha256(path.name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_ratio


def list_inputs(folders: Iterable[Path]) -> tuple[list[Path], list[str]]:
    """Every file under the folders, in a stable order; and a note per folder that does not exist."""
    files, missing = [], []
    for folder in folders:
        if not folder.is_dir():
            missing.append(str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else str(folder))
            continue
        files += sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in NOT_SAMPLES)
    return files, missing


def main() -> None:
    params = load_params()
    data, verify = params.data, params.verify_split
    folders = [ORIGIN, *(ROOT / extra for extra in verify.extra_dirs)]
    files, missing = list_inputs(folders)
    unlabelled_files, unlabelled_missing = list_inputs(ROOT / folder for folder in verify.unlabelled_dirs)
    for folder in missing + unlabelled_missing:
        print(f"verify_split: {folder} does not exist, skipped (create it to add your own images)")

    check = functools.partial(check_image, data=data, verify=verify)
    results = list(parallel_map(check, files, total=len(files), desc="verify"))
    anomalies = {str(p.relative_to(ROOT)): reason for p, (_, reason) in zip(files, results) if reason}
    check_plain = functools.partial(check_unlabelled, data=data, verify=verify)
    plain_results = list(parallel_map(check_plain, unlabelled_files, total=len(unlabelled_files), desc="unlabelled"))
    anomalies |= {str(p.relative_to(ROOT)): reason for p, reason in zip(unlabelled_files, plain_results) if reason}
    readable = [p for p, reason in zip(unlabelled_files, plain_results) if not reason]
    unlabelled, labelled_copies = without_labelled_copies(readable, files)
    good = [(p, label) for p, (label, reason) in zip(files, results) if not reason]

    charset = collect_charset(label for _, label in good) if data.charset_from_data else data.charset
    codec = Codec(charset, data.max_length)
    for path, label in good:
        if unknown := codec.unknown_chars(label):
            anomalies[str(path.relative_to(ROOT))] = f"characters {''.join(sorted(unknown))!r} not in the charset"
    good = [(p, label) for p, label in good if str(p.relative_to(ROOT)) not in anomalies]
    sides: dict[str, list[tuple[Path, str]]] = {"train": [], "test": []}
    for path, label in good:
        sides["test" if in_test_split(path, verify.test_ratio) else "train"].append((path, label))

    reasons = Counter(reason.split(" ")[0] for reason in anomalies.values())
    report = {
        "checked": len(files) + len(unlabelled_files),
        "train": len(sides["train"]),
        "test": len(sides["test"]),
        "unlabelled": len(unlabelled),
        "unlabelled_also_labelled": labelled_copies,
        "anomalies": len(anomalies),
        "missing_folders": missing + unlabelled_missing,
        "anomalies_by_kind": dict(reasons),
        "files": anomalies,
    }
    REPORTS.mkdir(parents=True, exist_ok=True)
    ANOMALIES.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if not good:
        raise SystemExit(f"verify_split: no usable image in {[str(f) for f in folders]}; see {ANOMALIES}")

    SPLIT.mkdir(parents=True, exist_ok=True)
    for side, rows in sides.items():
        write_manifest(SPLIT / f"{side}.csv", rows)
    write_manifest(UNLABELLED, [(path, "") for path in unlabelled])
    (SPLIT / "charset.txt").write_text(charset, encoding="utf-8")
    PRETRAINING.write_text(json.dumps(pretraining_wanted(len(good), params.pretrain), indent=2) + "\n")
    print(
        f"verify_split: {report['checked']} files, {len(sides['train'])} train, {len(sides['test'])} test, "
        f"{len(unlabelled)} unlabelled, {len(anomalies)} anomalies (see {ANOMALIES})"
        + (f"; {labelled_copies} unlabelled images skipped: each is also a labelled one" if labelled_copies else "")
    )


def _lengths(data: DataParams) -> str:
    return str(data.max_length) if data.min_length == data.max_length else f"{data.min_length}..{data.max_length}"


if __name__ == "__main__":
    main()
