"""The next deadline is the earliest moment time alone changes a person's tier, stage or tags:
for any history, nothing the scorer decides changes between an evaluation and its deadline."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.scoring import scorer
from services.scoring.rules import ScoringModel, load_model
from services.scoring.scorer import DAY, State
from tests.factories import T0

MODEL = load_model()
BASE = T0.timestamp()


def _with_complainers() -> ScoringModel:
    """The default model with a tier held while engagement is negative: a ``below`` threshold
    on a score, which the default model does not have (its margin widens upward)."""
    raw = MODEL.model_dump()
    raw["version"] = "test-complainers"
    complainer = {"name": "complainer", "min_dwell_days": 0, "when": {"below": {"engagement": -10}}}
    raw["tiers"].insert(len(raw["tiers"]) - 1, complainer)
    return ScoringModel.model_validate(raw)


MODELS = [MODEL, _with_complainers()]

EVENTS: list[tuple[str, str | None, dict[str, Any]]] = [
    ("page", None, {"path": "/pricing"}),
    ("page", None, {"path": "/blog"}),
    ("track", "Webinar Attended", {}),
    ("track", "Coupon Applied", {}),
    ("track", "Complaint Filed", {}),
    ("track", "Trial Started", {}),
    ("track", "Order Completed", {"revenue": 400}),
    ("track", "Order Completed", {"revenue": 3000}),
]

histories = st.lists(
    st.tuples(st.sampled_from(range(len(EVENTS))), st.floats(0, 120)), min_size=1, max_size=14
)


def lived(
    history: list[tuple[int, float]], later: float, model: ScoringModel = MODEL
) -> tuple[State, float]:
    """A person who did ``history`` (event, day) in time order, evaluated after each event and
    again ``later`` days after the last, as the scoring loop would: the state and that time."""
    state = scorer.new_state(BASE + min(day for _, day in history) * DAY)
    for n, (which, day) in enumerate(sorted(history, key=lambda item: item[1])):
        kind, name, properties = EVENTS[which]
        at = BASE + day * DAY
        scorer.apply_event(
            state,
            event_id=f"e{n}",
            kind=kind,
            name=name,
            properties=properties,
            traits={},
            at=at,
            model=model,
        )
        scorer.evaluate(state, at, model)
    now = state["engagement_at"] + later * DAY
    scorer.evaluate(state, now, model)
    return state, now


def outcome(state: State, at: float, model: ScoringModel = MODEL) -> tuple[str, str, list[str]]:
    decision = scorer.decide(state, at, model)
    return decision.tier, decision.stage, decision.tags


@settings(max_examples=300, deadline=None)
@given(history=histories, later=st.floats(0, 60), model=st.sampled_from(MODELS))
def test_nothing_changes_before_the_deadline(
    history: list[tuple[int, float]], later: float, model: ScoringModel
) -> None:
    state, now = lived(history, later, model)
    deadline = state["deadline"]
    assert now < deadline <= now + model.reevaluate_after_days * DAY
    held = outcome(state, now, model)
    assert held[0] == state["tier"]
    for k in range(1, 32):
        at = now + (deadline - now) * k / 32
        assert outcome(state, at, model) == held, f"changed on day {(at - BASE) / DAY:.4f}"
    assert outcome(state, deadline - 1, model) == held


@settings(max_examples=300, deadline=None)
@given(history=histories, later=st.floats(0, 60), model=st.sampled_from(MODELS))
def test_a_timer_firing_exactly_at_each_deadline_misses_no_change(
    history: list[tuple[int, float]], later: float, model: ScoringModel
) -> None:
    """The timer evaluates at the deadline itself. A strict boundary (a recency band ends once
    more than its days passed; a decaying score must pass its threshold, and the float time of
    the crossing can fall a few ULPs short) did not change at that instant, and the next
    deadline was the periodic one, a day later: the change came a day late."""
    state, _ = lived(history, later, model)
    for _ in range(8):
        due = state["deadline"]
        scorer.evaluate(state, due, model)
        held = outcome(state, due, model)
        assert held[0] == state["tier"]
        following = state["deadline"]
        assert due < following
        for k in range(1, 16):
            at = due + (following - due) * k / 16
            assert outcome(state, at, model) == held, f"changed on day {(at - BASE) / DAY:.4f}"


def test_a_webinar_leaving_the_count_window_is_a_deadline() -> None:
    first_day = int(BASE // DAY)
    # three webinars, the first on first_day: webinar_regular while all three are in the window
    midday_89 = (first_day + 89.5) * DAY  # "now": half a day before the first one leaves
    state, now = lived([(2, 0.0), (2, 1.0), (2, 2.0)], (midday_89 - BASE) / DAY - 2)
    assert "webinar_regular" in outcome(state, now)[2]
    # the first leaves the 90-day window when day first_day + 90 begins
    assert state["deadline"] == (first_day + 90) * DAY
    assert "webinar_regular" not in outcome(state, state["deadline"])[2]


def test_negative_engagement_rising_back_across_a_threshold_is_a_deadline() -> None:
    state, _ = lived([(6, 0.0)], 0)  # one order of 400: growth on its value alone
    now = BASE + 0.25 * DAY
    facts = scorer.measure(state, now, MODEL)
    below = 40 - (facts.value + facts.fit)  # the engagement that puts the total at 40
    assert below < 0
    # a complaint's negative points, half a day of decay away from that
    state.update(
        engagement={"complaint_filed": below * 2 ** (0.5 / MODEL.half_life_days)},
        engagement_at=now,
        tier="prospect",
        tier_since=BASE,
    )
    deadline = scorer.next_deadline(state, now, MODEL)
    assert abs(deadline - (now + 0.5 * DAY)) < 1
    assert scorer.decide(state, deadline - 60, MODEL).tier == "prospect"
    assert scorer.decide(state, deadline + 60, MODEL).tier == "growth"


def test_a_held_below_threshold_is_left_when_rising_engagement_passes_its_margin() -> None:
    complainers = MODELS[1]
    state, now = lived([(4, 0.0)], 27.5, complainers)  # one complaint: -20, now about -5.1
    assert state["tier"] == "complainer"  # held while below -10 + the 5-point margin
    deadline = state["deadline"]
    assert deadline < now + DAY
    assert outcome(state, deadline - 60, complainers)[0] == "complainer"
    assert outcome(state, deadline + 60, complainers)[0] == "prospect"
