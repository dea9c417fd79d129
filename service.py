"""Captcha recognition over HTTP: `bentoml serve` (development) or `bentoml build` (a bento to ship).

Two services. `Captcha` is the public one: it checks requests, decodes and preprocesses images (the same
`to_array` as training) and answers. `Reader` holds the models; its `read` API is batchable, so images sent
by concurrent requests are read together, each model on its own part of the batch.

Environment: CAPTCHA_MODELS (captcha types served, comma-separated; the first is the default),
CAPTCHA_API_KEY, CAPTCHA_MAX_BYTES, CAPTCHA_MAX_PIXELS, CAPTCHA_SAVE_DIR, CAPTCHA_MAX_BATCH_SIZE,
CAPTCHA_MAX_LATENCY_MS, CAPTCHA_MAX_CONCURRENCY, CAPTCHA_TIMEOUT_S, CAPTCHA_KEEP_ALIVE_S. See README.md,
section Serving.
"""

from __future__ import annotations

import base64
import io
import os
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
import uvicorn
from _bentoml_impl.client.proxy2 import SessionManager
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image
from pydantic import BaseModel

from captcha_mlops.params import load_params
from captcha_mlops.preprocess import BadImage, open_image, to_array
from captcha_mlops.synth import CaptchaFactory
from captcha_mlops.tracking import registered_name

MODEL_TYPES = [name.strip() for name in os.environ.get("CAPTCHA_MODELS", "alnum4").split(",") if name.strip()]
DEFAULT_MODEL = MODEL_TYPES[0]
SERVE = load_params(Path(__file__).with_name("params.yaml")).serve
MAX_BATCH_SIZE = int(os.environ.get("CAPTCHA_MAX_BATCH_SIZE", SERVE.max_batch_size))
# Also a deadline: a request that would wait longer in the batching queue gets 503 (overloaded).
MAX_LATENCY_MS = int(os.environ.get("CAPTCHA_MAX_LATENCY_MS", SERVE.max_latency_ms))
MAX_BYTES = int(os.environ.get("CAPTCHA_MAX_BYTES", 1024 * 1024))
MAX_PIXELS = int(os.environ.get("CAPTCHA_MAX_PIXELS", 4_000_000))
MAX_CONCURRENCY = int(os.environ.get("CAPTCHA_MAX_CONCURRENCY", 128))  # requests in progress; more get 503
MIN_SIDE = 8  # smaller cannot hold a readable character: refuse instead of answering noise
API_KEY = os.environ.get("CAPTCHA_API_KEY", "")
SAVE_DIR = Path(os.environ["CAPTCHA_SAVE_DIR"]).resolve() if os.environ.get("CAPTCHA_SAVE_DIR") else None
OPEN_PATHS = ("/livez", "/readyz", "/metrics")  # probes and scraping never need the API key
KEEP_ALIVE_S = int(os.environ.get("CAPTCHA_KEEP_ALIVE_S", 75))  # idle keep-alive connections are kept this long

# BentoML >= 1.4.30 replaces a dependency's HTTP session every 100 requests and closes the old one with requests
# still in flight on it: under concurrent load those fail as 500s (bentoml/BentoML#5540, #5544). The Reader
# is a local socket in the same deployment, so one session for the life of the process is what we want.
SessionManager._should_refresh = lambda self: False  # type: ignore[method-assign]

# Uvicorn closes a keep-alive connection after 5 idle seconds (what `bentoml serve` passes unless given the
# hidden --timeout-keep-alive), the very age at which httpx (5 s) and aiohttp (15 s) still reuse one: a request
# sent as the server closes it dies with a reset (httpx ReadError, 2-4 in 10k requests at 64 clients). Both
# services' workers build their uvicorn.Config after importing this module.
_uvicorn_config_init = uvicorn.Config.__init__


def _config_init_with_long_keep_alive(self: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
    _uvicorn_config_init(self, *args, **kwargs)
    self.timeout_keep_alive = max(self.timeout_keep_alive, KEEP_ALIVE_S)


uvicorn.Config.__init__ = _config_init_with_long_keep_alive  # type: ignore[method-assign]

if not all(name.isidentifier() for name in MODEL_TYPES):
    raise ValueError(f"CAPTCHA_MODELS must list captcha types such as alnum4,digits5; got {MODEL_TYPES}")


class Item(BaseModel):
    model: str
    pixels: str  # base64 of the uint8 (height, width, 1) model input: compact JSON between the services


class Reading(BaseModel):
    text: str
    confidences: list[float]
    batch_size: int  # how many images were read together with this one


def with_models(cls: type) -> type:
    """One class attribute per served type: where `bentoml build` looks for the models to pack."""
    for name in MODEL_TYPES:
        setattr(cls, f"model_{name}", bentoml.models.BentoModel(f"{registered_name(name)}:latest"))
    return cls


# No access log here: every request already has one line in the Captcha log, and on a busy CPU a second
# line per request costs throughput.
@bentoml.service(workers=1, traffic={"timeout": 60}, logging={"access": {"enabled": False}})
@with_models
class Reader:
    def __init__(self) -> None:
        from captcha_mlops.recognizer import Recognizer  # TensorFlow: only this service's process loads it

        self.recognizers = {name: Recognizer.load(getattr(self, f"model_{name}").path) for name in MODEL_TYPES}

    # CAPTCHA_MAX_BATCH_SIZE=1 turns adaptive batching off (BentoML wants max_batch_size > 1 when it is on).
    @bentoml.api(batchable=MAX_BATCH_SIZE > 1, max_batch_size=max(2, MAX_BATCH_SIZE), max_latency_ms=MAX_LATENCY_MS)
    def read(self, items: list[Item]) -> list[Reading]:
        groups: dict[str, list[int]] = defaultdict(list)
        for index, item in enumerate(items):
            groups[item.model].append(index)
        readings: list[Reading | None] = [None] * len(items)
        for name, indices in groups.items():
            recognizer = self.recognizers[name]
            shape = (recognizer.meta.height, recognizer.meta.width, 1)
            batch = np.stack(
                [np.frombuffer(base64.b64decode(items[i].pixels), np.uint8).reshape(shape) for i in indices]
            )
            for index, reading in zip(indices, recognizer.read_arrays(batch)):
                readings[index] = Reading(text=reading.text, confidences=reading.confidences, batch_size=len(items))
        return readings  # type: ignore[return-value]  # every index was filled above


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.body = status, {"error": message, **extra}


app = FastAPI(title="Captcha recognition")
Upload = Annotated[UploadFile, File(description="the captcha image, any format PIL reads")]
ModelField = Annotated[str | None, Form(description="captcha type; default: the first of CAPTCHA_MODELS")]


@app.exception_handler(ApiError)
async def api_error(_: Request, error: ApiError) -> JSONResponse:
    return JSONResponse(error.body, status_code=error.status)


@app.exception_handler(RequestValidationError)
async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    fields = sorted({".".join(str(part) for part in e["loc"][1:]) for e in error.errors()})
    return JSONResponse({"error": f"invalid or missing fields: {', '.join(fields)}"}, status_code=422)


class Guard:
    """ASGI middleware: API key, request size and load are checked before any body is read.

    At most MAX_CONCURRENCY requests are in progress; more get 503 with Retry-After at once, so an overload
    never builds an unbounded queue (the one `Captcha` worker makes this counter exact).
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.in_progress = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith(OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self.refusal(headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        self.in_progress += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1

    def refusal(self, headers: dict[str, str]) -> JSONResponse | None:
        if API_KEY and API_KEY not in (headers.get("x-api-key"), headers.get("authorization", "")[7:]):
            return JSONResponse({"error": "missing or wrong API key (X-API-Key header)"}, status_code=401)
        # Room for the multipart envelope; the image itself is measured again after the upload.
        if int(headers.get("content-length") or 0) > MAX_BYTES + 64 * 1024:
            return JSONResponse({"error": f"request larger than {MAX_BYTES} bytes"}, status_code=413)
        if self.in_progress >= MAX_CONCURRENCY:
            message = f"overloaded: {MAX_CONCURRENCY} requests in progress, retry later"
            return JSONResponse({"error": message}, status_code=503, headers={"Retry-After": "1"})
        return None


@bentoml.service(workers=1, traffic={"timeout": int(os.environ.get("CAPTCHA_TIMEOUT_S", 30))})
@bentoml.asgi_app(app, path="/")
class Captcha:
    reader = bentoml.depends(Reader)

    def __init__(self) -> None:
        # Model metadata (image size, charset) comes from the BentoML store: no TensorFlow in this process.
        stored = {name: bentoml.models.get(f"{registered_name(name)}:latest") for name in MODEL_TYPES}
        self.meta = {name: model.info.metadata for name, model in stored.items()}
        self.versions = {name: model.tag.version for name, model in stored.items()}
        self.factories = {
            name: CaptchaFactory(m["charset"], m["min_length"], m["max_length"], m["width"], m["height"])
            for name, m in self.meta.items()
        }
        if SAVE_DIR is not None:
            SAVE_DIR.mkdir(parents=True, exist_ok=True)

    def model_name(self, model: str | None) -> str:
        name = model or DEFAULT_MODEL
        if name not in self.meta:
            raise ApiError(404, f"unknown model {name!r}", models=MODEL_TYPES)
        return name

    async def recognize_upload(self, upload: UploadFile, model: str | None) -> dict[str, Any]:
        name = self.model_name(model)
        data = await upload.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise ApiError(413, f"image larger than {MAX_BYTES} bytes")
        try:
            image = open_image(data, MAX_PIXELS)
        except BadImage as error:
            raise ApiError(422, str(error)) from None
        if min(image.size) < MIN_SIDE:
            raise ApiError(422, f"image is {image.width}x{image.height}: sides must be at least {MIN_SIDE} pixels")
        meta = self.meta[name]
        pixels = to_array(image, meta["width"], meta["height"])
        started = time.perf_counter()
        (reading,) = await self.reader.to_async.read([Item(model=name, pixels=base64.b64encode(pixels).decode())])
        seconds = time.perf_counter() - started
        if isinstance(reading, dict):  # the client may hand back plain JSON rather than the model
            reading = Reading(**reading)
        if SAVE_DIR is not None:
            save_for_training(image, reading.text)
        return {
            "text": reading.text,
            "confidences": [round(c, 4) for c in reading.confidences],
            "model": name,
            "version": self.versions[name],
            "seconds": round(seconds, 4),
            "batch_size": reading.batch_size,
        }

    @app.post("/recognize")
    async def recognize(self, image_file: Upload, model: ModelField = None) -> dict[str, Any]:
        """Read a captcha: multipart `image_file`, optional `model` (a captcha type; default the first served)."""
        return await self.recognize_upload(image_file, model)

    @app.post("/b")
    async def seed_recognize(self, image_file: Upload, model: ModelField = None) -> dict[str, Any]:
        """The original cnn_captcha API: {"time", "value"} (plus this service's fields)."""
        result = await self.recognize_upload(image_file, model)
        return {"time": result["seconds"], "value": result["text"], **result}

    @app.get("/captcha/")
    def captcha(self, model: Annotated[str | None, Query()] = None) -> Response:
        """A fresh random captcha of a served type, as PNG: test data for the clients."""
        factory = self.factories[self.model_name(model)]
        buffer = io.BytesIO()
        factory.render(factory.random_label()).save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png")

    @app.get("/models")
    def models(self) -> dict[str, Any]:
        return {"default": DEFAULT_MODEL, "models": {name: {"version": v} for name, v in self.versions.items()}}


Captcha.add_asgi_middleware(Guard)


def save_for_training(image: Image.Image, text: str) -> None:
    """Keep a received image as `<predicted label>_<uuid>.png`: the name is ours, never the client's.

    An image nothing was read from is kept as `_<uuid>.png`: verify_split reports it as unlabelled until
    someone names it, and such images are the most useful ones to label.
    """
    label = "".join(char for char in text if char.isalnum())
    path = (SAVE_DIR / f"{label}_{uuid.uuid4().hex}.png").resolve()
    if path.parent != SAVE_DIR:
        return
    image.convert("RGBA" if "A" in image.getbands() else "RGB").save(path, format="PNG")
