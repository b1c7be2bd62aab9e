"""Identity's pure rules: normalisation, blocklist, resolution and merges."""

from datetime import UTC, datetime, timedelta
from itertools import count

from services.identity.rules import identifiers_of, normalize, plan_batch
from tests.factories import make_event

T = datetime(2026, 11, 1, tzinfo=UTC)


def ids() -> object:
    numbers = count(1)
    return lambda: f"p{next(numbers)}"


def test_junk_values_never_match() -> None:
    for junk in ("", " null ", "undefined", "anonymous", "0", "-1"):
        assert normalize("user_id", junk) is None
    assert normalize("email", " Ada@Example.COM ") == "ada@example.com"
    assert normalize("email", "not-an-email") is None


def test_identifiers_in_priority_order_without_junk() -> None:
    event = make_event(user_id="u-1", anonymous_id="null", traits={"email": "A@B.io"})
    assert identifiers_of(event) == [("user_id", "u-1"), ("email", "a@b.io")]


def test_new_identifiers_create_one_person_and_repeat_resolves_to_it() -> None:
    keys = [("user_id", "u-1"), ("anonymous_id", "a-1")]
    plan = plan_batch([(keys, T), ([("anonymous_id", "a-1")], T)], {}, {}, ids())
    assert plan.oneids == ["p1", "p1"]
    assert plan.new_links == {("user_id", "u-1"): "p1", ("anonymous_id", "a-1"): "p1"}


def test_bridging_event_merges_into_the_older_person() -> None:
    links = {("user_id", "u-1"): "young", ("anonymous_id", "a-1"): "old"}
    created = {"young": T + timedelta(days=1), "old": T}
    bridge = [("user_id", "u-1"), ("anonymous_id", "a-1")]
    plan = plan_batch([(bridge, T), ([("user_id", "u-1")], T)], links, created, ids())
    assert plan.oneids == ["old", "old"]
    assert [(m.winner, m.absorbed) for m in plan.merges] == [("old", "young")]


def test_event_without_usable_identifiers_resolves_to_none() -> None:
    plan = plan_batch([([], T)], {}, {}, ids())
    assert plan.oneids == [None]
    assert not plan.new_persons
