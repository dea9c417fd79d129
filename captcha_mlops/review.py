"""The review page: the images the service kept, least sure first, labelled by keyboard into data/new/.

    python -m captcha_mlops.review --kept DIR [--to TYPE=DIR ...] [--port 8000]    (make review KEPT=DIR)

DIR is the service's CAPTCHA_SAVE_DIR (default: $CAPTCHA_SAVE_DIR). Each type's labelled images go to the
folder `--to` names; the type in ./params.yaml (data.captcha_type) goes to data/new/ unless told otherwise, so the
next `dvc repro` trains on them. CAPTCHA_API_KEY, when set, guards every route, as on the service: the
page's login form turns it into a cookie.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, Form, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from captcha_mlops.kept import KeptImages, ReviewError
from captcha_mlops.params import ParamsError, load_params
from captcha_mlops.settings import load_settings
from captcha_mlops.web import KEY_COOKIE, carries_api_key, invalid_fields

PAGE = Path(__file__).with_name("review.html")
LOGIN = """<!doctype html><html lang="en"><meta charset="utf-8"><title>Captcha review: API key</title>
<form method="post" action="/login" style="font: 16px system-ui; margin: 4rem auto; max-width: 24rem">
<p>{message}</p><input type="password" name="key" id="key" autofocus placeholder="CAPTCHA_API_KEY">
<button>Open</button></form></html>"""


class Label(BaseModel):
    label: str


def create_app(kept: KeptImages, destinations: dict[str, Path], api_key: str) -> FastAPI:
    app = FastAPI(title="Captcha review")

    def destination(type_name: str) -> Path:
        kept.captcha_type(type_name)  # 404 for a type the service never kept
        if type_name not in destinations:
            raise ReviewError(404, f"no folder for {type_name} labels: start the page with --to {type_name}=DIR")
        return destinations[type_name]

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        headers = {name.lower(): value for name, value in request.headers.items()}
        if request.url.path == "/login" or carries_api_key(api_key, headers):
            return await call_next(request)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": "missing or wrong API key (X-API-Key header)"}, status_code=401)
        return HTMLResponse(LOGIN.format(message="The API key (CAPTCHA_API_KEY) of this page:"), status_code=401)

    @app.exception_handler(ReviewError)
    async def review_error(_: Request, error: ReviewError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(HTTPException)  # unknown routes and methods: the same {"error"} body as the rest
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)

    app.add_exception_handler(RequestValidationError, invalid_fields)

    @app.post("/login")
    def login(key: Annotated[str, Form()] = "") -> Response:
        if not carries_api_key(api_key, {"x-api-key": key}):
            return HTMLResponse(LOGIN.format(message="Wrong key. The API key of this page:"), status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(KEY_COOKIE, key, httponly=True, samesite="strict")
        return response

    @app.get("/")
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/api/types")
    def types() -> dict[str, Any]:
        return {
            "types": [
                {**dataclasses.asdict(t), "counts": kept.counts(t.name), "folder": str(destinations[t.name])}
                for t in kept.types()
                if t.name in destinations
            ]
        }

    @app.get("/api/pending/{type_name}")
    def pending(type_name: str, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict[str, Any]:
        destination(type_name)
        items = [dataclasses.asdict(record) for record in kept.pending(type_name, limit)]
        return {"items": items, "counts": kept.counts(type_name)}

    @app.get("/api/image/{type_name}/{image_id}")
    def image(type_name: str, image_id: str) -> FileResponse:
        return FileResponse(kept.image_path(type_name, image_id), media_type="image/png")

    @app.post("/api/label/{type_name}/{image_id}", status_code=201)
    def label(type_name: str, image_id: str, body: Label) -> dict[str, Any]:
        target = kept.label(type_name, image_id, body.label, destination(type_name))
        return {"file": target.name, "counts": kept.counts(type_name)}

    @app.post("/api/unreadable/{type_name}/{image_id}")
    def unreadable(type_name: str, image_id: str) -> dict[str, Any]:
        destination(type_name)
        kept.set_aside(type_name, image_id)
        return {"counts": kept.counts(type_name)}

    return app


def default_destinations(params: Path = Path("params.yaml")) -> dict[str, Path]:
    """The project's own type (data.captcha_type, as the stages read it) -> data/new/, when run from a project."""
    if not params.is_file():
        return {}
    try:
        return {load_params(params).data.captcha_type: Path("data/new").resolve()}
    except ParamsError as error:
        raise SystemExit(f"review: {error}") from None


def parse_destinations(pairs: list[str]) -> dict[str, Path]:
    destinations = {}
    for pair in pairs:
        name, separator, folder = pair.partition("=")
        if not separator or not name.isidentifier() or not folder:
            raise SystemExit(f"--to {pair!r}: expected TYPE=FOLDER, e.g. --to digits5=../digits5/data/new")
        destinations[name] = Path(folder).resolve()
    return destinations


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kept", type=Path, default=settings.save_dir, help="the service's CAPTCHA_SAVE_DIR")
    parser.add_argument("--to", action="append", default=[], metavar="TYPE=DIR", help="where TYPE's labels go")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if args.kept is None or not args.kept.is_dir():
        parser.error(f"--kept {args.kept}: no such folder (the service's CAPTCHA_SAVE_DIR)")
    kept = KeptImages(args.kept)
    destinations = default_destinations() | parse_destinations(args.to)
    for captcha_type in kept.types():
        kept.recover(captcha_type.name)
        counts = ", ".join(f"{n} {part}" for part, n in kept.counts(captcha_type.name).items())
        folder = destinations.get(captcha_type.name, f"not reviewed: no --to {captcha_type.name}=DIR")
        print(f"{captcha_type.name}: {counts} -> {folder}", file=sys.stderr)
    print(f"review page: http://{args.host}:{args.port}/", file=sys.stderr)
    uvicorn.run(create_app(kept, destinations, settings.api_key), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
