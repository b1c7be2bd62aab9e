"""Segment Tracking API routes: parse, authenticate, validate, hand over to the acceptor."""

from __future__ import annotations

import base64
import binascii
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from starlette.routing import Route

from services.ingest import metrics
from services.ingest.ratelimit import SourceLimiter
from services.ingest.schemas import (
    CALL_MODELS,
    EXAMPLES,
    IngestResponse,
    Rejection,
    check_external_ids,
)
from services.ingest.service import Acceptor, Invalid, parse_call, to_envelope
from services.ingest.settings import IngestSettings
from services.ingest.sources import SourceDirectory, SourceRef
from shared.contracts import DeadLetter, EventEnvelope
from shared.errors import BadRequest, PayloadTooLarge, RateLimited, Unauthorized

TRACKING_ROUTES: list[Route] = []
"""What serves the tracking calls: plain Starlette routes. FastAPI's per-route machinery
(dependency solving, response-model handling) was a third of a single-event request's CPU, and
these handlers take only the request."""

schema_router = APIRouter(prefix="/v1", tags=["tracking"])
"""The same handlers declared to FastAPI, for the OpenAPI document only (see install_docs)."""


def _settings(request: Request) -> IngestSettings:
    settings: IngestSettings = request.app.state.settings
    return settings


def _answer(response: IngestResponse) -> Response:
    """Serialise with orjson; FastAPI's response-model pass would validate what we just built."""
    return Response(orjson.dumps(response.model_dump()), media_type="application/json")


async def read_json(request: Request, settings: IngestSettings) -> Any:
    """The request body as JSON: size-limited before and after gunzip, 400 when malformed."""
    limit = settings.max_request_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        metrics.REJECTED.labels("request_too_large").inc()
        raise PayloadTooLarge(f"request is {declared} bytes, limit {limit}")
    body = await request.body()
    if request.headers.get("content-encoding", "").lower() == "gzip":
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            body = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            metrics.REJECTED.labels("bad_gzip").inc()
            raise BadRequest(f"body is not valid gzip: {exc}") from exc
    if len(body) > limit:
        metrics.REJECTED.labels("request_too_large").inc()
        raise PayloadTooLarge(f"request is over {limit} bytes")
    metrics.PAYLOAD_BYTES.observe(len(body))
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        metrics.REJECTED.labels("malformed_json").inc()
        raise BadRequest(f"malformed JSON: {exc}") from exc


def basic_auth_key(request: Request) -> str | None:
    """The write key from ``Authorization: Basic base64(key:)``, as the Segment SDKs send it."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise BadRequest("Authorization header is not valid Basic credentials") from exc
    return decoded.partition(":")[0] or None


async def authenticate(request: Request, body: Any) -> SourceRef:
    """Basic credentials first, then ``writeKey`` in the body."""
    key = basic_auth_key(request)
    if key is None and isinstance(body, dict) and isinstance(body.get("writeKey"), str):
        key = body["writeKey"]
    directory: SourceDirectory = request.app.state.sources
    try:
        return await directory.authenticate(key)
    except Unauthorized:
        metrics.REJECTED.labels("unauthorized").inc()
        raise


def _dead_letter(invalid: Invalid, source: SourceRef, at: datetime) -> DeadLetter:
    return DeadLetter(
        stage="ingest",
        reason=invalid.reason,
        error_type="validation",
        field=invalid.field,
        payload=invalid.payload.decode(errors="replace"),
        source_id=source.source_id,
        failed_at=at,
    )


async def _ingest(
    request: Request,
    settings: IngestSettings,
    items: list[tuple[str, Any]],
    source: SourceRef,
    *,
    batch_sent_at: datetime | None = None,
    batch_context: dict[str, Any] | None = None,
    reject_invalid: bool,
) -> IngestResponse:
    limiter: SourceLimiter = request.app.state.limiter
    try:
        limiter.admit(source, len(items))
    except RateLimited:
        for kind, count in Counter(kind[:16] for kind, _ in items).items():
            metrics.EVENTS.labels(source.name, kind, "rate_limited").inc(count)
        raise
    received_at = datetime.now(UTC)
    envelopes: list[EventEnvelope] = []
    invalid: list[Invalid] = []
    for index, (kind, item) in enumerate(items):
        parsed = parse_call(kind, item, index=index, max_event_bytes=settings.max_event_bytes)
        if isinstance(parsed, Invalid):
            if reject_invalid:
                metrics.REJECTED.labels("too_large" if parsed.too_large else "invalid").inc()
                error = PayloadTooLarge if parsed.too_large else BadRequest
                raise error([{"field": parsed.field, "reason": parsed.reason}])
            invalid.append(parsed)
            continue
        envelopes.append(
            to_envelope(
                parsed,
                source_id=source.source_id,
                received_at=received_at,
                batch_sent_at=batch_sent_at,
                batch_context=batch_context,
            )
        )
    acceptor: Acceptor = request.app.state.acceptor
    await acceptor.accept(envelopes, [_dead_letter(bad, source, received_at) for bad in invalid])
    for kind, count in Counter(envelope.type for envelope in envelopes).items():
        metrics.EVENTS.labels(source.name, kind, "accepted").inc(count)
    for kind, count in Counter(items[bad.index][0][:16] for bad in invalid).items():
        metrics.EVENTS.labels(source.name, kind, "rejected").inc(count)
    if invalid:
        metrics.REJECTED.labels("invalid_in_batch").inc(len(invalid))
    return IngestResponse(
        accepted=len(envelopes),
        rejected=[Rejection(index=b.index, field=b.field, reason=b.reason) for b in invalid],
    )


def _register(
    path: str,
    endpoint: Callable[[Request], Awaitable[Response]],
    *,
    summary: str,
    body: dict[str, Any],
    documented: bool = True,
) -> None:
    TRACKING_ROUTES.append(Route(f"/v1{path}", endpoint, methods=["POST"]))
    if documented:
        schema_router.add_api_route(
            path,
            endpoint,
            methods=["POST"],
            response_model=IngestResponse,
            summary=summary,
            openapi_extra={
                "requestBody": {"required": True, "content": {"application/json": body}}
            },
        )


def install_tracking(app: FastAPI) -> None:
    """Serve the tracking routes on ``app`` and put them in its OpenAPI document."""
    app.router.routes.extend(TRACKING_ROUTES)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=[*app.routes, *schema_router.routes],
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _single_route(kind: str) -> None:
    model = CALL_MODELS[kind]
    schema = model.model_json_schema(by_alias=True)

    async def handle(request: Request) -> Response:
        settings = _settings(request)
        body = await read_json(request, settings)
        source = await authenticate(request, body)
        return _answer(
            await _ingest(request, settings, [(kind, body)], source, reject_invalid=True)
        )

    _register(
        f"/{kind}",
        handle,
        summary=f"Segment {kind} call",
        body={"schema": schema, "example": EXAMPLES[kind]},
    )


for _kind in CALL_MODELS:
    _single_route(_kind)


BATCH_EXAMPLE = {"batch": [{"type": kind, **example} for kind, example in EXAMPLES.items()]}


async def batch(request: Request) -> Response:
    """Segment ``batch`` (and its older name ``import``)."""
    settings = _settings(request)
    body = await read_json(request, settings)
    source = await authenticate(request, body)
    if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
        metrics.REJECTED.labels("invalid").inc()
        raise BadRequest([{"field": "batch", "reason": "batch must be a list of events"}])
    items = [
        (str(item.get("type", "")) if isinstance(item, dict) else "", item)
        for item in body["batch"]
    ]
    batch_sent_at = _parse_sent_at(body.get("sentAt"))
    context = body.get("context") if isinstance(body.get("context"), dict) else None
    if context is not None:
        try:
            check_external_ids(context)
        except ValueError as exc:
            metrics.REJECTED.labels("invalid").inc()
            raise BadRequest([{"field": "context.externalIds", "reason": str(exc)}]) from exc
    return _answer(
        await _ingest(
            request,
            settings,
            items,
            source,
            batch_sent_at=batch_sent_at,
            batch_context=context,
            reject_invalid=False,
        )
    )


_register(
    "/batch",
    batch,
    summary="Segment batch: valid events are accepted, invalid ones reported and dead-lettered",
    body={"example": BATCH_EXAMPLE},
)
_register("/import", batch, summary="Older name of batch", body={}, documented=False)


def _parse_sent_at(value: Any) -> datetime | None:
    """The batch-level ``sentAt``; an unparseable one is ignored (no skew correction)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
