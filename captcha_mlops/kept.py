"""Images the service read, kept for review: what was read from each, how sure the model was, and what a
reviewer made of it.

One folder per captcha type under CAPTCHA_SAVE_DIR; every name in it is the server's (a fresh uuid4 hex),
never anything a client sent:

    <type>/type.json                 the type's charset and lengths: what a label must fit
    <type>/pending/<id>.png, .json   waiting for review; the sidecar is the reading (text, per-character
                                     confidences, their product, the views' agreement, model version, when)
    <type>/claimed/<id>.json         a review in progress (a rename: only one reviewer can win it)
    <type>/labelled/<id>.json        the reading, the label given and the file it became
    <type>/unreadable/<id>.png, .json  set aside by a reviewer: never trained on

A labelled image is copied to the type's own-images folder (data/new/) as `<label>_<id>.png`: an ordinary
own image for the next `dvc repro`. Every step is a rename or a write to a temporary name then a rename, and
`labelled/<id>.json` is written before the copy, so an interrupted review is finished (or undone) by the
next `KeptImages`, and a double submit finds the id claimed or labelled instead of copying it twice.
"""

from __future__ import annotations

import dataclasses
import heapq
import io
import json
import math
import os
import re
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

ID_PATTERN = re.compile(r"[0-9a-f]{32}")
TYPE_FILE = "type.json"


class ReviewError(Exception):
    """A review request that cannot be done; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class CaptchaType:
    """What a label of this type must fit: characters from `charset`, `min_length..max_length` of them."""

    name: str
    charset: str
    min_length: int
    max_length: int

    def problem_with(self, label: str) -> str | None:
        if not label:
            return "the label is empty"
        if unknown := sorted(set(label) - set(self.charset)):
            return f"{''.join(unknown)!r} not in the {self.name} charset {self.charset!r}"
        if not self.min_length <= len(label) <= self.max_length:
            lengths = f"{self.min_length}" + (f"-{self.max_length}" if self.max_length > self.min_length else "")
            return f"{len(label)} characters; {self.name} captchas have {lengths}"
        if "_" in label or label.startswith(".") or any(char in label for char in "/\\\0"):
            return f"{label!r} cannot be part of a file name"
        return None


@dataclasses.dataclass(frozen=True)
class Kept:
    """One kept image's record: its sidecar."""

    id: str
    captcha_type: str
    version: str  # the model version that read it (BentoML tag version)
    text: str
    confidences: list[float]
    confidence: float  # the product of the per-character confidences: how sure the model was of the whole text
    valid: bool  # the text has as many characters as the type's captchas
    received: float  # unix time
    agreement: float = 1.0  # the share of the views read that read `text` (1: no views, or a sure reading)

    @property
    def priority(self) -> tuple[bool, float, float]:
        """Least sure first: a reading of the wrong length before any valid one, then the readings its views
        disagree on, least agreement first (a misreading rarely survives the views, a sure one often does:
        README, "Which readings to train on"), then by confidence."""
        return (self.valid, self.agreement, self.confidence)


def write_atomically(path: Path, data: bytes) -> None:
    """`path` appears whole or not at all: readers never see half a file."""
    part = path.with_name(f".{path.name}.part")
    part.write_bytes(data)
    os.replace(part, path)


def read_type(path: Path) -> CaptchaType:
    return CaptchaType(**json.loads(path.read_text(encoding="utf-8")))


def read_kept(path: Path) -> Kept:
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw.setdefault("captcha_type", raw.pop("type", None))  # sidecars kept before the field's rename
    return Kept(**raw)


def to_json(record: dict) -> bytes:
    return (json.dumps(record, indent=1, ensure_ascii=False) + "\n").encode()


class KeptImages:
    """The kept images of one folder (CAPTCHA_SAVE_DIR): the service adds, the review page takes."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        # Pending sidecars already read, by path: a sidecar is written once and never changed while
        # pending, so each page load reads only the images kept since the last one.
        self.read_pending: dict[Path, Kept] = {}

    def folder(self, type_name: str, part: str = "") -> Path:
        if not type_name.isidentifier():
            raise ReviewError(404, f"unknown captcha type {type_name!r}")
        return self.root / type_name / part

    # -- the service's side -------------------------------------------------------------------------------

    def declare(self, captcha_type: CaptchaType) -> None:
        """Record a served type's charset and lengths (at service start; every worker writes the same)."""
        folder = self.folder(captcha_type.name)
        for part in ("pending", "claimed", "labelled", "unreadable"):
            (folder / part).mkdir(parents=True, exist_ok=True)
        write_atomically(folder / TYPE_FILE, to_json(dataclasses.asdict(captcha_type)))

    def keep(
        self,
        image: Image.Image,
        type_name: str,
        version: str,
        text: str,
        confidences: Sequence[float],
        valid: bool,
        agreement: float = 1.0,
    ) -> Kept:
        """Save an image read and its reading; pending review. The image first: a sidecar always has one."""
        record = Kept(
            id=uuid.uuid4().hex,
            captcha_type=type_name,
            version=version,
            text=text,
            confidences=[round(c, 4) for c in confidences],
            confidence=round(math.prod(confidences), 4) if text else 0.0,
            valid=valid,
            received=round(time.time(), 3),
            agreement=round(agreement, 4),
        )
        pending = self.folder(type_name, "pending")
        png = io.BytesIO()
        image.convert("RGBA" if "A" in image.getbands() else "RGB").save(png, format="PNG")
        write_atomically(pending / f"{record.id}.png", png.getvalue())
        write_atomically(pending / f"{record.id}.json", to_json(dataclasses.asdict(record)))
        return record

    # -- the reviewer's side ------------------------------------------------------------------------------

    def types(self) -> list[CaptchaType]:
        found = sorted(self.root.glob(f"*/{TYPE_FILE}")) if self.root.is_dir() else []
        return [read_type(path) for path in found]

    def captcha_type(self, type_name: str) -> CaptchaType:
        path = self.folder(type_name) / TYPE_FILE
        if not path.is_file():
            raise ReviewError(404, f"unknown captcha type {type_name!r}")
        return read_type(path)

    def counts(self, type_name: str) -> dict[str, int]:
        folder = self.folder(type_name)
        return {part: len(list((folder / part).glob("*.json"))) for part in ("pending", "labelled", "unreadable")}

    def pending(self, type_name: str, limit: int) -> list[Kept]:
        """The `limit` least sure pending readings of a type, least sure first."""
        folder = self.folder(type_name, "pending")
        paths = set(folder.glob("*.json"))
        for path in [path for path in self.read_pending if path.parent == folder and path not in paths]:
            del self.read_pending[path]  # reviewed since
        records = []
        for path in paths:
            if path not in self.read_pending:
                try:
                    self.read_pending[path] = read_kept(path)
                except FileNotFoundError:  # labelled by another reviewer since the listing
                    continue
            records.append(self.read_pending[path])
        return heapq.nsmallest(limit, records, key=lambda record: record.priority)

    def image_path(self, type_name: str, image_id: str) -> Path:
        path = self.folder(type_name, "pending") / f"{self.checked_id(image_id)}.png"
        if not path.is_file():
            raise ReviewError(404, f"no pending image {image_id} of type {type_name}")
        return path

    def label(self, type_name: str, image_id: str, label: str, to: Path) -> Path:
        """Copy a pending image into `to` as `<label>_<id>.png` and record it; the file written."""
        captcha_type = self.captcha_type(type_name)
        if problem := captcha_type.problem_with(label):
            raise ReviewError(422, problem)
        record = self.claim(type_name, image_id)
        target = to.resolve() / f"{label}_{image_id}.png"
        done = {**record, "label": label, "file": str(target), "reviewed": round(time.time(), 3)}
        write_atomically(self.folder(type_name, "labelled") / f"{image_id}.json", to_json(done))
        self.finish_labelled(type_name, image_id, target)
        return target

    def set_aside(self, type_name: str, image_id: str) -> None:
        """Mark a pending image unreadable: kept apart, never trained on."""
        record = self.claim(type_name, image_id)
        folder = self.folder(type_name)
        os.replace(folder / "pending" / f"{image_id}.png", folder / "unreadable" / f"{image_id}.png")
        done = {**record, "reviewed": round(time.time(), 3)}
        write_atomically(folder / "unreadable" / f"{image_id}.json", to_json(done))
        (folder / "claimed" / f"{image_id}.json").unlink()

    def recover(self, type_name: str) -> None:
        """Finish the reviews an interruption left claimed, or put them back in the queue."""
        folder = self.folder(type_name)
        for claimed in folder.glob("claimed/*.json"):
            image_id = claimed.stem
            labelled = folder / "labelled" / claimed.name
            if labelled.is_file():
                self.finish_labelled(type_name, image_id, Path(json.loads(labelled.read_text())["file"]))
            elif (folder / "unreadable" / f"{image_id}.png").is_file():
                write_atomically(folder / "unreadable" / claimed.name, claimed.read_bytes())
                claimed.unlink()
            else:
                os.replace(claimed, folder / "pending" / claimed.name)

    # -- steps ----------------------------------------------------------------------------------------------

    @staticmethod
    def checked_id(image_id: str) -> str:
        if not ID_PATTERN.fullmatch(image_id):
            raise ReviewError(404, f"{image_id!r} is not an image id")
        return image_id

    def claim(self, type_name: str, image_id: str) -> dict:
        """Take a pending image for review: one rename, so of two reviewers (or two submits) one wins."""
        folder = self.folder(type_name)
        name = f"{self.checked_id(image_id)}.json"
        try:
            os.replace(folder / "pending" / name, folder / "claimed" / name)
        except FileNotFoundError:
            if any((folder / part / name).exists() for part in ("claimed", "labelled", "unreadable")):
                raise ReviewError(409, f"image {image_id} was already reviewed") from None
            raise ReviewError(404, f"no pending image {image_id} of type {type_name}") from None
        return json.loads((folder / "claimed" / name).read_text(encoding="utf-8"))

    def finish_labelled(self, type_name: str, image_id: str, target: Path) -> None:
        folder = self.folder(type_name)
        image = folder / "pending" / f"{image_id}.png"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(target, image.read_bytes())  # a copy, not a rename: data/new may be on another disk
        image.unlink(missing_ok=True)
        (folder / "claimed" / f"{image_id}.json").unlink(missing_ok=True)
