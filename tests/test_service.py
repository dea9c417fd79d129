"""service.py through a real `bentoml serve`: both models, both routes, bad uploads, API key, saving, batching."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import socket
import struct
import time
import zlib
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from captcha_mlops.params import EvaluateParams
from captcha_mlops.recognizer import Recognizer
from tests.serving_fixtures import API_KEY, CAPTCHA_TYPES, DIGITS5_VIEWS, MAX_BYTES, Server

SIZES = {"alnum4": (100, 60), "digits5": (120, 50)}
CHARSETS = {"alnum4": "0123456789abcdefghijklmnopqrstuvwxyz", "digits5": "0123456789"}


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def fresh_captcha(client: httpx.Client, captcha_type: str) -> bytes:
    response = client.get("/captcha/", params={"captcha_type": captcha_type})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    return response.content


@pytest.mark.parametrize("captcha_type", CAPTCHA_TYPES)
def test_captcha_route_returns_a_png_of_the_models_size(server: Server, captcha_type: str) -> None:
    with server.client() as client:
        image = Image.open(io.BytesIO(fresh_captcha(client, captcha_type)))
        assert image.format == "PNG" and image.size == SIZES[captcha_type]


@pytest.mark.parametrize("captcha_type", CAPTCHA_TYPES)
def test_recognize_reads_with_the_named_captcha_type(server: Server, captcha_type: str) -> None:
    with server.client() as client:
        image = fresh_captcha(client, captcha_type)
        response = client.post(
            "/recognize", files={"image_file": ("c.png", image)}, data={"captcha_type": captcha_type}
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["captcha_type"] == captcha_type and body["version"]
    assert set(body["text"]) <= set(CHARSETS[captcha_type]) and len(body["text"]) <= len("12345")
    assert len(body["confidences"]) == len(body["text"]) and all(0 <= c <= 1 for c in body["confidences"])
    assert body["seconds"] > 0


def test_seed_route_b_answers_time_and_value_like_recognize(server: Server) -> None:
    with server.client() as client:
        image = fresh_captcha(client, "digits5")
        seed = client.post(
            "/b", files={"image_file": ("c.png", image, "image/png")}, data={"captcha_type": "digits5"}
        ).json()
        ours = client.post(
            "/recognize", files={"image_file": ("c.png", image)}, data={"captcha_type": "digits5"}
        ).json()
        default = client.post("/b", files={"image_file": ("c.png", fresh_captcha(client, "alnum4"))}).json()
    assert isinstance(seed["time"], float) and seed["value"] == ours["text"] and seed["captcha_type"] == "digits5"
    assert default["captcha_type"] == CAPTCHA_TYPES[0]  # no captcha_type field: the first of CAPTCHA_TYPES


def test_unknown_captcha_type_is_404_listing_the_known_ones(server: Server) -> None:
    with server.client() as client:
        image = fresh_captcha(client, "alnum4")
        for route in ("/recognize", "/b"):
            response = client.post(route, files={"image_file": ("c.png", image)}, data={"captcha_type": "nope"})
            assert response.status_code == 404 and response.json()["captcha_types"] == CAPTCHA_TYPES
        assert client.get("/captcha/", params={"captcha_type": "nope"}).status_code == 404
        served = client.get("/types").json()
    assert served["default"] == CAPTCHA_TYPES[0] and list(served["captcha_types"]) == CAPTCHA_TYPES


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height but holds almost no data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def animated_gif() -> bytes:
    frames = [Image.new("P", (100, 60), color) for color in (10, 200)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def noise_png(side: int) -> bytes:
    return encode(Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)))  # incompressible


REFUSED = {
    "empty": (b"", 422),
    "not an image": (b"GIF89a? certainly not", 422),
    "truncated": (encode(Image.effect_noise((100, 60), 64).convert("RGB"))[:800], 422),
    "decompression bomb 20000x20000": (png_header_only(20000, 20000), 422),
    "over the size cap": (noise_png(300), 413),
    "1x1": (encode(Image.new("L", (1, 1))), 422),
}
ACCEPTED = {
    "animated gif": animated_gif(),
    "rgba": encode(Image.new("RGBA", (100, 60), (0, 0, 0, 0))),
    "palette": encode(Image.new("P", (100, 60), 3)),
    "cmyk jpeg": encode(Image.new("CMYK", (140, 70), (0, 50, 90, 0)), "JPEG"),
    "big but legal": encode(Image.new("L", (1000, 600), 255)),
}


@pytest.mark.parametrize("name", REFUSED)
def test_bad_uploads_get_a_json_4xx_and_the_server_lives_on(server: Server, name: str) -> None:
    data, status = REFUSED[name]
    assert name != "over the size cap" or len(data) > MAX_BYTES
    with server.client() as client:
        response = client.post("/recognize", files={"image_file": ("x.png", data)})
        assert response.status_code == status, response.text
        assert response.json()["error"] and "object at 0x" not in response.text, "no Python reprs in answers"
        assert client.get("/livez").status_code == 200
        assert client.post("/b", files={"image_file": ("c.png", fresh_captcha(client, "alnum4"))}).status_code == 200


@pytest.mark.parametrize("name", ACCEPTED)
def test_legal_images_of_any_mode_and_size_are_read(server: Server, name: str) -> None:
    with server.client() as client:
        response = client.post("/recognize", files={"image_file": ("x.img", ACCEPTED[name])})
    assert response.status_code == 200, response.text
    assert set(response.json()["text"]) <= set(CHARSETS["alnum4"])


def test_missing_field_is_a_json_422(server: Server) -> None:
    with server.client() as client:
        response = client.post("/recognize", data={"captcha_type": "alnum4"})
    assert response.status_code == 422 and "image_file" in response.json()["error"]


def test_api_key_is_required_except_for_probes(server: Server) -> None:
    image = Image.new("L", (100, 60), 255)
    files = {"image_file": ("c.png", encode(image))}
    with httpx.Client(base_url=server.url, timeout=60) as anonymous:
        assert anonymous.post("/recognize", files=files).status_code == 401
        assert anonymous.get("/captcha/").status_code == 401
        assert anonymous.post("/b", files=files, headers={"X-API-Key": "wrong"}).status_code == 401
        assert anonymous.post("/b", files=files, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
        for probe in ("/livez", "/readyz", "/metrics"):
            assert anonymous.get(probe).status_code == 200, probe


def test_received_images_are_kept_for_review_with_their_reading(server: Server) -> None:
    with server.client() as client:
        answers = []
        for _ in range(3):
            image = fresh_captcha(client, "digits5")
            files = {"image_file": ("../../escape.png", image)}
            response = client.post("/recognize", files=files, data={"captcha_type": "digits5"})
            assert response.status_code == 200
            answers.append(response.json())
    pending = server.save_dir / "digits5/pending"
    records = [json.loads(path.read_text()) for path in pending.glob("*.json")]
    assert len(records) >= 3, "every image read is kept, with its reading beside it"
    for record in records:
        assert re.fullmatch(r"[0-9a-f]{32}", record["id"]) and record["captcha_type"] == "digits5"
        Image.open(pending / f"{record['id']}.png").verify()
    kept = {(r["text"], tuple(r["confidences"]), r["agreement"], r["version"]) for r in records}
    assert all((a["text"], tuple(a["confidences"]), a["agreement"], a["version"]) in kept for a in answers)
    declared = json.loads((server.save_dir / "digits5/type.json").read_text())
    assert declared == {"name": "digits5", "charset": "0123456789", "min_length": 5, "max_length": 5}
    assert not any(server.save_dir.parent.rglob("escape*")), "no name a client sent"


def batch_size_histogram(metrics: str) -> tuple[float, float]:
    """(batches read, batches of exactly one image), all models, from the service's `captcha_batch_size`."""

    def value(pattern: str) -> float:
        return sum(float(v) for v in re.findall(pattern, metrics))

    count = value(r"captcha_batch_size_count\{[^}]*\} (\S+)")
    ones = value(r'captcha_batch_size_bucket\{le="1.0",[^}]*\} (\S+)')
    return count, ones


def test_concurrent_requests_all_succeed_and_are_batched(server: Server) -> None:
    with server.client() as client:
        images = {captcha_type: fresh_captcha(client, captcha_type) for captcha_type in CAPTCHA_TYPES}
        before = batch_size_histogram(client.get("/metrics").text)

    async def burst() -> list[httpx.Response]:
        headers = {"X-API-Key": API_KEY}
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=120) as client:
            requests = [
                client.post(
                    "/recognize",
                    files={"image_file": ("c.png", images[captcha_type])},
                    data={"captcha_type": captcha_type},
                )
                for captcha_type in CAPTCHA_TYPES * 32
            ]
            return await asyncio.gather(*requests)

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 64, {r.status_code: r.text for r in responses}
    bodies = [r.json() for r in responses]
    assert [b["captcha_type"] for b in bodies] == CAPTCHA_TYPES * 32
    assert max(b["batch_size"] for b in bodies) > 1, "concurrent requests were read together"

    with server.client() as client:
        count, ones = batch_size_histogram(client.get("/metrics").text)
    assert count - before[0] < 64, "fewer batches than requests"
    assert (count - ones) - (before[0] - before[1]) > 0, "the batch size histogram shows batches above 1"


def test_an_idle_keep_alive_connection_outlives_uvicorns_5_s_default(server: Server) -> None:
    """Clients reuse connections idle up to 5 s (httpx) or 15 s (aiohttp): the server must not close them first,
    or a request sent at that moment dies with a reset."""
    address = urlsplit(server.url)
    request = f"GET /livez HTTP/1.1\r\nHost: {address.hostname}\r\n\r\n".encode()
    with socket.create_connection((address.hostname, address.port), timeout=30) as connection:
        for pause in (6.0, 0.0):  # the second request goes out on the connection left idle for 6 s
            connection.sendall(request)
            response = b""
            while not response_complete(response):
                chunk = connection.recv(4096)
                assert chunk, "the server closed the idle keep-alive connection"
                response += chunk
            assert response.startswith(b"HTTP/1.1 200"), response
            time.sleep(pause)


def response_complete(response: bytes) -> bool:
    head, separator, body = response.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length: *(\d+)", head)
    return bool(separator) and length is not None and len(body) >= int(length.group(1))


@pytest.mark.parametrize("captcha_type", CAPTCHA_TYPES)
def test_the_served_answer_is_the_offline_recognizer_reading(server: Server, captcha_type: str) -> None:
    """The train/serve contract: the service reads an upload exactly as `Recognizer` (evaluate) does."""
    with server.client() as client:
        uploads = [fresh_captcha(client, captcha_type) for _ in range(3)] + [encode(Image.new("L", (90, 40), 255))]
        bodies = [
            client.post("/recognize", files={"image_file": ("c.png", u)}, data={"captcha_type": captcha_type}).json()
            for u in uploads
        ]
    model_dir = server.packaged.bento_home / "models" / f"captcha-{captcha_type}" / bodies[0]["version"]
    recognizer = Recognizer.load(model_dir)
    assert recognizer.meta.views == (DIGITS5_VIEWS if captcha_type == "digits5" else EvaluateParams().views)
    readings = recognizer.read_images([Image.open(io.BytesIO(upload)) for upload in uploads])
    for body, reading in zip(bodies, readings):
        assert body["text"] == reading.text and body["valid"] == reading.valid
        assert body["confidences"] == pytest.approx(reading.confidences, abs=1e-4)
        assert body["agreement"] == pytest.approx(reading.agreement, abs=1e-4)
