"""What the service and the review page answer alike: who may pass, and how a malformed request is refused."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from http.cookies import CookieError, SimpleCookie

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

KEY_COOKIE = "captcha_api_key"  # set by the review page's login form: a browser cannot send a header itself


def carries_api_key(expected: str, headers: Mapping[str, str]) -> bool:
    """Whether a request (lower-cased header names) may pass: no key is asked, or it carries the key in
    `X-API-Key`, `Authorization: Bearer` or the review page's cookie. Compared in constant time."""
    if not expected:
        return True
    authorization = headers.get("authorization", "")
    offered = [headers.get("x-api-key", ""), authorization[7:] if authorization[:7].lower() == "bearer " else ""]
    try:
        cookie = SimpleCookie(headers.get("cookie", "")).get(KEY_COOKIE)
    except CookieError:
        cookie = None
    offered.append(cookie.value if cookie is not None else "")
    return any(hmac.compare_digest(key.encode(), expected.encode()) for key in offered if key)


async def invalid_fields(_: Request, error: RequestValidationError) -> JSONResponse:
    """422 naming the missing or malformed fields, as {"error": ...} like every other refusal (not FastAPI's
    list of pydantic errors, which echoes the input back)."""
    fields = sorted({".".join(str(part) for part in e["loc"][1:]) for e in error.errors()})
    return JSONResponse({"error": f"invalid or missing fields: {', '.join(fields)}"}, status_code=422)
