"""Typed errors that know their HTTP status; one handler renders them for every service."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException


class TierflowError(Exception):
    """Base of every expected failure: rendered as ``{"error": code, "detail": ...}``."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, detail: Any, *, retry_after: int | None = None) -> None:
        super().__init__(str(detail))
        self.detail = detail
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        """The one error shape every service answers, whatever its web framework."""
        return {"error": self.code, "detail": self.detail}

    def headers(self) -> dict[str, str]:
        """``Retry-After`` when the error carries one."""
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


class BadRequest(TierflowError):
    """The request is malformed or violates the contract."""

    status_code = 400
    code = "bad_request"


class Unauthorized(TierflowError):
    """Missing, unknown or revoked credentials."""

    status_code = 401
    code = "unauthorized"


class NotFound(TierflowError):
    """The addressed resource does not exist."""

    status_code = 404
    code = "not_found"


class PayloadTooLarge(TierflowError):
    """An event or a request exceeds its size limit."""

    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(TierflowError):
    """The body comes in an encoding the service does not read."""

    status_code = 415
    code = "unsupported_media_type"


class RateLimited(TierflowError):
    """The caller exceeded its rate; retry after ``retry_after`` seconds."""

    status_code = 429
    code = "rate_limited"


class Unavailable(TierflowError):
    """A dependency (the broker, the database) cannot take the work now; nothing was accepted."""

    status_code = 503
    code = "unavailable"


def error_response(error: TierflowError) -> JSONResponse:
    """Render a typed error, with ``Retry-After`` when the error carries one."""
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers())


_CODES = {
    error.status_code: error.code
    for error in (
        BadRequest,
        Unauthorized,
        NotFound,
        PayloadTooLarge,
        UnsupportedMediaType,
        RateLimited,
        Unavailable,
        TierflowError,
    )
}


def http_error_code(status: int) -> str:
    """The ``error`` code of a status: the typed error's when there is one (404 ``not_found``),
    else its HTTP phrase in snake case (405 ``method_not_allowed``)."""
    if status in _CODES:
        return _CODES[status]
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def install_error_handlers(app: FastAPI) -> None:
    """Render typed errors, pydantic validation errors and the framework's own (an unknown
    path, another method) in the one error shape."""

    async def on_tierflow_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, TierflowError)
        return error_response(exc)

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        detail = [
            {"field": ".".join(str(p) for p in err["loc"]), "reason": err["msg"]}
            for err in exc.errors()
        ]
        return error_response(BadRequest(detail))

    async def on_http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code in {204, 304}:  # no body allowed, as Starlette's own handler
            return Response(status_code=exc.status_code, headers=exc.headers)
        body = {"error": http_error_code(exc.status_code), "detail": exc.detail}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(TierflowError, on_tierflow_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
