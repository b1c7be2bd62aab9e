"""Listing a tier's members: the query's rules and the cursor (pure)."""

from __future__ import annotations

import base64

import orjson
import pytest

from services.scoring.listing import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Cursor,
    FieldError,
    MembersQuery,
    parse_members_query,
)

STAGES = ["new", "growing", "mature", "declining"]


def test_a_cursor_round_trips_floats_and_any_oneid_exactly() -> None:
    for total, oneid in [(0.1 + 0.2, "p-1"), (-3.0, "é/ü ?&="), (1e-300, "q"), (42.0, "x" * 64)]:
        cursor = Cursor(total, oneid)
        text = cursor.encode()
        assert Cursor.decode(text) == cursor
        assert text.isascii()
        assert not {"/", "+"} & set(text)  # safe in a query string


def test_anything_but_a_cursor_is_refused() -> None:
    forged = [
        "",
        "not base64!",
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(orjson.dumps({"total": 1, "oneid": "p"})).decode(),
        base64.urlsafe_b64encode(orjson.dumps([True, "p"])).decode(),
        base64.urlsafe_b64encode(orjson.dumps(["1", "p"])).decode(),
        base64.urlsafe_b64encode(orjson.dumps([1, 2])).decode(),
        base64.urlsafe_b64encode(orjson.dumps([1, "p", 3])).decode(),
        # no person has these ids; Postgres refused the NUL with a 500
        Cursor(5.0, "a\x00b").encode(),
        Cursor(5.0, "x" * 65).encode(),
        Cursor(5.0, "").encode(),
    ]
    for text in forged:
        with pytest.raises(ValueError, match="not a cursor"):
            Cursor.decode(text)


def test_a_query_defaults_and_takes_what_it_is_given() -> None:
    assert parse_members_query("vip", {}, STAGES) == MembersQuery("vip", DEFAULT_LIMIT)
    after = Cursor(12.5, "p-9")
    given = {"limit": "7", "after": after.encode(), "stage": "declining"}
    assert parse_members_query("vip", given, STAGES) == MembersQuery("vip", 7, after, "declining")
    assert parse_members_query(
        "vip", {"limit": str(MAX_LIMIT), "after": "", "stage": ""}, STAGES
    ) == (MembersQuery("vip", MAX_LIMIT))


def test_every_refused_parameter_is_reported_with_its_reason() -> None:
    refused = parse_members_query(
        "vip", {"limit": "0", "after": "garbage", "stage": "retired"}, STAGES
    )
    assert isinstance(refused, list)
    assert [e.field for e in refused] == ["limit", "after", "stage"]
    assert refused[0] == FieldError("limit", f"must be a whole number from 1 to {MAX_LIMIT}")
    assert "new, growing, mature, declining" in refused[2].reason
    # 5,000 digits: Python refuses to read more than 4,300, which answered 500
    for limit in ["-1", "1.5", str(MAX_LIMIT + 1), "ten", " 5", "²", "1" * 5000]:
        assert parse_members_query("vip", {"limit": limit}, STAGES) == [
            FieldError("limit", f"must be a whole number from 1 to {MAX_LIMIT}")
        ]
