"""The review loop's API: kept readings, least sure first, become `<label>_<id>.png` own images exactly once."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from captcha_mlops.kept import CaptchaType, KeptImages
from captcha_mlops.kept import read_kept as real_read
from captcha_mlops.labels import label_from_name
from captcha_mlops.review import create_app, default_destinations

KEY = "review-key"
ALNUM4 = CaptchaType("alnum4", "0123456789abcdefghijklmnopqrstuvwxyz", 4, 4)
DIGITS5 = CaptchaType("digits5", "0123456789", 5, 5)


def keep(
    kept: KeptImages, text: str, confidences: list[float], type_name: str = "alnum4", agreement: float = 1.0
) -> str:
    image = Image.new("RGB", (100, 60), (255, 255, 255))
    return kept.keep(image, type_name, "v1", text, confidences, len(text) == 4, agreement).id


@pytest.fixture
def kept(tmp_path: Path) -> KeptImages:
    kept = KeptImages(tmp_path / "kept")
    kept.declare(ALNUM4)
    kept.declare(DIGITS5)
    return kept


@pytest.fixture
def new(tmp_path: Path) -> Path:
    return tmp_path / "data/new"


@pytest.fixture
def client(kept: KeptImages, new: Path, tmp_path: Path) -> TestClient:
    destinations = {"alnum4": new, "digits5": tmp_path / "digits5/data/new"}
    return TestClient(create_app(kept, destinations, KEY), headers={"X-API-Key": KEY})


def test_the_service_keeps_a_sidecar_with_the_reading_under_its_own_names(kept: KeptImages) -> None:
    image_id = keep(kept, "ab12", [0.5, 0.9, 1.0, 0.8])
    pending = kept.root / "alnum4/pending"
    assert sorted(p.name for p in pending.iterdir()) == [f"{image_id}.json", f"{image_id}.png"]
    record = json.loads((pending / f"{image_id}.json").read_text())
    assert record["text"] == "ab12" and record["version"] == "v1" and record["valid"] is True
    assert record["captcha_type"] == "alnum4"
    assert record["confidence"] == pytest.approx(0.36) and record["confidences"] == [0.5, 0.9, 1.0, 0.8]


def test_sidecars_kept_before_the_captcha_type_rename_are_still_listed(kept: KeptImages) -> None:
    image_id = keep(kept, "ab12", [0.5] * 4)
    sidecar = kept.root / "alnum4/pending" / f"{image_id}.json"
    record = json.loads(sidecar.read_text())
    record["type"] = record.pop("captcha_type")  # as the service wrote it until the rename
    del record["agreement"]  # ... and before it kept the views' agreement
    sidecar.write_text(json.dumps(record))

    [listed] = kept.pending("alnum4", limit=10)

    assert listed.id == image_id and listed.captcha_type == "alnum4" and listed.agreement == 1.0


def test_pending_lists_the_least_sure_first_wrong_lengths_before_all(client: TestClient, kept: KeptImages) -> None:
    sure = keep(kept, "aaaa", [0.99] * 4)
    unsure = keep(kept, "bbbb", [0.6] * 4)
    short = keep(kept, "cc", [0.99] * 2)
    blank = keep(kept, "", [])

    response = client.get("/api/pending/alnum4")

    assert response.status_code == 200
    assert [item["id"] for item in response.json()["items"]] == [blank, short, unsure, sure]
    assert response.json()["counts"] == {"pending": 4, "labelled": 0, "unreadable": 0}
    assert [item["id"] for item in client.get("/api/pending/alnum4?limit=1").json()["items"]] == [blank]


def test_readings_the_views_disagree_on_come_before_sure_ones(client: TestClient, kept: KeptImages) -> None:
    agreed = keep(kept, "aaaa", [0.6] * 4)  # unsure, but every view read the same
    disputed = keep(kept, "bbbb", [0.99] * 4, agreement=2 / 3)  # sure, and one view of three read otherwise
    split = keep(kept, "cccc", [0.99] * 4, agreement=1 / 3)
    short = keep(kept, "dd", [0.99] * 2)

    items = client.get("/api/pending/alnum4").json()["items"]

    assert [item["id"] for item in items] == [short, split, disputed, agreed]
    assert [item["agreement"] for item in items] == [1.0, 0.3333, 0.6667, 1.0]


def test_pending_reads_each_sidecar_once_and_follows_the_queue(
    kept: KeptImages, new: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = keep(kept, "aaaa", [0.5] * 4), keep(kept, "bbbb", [0.6] * 4)
    read = []
    monkeypatch.setattr("captcha_mlops.kept.read_kept", lambda path: read.append(path.stem) or real_read(path))
    assert [record.id for record in kept.pending("alnum4", 10)] == [first, second]

    kept.label("alnum4", first, "abcd", new)
    third = keep(kept, "cccc", [0.4] * 4)
    queue = [record.id for record in kept.pending("alnum4", 10)]

    assert queue == [third, second]  # the labelled one gone, the new one in
    assert sorted(read) == sorted([first, second, third])  # each sidecar read once over both listings


def test_a_label_moves_the_image_into_data_new_once(client: TestClient, kept: KeptImages, new: Path) -> None:
    image_id = keep(kept, "ab1z", [0.4, 0.9, 0.9, 0.9])
    assert client.get(f"/api/image/alnum4/{image_id}").headers["content-type"] == "image/png"

    response = client.post(f"/api/label/alnum4/{image_id}", json={"label": "ab12"})

    assert response.status_code == 201 and response.json()["file"] == f"ab12_{image_id}.png"
    assert [p.name for p in new.iterdir()] == [f"ab12_{image_id}.png"]
    assert label_from_name(new / f"ab12_{image_id}.png") == "ab12"
    Image.open(new / f"ab12_{image_id}.png").verify()
    assert response.json()["counts"] == {"pending": 0, "labelled": 1, "unreadable": 0}
    record = json.loads((kept.root / f"alnum4/labelled/{image_id}.json").read_text())
    assert record["text"] == "ab1z" and record["label"] == "ab12"
    again = client.post(f"/api/label/alnum4/{image_id}", json={"label": "ab13"})
    assert again.status_code == 409 and "already reviewed" in again.json()["error"]
    assert [p.name for p in new.iterdir()] == [f"ab12_{image_id}.png"], "a double submit changes nothing"
    assert client.get(f"/api/image/alnum4/{image_id}").status_code == 404


def test_two_reviewers_on_one_image_make_one_file(client: TestClient, kept: KeptImages, new: Path) -> None:
    image_id = keep(kept, "ab12", [0.5] * 4)
    statuses: list[int] = []
    start = threading.Barrier(8)

    def submit(label: str) -> None:
        start.wait()
        statuses.append(client.post(f"/api/label/alnum4/{image_id}", json={"label": label}).status_code)

    threads = [threading.Thread(target=submit, args=(f"ab1{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(statuses) == [201] + [409] * 7
    assert len(list(new.iterdir())) == 1


def test_unreadable_images_are_set_aside_never_trained_on(client: TestClient, kept: KeptImages, new: Path) -> None:
    image_id = keep(kept, "", [])

    response = client.post(f"/api/unreadable/alnum4/{image_id}")

    assert response.status_code == 200 and response.json()["counts"]["unreadable"] == 1
    assert (kept.root / f"alnum4/unreadable/{image_id}.png").is_file() and not new.exists()
    assert client.post(f"/api/label/alnum4/{image_id}", json={"label": "ab12"}).status_code == 409


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("", "empty"),
        ("ab1", "3 characters; alnum4 captchas have 4"),
        ("AB12", "'AB' not in the alnum4 charset"),
        ("../a", "not in the alnum4 charset"),
    ],
)
def test_a_bad_label_is_refused_and_changes_nothing(
    client: TestClient, kept: KeptImages, new: Path, label: str, message: str
) -> None:
    image_id = keep(kept, "ab12", [0.5] * 4)

    response = client.post(f"/api/label/alnum4/{image_id}", json={"label": label})

    assert response.status_code == 422 and message in response.json()["error"]
    assert not new.exists() and (kept.root / f"alnum4/pending/{image_id}.png").is_file()
    assert client.get("/api/pending/alnum4").json()["counts"]["pending"] == 1


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("post", "/api/label/alnum4/{missing}", 404),
        ("post", "/api/label/alnum4/..%2F..%2Fsecret", 404),
        ("post", "/api/label/..%2Fkept/{id}", 404),
        ("post", "/api/label/nosuchtype/{id}", 404),
        ("get", "/api/image/alnum4/..%2Fpending%2F{id}", 404),
        ("get", "/api/pending/alnum4%2F..", 404),
        ("post", "/api/unreadable/alnum4/{missing}", 404),
    ],
)
def test_unknown_ids_and_path_tricks_get_4xx_and_change_nothing(
    client: TestClient, kept: KeptImages, tmp_path: Path, method: str, path: str, status: int
) -> None:
    image_id = keep(kept, "ab12", [0.5] * 4)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))

    response = client.request(method, path.format(id=image_id, missing="0" * 32), json={"label": "ab12"})

    assert response.status_code == status and "error" in response.json()
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_every_route_needs_the_api_key_and_the_login_form_gives_a_cookie(kept: KeptImages, new: Path) -> None:
    image_id = keep(kept, "ab12", [0.5] * 4)
    anonymous = TestClient(create_app(kept, {"alnum4": new}, KEY))
    for path in ("/", "/api/types", "/api/pending/alnum4", f"/api/image/alnum4/{image_id}"):
        assert anonymous.get(path).status_code == 401, path
    assert anonymous.post(f"/api/label/alnum4/{image_id}", json={"label": "ab12"}).status_code == 401
    assert "API key" in anonymous.get("/").text, "the page answers with its login form"
    assert anonymous.post("/login", data={"key": "wrong"}).status_code == 401

    response = anonymous.post("/login", data={"key": KEY}, follow_redirects=False)

    assert response.status_code == 303 and "httponly" in response.headers["set-cookie"].lower()
    assert anonymous.get("/api/types").status_code == 200, "the cookie opens the page"
    assert not new.exists()


def test_several_types_each_to_their_own_folder(client: TestClient, kept: KeptImages, tmp_path: Path) -> None:
    image_id = keep(kept, "12345", [0.5] * 5, type_name="digits5")

    types = client.get("/api/types").json()["types"]
    response = client.post(f"/api/label/digits5/{image_id}", json={"label": "12345"})

    assert [t["name"] for t in types] == ["alnum4", "digits5"] and types[1]["charset"] == "0123456789"
    assert response.status_code == 201
    assert (tmp_path / f"digits5/data/new/12345_{image_id}.png").is_file()
    no_folder = TestClient(create_app(kept, {}, KEY), headers={"X-API-Key": KEY})
    assert [t["name"] for t in no_folder.get("/api/types").json()["types"]] == []
    assert "--to digits5=DIR" in no_folder.get("/api/pending/digits5").json()["error"]


def test_an_interrupted_review_is_finished_or_put_back(kept: KeptImages, new: Path) -> None:
    labelled, undecided = keep(kept, "ab12", [0.5] * 4), keep(kept, "cd34", [0.5] * 4)
    folder = kept.root / "alnum4"
    for image_id in (labelled, undecided):  # both claimed, then the process died
        (folder / f"pending/{image_id}.json").rename(folder / f"claimed/{image_id}.json")
    record = {"label": "ab12", "file": str(new / f"ab12_{labelled}.png")}
    (folder / f"labelled/{labelled}.json").write_text(json.dumps(record))  # written, image not yet copied

    kept.recover("alnum4")

    assert [p.name for p in new.iterdir()] == [f"ab12_{labelled}.png"]
    assert [r.id for r in kept.pending("alnum4", 10)] == [undecided]
    assert not list(folder.glob("claimed/*"))
    assert kept.counts("alnum4") == {"pending": 1, "labelled": 1, "unreadable": 0}


def test_the_projects_own_type_goes_to_data_new_as_the_stages_name_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_destinations() == {}, "not run from a project"
    (tmp_path / "params.yaml").write_text("data: {captcha_type: own5}\n")
    assert default_destinations() == {"own5": tmp_path / "data" / "new"}
    (tmp_path / "params.yaml").write_text("train: {steps: 10}\n")
    assert default_destinations() == {"alnum4": tmp_path / "data" / "new"}, "the default type, as train uses it"
    (tmp_path / "params.yaml").write_text("data: {name: own5}\n")
    with pytest.raises(SystemExit, match=r"unknown key data\.name"):
        default_destinations()
