"""The scoring model: decay, caps, dedup, hysteresis, tier changes — hand-computed values."""

from datetime import timedelta

import pytest

from services.scoring import scorer
from services.scoring.rules import load_model
from services.scoring.service import score_event, tier_change_id
from tests.factories import T0, make_resolved

MODEL = load_model()
DAY = scorer.DAY


def test_decay_halves_every_half_life_at_any_time() -> None:
    assert scorer.decayed(40, 0, 14 * DAY, 14) == pytest.approx(20)
    assert scorer.decayed(40, 0, 7 * DAY, 14) == pytest.approx(40 / 2**0.5)
    assert scorer.decayed(40, 10, 5, 14) == 40  # reads before the measurement do not grow it


def test_daily_cap_limits_points_per_day() -> None:
    state = scorer.new_state(0)
    for n in range(3):
        scorer.apply_event(
            state,
            event_id=f"e{n}",
            kind="track",
            name="Webinar Attended",
            properties={},
            at=1000 + n,
            model=MODEL,
        )
    # 15 + 15, then the 30/day cap leaves 0 for the third webinar (decay over 2 s is negligible)
    assert state["engagement"] == pytest.approx(30, abs=1e-3)


def test_redelivered_event_is_counted_once() -> None:
    first = make_resolved(message_id="m-1")
    state, counted, _ = score_event(None, first, MODEL)
    again, counted_again, change = score_event(state, first, MODEL)
    assert counted
    assert not counted_again
    assert change is None
    assert again["events"] == 1


def test_threshold_crossing_emits_deterministic_tier_changes() -> None:
    state = None
    changes = []
    for day in range(3):
        event = make_resolved(message_id=f"w{day}", timestamp=T0 + timedelta(days=day))
        state, _, change = score_event(state, event, MODEL)
        if change is not None:
            changes.append(change)
    assert [(c.data.from_tier, c.data.to_tier) for c in changes] == [
        (None, "prospect"),
        ("prospect", "growth"),
    ]
    # 15 + 15*2^(-1/14) + 15*2^(-2/14), decayed to day 2: 15*(2^(-2/14) + 2^(-1/14) + 1)
    expected = 15 * (2 ** (-2 / 14) + 2 ** (-1 / 14) + 1)
    assert changes[1].data.scores.total == pytest.approx(expected, abs=1e-3)
    assert changes[1].id == tier_change_id("p-1", 2)
    assert changes[1].data.contributions[0].rule == "webinar_attended"


def test_hysteresis_keeps_a_tier_until_the_margin_is_crossed() -> None:
    state = scorer.new_state(0)
    state.update(tier="growth", engagement=37.0, engagement_at=0, last_event_at=0)
    assert scorer.choose_tier(state, 0, MODEL) == "growth"  # 37 >= 40 - 5
    state["engagement"] = 34.0
    assert scorer.choose_tier(state, 0, MODEL) == "prospect"


def test_silence_moves_people_to_at_risk() -> None:
    state = scorer.new_state(0)
    state.update(tier="vip", value=100.0, last_event_at=0)
    assert scorer.choose_tier(state, 29 * DAY, MODEL) == "vip"
    assert scorer.choose_tier(state, 30 * DAY, MODEL) == "at_risk"
    assert scorer.next_deadline(state, 29.5 * DAY, MODEL) == 30 * DAY
