"""The scoring model: RFM, decay, caps, tags, stages, hysteresis, dwell — hand-computed values."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from services.scoring import scorer
from services.scoring.rules import ScoringModel, load_model
from services.scoring.scorer import DAY, State
from services.scoring.service import (
    CHANGE_NAMESPACE,
    contact_of,
    explain,
    fold_in,
    profile_json,
    profile_of,
    reevaluate,
    score_event,
    tier_change_id,
)
from shared.contracts import TierChangeEvent, encode
from tests.factories import T0, make_resolved

MODEL = load_model()
BASE = T0.timestamp()
ONE_DAY = timedelta(days=1)


def nth_change_id(change: TierChangeEvent, sequence: int) -> str:
    """The id the ``sequence``-th change of its person must have, for the move it carries."""
    data = change.data
    return tier_change_id(
        change.subject,
        sequence,
        from_tier=data.from_tier,
        to_tier=data.to_tier,
        from_stage=data.from_stage,
        stage=data.lifecycle_stage,
    )


def apply(state: State, event_id: str, day: float, **fields: Any) -> State:
    """Apply a track event ``day`` days after T0 (fields: kind, name, properties, traits)."""
    scorer.apply_event(
        state,
        event_id=event_id,
        kind=fields.get("kind", "track"),
        name=fields.get("name"),
        properties=fields.get("properties", {}),
        traits=fields.get("traits", {}),
        at=BASE + day * DAY,
        model=MODEL,
    )
    return state


def webinar(state: State, event_id: str, day: float) -> State:
    return apply(state, event_id, day, name="Webinar Attended")


def order(state: State, event_id: str, day: float, revenue: float) -> State:
    return apply(state, event_id, day, name="Order Completed", properties={"revenue": revenue})


def facts(state: State, day: float) -> scorer.Facts:
    return scorer.measure(state, BASE + day * DAY, MODEL)


def test_an_amount_that_is_not_a_finite_number_counts_as_zero() -> None:
    state = order(scorer.new_state(BASE), "o1", 1, 250.0)
    bad = [math.nan, math.inf, -math.inf, 10**400, True, "nan", "1e999", "abc", None]
    for n, amount in enumerate(bad):
        state = order(state, f"bad{n}", 1, amount)  # type: ignore[arg-type]
    assert sorted(p[1] for p in state["purchases"]) == [0.0] * len(bad) + [250.0]
    measured = facts(state, 2)
    assert (measured.purchases, measured.revenue) == (len(bad) + 1, 250.0)
    folded = scorer.fold(order(scorer.new_state(BASE), "w1", 1, 10.0), state, MODEL)
    assert orjson.loads(orjson.dumps(folded)) == folded  # a fold command carries it as JSON


def test_a_refund_sent_as_a_negative_order_is_no_purchase() -> None:
    """It raised the frequency band and refreshed recency: 40 points of value became 58."""
    state = order(scorer.new_state(BASE), "o1", 0, 300.0)
    before = facts(state, 60)
    for n, amount in enumerate([-300.0, "-300", -0.01]):
        state = order(state, f"refund{n}", 60, amount)  # type: ignore[arg-type]
    after = facts(state, 60)
    assert (after.purchases, after.revenue, after.value) == (1, 300.0, before.value)
    assert state["last_purchase_at"] == BASE


def test_a_numeric_string_amount_counts_as_its_number() -> None:
    state = order(scorer.new_state(BASE), "o1", 1, " 99.90 ")  # type: ignore[arg-type]
    state = order(state, "o2", 1, "100")  # type: ignore[arg-type]
    assert facts(state, 2).revenue == 199.9


def test_rfm_bands_map_amounts_and_days_to_one_to_five() -> None:
    rfm = MODEL.rfm
    assert [rfm.recency_days.at_most(d) for d in (0, 7, 7.1, 30, 31, 90, 180, 181)] == [
        5,
        5,
        4,
        4,
        3,
        3,
        2,
        1,
    ]
    assert [rfm.frequency.at_least(n) for n in (1, 2, 3, 4, 5, 10, 11)] == [1, 2, 3, 3, 4, 5, 5]
    assert [rfm.monetary.at_least(a) for a in (99.99, 100, 999, 1000, 5000)] == [1, 2, 3, 4, 5]


def test_value_score_weights_rfm_and_follows_the_windows() -> None:
    state = order(scorer.new_state(BASE), "o1", 0, 1000)
    # 10 days later: R=4 (10 > 7), F=1 (one purchase), M=4 (1000); weights 3/3/4, scale 20
    # value = (4*3 + 1*3 + 4*4) * 20 / 10 = 62
    assert facts(state, 10).value == pytest.approx(62)
    assert facts(state, 10).rfm == (4, 1, 4)
    # 200 days: R=1 (200 > 180) -> (3 + 3 + 16) * 2 = 44
    assert facts(state, 200).value == pytest.approx(44)
    assert facts(state, 366).value == 0  # the purchase left the 365-day windows


def test_engagement_decays_exactly_at_any_read_time() -> None:
    state = webinar(scorer.new_state(BASE), "w1", 0)
    assert facts(state, 0).engagement == pytest.approx(15)
    assert facts(state, 14).engagement == pytest.approx(7.5)
    assert facts(state, 7).engagement == pytest.approx(15 / 2**0.5)
    assert facts(state, 3.25).engagement == pytest.approx(15 * 2 ** (-3.25 / 14))
    assert scorer.decay_factor(-5, 14) == 1  # reads before the measurement do not grow it


def test_late_events_give_the_same_scores_as_in_order_events() -> None:
    forward = webinar(scorer.new_state(BASE), "w", 0)
    apply(forward, "f", 2, name="Form Submitted")
    backward = apply(scorer.new_state(BASE), "f", 2, name="Form Submitted")
    webinar(backward, "w", 0)
    expected = 15 * 2 ** (-5 / 14) + 10 * 2 ** (-3 / 14)
    assert facts(forward, 5).engagement == pytest.approx(expected)
    assert facts(backward, 5).engagement == pytest.approx(expected)


def test_daily_cap_limits_points_per_day_and_still_counts_events() -> None:
    state = scorer.new_state(BASE)
    for n in range(3):
        webinar(state, f"w{n}", n / 1e6)
    # 15 + 15, then the 30/day cap leaves 0 for the third webinar
    assert facts(state, 0).engagement == pytest.approx(30)
    assert facts(state, 0).counts["webinar_attended"] == 3
    webinar(state, "next-day", 1)  # a new day, a new cap: 30 * 2^(-1/14) + 15
    assert facts(state, 1).engagement == pytest.approx(30 * 2 ** (-1 / 14) + 15)


def test_negative_points_are_not_capped() -> None:
    state = webinar(scorer.new_state(BASE), "w", 0)
    apply(state, "c", 0, name="Complaint Filed")
    assert facts(state, 0).engagement == pytest.approx(-5)


def test_fit_score_weights_traits() -> None:
    traits = {"company_size": "201-1000", "job_level": "director", "industry": "software"}
    state = apply(scorer.new_state(BASE), "id", 0, kind="identify", traits=traits)
    # 15 + 10 + 0.5 * 10
    assert facts(state, 0).fit == pytest.approx(30)
    apply(state, "old", -1, kind="identify", traits={"job_level": "individual"})
    assert facts(state, 0).fit == pytest.approx(30)  # an older trait value does not win


def test_tags_from_rules() -> None:
    state = scorer.new_state(BASE)
    for day in (0, 10, 20):
        webinar(state, f"w{day}", day)
    f = facts(state, 20)
    assert scorer.tags_of(f, scorer.stage_of(f, MODEL), MODEL) == ["active", "webinar_regular"]
    f = facts(state, 120)  # the first webinar left the 90-day count window; silent 100 days
    assert scorer.tags_of(f, scorer.stage_of(f, MODEL), MODEL) == ["silent"]
    order(state, "o", 21, 1500)
    assert "quality_seeking" in scorer.tags_of(facts(state, 21), "growing", MODEL)
    apply(state, "c1", 22, name="Coupon Applied")
    apply(state, "c2", 23, name="Coupon Applied")
    tags = scorer.tags_of(facts(state, 23), "growing", MODEL)
    assert "price_sensitive" in tags
    assert "quality_seeking" not in tags
    trait = apply(scorer.new_state(BASE), "t", 0, traits={"price_sensitivity": "high"})
    assert scorer.tags_of(facts(trait, 0), "new", MODEL) == ["active", "price_sensitive"]


def test_lifecycle_stages_move_backward() -> None:
    state = scorer.new_state(BASE)
    order(state, "o1", 1, 50)
    assert scorer.stage_of(facts(state, 1), MODEL) == "new"
    order(state, "o2", 15, 50)
    assert scorer.stage_of(facts(state, 16), MODEL) == "mature"  # two purchases, 16 days old
    assert scorer.stage_of(facts(state, 36), MODEL) == "declining"  # silent 21 days
    apply(state, "p", 37, kind="page")
    assert scorer.stage_of(facts(state, 37), MODEL) == "mature"
    apply(state, "p2", 370, kind="page")  # the first purchase left the 365-day window
    assert scorer.stage_of(facts(state, 370), MODEL) == "growing"


def with_tier(tier: str, since_day: float, engagement: float) -> State:
    state = scorer.new_state(BASE)
    state.update(
        tier=tier,
        tier_since=BASE + since_day * DAY,
        engagement={"webinar_attended": engagement},
        last_event_at=BASE + since_day * DAY,
    )
    return state


def test_hysteresis_keeps_a_tier_until_the_margin_is_crossed() -> None:
    state = with_tier("growth", -10, 37.0)
    assert scorer.decide(state, BASE, MODEL).tier == "growth"  # 37 >= 40 - 5
    state["engagement"] = {"webinar_attended": 34.0}
    assert scorer.decide(state, BASE, MODEL).tier == "prospect"
    state["tier"] = "prospect"
    state["engagement"] = {"webinar_attended": 39.9}
    assert scorer.decide(state, BASE, MODEL).tier == "prospect"  # entering needs the full 40


def test_minimum_dwell_delays_moving_down_but_not_up() -> None:
    state = with_tier("growth", 0, 20.0)  # growth has a 3-day dwell
    decision = scorer.decide(state, BASE + 1 * DAY, MODEL)
    assert (decision.tier, decision.held_by_dwell) == ("growth", True)
    assert scorer.decide(state, BASE + 3 * DAY, MODEL).tier == "prospect"
    order(state, "big", 1, 5000)  # R=5, F=1, M=5: (15 + 3 + 20) * 2 = 76 -> vip at once
    assert scorer.decide(state, BASE + 1 * DAY, MODEL).tier == "vip"


def test_silence_outranks_value_and_the_deadline_is_exact() -> None:
    state = order(scorer.new_state(BASE), "o", 0, 5000)
    state.update(tier="vip", tier_since=BASE)
    assert scorer.decide(state, BASE + 29.9 * DAY, MODEL).tier == "vip"
    assert scorer.decide(state, BASE + 30 * DAY, MODEL).tier == "at_risk"
    browser = apply(scorer.new_state(BASE), "p", 0, kind="page")
    # candidates at day 13.5: age 14 (new -> growing), silent 14 (tag silent), periodic 14.5
    assert scorer.next_deadline(browser, BASE + 13.5 * DAY, MODEL) == BASE + 14 * DAY
    assert scorer.next_deadline(browser, BASE + 29.5 * DAY, MODEL) == BASE + 30 * DAY


def test_engagement_decay_below_a_threshold_is_scheduled() -> None:
    state = with_tier("growth", -10, 80.0)
    # 80 decays to 35 (growth's 40 minus the 5-point margin) after 14 * log2(80 / 35) days
    crossing = BASE + 14 * DAY * math.log2(80 / 35)
    assert scorer.next_deadline(state, BASE, MODEL) <= crossing
    assert scorer.decide(state, crossing - 1, MODEL).tier == "growth"
    assert scorer.decide(state, crossing + 1, MODEL).tier == "prospect"


def test_threshold_crossing_emits_deterministic_tier_changes_with_reasons() -> None:
    state = None
    changes = []
    for day in range(3):
        event = make_resolved(message_id=f"w{day}", timestamp=T0 + day * ONE_DAY)
        state, _, change = score_event(state, event, MODEL)
        if change is not None:
            changes.append(change)
    assert [(c.data.from_tier, c.data.to_tier) for c in changes] == [
        (None, "prospect"),
        ("prospect", "growth"),
    ]
    # 15*2^(-2/14) + 15*2^(-1/14) + 15 at day 2
    expected = 15 * (2 ** (-2 / 14) + 2 ** (-1 / 14) + 1)
    growth = changes[1]
    assert growth.data.scores.total == pytest.approx(expected, abs=1e-3)
    assert growth.id == nth_change_id(growth, 2)
    assert growth.data.cause.kind == "event"
    assert growth.data.cause.event_id == "w2"
    # the reason: what moved since the previous change (15 at day 0 -> ~43.9 at day 2)
    assert growth.data.contributions[0].rule == "engagement.webinar_attended"
    assert growth.data.contributions[0].points == pytest.approx(expected - 15, abs=1e-3)
    assert growth.data.lifecycle_stage == "new"
    assert growth.data.model_version == MODEL.version
    assert [c.data.sequence for c in changes] == [1, 2]


def test_a_tier_change_carries_the_contact_preferences_of_the_latest_traits() -> None:
    traits = {"timezone": "Asia/Shanghai", "unsubscribed_sms": True, "do_not_contact": False}
    first = make_resolved(message_id="i", type="identify", event=None, traits=traits)
    state, _, change = score_event(None, first, MODEL)
    assert change is not None
    assert change.data.contact.model_dump() == {"timezone": "Asia/Shanghai", "optouts": ["sms"]}
    later = make_resolved(
        message_id="j",
        type="identify",
        event=None,
        traits={"do_not_contact": True, "unsubscribed_sms": False},
        timestamp=T0 + ONE_DAY,
    )
    state, _, _ = score_event(state, later, MODEL)
    contact = contact_of(state["traits"])
    assert (contact.timezone, contact.optouts) == ("Asia/Shanghai", ["do_not_contact"])


def test_redelivered_event_is_counted_once() -> None:
    first = make_resolved(message_id="m-1")
    state, counted, _ = score_event(None, first, MODEL)
    again, counted_again, change = score_event(state, first, MODEL)
    assert counted
    assert not counted_again
    assert change is None
    assert again["events"] == 1


def test_the_last_256_ids_are_remembered_as_fixed_width_tokens() -> None:
    ids = [str(uuid.uuid4()) for _ in range(300)]
    state = scorer.new_state(BASE)
    for event_id in ids:
        assert scorer.remember(state, event_id)
    assert len(state["seen"]) == 256 * scorer.TOKEN_WIDTH
    assert scorer.each_seen(state["seen"]) == [scorer.seen_token(i) for i in ids[-256:]]
    assert not any(scorer.remember(state, i) for i in ids[-256:])  # redelivered: duplicates
    assert scorer.remember(state, ids[0])  # forgotten: older than the last 256
    # 256 UUIDs were ~10 KB of the state's JSON; their tokens are 3 KB
    assert len(orjson.dumps(state)) < 3_500


def test_a_token_matches_only_where_a_token_starts() -> None:
    tokens = [scorer.seen_token(f"e{n}") for n in range(2)]
    # the 11 characters that straddle the two tokens, made a token: not remembered
    straddling = (tokens[0] + tokens[1])[6:17] + ","
    state = scorer.new_state(BASE)
    state["seen"] = "".join(tokens)
    assert straddling not in tokens
    assert straddling not in state["seen"]
    assert scorer.has_seen(state, "e0")
    assert scorer.has_seen(state, "e1")
    assert not scorer.has_seen(state, "e2")


def test_a_state_that_kept_the_ids_themselves_still_dedups_them() -> None:
    state = scorer.new_state(BASE)
    state["seen"] = ["old-1", "old-2"]  # written before ids were kept as tokens
    assert scorer.has_seen(state, "old-1")
    assert not scorer.remember(state, "old-2")
    assert scorer.remember(state, "new-1")
    assert scorer.each_seen(state["seen"]) == [
        scorer.seen_token(i) for i in ("old-1", "old-2", "new-1")
    ]
    winner = scorer.new_state(BASE)
    scorer.remember(winner, "old-1")
    merged = scorer.fold(winner, {**state, "seen": ["old-1", "old-2", "new-1"]}, MODEL)
    assert sorted(scorer.each_seen(merged["seen"])) == sorted(
        scorer.seen_token(i) for i in ("old-1", "old-2", "new-1")
    )


def test_a_merge_keeps_the_recent_ids_of_both_people() -> None:
    winner, absorbed = scorer.new_state(BASE), scorer.new_state(BASE)
    for n in range(10):
        scorer.remember(winner, f"w{n}")
    for n in range(scorer.SEEN_LIMIT):
        scorer.remember(absorbed, f"a{n}")
    merged = scorer.fold(winner, absorbed, MODEL)
    kept = set(scorer.each_seen(merged["seen"]))
    assert len(kept) == scorer.SEEN_LIMIT
    assert all(scorer.has_seen(merged, f"w{n}") for n in range(10))
    newest = [f"a{n}" for n in range(scorer.SEEN_LIMIT - 246, scorer.SEEN_LIMIT)]
    assert all(scorer.has_seen(merged, marker) for marker in newest)
    assert not scorer.has_seen(merged, "a0")
    # both full: each keeps its newest half
    for n in range(10, scorer.SEEN_LIMIT):
        scorer.remember(winner, f"w{n}")
    merged = scorer.fold(winner, absorbed, MODEL)
    half = scorer.SEEN_LIMIT // 2
    for side in "wa":
        assert all(scorer.has_seen(merged, f"{side}{n}") for n in range(half, scorer.SEEN_LIMIT))
        assert not any(scorer.has_seen(merged, f"{side}{n}") for n in range(half))


def test_an_event_scored_after_a_timer_but_stamped_before_it_does_not_go_back_in_time() -> None:
    state, _, _ = score_event(None, make_resolved(event="Order Completed"), MODEL)
    dropped, change = reevaluate("p-1", state, BASE + 31 * DAY, MODEL)
    assert change is not None
    assert change.data.to_tier == "at_risk"
    published = profile_of("p-1", dropped, MODEL).updated_at
    late = make_resolved(event="Page Viewed", timestamp=T0 + 31 * ONE_DAY - timedelta(seconds=1))
    after, counted, _ = score_event(dropped, late, MODEL)
    assert counted
    # evaluated when the timer did, not a second earlier: the read model keeps the newer
    # profile, and at_risk's dwell counts from the timer's move
    assert profile_of("p-1", after, MODEL).updated_at == published
    assert after["last"]["at"] == BASE + 31 * DAY


def test_points_of_a_rule_the_model_does_not_have_count_nothing_but_are_kept() -> None:
    state, _, _ = score_event(None, make_resolved(message_id="w0"), MODEL)  # a webinar: 15
    assert state["model"] == MODEL.version
    # written by another version of the model, with a rule this one does not have
    state.update(
        model="2027.01",
        engagement={**state["engagement"], "newer_rule": 50.0},
        earned={**state["earned"], "newer_rule": 50.0},
    )
    report = explain("p-1", state, MODEL, BASE)
    assert report["now"]["scores"]["engagement"] == 15
    assert [e["rule"] for e in report["engagement"]] == ["webinar_attended"]
    moved, _ = reevaluate("p-1", state, BASE + DAY, MODEL)
    assert moved["last"]["engagement"] == pytest.approx(15 * 2 ** (-1 / 14))
    # kept for the version that knows the rule (a rolling deploy, a rollback) and not stamped
    assert moved["engagement"]["newer_rule"] == 50
    assert moved["model"] == "2027.01"
    newer = MODEL.model_copy(update={"version": "2027.01"})
    assert scorer.measure(moved, BASE + DAY, newer).engagement > 50


def test_timer_drops_a_silent_person_to_at_risk() -> None:
    state, _, _ = score_event(None, make_resolved(event="Order Completed"), MODEL)
    # no revenue: R=5, F=1, M=1 -> (5*3 + 1*3 + 1*4) * 2 = 44 >= 40
    assert state["tier"] == "growth"
    moved, change = reevaluate("p-1", state, BASE + 31 * DAY, MODEL)
    assert change is not None
    assert (change.data.from_tier, change.data.to_tier) == ("growth", "at_risk")
    assert change.data.cause.kind == "timer"
    assert change.data.cause.event_id is None
    assert change.id == nth_change_id(change, 2)
    assert moved["deadline"] > BASE + 31 * DAY
    _, again = reevaluate("p-1", moved, BASE + 32 * DAY, MODEL)
    assert again is None


def test_merge_gives_the_state_of_one_person_with_all_events() -> None:
    events = [
        ("w1", 0, {"name": "Webinar Attended"}),
        ("o1", 3, {"name": "Order Completed", "properties": {"revenue": 700}}),
        ("p1", 4, {"kind": "page", "properties": {"path": "/pricing"}}),
        ("w2", 5, {"name": "Webinar Attended"}),
        ("i1", 6, {"kind": "identify", "traits": {"company_size": "51-200"}}),
        ("o2", 8, {"name": "Order Completed", "properties": {"revenue": 400}}),
    ]
    one = scorer.new_state(BASE)
    left = scorer.new_state(BASE)
    right = scorer.new_state(BASE + 3 * DAY)
    for index, (event_id, day, fields) in enumerate(events):
        apply(one, event_id, day, **fields)
        apply(left if index % 2 == 0 else right, event_id, day, **fields)
    merged, counted, _ = fold_in("p-1", left, right, "merge:m1", MODEL)
    again, counted_again, _ = fold_in("p-1", merged, right, "merge:m1", MODEL)
    assert counted
    assert not counted_again
    assert again == merged
    for day in (8, 20, 45):
        a, b = facts(one, day), facts(merged, day)
        assert (a.value, a.purchases, a.revenue, a.counts, a.traits) == (
            b.value,
            b.purchases,
            b.revenue,
            b.counts,
            b.traits,
        )
        assert a.engagement == pytest.approx(b.engagement)
        assert a.fit == b.fit
        assert scorer.stage_of(a, MODEL) == scorer.stage_of(b, MODEL)
    assert merged["events"] == 6


def test_explain_says_why_and_what_would_change_it() -> None:
    state = None
    for day in range(2):
        event = make_resolved(message_id=f"w{day}", timestamp=T0 + day * ONE_DAY)
        state, _, _ = score_event(state, event, MODEL)
    assert state is not None
    report = explain("p-1", state, MODEL, BASE + 15 * DAY)
    webinars = report["engagement"][0]
    assert webinars["rule"] == "webinar_attended"
    assert webinars["earned"] == 30
    # 15 * 2^(-15/14) + 15 * 2^(-14/14)
    now = 15 * 2 ** (-15 / 14) + 15 * 0.5
    assert webinars["now"] == pytest.approx(now, abs=1e-3)
    assert webinars["decay_applied"] == pytest.approx(30 - now, abs=1e-3)
    assert report["why"]["tier"] == "prospect"
    assert report["what_would_change_it"]["to_reach"]["growth"] == [f"total >= 40 (now {now:.3f})"]
    assert report["what_would_change_it"]["to_keep"] == []  # prospect is everyone's floor


def test_explain_says_what_keeps_the_tier_and_until_when_a_drop_waits() -> None:
    state, _, _ = score_event(None, make_resolved(event="Order Completed"), MODEL)
    assert state["tier"] == "growth"  # R=5, F=1, M=1: 44 points
    report = explain("p-1", state, MODEL, BASE + 1 * DAY)
    changing = report["what_would_change_it"]
    # kept while the total stays above 40 less the 5-point margin; silence first would drop it
    assert changing["to_keep"] == ["total >= 35 (now 44.000)"]
    assert changing["dwell_until"] == (T0 + 3 * ONE_DAY).isoformat()
    later = explain("p-1", state, MODEL, BASE + 4 * DAY)["what_would_change_it"]
    assert later["dwell_until"] is None  # over
    assert set(changing["to_reach"]) == {"at_risk", "vip"}


def test_explain_shows_the_deadline_the_timer_holds_and_never_measures_before_it() -> None:
    state, _, _ = score_event(None, make_resolved(event="Page Viewed", type="page"), MODEL)
    held = state["deadline"]
    for hours in (6, 23):  # recomputed from the request, it slid with every request
        report = explain("p-1", state, MODEL, BASE + hours * 3600)
        assert report["what_would_change_it"]["next_evaluation"] == scorer_time(held)
    # the timer moved the person to at_risk; a worker whose clock is 2 s behind explains it
    dropped, change = reevaluate("p-1", state, BASE + 30 * DAY + 1, MODEL)
    assert change is not None
    assert dropped["tier"] == "at_risk"
    report = explain("p-1", dropped, MODEL, BASE + 30 * DAY - 1)
    at_risk = next(t for t in report["why"]["tiers"] if t["tier"] == "at_risk")
    assert at_risk["holds"], at_risk  # measured before the drop, it said it did not hold


def scorer_time(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


def test_invalid_models_are_refused_with_the_cause() -> None:
    raw = MODEL.model_dump()
    raw["tiers"][1]["when"]["any_of"][0]["at_least"] = {"valeu": 60}
    with pytest.raises(ValidationError, match="unknown metrics"):
        ScoringModel.model_validate(raw)
    raw = MODEL.model_dump()
    raw["tiers"] = raw["tiers"][:-1]
    with pytest.raises(ValidationError, match="last tier must catch everyone"):
        ScoringModel.model_validate(raw)
    raw = MODEL.model_dump()
    raw["tags"][0]["when"] = {"tags": ["silent"]}
    with pytest.raises(ValidationError, match="may not test tags"):
        ScoringModel.model_validate(raw)


@pytest.mark.parametrize(
    ("path", "value", "cause"),
    [
        (("count_window_days",), float("inf"), "finite number"),  # crashed every event
        (("engagement", 0, "points"), float("nan"), "finite number"),  # put everyone in vip
        (("rfm", "scale"), float("inf"), "finite number"),
        (("tiers", 1, "when", "any_of", 0, "at_least", "value"), float("nan"), "finite number"),
        (("tiers", 0, "when", "tags"), ["webinar_regualr"], "unknown tags"),  # never held
        (("tiers", 0, "when", "not_tags"), ["actve"], "unknown tags"),
        (("tiers", 0, "when", "stages"), ["grwoing"], "unknown stages"),
        (("engagement", 0, "match", "type"), "pgae", "literal_error"),  # never matched
        (("stages", 0, "when", "not_tags"), ["actve"], "may not test tags"),  # always held
        # the read model stored 32 characters of a stage: every profile in it was refused
        (("stages", 0, "name"), "s" * 65, "at most 64 characters"),
        (("tiers", 0, "name"), "t" * 65, "at most 64 characters"),
    ],
)
def test_a_model_that_would_crash_or_never_match_is_refused(
    path: tuple[str | int, ...], value: Any, cause: str
) -> None:
    raw = MODEL.model_dump()
    holder = raw
    for step in path[:-1]:
        holder = holder[step]
    holder[path[-1]] = value
    with pytest.raises(ValidationError, match=cause):
        ScoringModel.model_validate(raw)


def test_a_stage_change_within_the_tier_is_a_change_that_keeps_the_dwell() -> None:
    state, _, first = score_event(None, make_resolved(message_id="w0"), MODEL)
    assert first is not None
    assert (first.data.from_stage, first.data.lifecycle_stage) == (None, "new")
    # day 14: age 14 leaves "new" -> growing; webinar 15 decayed to 7.5: still prospect
    moved, change = reevaluate("p-1", state, BASE + 14 * DAY, MODEL)
    assert change is not None
    data = change.data
    assert (data.from_tier, data.to_tier) == ("prospect", "prospect")
    assert (data.from_stage, data.lifecycle_stage) == ("new", "growing")
    assert change.id == nth_change_id(change, 2)
    assert data.cause.kind == "timer"
    assert [(c.rule, c.points) for c in data.contributions] == [
        ("engagement.webinar_attended", -7.5)  # 15 at the previous change, 7.5 now
    ]
    assert moved["tier_since"] == BASE  # dwell still counts from entering prospect
    assert reevaluate("p-1", moved, BASE + 15 * DAY, MODEL)[1] is None  # same stage, same tier
    # day 21: silent 21 days -> declining; 15 * 2^(-21/14) = 5.303, moved -2.197 since day 14
    later, declining = reevaluate("p-1", moved, BASE + 21 * DAY, MODEL)
    assert declining is not None
    assert (declining.data.from_stage, declining.data.lifecycle_stage) == ("growing", "declining")
    assert declining.data.contributions[0].points == pytest.approx(-2.197, abs=1e-3)
    assert declining.id == nth_change_id(declining, 3)
    # day 30: the tier moves too; the stage stays declining
    _, drop = reevaluate("p-1", later, BASE + 30 * DAY, MODEL)
    assert drop is not None
    assert (drop.data.from_tier, drop.data.to_tier) == ("prospect", "at_risk")
    assert (drop.data.from_stage, drop.data.lifecycle_stage) == ("declining", "declining")
    assert drop.id == nth_change_id(drop, 4)


def test_a_merge_into_nobody_is_a_first_evaluation() -> None:
    absorbed, _, _ = score_event(None, make_resolved(message_id="w0"), MODEL)
    _, _, change = fold_in("p-2", None, absorbed, "merge:m", MODEL)
    assert change is not None
    assert (change.data.from_tier, change.data.from_stage) == (None, None)
    assert change.id == nth_change_id(change, 1)


def test_the_fast_profile_is_byte_for_byte_the_encoded_profile() -> None:
    state = None
    kinds: list[dict[str, Any]] = [
        {"event": "Order Completed", "properties": {"revenue": 1234.5}},
        {"type": "identify", "event": None, "traits": {"company_size": "51-200"}},
        {"event": "Webinar Attended"},
        {"event": "Complaint Filed"},
    ]
    for n in range(12):
        resolved = make_resolved(
            "p-\u00e9\x1f", message_id=f"m{n}", timestamp=T0 + n * 0.37 * ONE_DAY, **kinds[n % 4]
        )
        state, _, _ = score_event(state, resolved, MODEL)
        assert state is not None
        later, _ = reevaluate("p-\u00e9\x1f", state, BASE + (n + 40) * DAY, MODEL)
        for oneid, current in (("p-\u00e9\x1f", state), ("x" * 64, later)):
            assert profile_json(oneid, current, MODEL) == encode(profile_of(oneid, current, MODEL))
    assert state is not None
    for refused in ("", "x" * 65):  # what a Profile refuses is refused the same way
        with pytest.raises(ValidationError):
            profile_json(refused, state, MODEL)


def test_tier_change_ids_are_uuid5_of_the_person_sequence_and_move() -> None:
    move = {"from_tier": "prospect", "to_tier": "growth", "from_stage": None, "stage": "new"}
    for oneid, sequence in (("p-1", 1), ("p-\u00e9\u4e2d", 12), ("x" * 64, 10**6)):
        expected = uuid.uuid5(
            CHANGE_NAMESPACE, f"{oneid}\x1f{sequence}\x1fprospect\x1fgrowth\x1f\x1fnew"
        )
        assert tier_change_id(oneid, sequence, **move) == str(expected)
    # another move as the same n-th change (work redone in another order) is another change
    assert tier_change_id("p-1", 2, **move) != tier_change_id(
        "p-1", 2, **{**move, "to_tier": "vip"}
    )
    assert tier_change_id("p-1", 2, **move) != tier_change_id(
        "p-1", 2, **{**move, "stage": "mature"}
    )
