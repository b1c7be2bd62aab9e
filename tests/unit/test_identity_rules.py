"""Identity's pure rules: normalisation, blocklist, priority, limits, winner choice."""

from collections import Counter
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.identity.rules import (
    MAX_TYPE_LENGTH,
    MAX_VALUE_LENGTH,
    Graph,
    IdentityRules,
    erased_traits,
    identifiers_of,
    load_rules,
    needs_counts,
    normalize,
    plan_batch,
    suppression_forms,
    without_erased,
)
from services.identity.settings import IdentitySettings
from services.identity.worker import without_traits
from shared.contracts import EventEnvelope, encode
from tests.factories import make_event

T = datetime(2026, 11, 1, tzinfo=UTC)
RULES = load_rules()


def ids() -> object:
    numbers = count(1)
    return lambda: f"p{next(numbers)}"


def test_emails_are_trimmed_and_lowercased_and_must_look_like_emails() -> None:
    assert normalize("email", " Ada@Example.COM ") == "ada@example.com"
    assert normalize("email", "not-an-email") is None
    assert normalize("email", "a@b") is None


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+1 (415) 555-2671", None, "+14155552671"),
        ("(415) 555-2671", "US", "+14155552671"),
        ("138 0013 8000", "CN", "+8613800138000"),
        ("+86 138-0013-8000", "US", "+8613800138000"),  # an explicit country wins
        ("415 555 2671", None, None),  # no country and no default region: unknowable
        ("12345", "US", None),  # not a valid number
        ("call me", "US", None),
        # an extension is kept, RFC 3966 style, however it was written
        ("+1 650-253-0000 ext. 123", None, "+16502530000;ext=123"),
        ("(650) 253-0000 x456", "US", "+16502530000;ext=456"),
        ("tel:+1-650-253-0000;ext=123", None, "+16502530000;ext=123"),
        ("+44 20 7031 3000 ext 0042", None, "+442070313000;ext=0042"),
        ("+1 650-253-0000 ext. \u0661\u0662\u0663", None, "+16502530000;ext=123"),  # Arabic-Indic
    ],
)
def test_phones_become_e164(raw: str, region: str | None, expected: str | None) -> None:
    assert normalize("phone", raw, region=region) == expected


def test_two_people_behind_one_switchboard_stay_two_people() -> None:
    def keys(email: str, phone: str) -> list[tuple[str, str]]:
        traits = {"email": email, "phone": phone}
        event = make_event(user_id=None, anonymous_id=f"a-{email}", traits=traits)
        return identifiers_of(event, RULES)

    ada = keys("ada@acme.io", "+1 650-253-0000 ext. 123")
    bob = keys("bob@acme.io", "+1 650-253-0000 ext. 456")
    plan = plan_batch([(ada, T), (bob, T + timedelta(seconds=1))], Graph(), RULES, ids())
    assert plan.oneids == ["p1", "p2"]
    assert plan.merges == []
    assert ("phone", "+16502530000;ext=123") in ada
    # the same extension written another way is the same line
    again = keys("ada@home.io", "+16502530000 x123")
    assert ("phone", "+16502530000;ext=123") in again


def test_blocked_values_exact_and_by_pattern() -> None:
    for junk in ("null", "UNDEFINED", "anonymous", "0", "-1", "[object Object]"):
        assert RULES.is_blocked("user_id", junk)
    assert RULES.is_blocked("email", "test@acme.io")
    assert RULES.is_blocked("email", "ada@example.com")
    assert RULES.is_blocked("phone", "+11111111111")
    assert RULES.is_blocked("phone", "+11111111111;ext=42")  # junk behind an extension too
    assert not RULES.is_blocked("phone", "+16502530000;ext=1111111")
    assert not RULES.is_blocked("email", "ada@acme.io")
    assert not RULES.is_blocked("user_id", "u-1")


def test_identifiers_strongest_first_without_junk_or_duplicates() -> None:
    event = make_event(
        user_id="u-1",
        anonymous_id="null",
        traits={"email": "A@Acme.io", "phone": "+1 415 555 2671"},
        context={"device": {"id": "dev-9"}},
        external_ids=[
            {"id": "a@acme.io", "type": "email"},
            {"id": "ou-1", "type": "WeChat_OpenID", "collection": "wx-app-7"},
            {"id": "ou-2", "type": "wechat_openid"},  # no app id: cannot be scoped, dropped
            {"id": "un-1", "type": "wechat_unionid"},
            {"id": "L-77", "type": "loyalty_card"},
        ],
    )
    assert identifiers_of(event, RULES) == [
        ("user_id", "u-1"),
        ("wechat_unionid", "un-1"),
        ("email", "a@acme.io"),
        ("phone", "+14155552671"),
        ("loyalty_card", "L-77"),
        ("wechat_openid", "wx-app-7:ou-1"),
        ("device_id", "dev-9"),
    ]


def test_a_blocked_openid_or_app_id_identifies_no_one() -> None:
    """A mini-program whose wx.login failed sends "undefined": scoped first, the value was
    "wx5f3a:undefined", which no blocked value matched, and every such user became one."""
    for openid, app in (("undefined", "wx5f3a"), ("null", "wx5f3a"), ("0", "wx5f3a"), ("ou", " ")):
        event = make_event(
            user_id=None,
            anonymous_id="anon-alice",
            external_ids=[{"id": openid, "type": "wechat_openid", "collection": app}],
        )
        assert identifiers_of(event, RULES) == [("anonymous_id", "anon-alice")], (openid, app)
    for app in ("undefined", "null"):
        event = make_event(
            user_id="u", external_ids=[{"id": "ou-1", "type": "wechat_openid", "collection": app}]
        )
        assert identifiers_of(event, RULES) == [("user_id", "u")]
    event = make_event(
        user_id="u", external_ids=[{"id": " ou-1 ", "type": "wechat_openid", "collection": "wx"}]
    )
    assert ("wechat_openid", "wx:ou-1") in identifiers_of(event, RULES)


def test_a_phone_sent_as_a_number_is_a_phone() -> None:
    event = make_event(user_id="u", traits={"phone": 4155552671})
    assert ("phone", "+14155552671") in identifiers_of(event, RULES, region="US")
    international = make_event(user_id="u", traits={"phone": 8613800138000})
    assert ("phone", "+8613800138000") in identifiers_of(international, RULES, region="CN")
    assert identifiers_of(make_event(user_id="u", traits={"phone": True}), RULES) == [
        ("user_id", "u")
    ]


def test_rules_files_are_validated() -> None:
    with pytest.raises(ValidationError, match="priority must contain"):
        IdentityRules.model_validate({"version": "1", "priority": ["user_id"], "limits": {}})
    with pytest.raises(ValidationError, match="at least 1"):
        IdentityRules.model_validate({"version": "1", "priority": ["*"], "limits": {"user_id": 0}})
    with pytest.raises(ValidationError, match="blocked pattern"):
        IdentityRules.model_validate(
            {"version": "1", "priority": ["*"], "limits": {}, "blocked": {"patterns": {"*": ["("]}}}
        )


def test_the_shipped_rules_file_loads(tmp_path: Path) -> None:
    assert RULES.limit("user_id") == 1
    assert RULES.limit("some_custom_id") == 5
    assert RULES.rank("some_custom_id") < RULES.rank("anonymous_id")
    bad = tmp_path / "rules.yaml"
    bad.write_text("version: x\npriority: ['*']\nlimits: {user_id: one}\n")
    with pytest.raises(ValidationError, match=r"limits\.user_id"):
        load_rules(bad)


def test_new_identifiers_create_one_person_and_repeats_resolve_to_it() -> None:
    keys = [("user_id", "u-1"), ("anonymous_id", "a-1")]
    plan = plan_batch([(keys, T), ([("anonymous_id", "a-1")], T)], Graph(), RULES, ids())
    assert plan.oneids == ["p1", "p1"]
    assert plan.new_links == {("user_id", "u-1"): "p1", ("anonymous_id", "a-1"): "p1"}
    assert plan.new_persons == {"p1": T}


def test_a_bridging_event_merges_into_the_older_person() -> None:
    graph = Graph(
        links={("user_id", "u-1"): "young", ("anonymous_id", "a-1"): "old"},
        created={"young": T + timedelta(days=1), "old": T},
        counts={"young": Counter(user_id=1), "old": Counter(anonymous_id=1)},
    )
    bridge = [("user_id", "u-1"), ("anonymous_id", "a-1")]
    plan = plan_batch([(bridge, T), ([("user_id", "u-1")], T)], graph, RULES, ids())
    assert plan.oneids == ["old", "old"]
    assert [(m.winner, m.absorbed, m.rule) for m in plan.merges] == [
        ("old", "young", "shared_identifier")
    ]


def test_equal_ages_tie_break_on_the_oneid() -> None:
    graph = Graph(
        links={("email", "x@y.io"): "b", ("anonymous_id", "a"): "a"},
        created={"a": T, "b": T},
        counts={"a": Counter(anonymous_id=1), "b": Counter(email=1)},
    )
    plan = plan_batch([([("email", "x@y.io"), ("anonymous_id", "a")], T)], graph, RULES, ids())
    assert plan.merges[0].winner == "a"


def test_merge_chains_end_at_the_root_within_a_batch() -> None:
    batch = [
        ([("anonymous_id", "a-1")], T),
        ([("anonymous_id", "a-2")], T + timedelta(seconds=1)),
        ([("anonymous_id", "a-3")], T + timedelta(seconds=2)),
        ([("anonymous_id", "a-2"), ("anonymous_id", "a-3")], T + timedelta(seconds=3)),
        ([("anonymous_id", "a-1"), ("anonymous_id", "a-3")], T + timedelta(seconds=4)),
    ]
    plan = plan_batch(batch, Graph(), RULES, ids())
    assert plan.oneids == ["p1", "p2", "p3", "p2", "p1"]
    assert plan.root_of("p3") == "p1"
    assert set(plan.new_links.values()) == {"p1"}


def test_a_shared_computer_does_not_merge_two_users() -> None:
    """Two users behind one cookie: the cookie (weaker) is dropped from the second login."""
    graph = Graph(
        links={("user_id", "ada"): "p-ada", ("anonymous_id", "cookie"): "p-ada"},
        created={"p-ada": T},
        counts={"p-ada": Counter(user_id=1, anonymous_id=1)},
    )
    second_login = [("user_id", "bob"), ("anonymous_id", "cookie")]
    plan = plan_batch([(second_login, T)], graph, RULES, ids())
    assert plan.oneids == ["p1"]
    assert plan.merges == []
    assert plan.new_links == {("user_id", "bob"): "p1"}
    [refusal] = plan.refusals
    assert (refusal.key, refusal.rule, refusal.other) == (
        ("anonymous_id", "cookie"),
        "limit:user_id",
        "p-ada",
    )


def test_a_merge_that_would_exceed_a_limit_keeps_the_stronger_side() -> None:
    many = IdentityRules(version="t", priority=("user_id", "*", "email"), limits={"email": 3})
    graph = Graph(
        links={("user_id", "u"): "p-a", ("email", "shared@acme.io"): "p-b"},
        created={"p-a": T, "p-b": T + timedelta(days=1)},
        counts={"p-a": Counter(user_id=1, email=2), "p-b": Counter(email=2)},
    )
    event = [("user_id", "u"), ("email", "shared@acme.io")]
    plan = plan_batch([(event, T)], graph, many, ids())
    assert plan.oneids == ["p-a"]
    assert plan.merges == []
    assert plan.refusals[0].rule == "limit:email"


def test_a_person_grown_past_a_limit_tightened_since_keeps_their_identifiers() -> None:
    """The email limit went from 5 to 1 after ada gave two. Her own identifiers refused her:
    an event with a new cookie made a new person, and depending on the batch, a plain one was
    dead-lettered as having no usable identifier."""
    tightened = IdentityRules(version="t", priority=("user_id", "*", "email"), limits={"email": 1})
    ada, cookie = ("user_id", "ada"), ("anonymous_id", "c1")
    emails = [("email", "ada@acme.io"), ("email", "ada@home.io")]
    graph = Graph(
        links={ada: "p-ada", cookie: "p-ada", emails[0]: "p-ada", emails[1]: "p-ada"},
        created={"p-ada": T},
        counts={"p-ada": Counter(user_id=1, anonymous_id=1, email=2)},
    )
    new_cookie = ("anonymous_id", "c2")
    batch = [([ada, new_cookie], T), ([ada], T), ([ada, *emails], T)]
    plan = plan_batch(batch, graph, tightened, ids())
    assert plan.oneids == ["p-ada", "p-ada", "p-ada"]
    assert plan.new_links == {new_cookie: "p-ada"}
    assert plan.refusals == []
    # what would add to the held emails is still refused
    more = plan_batch([([ada, ("email", "ada@work.io")], T)], graph, tightened, ids())
    assert more.oneids == ["p-ada"]
    assert [r.rule for r in more.refusals] == ["limit:email"]


def test_events_without_usable_identifiers_resolve_to_none() -> None:
    assert plan_batch([([], T)], Graph(), RULES, ids()).oneids == [None]
    assert identifiers_of(make_event(user_id="undefined", anonymous_id="null"), RULES) == []


def test_counts_are_needed_only_where_an_event_can_grow_or_merge_a_person() -> None:
    links = {("user_id", "u"): "p1", ("anonymous_id", "a"): "p1", ("email", "e@x.io"): "p2"}
    warm = [("user_id", "u"), ("anonymous_id", "a")]
    grow = [("user_id", "u"), ("anonymous_id", "new")]
    merge = [("anonymous_id", "a"), ("email", "e@x.io")]
    assert needs_counts([warm], links) == set()
    assert needs_counts([grow], links) == {"p1"}
    assert needs_counts([warm, merge], links) == {"p1", "p2"}


def test_an_unknown_phone_region_stops_the_start() -> None:
    """phonenumbers refuses "cn": every phone written without +86 would have been dropped."""

    def region(value: str) -> str | None:
        settings = IdentitySettings.model_validate(
            {"admin_token": "t", "TIERFLOW_IDENTITY_PHONE_REGION": value}
        )
        return settings.phone_region

    assert region("cn") == "CN"
    assert region(" ") is None
    with pytest.raises(ValidationError, match="unknown phone region"):
        region("XX")


def test_an_erased_identifier_drops_itself_unless_it_was_the_events_strongest() -> None:
    ada, bob, cookie, new = (
        ("user_id", "ada"),
        ("user_id", "bob"),
        ("anonymous_id", "c1"),
        (
            "anonymous_id",
            "c2",
        ),
    )
    keyed = [[ada, new], [bob, cookie], [cookie], [], [bob, new]]
    kept, dropped = without_erased(keyed, {ada, cookie})
    assert kept == [[], [bob], [], [], [bob, new]]
    assert dropped == [True, False, True, False, False]


def test_a_phone_with_an_extension_is_suppressed_by_its_plain_number_too() -> None:
    # an erasure of a link stored before extensions were kept digested the plain number
    assert suppression_forms(("phone", "+16502530000;ext=123")) == (
        ("phone", "+16502530000;ext=123"),
        ("phone", "+16502530000"),
    )
    assert suppression_forms(("phone", "+16502530000")) == (("phone", "+16502530000"),)
    assert suppression_forms(("user_id", "a;ext=1")) == (("user_id", "a;ext=1"),)


def test_an_identifier_too_long_to_store_is_dropped_like_junk() -> None:
    # the graph's columns hold 64 and 512 characters: a longer one failed its whole batch
    event = make_event(
        user_id="u-1",
        traits={"email": "a" * MAX_VALUE_LENGTH + "@acme.io"},
        context={"device": {"id": "d" * (MAX_VALUE_LENGTH + 1)}},
        external_ids=[
            {"id": "c-1", "type": "t" * (MAX_TYPE_LENGTH + 1)},
            {"id": "c" * MAX_VALUE_LENGTH, "type": "t" * MAX_TYPE_LENGTH},
        ],
    )
    assert identifiers_of(event, RULES) == [
        ("user_id", "u-1"),
        ("t" * MAX_TYPE_LENGTH, "c" * MAX_VALUE_LENGTH),
    ]


def test_an_erased_email_or_phone_is_withheld_from_the_traits_stored() -> None:
    event = make_event(
        type="identify",
        user_id="bob",
        traits={"email": " ADA@acme.io", "phone": "+1 415 555 2671", "name": "Bob"},
    )
    erased = {("email", "ada@acme.io")}
    assert erased_traits(event, erased, RULES, None) == {"email"}
    erased.add(("phone", "+14155552671"))
    assert erased_traits(event, erased, RULES, None) == {"email", "phone"}
    assert erased_traits(event, {("user_id", "bob")}, RULES, None) == set()


def test_an_event_is_forwarded_without_its_withheld_traits() -> None:
    event = make_event(
        type="identify", user_id="bob", traits={"email": "ada@acme.io", "plan": "pro"}
    )
    forwarded = EventEnvelope.model_validate_json(
        without_traits(encode(event), frozenset({"email"}))
    )
    assert forwarded.traits == {"plan": "pro"}
    assert forwarded.model_copy(update={"traits": event.traits}) == event
