"""Segment Tracking API endpoints: read the body, authenticate, hand the events over.

The endpoints are plain ASGI callables. A single-event request's budget is a few hundred
microseconds, and Starlette's ``Request``/``Response`` objects plus FastAPI's middleware stack
were close to half of it; ``app.IngestApp`` calls these directly. FastAPI only documents them.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import zlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from services.ingest import metrics
from services.ingest.envelopes import NUL_REASON, nul_path, unstorable_reason
from services.ingest.schemas import (
    CALL_TYPES,
    EXAMPLES,
    OPENAPI_REFS,
    IngestResponse,
    call_schema,
    check_external_ids,
)
from services.ingest.service import Collector, Outcome
from services.ingest.settings import IngestSettings
from services.ingest.sources import SourceDirectory, SourceRef
from shared.errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    TierflowError,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)

JSON_HEADERS = [
    (b"content-type", b"application/json"),
    (b"access-control-allow-origin", b"*"),
    (b"access-control-expose-headers", b"retry-after"),
]
"""Every tracking answer may be read by any page: analytics.js posts from the customer's own
site, and a browser that cannot read the answer takes the call as failed and sends it again.
``Retry-After`` (429, 503) is not a header a page may read unless it is exposed."""
PREFLIGHT_HEADERS = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-methods", b"POST, OPTIONS"),
    (b"access-control-allow-headers", b"authorization, content-type, content-encoding"),
    (b"access-control-max-age", b"86400"),
    (b"content-length", b"0"),
]
GZIP_CODINGS = frozenset({b"gzip", b"x-gzip"})
"""``x-gzip`` is the older name HTTP/1.1 still asks servers to accept as ``gzip``."""


class Disconnected(Exception):
    """The client went away before sending its whole body; there is no one to answer."""


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, size-limited before and after gunzip."""
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        metrics.rejected("request_too_large").inc()
        raise PayloadTooLarge(f"request is {declared.decode()} bytes, limit {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            metrics.rejected("request_too_large").inc()
            raise PayloadTooLarge(f"request is over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    encoding = _header(scope, b"content-encoding")
    coding = encoding.strip().lower() if encoding is not None else b"identity"
    if coding in GZIP_CODINGS:
        body = _gunzip(body, limit)
        if len(body) > limit:
            metrics.rejected("request_too_large").inc()
            raise PayloadTooLarge(f"request is over {limit} bytes")
    elif coding != b"identity":
        metrics.rejected("bad_encoding").inc()
        raise UnsupportedMediaType(
            [
                {
                    "field": "Content-Encoding",
                    "reason": f"{coding.decode(errors='replace')!r} is not supported; "
                    "send gzip or no encoding",
                }
            ]
        )
    metrics.PAYLOAD_BYTES.observe(len(body))
    return body


GZIP_MEMBERS = 64
"""Members a gzip body may have: SDKs send one; each costs a copy of what follows it."""


def _gunzip(body: bytes, limit: int) -> bytes:
    """Every member of a gzip body (the format allows several; zero padding after the last is
    ignored, as gzip does), inflated to at most ``limit + 1`` bytes (the caller refuses more).
    A stream that ends early is refused, not taken for what it held so far: its checksum was
    never checked."""
    parts: list[bytes] = []
    size = 0
    rest = body
    try:
        while rest.strip(b"\0") and size <= limit:
            if len(parts) == GZIP_MEMBERS:
                raise zlib.error(f"more than {GZIP_MEMBERS} members")
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            part = inflater.decompress(rest, limit + 1 - size)
            parts.append(part)
            size += len(part)
            if size <= limit and not inflater.eof:
                raise zlib.error("the stream ends before its end (truncated)")
            rest = inflater.unused_data
    except zlib.error as exc:
        metrics.rejected("bad_gzip").inc()
        raise BadRequest(f"body is not valid gzip: {exc}") from exc
    return parts[0] if len(parts) == 1 else b"".join(parts)


def parse_json(body: bytes) -> Any:
    """The body as JSON, 400 when malformed.

    orjson refuses a lone UTF-16 surrogate escape (``"\\ud83d"``), which JSON's grammar allows
    and browsers send when a page cuts an emoji in half; refusing it would refuse every other
    event of the batch. Such a body is parsed again by the standard library and each lone
    surrogate becomes U+FFFD (the only case that parser takes on: its numbers are read as
    orjson reads them, so one half emoji changes nothing else in the body).
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        error: Exception = exc
        if "surrogate" in str(exc):
            try:
                parsed = json.loads(
                    body,
                    parse_int=_int_as_orjson,
                    parse_float=_float_as_orjson,
                    parse_constant=_no_constant,
                )
                return _without_lone_surrogates(parsed)
            except (ValueError, RecursionError) as fallback:
                error = fallback
        metrics.rejected("malformed_json").inc()
        raise BadRequest(f"malformed JSON: {error}") from error


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_ORJSON_INTS = range(-(2**63), 2**64)
"""The integers orjson reads as ints (signed or unsigned 64-bit); it reads others as floats."""


def _int_as_orjson(text: str) -> int | float:
    """An integer as orjson reads it: exact within 64 bits, else the nearest float (the
    standard library would keep it exact, and orjson could not write it out again)."""
    value = int(text)
    return value if value in _ORJSON_INTS else _float_as_orjson(text)


def _float_as_orjson(text: str) -> float:
    """A number as orjson reads it: one beyond a double's range is malformed, not infinity."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:32]} is infinity when parsed as double")
    return value


def _without_lone_surrogates(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings (keys included) replaced by U+FFFD."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_lone_surrogates(inner) for inner in value]
    return value


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


@lru_cache(maxsize=1024)
def basic_auth_key(header: bytes) -> str | None:
    """The write key from ``Authorization: Basic base64(key:)``, as the Segment SDKs send it;
    memoised because every request of a source carries the same header."""
    scheme, _, value = header.partition(b" ")
    if scheme.lower() != b"basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise BadRequest("Authorization header is not valid Basic credentials") from exc
    return decoded.partition(":")[0] or None


async def authenticated_body(scope: Scope, receive: Receive) -> tuple[SourceRef, Any, int]:
    """The request's source, parsed body and its size in bytes (after gunzip). A key in the
    Basic header (what the SDKs send) is checked before the body is read, so a request with a
    wrong key costs no decompression or parsing; without one, the body's ``writeKey`` is
    checked after."""
    state = scope["app"].state
    settings: IngestSettings = state.settings
    header = _header(scope, b"authorization")
    key = basic_auth_key(header) if header is not None else None
    source = await authenticate(state.sources, key) if key is not None else None
    raw = await read_body(scope, receive, settings.max_request_bytes)
    body = parse_json(raw)
    if source is None:
        written = body.get("writeKey") if isinstance(body, dict) else None
        source = await authenticate(state.sources, written if isinstance(written, str) else None)
    return source, body, len(raw)


async def authenticate(directory: SourceDirectory, key: str | None) -> SourceRef:
    """The source of ``key``, counting refusals."""
    try:
        return await directory.authenticate(key)
    except Unauthorized:
        metrics.rejected("unauthorized").inc()
        raise
    except Unavailable:
        metrics.rejected("auth_unavailable").inc()
        raise


async def respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A JSON response, in the two ASGI messages and nothing else."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *JSON_HEADERS,
                (b"content-length", str(len(body)).encode()),
                *(headers or ()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def preflight(send: Send) -> None:
    """The answer to a browser's CORS preflight (``OPTIONS``) on a tracking path: a page that
    sends the write key in an ``Authorization`` header asks first."""
    await send({"type": "http.response.start", "status": 204, "headers": PREFLIGHT_HEADERS})
    await send({"type": "http.response.body", "body": b""})


async def respond_error(send: Send, error: TierflowError) -> None:
    """The shared ``{"error", "detail"}`` shape, with ``Retry-After`` when the error has one."""
    headers = [(name.lower().encode(), value.encode()) for name, value in error.headers().items()]
    await respond(send, error.status_code, orjson.dumps(error.body()), headers)


_ONE_ACCEPTED = orjson.dumps({"success": True, "accepted": 1, "rejected": []})


def _answer(outcome: Outcome) -> bytes:
    if outcome.accepted == 1 and not outcome.rejected:
        return _ONE_ACCEPTED
    rejected = [{"index": b.index, "field": b.field, "reason": b.reason} for b in outcome.rejected]
    return orjson.dumps({"success": True, "accepted": outcome.accepted, "rejected": rejected})


class CallEndpoint:
    """``POST /v1/<type>``: one Segment call, accepted whole or refused with its reason."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        source, body, _ = await authenticated_body(scope, receive)
        collector: Collector = scope["app"].state.collector
        outcome = await collector.collect(source, [body], kind=self.kind)
        await respond(send, 200, _answer(outcome))


class BatchEndpoint:
    """Segment ``batch`` (and its older name ``import``): valid events are accepted, invalid ones
    reported by index and dead-lettered."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        source, body, size = await authenticated_body(scope, receive)
        if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
            metrics.rejected("invalid").inc()
            raise BadRequest([{"field": "batch", "reason": "batch must be a list of events"}])
        context = body.get("context") if isinstance(body.get("context"), dict) else None
        integrations = body.get("integrations")
        if not isinstance(integrations, dict):
            integrations = None
        shared = _merged_size("context", context) + _merged_size("integrations", integrations)
        limit = scope["app"].state.settings.max_request_bytes
        if (too_large := _over_budget(size, shared, len(body["batch"]), limit)) is not None:
            metrics.rejected("request_too_large").inc()
            raise PayloadTooLarge(too_large)
        if integrations is not None and (where := nul_path(integrations, "integrations")):
            metrics.rejected("invalid").inc()
            raise BadRequest([{"field": where, "reason": NUL_REASON}])
        if context is not None:
            try:
                check_external_ids(context)
            except ValueError as exc:
                metrics.rejected("invalid").inc()
                raise BadRequest([{"field": "context.externalIds", "reason": str(exc)}]) from exc
            if (where := nul_path(context, "context")) is not None:
                metrics.rejected("invalid").inc()
                raise BadRequest([{"field": where, "reason": NUL_REASON}])
        collector: Collector = scope["app"].state.collector
        outcome = await collector.collect(
            source,
            body["batch"],
            sent_at=_parse_sent_at(body.get("sentAt")),
            context=context,
            integrations=integrations,
        )
        await respond(send, 200, _answer(outcome))


def _merged_size(field: str, value: dict[str, Any] | None) -> int:
    """The JSON size of a batch's ``context`` or ``integrations`` (0 when absent), 400 when the
    envelope's writer would refuse it where it ends up: one level down in every event."""
    if value is None:
        return 0
    try:
        return len(orjson.dumps({field: value}))
    except orjson.JSONEncodeError as exc:
        metrics.rejected("invalid").inc()
        raise BadRequest([{"field": field, "reason": unstorable_reason(exc)}]) from exc


EXPANSION = 10
"""How many times the request limit a batch may stand for once its ``context`` and
``integrations`` are copied into each of its events. The smallest valid events already make
envelopes ~10 times their request, so a batch-level context may at most double the worst a
request costs (~10 MB at 500 KiB). A 500 KiB batch with a 2 KiB context passes down to events
of ~230 bytes on average (an SDK's, with ids and times, are larger)."""


def _over_budget(size: int, shared: int, events: int, request_limit: int) -> str | None:
    """Why a batch is refused whole (413) for what it expands to, or None: a 275-byte gzipped
    request with a 31 KB context and a thousand tiny events would otherwise build 31 MB of
    envelopes, every event of it under the per-event limit."""
    budget = EXPANSION * request_limit
    expanded = size + shared * events
    if expanded <= budget:
        return None
    return (
        f"the batch's context and integrations ({shared} bytes) copied into each of its "
        f"{events} events make {expanded} bytes, limit {budget} ({EXPANSION} times the "
        "request limit): send fewer events per batch, or less in the batch's context"
    )


def _parse_sent_at(value: Any) -> datetime | None:
    """The batch-level ``sentAt``; an unparseable one is ignored (no skew correction)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        parsed.astimezone(UTC)
    except OverflowError:  # its UTC value is outside years 1-9999: every event would be refused
        return None
    return parsed


Endpoint = Callable[[Scope, Receive, Send], Awaitable[None]]

TRACKING: dict[str, Endpoint] = {f"/v1/{kind}": CallEndpoint(kind) for kind in CALL_TYPES}
"""What serves each tracking path (POST only)."""
TRACKING["/v1/batch"] = TRACKING["/v1/import"] = BatchEndpoint()
TRACKING.update({f"/v1/{kind[0]}": TRACKING[f"/v1/{kind}"] for kind in CALL_TYPES})
TRACKING["/v1/b"] = TRACKING["/v1/batch"]
"""The one-letter paths are the ones analytics.js posts each call to (``/v1/t``, ``/v1/p``…) and
its batching mode and the mobile SDKs post batches to (``/v1/b``)."""


UNMATCHED = "unmatched"
"""The route of a path under ``/v1/`` that serves nothing (a metrics label, as elsewhere)."""


def tracking_route(path: str) -> str | None:
    """The tracking route answering ``path``: its own, the same without a trailing slash (the
    router's redirect there is an answer a browser cannot read), ``UNMATCHED`` for another path
    under ``/v1/`` (404 in the tracking answers' shape, which a page can read), or None for the
    rest (docs and ops routes, served by FastAPI)."""
    if path in TRACKING:
        return path
    if path.endswith("/") and path[:-1] in TRACKING:
        return path[:-1]
    return UNMATCHED if path.startswith("/v1/") else None


class MethodNotAllowed(TierflowError):
    """Another method than POST (or a preflight's OPTIONS) on a tracking path."""

    status_code = 405
    code = "method_not_allowed"

    def headers(self) -> dict[str, str]:
        """``Allow``, which a 405 must carry."""
        return {**super().headers(), "Allow": "POST, OPTIONS"}


async def wrong_method(scope: Scope, receive: Receive, send: Send) -> None:
    """The endpoint of a tracking path for a method it does not take."""
    raise MethodNotAllowed(f"{scope['method']} is not allowed here: tracking calls are POST")


async def no_route(scope: Scope, receive: Receive, send: Send) -> None:
    """The endpoint of a path under ``/v1/`` that is not a tracking path."""
    raise NotFound("no tracking call is served here: see /docs for the paths")


def tracking_routes() -> list[Route]:
    """The same endpoints as router entries, so other methods get 405 rather than 404."""
    return [Route(path, endpoint, methods=["POST"]) for path, endpoint in TRACKING.items()]


ERROR_RESPONSES = {
    "400": "Malformed JSON, bad gzip or a request-level field error (the reason says which).",
    "401": "Missing, unknown or revoked write key.",
    "413": "Over 32 KB for one event or 500 KB for the request (after gunzip), or a batch "
    "whose context and integrations, copied into each event, make over 10 times that.",
    "429": "The source is over its rate limit; retry after `Retry-After` seconds.",
    "503": "Kafka did not acknowledge in time, or Postgres could not check a write key this "
    "replica has not seen: retry after `Retry-After` with the same messageIds (an event "
    "answered 503 may still arrive; downstream counts it once).",
}


def document(openapi: dict[str, Any]) -> dict[str, Any]:
    """Add the tracking endpoints to the OpenAPI document FastAPI generated: they are plain ASGI
    routes (see the module docstring), which FastAPI does not describe."""
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    response = IngestResponse.model_json_schema(ref_template=OPENAPI_REFS)
    schemas.update(response.pop("$defs", {}))
    schemas["IngestResponse"] = response

    def operation(path: str, summary: str, body: dict[str, Any]) -> None:
        schemas.update(body.get("schema", {}).pop("$defs", {}))
        ok = {
            "description": "Every accepted event was acknowledged by Kafka (acks=all); refused "
            "events are listed with index, field and reason, and dead-lettered.",
            "content": {
                "application/json": {
                    "schema": {"$ref": OPENAPI_REFS.format(model="IngestResponse")}
                }
            },
        }
        openapi.setdefault("paths", {})[path] = {
            "post": {
                "tags": ["tracking"],
                "summary": summary,
                "operationId": f"segment_{path.rsplit('/', 1)[-1]}",
                "security": [{"writeKey": []}],
                "requestBody": {"required": True, "content": {"application/json": body}},
                "responses": {"200": ok}
                | {code: {"description": text} for code, text in ERROR_RESPONSES.items()},
            }
        }

    for kind in CALL_TYPES:
        example = EXAMPLES[kind]
        operation(
            f"/v1/{kind}", f"Segment {kind} call", {"schema": call_schema(kind), "example": example}
        )
    batch = {"example": {"batch": [{"type": kind, **ex} for kind, ex in EXAMPLES.items()]}}
    operation("/v1/batch", "Segment batch: valid events accepted, invalid ones reported", batch)
    operation("/v1/import", "Segment import: the same as /v1/batch", dict(batch))
    schemes = openapi["components"].setdefault("securitySchemes", {})
    schemes["writeKey"] = {
        "type": "http",
        "scheme": "basic",
        "description": "The source's write key as the user name, empty password (or `writeKey` "
        "in the body), as Segment's SDKs send it.",
    }
    return openapi
