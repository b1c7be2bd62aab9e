"""Daily caps go to each day's earliest events: the same events give the same state in any
arrival order, and a merge gives the state of one person with all the events."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.scoring import scorer
from services.scoring.rules import ScoringModel, load_model
from services.scoring.scorer import DAY, State
from tests.factories import T0

MODEL = load_model()
BASE = T0.timestamp()

# capped rules of the default model: page views 1 (cap 5), /pricing 5 (cap 15), webinars 15
# (cap 30), emails 2 (cap 6); and an uncapped negative one
KINDS: list[tuple[str, str | None, dict[str, Any]]] = [
    ("page", None, {"path": "/blog"}),
    ("page", None, {"path": "/pricing"}),
    ("track", "Webinar Attended", {}),
    ("track", "Email Opened", {}),
    ("track", "Complaint Filed", {}),
]

event = st.tuples(st.sampled_from(range(len(KINDS))), st.floats(0, 3.999))
histories = st.lists(event, min_size=1, max_size=30)


def run(events: list[tuple[int, float]], ids: list[int], model: ScoringModel = MODEL) -> State:
    """A person's state after ``events`` (kind index, day) applied in the order of ``ids``."""
    state = scorer.new_state(BASE)
    for n in ids:
        kind, day = events[n]
        event_type, name, properties = KINDS[kind]
        scorer.apply_event(
            state,
            event_id=f"e{n}",
            kind=event_type,
            name=name,
            properties=properties,
            traits={},
            at=BASE + day * DAY,
            model=model,
        )
    return state


def assert_same(got: State, want: State) -> None:
    """Equal states; the sums of floats only to rounding (their order of addition differs)."""
    assert got["days"] == want["days"]
    assert got["cap_times"] == want["cap_times"]
    for part in ("engagement", "earned"):
        assert got[part].keys() == want[part].keys()
        for rule, points in want[part].items():
            assert got[part][rule] == pytest.approx(points, abs=1e-9)
    assert got["engagement_at"] == want["engagement_at"]


@settings(max_examples=300, deadline=None)
@given(events=histories, order=st.randoms(use_true_random=False))
def test_any_arrival_order_gives_the_same_state(
    events: list[tuple[int, float]], order: Any
) -> None:
    ids = list(range(len(events)))
    shuffled = ids[:]
    order.shuffle(shuffled)
    assert_same(run(events, shuffled), run(events, ids))


@settings(max_examples=300, deadline=None)
@given(events=histories, sides=st.lists(st.booleans(), min_size=30, max_size=30))
def test_a_merge_gives_the_state_of_one_person(events: list[tuple[int, float]], sides: Any) -> None:
    ids = list(range(len(events)))
    left = run(events, [n for n in ids if sides[n]])
    right = run(events, [n for n in ids if not sides[n]])
    merged = scorer.fold(left, right, MODEL)
    assert_same(merged, run(events, ids))
    assert merged["events"] == len(events)


def hour(at: float) -> float:
    """The day offset from ``BASE`` (noon) of ``at`` o'clock on the next UTC day."""
    return (12 + at) / 24


def webinar(state: State, event_id: str, at: float, model: ScoringModel = MODEL) -> None:
    """A webinar at ``at`` o'clock on the next UTC day (see :func:`hour`)."""
    scorer.apply_event(
        state,
        event_id=event_id,
        kind="track",
        name="Webinar Attended",
        properties={},
        traits={},
        at=BASE + hour(at) * DAY,
        model=model,
    )


def test_a_late_event_from_earlier_in_the_day_takes_the_cap_from_a_later_one() -> None:
    """Webinars earn 15, at most 30 a day. Of three on one day at 09:00, 12:00 and 15:00, the
    two earliest earn, whichever arrives first (arriving first, the 15:00 one kept its 15
    points, decayed from 15:00, when the 09:00 one came last)."""
    events = [(2, hour(9)), (2, hour(12)), (2, hour(15))]
    late = run(events, [2, 1, 0])
    weight = [2 ** (-(15 - at) / 24 / 14) for at in (9, 12)]
    assert late["engagement"]["webinar_attended"] == pytest.approx(15 * sum(weight))
    assert late["earned"]["webinar_attended"] == 30
    day = str(int(BASE // DAY) + 1)
    nine, noon = (BASE + hour(at) * DAY for at in (9, 12))
    assert late["days"]["webinar_attended"] == {day: [3, 30.0]}  # as the previous version wrote
    assert late["cap_times"]["webinar_attended"] == {day: [nine, noon]}


def test_a_day_entry_without_times_still_caps_in_arrival_order() -> None:
    """States written before times were kept hold ``[count, used]``: a late event is capped by
    the day's use."""
    state = run([(2, hour(12))], [0])
    day = str(int(BASE // DAY) + 1)
    state["days"] = {"webinar_attended": {day: [2, 30.0]}}
    state["cap_times"] = {}
    points = dict(state["earned"])
    webinar(state, "late", 6)
    assert state["earned"] == points  # the day's 30 were used
    assert state["days"]["webinar_attended"][day] == [3, 30.0]


def test_a_cap_needing_too_many_events_is_capped_in_arrival_order() -> None:
    raw = MODEL.model_dump()
    raw["engagement"][1] = {**raw["engagement"][1], "points": 0.5, "daily_cap": 40}
    raw["version"] = "test-many-shares"
    many = ScoringModel.model_validate(raw)
    assert many.engagement[1].name == "page_view"
    assert many.engagement[1].cap_shares == ()
    assert MODEL.engagement[1].cap_shares == (1, 1, 1, 1, 1)
    assert MODEL.engagement[2].cap_shares == (15, 15)
    state = run([(0, hour(n / 10)) for n in range(100)], list(range(100)), many)
    assert state["earned"]["page_view"] == 40
    assert state["cap_times"] == {}


def test_a_day_whose_times_another_model_wrote_caps_in_arrival_order() -> None:
    """Webinars at 15 points (cap 30) earn 30 in two events; the model then gives them 10.
    Read against the new shares (10, 10, 10) the two times would account for 20 of the 30
    used, and a third webinar would have earned 10 past the cap."""
    state = run([(2, hour(9)), (2, hour(10))], [0, 1])
    raw = MODEL.model_dump()
    raw["engagement"][2] = {**raw["engagement"][2], "points": 10}
    raw["version"] = "test-cheaper-webinars"
    cheaper = ScoringModel.model_validate(raw)
    for n, at in enumerate((11, 8)):
        webinar(state, f"v2-{n}", at, cheaper)
    assert state["earned"]["webinar_attended"] == 30
    day = str(int(BASE // DAY) + 1)
    assert state["days"]["webinar_attended"][day] == [4, 30.0]
    assert day not in state["cap_times"]["webinar_attended"]  # arrival order from now on


def test_a_worker_of_the_previous_version_reads_the_state_and_its_events_stay_capped() -> None:
    """Times live apart from ``[count, used]``, which the previous version unpacks as a pair.
    Events it counted without times (a rolling deploy) make the day cap in arrival order."""
    state = run([(2, hour(12))], [0])
    day = str(int(BASE // DAY) + 1)
    assert all(len(entry) == 2 for per_day in state["days"].values() for entry in per_day.values())
    state["days"]["webinar_attended"][day] = [3, 30.0]  # the older worker counted two more
    webinar(state, "after", 6)
    assert state["earned"]["webinar_attended"] == 15  # the day's 30 were used: nothing more
