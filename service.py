"""Captcha recognition over HTTP: `bentoml serve` (development) or `bentoml build` (a bento to ship).

One new-style BentoML service, `Captcha`: it checks requests, decodes and preprocesses images (the same
`to_array` as training) and reads them with the models it holds. Images of concurrent requests are read
together (adaptive batching, `captcha_mlops.batching`), each model on its own batches.

Environment: CAPTCHA_MODELS (captcha types served, comma-separated; the first is the default),
CAPTCHA_API_KEY, CAPTCHA_MAX_BYTES, CAPTCHA_MAX_PIXELS, CAPTCHA_SAVE_DIR, CAPTCHA_MAX_BATCH_SIZE,
CAPTCHA_MAX_LATENCY_MS, CAPTCHA_WORKERS, CAPTCHA_MODEL_THREADS, CAPTCHA_MAX_CONCURRENCY, CAPTCHA_TIMEOUT_S,
CAPTCHA_KEEP_ALIVE_S. See README.md, section Serving.
"""

from __future__ import annotations

import gc
import io
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import bentoml
import uvicorn
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image

from captcha_mlops.batching import Batcher, Overloaded
from captcha_mlops.params import load_params
from captcha_mlops.preprocess import BadImage, open_image
from captcha_mlops.synth import CaptchaFactory
from captcha_mlops.tracking import registered_name

MODEL_TYPES = [name.strip() for name in os.environ.get("CAPTCHA_MODELS", "alnum4").split(",") if name.strip()]
DEFAULT_MODEL = MODEL_TYPES[0]
SERVE = load_params(Path(__file__).with_name("params.yaml")).serve
MAX_BATCH_SIZE = int(os.environ.get("CAPTCHA_MAX_BATCH_SIZE", SERVE.max_batch_size))  # 1: batching off
# A deadline, not a wait: a request queued longer for the model gets 503 (overloaded).
MAX_LATENCY_MS = int(os.environ.get("CAPTCHA_MAX_LATENCY_MS", SERVE.max_latency_ms))
WORKERS = int(os.environ.get("CAPTCHA_WORKERS", SERVE.workers))
MODEL_THREADS = int(os.environ.get("CAPTCHA_MODEL_THREADS", SERVE.model_threads))
MAX_BYTES = int(os.environ.get("CAPTCHA_MAX_BYTES", 1024 * 1024))
MAX_PIXELS = int(os.environ.get("CAPTCHA_MAX_PIXELS", 4_000_000))
MAX_CONCURRENCY = int(os.environ.get("CAPTCHA_MAX_CONCURRENCY", 128))  # per worker: requests in progress; more: 503
MIN_SIDE = 8  # smaller cannot hold a readable character: refuse instead of answering noise
API_KEY = os.environ.get("CAPTCHA_API_KEY", "")
SAVE_DIR = Path(os.environ["CAPTCHA_SAVE_DIR"]).resolve() if os.environ.get("CAPTCHA_SAVE_DIR") else None
OPEN_PATHS = ("/livez", "/readyz", "/metrics")  # probes and scraping never need the API key
KEEP_ALIVE_S = int(os.environ.get("CAPTCHA_KEEP_ALIVE_S", 75))  # idle keep-alive connections are kept this long

# Uvicorn closes a keep-alive connection after 5 idle seconds (what `bentoml serve` passes unless given the
# hidden --timeout-keep-alive), the very age at which httpx (5 s) and aiohttp (15 s) still reuse one: a request
# sent as the server closes it dies with a reset (httpx ReadError, 2-4 in 10k requests at 64 clients). The
# service's worker builds its uvicorn.Config after importing this module.
_uvicorn_config_init = uvicorn.Config.__init__


def _config_init_with_long_keep_alive(self: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
    _uvicorn_config_init(self, *args, **kwargs)
    self.timeout_keep_alive = max(self.timeout_keep_alive, KEEP_ALIVE_S)


uvicorn.Config.__init__ = _config_init_with_long_keep_alive  # type: ignore[method-assign]

if not all(name.isidentifier() for name in MODEL_TYPES):
    raise ValueError(f"CAPTCHA_MODELS must list captcha types such as alnum4,digits5; got {MODEL_TYPES}")


def with_models(cls: type) -> type:
    """One class attribute per served type: where `bentoml build` looks for the models to pack."""
    for name in MODEL_TYPES:
        setattr(cls, f"model_{name}", bentoml.models.BentoModel(f"{registered_name(name)}:latest"))
    return cls


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.body = status, {"error": message, **extra}


app = FastAPI(title="Captcha recognition")
Upload = Annotated[UploadFile, File(description="the captcha image, any format PIL reads")]
ModelField = Annotated[str | None, Form(description="captcha type; default: the first of CAPTCHA_MODELS")]


@app.exception_handler(ApiError)
async def api_error(_: Request, error: ApiError) -> JSONResponse:
    headers = {"Retry-After": "1"} if error.status == 503 else None
    return JSONResponse(error.body, status_code=error.status, headers=headers)


@app.exception_handler(RequestValidationError)
async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    fields = sorted({".".join(str(part) for part in e["loc"][1:]) for e in error.errors()})
    return JSONResponse({"error": f"invalid or missing fields: {', '.join(fields)}"}, status_code=422)


class Guard:
    """ASGI middleware: API key, request size and load are checked before any body is read.

    At most MAX_CONCURRENCY requests are in progress in a worker; more get 503 with Retry-After at once, so an
    overload never builds an unbounded queue.
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


@bentoml.service(workers=WORKERS, traffic={"timeout": int(os.environ.get("CAPTCHA_TIMEOUT_S", 30))})
@bentoml.asgi_app(app, path="/")
@with_models
class Captcha:
    def __init__(self) -> None:
        # Imported here: `bentoml build` imports this module and needs neither. Prometheus, because BentoML
        # sets up its multiprocess metrics directory before it creates the service.
        import tensorflow as tf
        from prometheus_client import Histogram

        from captcha_mlops.recognizer import Recognizer

        # Before any model is loaded: TensorFlow takes thread settings only then. On 2 cores one thread
        # served the most requests/s, leaving the other core to HTTP (README.md, Serving benchmark).
        tf.config.threading.set_intra_op_parallelism_threads(MODEL_THREADS)
        tf.config.threading.set_inter_op_parallelism_threads(MODEL_THREADS)
        stored = {name: getattr(self, f"model_{name}") for name in MODEL_TYPES}
        self.recognizers = {name: Recognizer.load(model.path) for name, model in stored.items()}
        self.versions = {name: model.tag.version for name, model in stored.items()}
        self.factories = {
            name: CaptchaFactory(r.meta.charset, r.meta.min_length, r.meta.max_length, r.meta.width, r.meta.height)
            for name, r in self.recognizers.items()
        }
        batch_sizes = Histogram(
            "captcha_batch_size",
            "Images read in one model call (adaptive batching)",
            ["model"],
            buckets=[2**i for i in range(MAX_BATCH_SIZE.bit_length() + 1)],
        )
        one_model_at_a_time = threading.Lock()  # the models share the cores: never run two at once
        self.batchers = {
            name: Batcher(
                recognizer.read_arrays,
                MAX_BATCH_SIZE,
                MAX_LATENCY_MS / 1000,
                on_batch=batch_sizes.labels(model=name).observe,
                model_lock=one_model_at_a_time,
                name=name,
            )
            for name, recognizer in self.recognizers.items()
        }
        if SAVE_DIR is not None:
            SAVE_DIR.mkdir(parents=True, exist_ok=True)
        # The loaded models are tens of thousands of long-lived Python objects: frozen, the garbage collector
        # stops walking them in its full collections, each of which stalled every request in flight.
        gc.collect()
        gc.freeze()

    def model_name(self, model: str | None) -> str:
        name = model or DEFAULT_MODEL
        if name not in self.recognizers:
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
        pixels = self.recognizers[name].prepare(image)
        started = time.perf_counter()
        try:
            reading, batch_size = await self.batchers[name].read(pixels)
        except Overloaded as error:
            raise ApiError(503, f"overloaded: {error}, retry later") from None
        seconds = time.perf_counter() - started
        if SAVE_DIR is not None:
            save_for_training(image, reading.text)
        return {
            "text": reading.text,
            "confidences": [round(c, 4) for c in reading.confidences],
            "valid": reading.valid,
            "model": name,
            "version": self.versions[name],
            "seconds": round(seconds, 4),
            "batch_size": batch_size,
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


async def current_service() -> Captcha:
    return bentoml.get_current_service()


# BentoML hands each route its `self` through the synchronous dependency bentoml.get_current_service, which
# FastAPI runs on a worker thread: a thread hop per request, the largest single cost of a recognition under
# load. The same lookup as a coroutine runs on the event loop.
app.dependency_overrides[bentoml.get_current_service] = current_service


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
