"""verify_split on a corpus of bad files: every one reported with a reason, none touched."""

import csv
import hashlib
import io
import json
import sys
from pathlib import Path

import yaml

from captcha_mlops.synth import CaptchaFactory
from tests.conftest import run

FACTORY = CaptchaFactory("0123456789abcdefghijklmnopqrstuvwxyz", 4, 4, 100, 60)


def png(label: str, index: int, size: tuple[int, int] | None = None) -> bytes:
    image = FACTORY.sample(seed=5, index=index)[1]
    image = image.resize(size) if size else image
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def make_root(tmp_path: Path, params: dict | None = None) -> Path:
    (tmp_path / "data/origin").mkdir(parents=True)
    (tmp_path / "data/new").mkdir(parents=True)
    (tmp_path / "data/unlabelled").mkdir(parents=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params or {}))
    return tmp_path


def checksums(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder`, with the hash of each file's bytes."""
    return {
        str(p.relative_to(folder)): p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
    }


def verify_split(root: Path) -> dict:
    run([sys.executable, "-m", "stages.verify_split"], root)
    return json.loads((root / "reports/anomalies.json").read_text())


def manifest(root: Path, side: str) -> dict[str, str]:
    with (root / f"data/split/{side}.csv").open() as file:
        return {row["path"]: row["label"] for row in csv.DictReader(file)}


def test_bad_files_are_reported_and_left_untouched(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    new = root / "data/new"
    for index in range(40):
        (root / f"data/origin/abcd_{index:03d}.png").write_bytes(png("abcd", index))
    good_png = png("x", 99)
    (new / "k3m9.png").write_bytes(good_png)  # label.ext: fine
    (new / "k3m9_copy.PNG").write_bytes(good_png)  # upper-case suffix: fine
    (new / "c0rr_1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (new / "e3pt_1.png").write_bytes(b"")
    (new / "trun_2.png").write_bytes(good_png[: len(good_png) // 2])
    (new / "abcd_1.txt").write_text("not an image")
    (new / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (new / "ab_1.png").write_bytes(good_png)  # too short
    (new / "ABCD_1.png").write_bytes(good_png)  # upper case is not in the charset
    (new / "_nolabel.png").write_bytes(good_png)
    (new / "sub").mkdir()
    (new / "sub/wxyz_1.png").write_bytes(good_png)  # nested folders are read too
    inputs = [root / "data/origin", root / "data/new"]
    before = [checksums(folder) for folder in inputs]

    report = verify_split(root)

    assert [checksums(folder) for folder in inputs] == before, "inputs are never moved, deleted or rewritten"
    files = report["files"]
    assert set(files) == {
        f"data/new/{name}"
        for name in [
            "c0rr_1.png", "e3pt_1.png", "trun_2.png", "abcd_1.txt", ".DS_Store", "ab_1.png", "ABCD_1.png",
            "_nolabel.png",
        ]
    }  # fmt: skip
    assert "suffix" in files["data/new/abcd_1.txt"] and "cannot be read" in files["data/new/c0rr_1.png"]
    assert "'ABCD'" not in files["data/new/ab_1.png"] and "2 characters" in files["data/new/ab_1.png"]
    assert "not in the charset" in files["data/new/ABCD_1.png"]
    assert report["train"] + report["test"] == 43 and report["anomalies"] == 8
    split = manifest(root, "train") | manifest(root, "test")
    assert split["data/new/k3m9.png"] == "k3m9" and split["data/new/sub/wxyz_1.png"] == "wxyz"


def test_unlabelled_images_are_listed_apart_whatever_their_names(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "data/origin/abcd_1.png").write_bytes(png("abcd", 1))
    plain = root / "data/unlabelled"
    (plain / "download-0001.png").write_bytes(png("x", 2))  # no label in the name: fine here
    (plain / "k3m9_2.png").write_bytes(png("x", 3))  # a name that looks like a label is not read as one
    (plain / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (plain / "notes.txt").write_text("not an image")
    (plain / "README.md").write_text("what this folder is for")
    before = checksums(plain)

    report = verify_split(root)

    assert checksums(plain) == before
    assert manifest(root, "unlabelled") == {"data/unlabelled/download-0001.png": "", "data/unlabelled/k3m9_2.png": ""}
    assert set(report["files"]) == {"data/unlabelled/broken.png", "data/unlabelled/notes.txt"}
    assert report["unlabelled"] == 2 and report["train"] + report["test"] == 1
    assert "k3m9" not in {**manifest(root, "train"), **manifest(root, "test")}.values()


def test_an_unlabelled_copy_of_a_labelled_image_is_left_out(tmp_path: Path) -> None:
    """The review page copies what it labels to data/new/: the kept folder can then feed data/unlabelled/."""
    root = make_root(tmp_path)
    (root / "data/new/k3m9_1f2e.png").write_bytes(png("k3m9", 1))
    (root / "data/unlabelled/1f2e.png").write_bytes(png("k3m9", 1))  # the same image, labelled since
    (root / "data/unlabelled/7a0c.png").write_bytes(png("x", 2))

    report = verify_split(root)

    assert manifest(root, "unlabelled") == {"data/unlabelled/7a0c.png": ""}
    assert report["unlabelled"] == 1 and report["unlabelled_also_labelled"] == 1
    assert report["train"] + report["test"] == 1 and (root / "data/unlabelled/1f2e.png").exists()


def test_wrong_size_is_rejected_unless_resizing(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"verify_split": {"resize": False}})
    (root / "data/origin/abcd_1.png").write_bytes(png("abcd", 1))
    (root / "data/new/wxyz_1.png").write_bytes(png("wxyz", 2, size=(160, 60)))
    assert "size 160x60, expected 100x60" in verify_split(root)["files"]["data/new/wxyz_1.png"]
    (root / "params.yaml").write_text(yaml.safe_dump({"verify_split": {"resize": True}}))
    assert verify_split(root)["anomalies"] == 0


def test_split_is_19_to_1_and_stable_when_data_grows(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    image = png("abcd", 0)  # a file's side depends on its name only
    for index in range(400):
        (root / f"data/origin/abcd_{index:04d}.png").write_bytes(image)
    verify_split(root)
    test_before = manifest(root, "test")
    assert 8 <= len(test_before) <= 35  # 5% of 400 is 20; a hash split wanders a little
    for index in range(400, 600):
        (root / f"data/new/wxyz_{index:04d}.png").write_bytes(image)
    verify_split(root)
    test_after = manifest(root, "test")
    assert test_before.items() <= test_after.items(), "no image changes side when samples are added"
    assert not set(manifest(root, "train")) & set(test_after)


def test_charset_can_be_collected_from_the_labels(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"data": {"charset_from_data": True, "min_length": 2}})
    for index, label in enumerate(["验证码", "码验", "ZZ9"]):
        (root / f"data/new/{label}_{index}.png").write_bytes(png(label, index))
    report = verify_split(root)
    assert report["anomalies"] == 0
    assert (root / "data/split/charset.txt").read_text(encoding="utf-8") == "9Z码证验"


def test_missing_extra_folder_is_reported_not_fatal(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"verify_split": {"extra_dirs": ["data/new", "data/elsewhere"]}})
    (root / "data/origin/abcd_1.png").write_bytes(png("abcd", 1))
    assert verify_split(root)["missing_folders"] == ["data/elsewhere"]
