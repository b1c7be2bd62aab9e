"""Turning Segment calls into the JSON envelopes ingest publishes (pure, no I/O).

A request's events are validated by one pydantic call and each envelope is written with one
``orjson.dumps`` of a plain dict: no model instance per event and no second validation pass.
The bytes decode to ``shared.contracts.EventEnvelope`` exactly like ``encode(envelope)`` would
(a unit test compares them byte for byte).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from pydantic import ValidationError

from services.ingest.schemas import CALL_TYPES, CALLS, check_external_ids

EVENT_ID_NAMESPACE = uuid.UUID("5c7d3f3e-1f0b-4b7e-9a53-6f1d1c2b7a10")
_NAMESPACE_HASH = hashlib.sha1(EVENT_ID_NAMESPACE.bytes)  # noqa: S324 - uuid5 is SHA-1 by definition
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
"""The RFC 4122 variant nibble (``10xx``) for each first hex digit of byte 8."""
_KINDS = frozenset(CALL_TYPES)
_ID_REQUIRED = {"group": ("group_id", "groupId"), "alias": ("previous_id", "previousId")}


def derive_event_id(source_id: str, message_id: str) -> str:
    """A stable id for (source, messageId): re-sent events get the same id, so they dedup.

    Exactly ``uuid5(EVENT_ID_NAMESPACE, source + US + messageId)``, formatted from the SHA-1 hex
    digest with the version and variant nibbles set: ``uuid.UUID`` object construction was a
    tenth of a batch request's CPU.
    """
    digest = _NAMESPACE_HASH.copy()
    digest.update(f"{source_id}\x1f{message_id}".encode())
    h = digest.hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def correct_timestamp(device: datetime, sent_at: datetime, received_at: datetime) -> datetime:
    """Segment's skew correction of a device's time: ``receivedAt - (sentAt - device)``.

    Both device times come from the same clock, so their difference is right even when the
    clock is not; receivedAt is ingest's clock."""
    return received_at - (sent_at - device)


@dataclass(frozen=True, slots=True)
class Invalid:
    """One refused event: where it was, which field, why, what it was, and the kind of fault
    (a fixed set of words, for the rejected-events metric's ``reason`` label)."""

    index: int
    field: str | None
    reason: str
    payload: bytes
    cause: str = "invalid"

    @property
    def too_large(self) -> bool:
        """Over the per-event limit (413 for a single call)."""
        return self.cause == "too_large"


@dataclass(slots=True)
class Converted:
    """A request's events: Kafka records (routing key, envelope JSON) in request order, the
    accepted count per type, and the refused events."""

    records: list[tuple[bytes, bytes]] = field(default_factory=list)
    accepted: dict[str, int] = field(default_factory=dict)
    invalid: list[Invalid] = field(default_factory=list)
    ahead: int = 0
    """Accepted events dated after ``received_at + max_ahead``, moved back (see :func:`_times`)."""


@dataclass(frozen=True, slots=True)
class Request:
    """What every event of one request shares."""

    source_id: str
    received_at: datetime
    max_event_bytes: int
    sent_at: datetime | None = None
    context: dict[str, Any] | None = None
    max_ahead: timedelta = timedelta(seconds=60)
    """How far after its arrival an event may be dated before its clock is taken to be wrong."""
    integrations: dict[str, Any] | None = None


def convert(items: list[Any], request: Request, *, kind: str | None = None) -> Converted:
    """Validate ``items`` and build their envelopes; ``kind`` is the single-call route's type
    (a batch item names its own ``type``)."""
    out = Converted()
    positions: list[int] = []
    candidates: list[dict[str, Any]] = []
    shared = _shared_bytes(request)
    try:
        dumped: bytes | None = orjson.dumps(items)
    except orjson.JSONEncodeError:  # nested deeper than orjson writes: found item by item
        dumped = None
    all_small = dumped is not None and len(dumped) + shared <= request.max_event_bytes
    maybe_nul = dumped is None or NUL_ESCAPE in dumped  # rare: only then is each string read
    maybe_big = dumped is None or _HUGE_NUMERIC_ID.search(dumped) is not None  # rare too
    fast = all_small and not maybe_nul and not maybe_big and kind is None
    for index, item in enumerate(items):
        given = item.get("type") if type(item) is dict else None
        if fast and type(given) is str and given in _KINDS:
            positions.append(index)  # the common case, without a call per event
            candidates.append(item)
            continue
        problem = _precheck(index, item, kind, request.max_event_bytes, shared, all_small)
        if problem is None and maybe_nul and (where := nul_path(item)) is not None:
            problem = Invalid(index, where or None, NUL_REASON, orjson.dumps(item), "nul_character")
        if problem is not None:
            out.invalid.append(problem)
            continue
        positions.append(index)
        candidates.append(item if kind is None or "type" in item else {**item, "type": kind})
    template = _template(request)
    latest = request.received_at + request.max_ahead
    skew = request.received_at - request.sent_at if request.sent_at is not None else None
    for index, call in _validate(items, positions, candidates, out.invalid):
        built = _envelope(call, request, template, latest, skew)
        if isinstance(built, Refused):
            out.invalid.append(
                Invalid(index, built.field, built.reason, orjson.dumps(items[index]), built.cause)
            )
        else:
            key, value, ahead = built
            out.records.append((key, value))
            out.ahead += ahead
            call_type = call["type"]
            out.accepted[call_type] = out.accepted.get(call_type, 0) + 1
    if out.invalid:
        out.invalid.sort(key=lambda bad: bad.index)
    return out


NUL_ESCAPE = b"\\u0000"
NUL_REASON = "contains a NUL character (\\u0000), which no store downstream accepts"


def nul_path(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string (value or key) in ``value`` holding a NUL character
    ("" for ``value`` itself), or None. PostgreSQL refuses NUL in text and jsonb, so such an
    event is refused here with its field rather than failing identity's transaction later."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, inner in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return where
            found = nul_path(inner, where)
            if found is not None:
                return found
    elif isinstance(value, list):
        for position, inner in enumerate(value):
            found = nul_path(inner, f"{path}.{position}" if path else str(position))
            if found is not None:
                return found
    return None


def _shared_bytes(request: Request) -> int:
    """What a batch's ``context`` and ``integrations`` add to each of its events: they are merged
    into every one, so each event is measured with them (else a small gzipped request could
    carry a large context into thousands of events)."""
    shared = 0
    for merged in (request.context, request.integrations):
        if merged:
            with suppress(orjson.JSONEncodeError):  # then each envelope is refused (_timed_json)
                shared += len(orjson.dumps(merged))
    return shared


def _precheck(
    index: int, item: Any, kind: str | None, max_event_bytes: int, shared: int, all_small: bool
) -> Invalid | None:
    """What can be refused before validation: size, shape, and an unknown or wrong type.

    ``shared``: the bytes the batch merges into the event. ``all_small``: the compact JSON of
    all the items together, with ``shared``, is within the limit, so none of them can be over
    it and their sizes need not be measured one by one.
    """
    if not all_small:
        try:
            raw = orjson.dumps(item)
        except orjson.JSONEncodeError as exc:  # nested too deep, or an integer over 64 bits
            return Invalid(index, None, f"event cannot be stored as JSON: {exc}", _kept(item))
        if len(raw) + shared > max_event_bytes:
            reason = f"event is {len(raw)} bytes, limit {max_event_bytes}"
            if shared:
                reason = (
                    f"event is {len(raw)} bytes and the batch's context and integrations add "
                    f"{shared} to it, limit {max_event_bytes}"
                )
            return Invalid(index, None, reason, raw, "too_large")
    if not isinstance(item, dict):
        return Invalid(index, None, "event must be a JSON object", orjson.dumps(item))
    given = item.get("type")
    if kind is None and (not isinstance(given, str) or given not in CALL_TYPES):
        return Invalid(index, "type", f"unknown type {given!r}", orjson.dumps(item), "bad_type")
    if kind is not None and given is not None and given != kind:
        return Invalid(index, "type", f"type must be {kind!r} here", orjson.dumps(item), "bad_type")
    return _huge_numeric_id(index, item)


_ID_FIELDS = ("userId", "anonymousId", "messageId", "groupId", "previousId")
_EXACT_FLOAT = 2.0**53
_HUGE_NUMERIC_ID = re.compile(rb'Id":-?[0-9]+[.e]')
"""An id written as a float (a point or an exponent): the rare batch that has one is checked
event by event. Integer ids, the common numeric ones, are written without either."""


def _huge_numeric_id(index: int, item: dict[str, Any]) -> Invalid | None:
    """A numeric id too large to have been read exactly. orjson reads an integer beyond 64 bits
    as the nearest float, so two customers' 20-digit ids could become one string: such an event
    is refused, naming the field, rather than filed under a rounded id."""
    for name in _ID_FIELDS:
        value = item.get(name)
        if type(value) is float and not abs(value) < _EXACT_FLOAT:
            reason = f"{name} is a number too large to read exactly; send it as a string"
            return Invalid(index, name, reason, orjson.dumps(item), "bad_id")
    return None


def _kept(item: Any) -> bytes:
    """What the dead letter keeps of an event orjson cannot write: the standard library's JSON
    of it, or, nested past even its recursion limit, its beginning."""
    try:
        return json.dumps(item).encode()
    except (ValueError, RecursionError):
        pass
    try:
        return repr(item)[:4096].encode(errors="replace")
    except RecursionError:  # orjson reads 1,024 levels, more than Python's recursion allows
        return b'"an event nested too deep to keep"'


def _validate(
    items: list[Any],
    positions: list[int],
    candidates: list[dict[str, Any]],
    invalid: list[Invalid],
) -> list[tuple[int, dict[str, Any]]]:
    """One pydantic pass over every candidate; when some fail, they are reported (first error
    each, as index/field/reason) and the rest validated again."""
    try:
        return list(zip(positions, CALLS.validate_python(candidates), strict=True))
    except ValidationError as exc:
        failed: dict[int, Any] = {}
        for error in exc.errors(include_url=False, include_context=False, include_input=False):
            failed.setdefault(int(error["loc"][0]), error)
    for position, error in failed.items():
        index = positions[position]
        where = ".".join(str(part) for part in error["loc"][2:]) or None
        invalid.append(Invalid(index, where, error["msg"], orjson.dumps(items[index])))
    keep = [n for n in range(len(candidates)) if n not in failed]
    valid = CALLS.validate_python([candidates[n] for n in keep])
    return [(positions[n], call) for n, call in zip(keep, valid, strict=True)]


@dataclass(frozen=True, slots=True)
class Refused:
    """A validated call that a rule pydantic does not check refuses."""

    field: str | None
    reason: str
    cause: str = "invalid"


_EMPTY: dict[str, Any] = {}


def _template(request: Request) -> dict[str, Any]:
    """Every envelope key in the contract's order, with what the request decides filled in and
    the rest at their defaults (the empty containers are shared: nothing mutates them)."""
    return {
        "schema_version": 1,
        "event_id": None,
        "message_id": None,
        "source_id": request.source_id,
        "type": None,
        "user_id": None,
        "anonymous_id": None,
        "event": None,
        "name": None,
        "group_id": None,
        "previous_id": None,
        "properties": _EMPTY,
        "traits": _EMPTY,
        "context": _EMPTY,
        "integrations": _EMPTY,
        "external_ids": [],
        "timestamp": None,
        "original_timestamp": None,
        "sent_at": request.sent_at,
        "received_at": request.received_at,
    }


def _envelope(
    call: dict[str, Any],
    request: Request,
    template: dict[str, Any],
    latest: datetime,
    skew: timedelta | None,
) -> tuple[bytes, bytes, bool] | Refused:
    """The routing key and envelope JSON of a validated call, and whether its time was moved
    back from after ``latest``. ``skew``: ``receivedAt - sentAt`` of the batch, which corrects
    the device time of its events without one of their own (:func:`_times`).

    The call's keys are the envelope's own names, so one dict merge over the request's template
    fills most of it; only what is derived or corrected is set one by one.
    """
    envelope = {**template, **call}
    key: str | None = envelope["user_id"] or envelope["anonymous_id"]
    if not key:
        return Refused("userId", "userId or anonymousId is required", "missing_id")
    envelope["user_id"] = envelope["user_id"] or None
    envelope["anonymous_id"] = envelope["anonymous_id"] or None
    kind: str = envelope["type"]
    if kind in _ID_REQUIRED:
        name, alias = _ID_REQUIRED[kind]
        if not envelope[name]:
            return Refused(alias, f"{alias} is required", "missing_id")
    context: dict[str, Any] = envelope["context"]
    if "externalIds" in context:
        try:
            check_external_ids(context)
        except ValueError as exc:
            return Refused("context", str(exc))
    if request.context:
        context = envelope["context"] = {**request.context, **context}
    if request.integrations:
        envelope["integrations"] = {**request.integrations, **envelope["integrations"]}
    if context.get("externalIds") is not None:  # null is absent, as the check decided
        envelope["external_ids"] = _external_ids(context["externalIds"])
    if "category" in envelope:
        category = envelope.pop("category")
        if category is not None:
            envelope["properties"] = {"category": category, **envelope["properties"]}
    message_id = envelope["message_id"] or str(uuid.uuid4())
    envelope["message_id"] = message_id
    envelope["event_id"] = derive_event_id(request.source_id, message_id)
    written = _timed_json(envelope, call, request, latest, skew)
    if isinstance(written, Refused):
        return written
    value, ahead = written
    return key.encode(), value, ahead


def _timed_json(
    envelope: dict[str, Any],
    call: dict[str, Any],
    request: Request,
    latest: datetime,
    skew: timedelta | None,
) -> tuple[bytes, bool] | Refused:
    """The envelope's JSON once its times are set (:func:`_set_times`), and whether its time was
    moved back; a time or a value the envelope cannot carry refuses the event, never the
    request."""
    try:
        ahead = _set_times(envelope, call, request, latest, skew)
    except OverflowError:  # e.g. year 1 from a device whose clock is ahead
        field = "originalTimestamp" if call.get("original_timestamp") else "timestamp"
        return Refused(field, f"{field} is out of range once corrected by sentAt")
    if (off := _off_calendar(envelope)) is not None:
        return Refused(off, f"{off} is outside years 1-9999 once converted to UTC")
    try:
        return orjson.dumps(envelope, option=orjson.OPT_UTC_Z), ahead
    except orjson.JSONEncodeError as exc:  # e.g. a batch's context, one level deeper here
        return Refused(_unstorable_field(envelope), unstorable_reason(exc))


OBJECT_LEVELS = 253
"""How deep an envelope's ``context`` (or another object) may be nested: orjson writes 254
levels, and the envelope holding it is one."""


def unstorable_reason(error: orjson.JSONEncodeError, levels: int = OBJECT_LEVELS) -> str:
    """Why orjson refused to write a value, in words a client can act on (its message says
    "Recursion limit reached" or "Integer exceeds 64-bit range"); ``levels``: how deep the
    value may be nested where it is written."""
    if "recursion" in str(error).lower():
        return f"nested too deep to store (at most {levels} levels)"
    return f"cannot be stored as JSON: {error}"


_OBJECTS = ("context", "integrations", "properties", "traits")


def _unstorable_field(envelope: dict[str, Any]) -> str | None:
    """The first object of an envelope orjson refuses, measured where it sits (one level down):
    the field to name when the whole envelope could not be written."""
    for name in _OBJECTS:
        try:
            orjson.dumps({name: envelope[name]})
        except orjson.JSONEncodeError:
            return name
    return None


_TIMES = (
    ("timestamp", "timestamp"),
    ("original_timestamp", "originalTimestamp"),
    ("sent_at", "sentAt"),
)
_EDGE_YEARS = (1, 9999)


def _off_calendar(envelope: dict[str, Any]) -> str | None:
    """The field of a time whose UTC value leaves years 1-9999 (``0001-01-01T00:00+01:00``): it
    is a valid datetime as given, but converting it to UTC, as scoring does, raises. Only the
    first and last years can be off, so other times cost a comparison."""
    for key, name in _TIMES:
        value: datetime | None = envelope[key]
        if value is not None and value.year in _EDGE_YEARS:
            try:
                value.astimezone(UTC)
            except OverflowError:
                return name
    return None


def _set_times(
    envelope: dict[str, Any],
    call: dict[str, Any],
    request: Request,
    latest: datetime,
    skew: timedelta | None,
) -> bool:
    """Set the envelope's times (:func:`_times`); True when its time was moved back."""
    timestamp: datetime | None = envelope["timestamp"]
    if (
        timestamp is not None
        and timestamp.tzinfo is not None
        and "original_timestamp" not in call
        and "sent_at" not in call
    ):
        if skew is None:
            if timestamp <= latest:
                return False  # kept as given: nothing to correct it by
        elif (corrected := timestamp + skew) <= latest:
            # what the SDKs send: the device's time, and the batch's sentAt
            envelope["timestamp"], envelope["original_timestamp"] = corrected, timestamp
            return False
    times = _times(call, request, latest)
    envelope["timestamp"], envelope["original_timestamp"], envelope["sent_at"], ahead = times
    return ahead


def _times(
    call: dict[str, Any], request: Request, latest: datetime
) -> tuple[datetime, datetime | None, datetime | None, bool]:
    """The event's ``timestamp``, ``originalTimestamp`` and ``sentAt`` (the event's, else the
    batch's; naive times are UTC, as Segment takes them), and whether the time was ahead.

    Segment's rule: the device's time (``originalTimestamp``, else the ``timestamp`` every SDK
    sets on each call) is corrected by ``sentAt`` (:func:`correct_timestamp`) and kept as
    ``originalTimestamp``. Every SDK sends ``sentAt``, so a phone or browser with a wrong clock
    is corrected; a server importing history sends its old times with ``sentAt`` close to
    arrival, so they move by the transit time only. A ``timestamp`` is kept as given when
    there is nothing to correct it by (no ``sentAt``), or when it comes beside an
    ``originalTimestamp`` (then it is a corrected time already: data exported from Segment).

    A time after ``latest`` is moved back, never past arrival: an event cannot happen after it
    arrives. Scoring takes event time as the truth, and one event dated 2099 would hold a
    person's decay and deadlines there for good."""
    timestamp = _utc(call.get("timestamp"))
    original = _utc(call.get("original_timestamp"))
    sent_at = _utc(call.get("sent_at")) or request.sent_at
    received = request.received_at
    kept = timestamp is not None and (original is not None or sent_at is None)
    if timestamp is not None and kept:
        time = timestamp
    else:
        device = original or timestamp
        original = device
        if device is None:
            time = received
        elif sent_at is None:
            time = device
        else:
            time = correct_timestamp(device, sent_at, received)
    if time <= latest:
        return time, original, sent_at, False
    if kept and sent_at is not None:
        time = correct_timestamp(time, sent_at, received)
    return min(time, received), original or timestamp, sent_at, True


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _external_ids(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``context.externalIds`` in the envelope's ``ExternalId`` shape (already checked)."""
    return [
        {
            "id": item["id"],
            "type": item["type"],
            "collection": item.get("collection"),
            "encoding": item.get("encoding"),
        }
        for item in raw
    ]
