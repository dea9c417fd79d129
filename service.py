"""Captcha recognition over HTTP: `bentoml serve` (development) or `bentoml build` (a bento to ship).

One new-style BentoML service, `Captcha`: it checks requests, decodes and preprocesses images (the same
`to_array` as training) and reads them with the models it holds. Images of concurrent requests are read
together (adaptive batching, `captcha_mlops.batching`), each model on its own batches.

Settings: CAPTCHA_* environment variables, read and validated by `captcha_mlops.settings` (README.md,
section Serving). Serve with `--timeout-keep-alive 75`, as `make serve` and bench/serving.py do: uvicorn's
default closes an idle keep-alive connection after 5 s, the very age at which httpx (5 s) and aiohttp (15 s)
still reuse one, and a request sent as the server closes it dies with a reset (2-4 in 10k at 64 clients).
"""

from __future__ import annotations

import gc
import io
import threading
import time
from typing import Annotated, Any

import bentoml
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from captcha_mlops.batching import Batcher, Overloaded
from captcha_mlops.kept import CaptchaType, KeptImages
from captcha_mlops.preprocess import BadImage, open_image
from captcha_mlops.settings import load_settings
from captcha_mlops.synth import CaptchaFactory
from captcha_mlops.tracking import registered_name
from captcha_mlops.web import carries_api_key, invalid_fields

SETTINGS = load_settings()
CAPTCHA_TYPES = SETTINGS.types
DEFAULT_TYPE = CAPTCHA_TYPES[0]
MIN_SIDE = 8  # smaller cannot hold a readable character: refuse instead of answering noise
OPEN_PATHS = ("/livez", "/readyz", "/metrics")  # probes and scraping never need the API key


def with_models(cls: type) -> type:
    """One class attribute per served type: where `bentoml build` looks for the models to pack."""
    for name in CAPTCHA_TYPES:
        setattr(cls, f"model_{name}", bentoml.models.BentoModel(f"{registered_name(name)}:latest"))
    return cls


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.body = status, {"error": message, **extra}


app = FastAPI(title="Captcha recognition")
Upload = Annotated[UploadFile, File(description="the captcha image, any format PIL reads")]
TypeField = Annotated[str | None, Form(description="captcha type; default: the first of CAPTCHA_TYPES")]


@app.exception_handler(ApiError)
async def api_error(_: Request, error: ApiError) -> JSONResponse:
    headers = {"Retry-After": "1"} if error.status == 503 else None
    return JSONResponse(error.body, status_code=error.status, headers=headers)


app.add_exception_handler(RequestValidationError, invalid_fields)


class Guard:
    """ASGI middleware: API key, request size and load are checked before any body is read.

    At most CAPTCHA_MAX_CONCURRENCY requests are in progress in a worker; more get 503 with Retry-After at
    once, so an overload never builds an unbounded queue.
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
        if not carries_api_key(SETTINGS.api_key, headers):
            return JSONResponse({"error": "missing or wrong API key (X-API-Key header)"}, status_code=401)
        # Room for the multipart envelope; the image itself is measured again after the upload.
        if int(headers.get("content-length") or 0) > SETTINGS.max_bytes + 64 * 1024:
            return JSONResponse({"error": f"request larger than {SETTINGS.max_bytes} bytes"}, status_code=413)
        if self.in_progress >= SETTINGS.max_concurrency:
            message = f"overloaded: {SETTINGS.max_concurrency} requests in progress, retry later"
            return JSONResponse({"error": message}, status_code=503, headers={"Retry-After": "1"})
        return None


@bentoml.service(workers=SETTINGS.workers, traffic={"timeout": SETTINGS.timeout_s})
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
        tf.config.threading.set_intra_op_parallelism_threads(SETTINGS.model_threads)
        tf.config.threading.set_inter_op_parallelism_threads(SETTINGS.model_threads)
        stored = {name: getattr(self, f"model_{name}") for name in CAPTCHA_TYPES}
        self.recognizers = {name: Recognizer.load(model.path) for name, model in stored.items()}
        self.versions = {name: model.tag.version for name, model in stored.items()}
        self.factories = {
            name: CaptchaFactory(r.meta.charset, r.meta.min_length, r.meta.max_length, r.meta.width, r.meta.height)
            for name, r in self.recognizers.items()
        }
        batch_sizes = Histogram(
            "captcha_batch_size",
            "Images read in one model call (adaptive batching)",
            ["captcha_type"],
            buckets=[2**i for i in range(SETTINGS.max_batch_size.bit_length() + 1)],
        )
        one_model_at_a_time = threading.Lock()  # the models share the cores: never run two at once
        self.batchers = {
            name: Batcher(
                recognizer.read_arrays,
                SETTINGS.max_batch_size,
                SETTINGS.queue_deadline_ms / 1000,
                on_batch=batch_sizes.labels(captcha_type=name).observe,
                model_lock=one_model_at_a_time,
                name=name,
            )
            for name, recognizer in self.recognizers.items()
        }
        self.kept = KeptImages(SETTINGS.save_dir) if SETTINGS.save_dir is not None else None
        if self.kept is not None:
            for name, recognizer in self.recognizers.items():
                meta = recognizer.meta
                self.kept.declare(CaptchaType(name, meta.charset, meta.min_length, meta.max_length))
        # The loaded models are tens of thousands of long-lived Python objects: frozen, the garbage collector
        # stops walking them in its full collections, each of which stalled every request in flight.
        gc.collect()
        gc.freeze()

    def served_type(self, captcha_type: str | None) -> str:
        name = captcha_type or DEFAULT_TYPE
        if name not in self.recognizers:
            raise ApiError(404, f"unknown captcha type {name!r}", captcha_types=CAPTCHA_TYPES)
        return name

    async def recognize_upload(self, upload: UploadFile, captcha_type: str | None) -> dict[str, Any]:
        name = self.served_type(captcha_type)
        data = await upload.read(SETTINGS.max_bytes + 1)
        if len(data) > SETTINGS.max_bytes:
            raise ApiError(413, f"image larger than {SETTINGS.max_bytes} bytes")
        try:
            image = open_image(data, SETTINGS.max_pixels)
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
        if self.kept is not None:  # for review: python -m captcha_mlops.review
            self.kept.keep(
                image, name, self.versions[name], reading.text, reading.confidences, reading.valid, reading.agreement
            )
        return {
            "text": reading.text,
            "confidences": [round(c, 4) for c in reading.confidences],
            "valid": reading.valid,
            "agreement": round(reading.agreement, 4),
            "captcha_type": name,
            "version": self.versions[name],
            "seconds": round(seconds, 4),
            "batch_size": batch_size,
        }

    @app.post("/recognize")
    async def recognize(self, image_file: Upload, captcha_type: TypeField = None) -> dict[str, Any]:
        """Read a captcha: multipart `image_file`, optional `captcha_type` (default: the first served)."""
        return await self.recognize_upload(image_file, captcha_type)

    @app.post("/b")
    async def seed_recognize(self, image_file: Upload, captcha_type: TypeField = None) -> dict[str, Any]:
        """The original cnn_captcha API: {"time", "value"} (plus this service's fields)."""
        result = await self.recognize_upload(image_file, captcha_type)
        return {"time": result["seconds"], "value": result["text"], **result}

    @app.get("/captcha/")
    def captcha(self, captcha_type: Annotated[str | None, Query()] = None) -> Response:
        """A fresh random captcha of a served type, as PNG: test data for the clients."""
        factory = self.factories[self.served_type(captcha_type)]
        buffer = io.BytesIO()
        factory.render(factory.random_label()).save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png")

    @app.get("/types")
    def types(self) -> dict[str, Any]:
        """The captcha types served, each with its model version; the default one."""
        return {"default": DEFAULT_TYPE, "captcha_types": {name: {"version": v} for name, v in self.versions.items()}}


Captcha.add_asgi_middleware(Guard)


async def current_service() -> Captcha:
    return bentoml.get_current_service()


# BentoML hands each route its `self` through the synchronous dependency bentoml.get_current_service, which
# FastAPI runs on a worker thread: a thread hop per request, the largest single cost of a recognition under
# load. The same lookup as a coroutine runs on the event loop.
app.dependency_overrides[bentoml.get_current_service] = current_service
