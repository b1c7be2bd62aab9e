"""Playbook choice, idempotency keys, webhook signatures and retry backoff."""

import base64
from datetime import UTC, datetime

from services.automation.delivery import backoff_s
from services.automation.playbooks import action_id, load_playbooks, plan_actions
from shared.contracts import Scores, TierChangeCause, TierChanged, TierChangeEvent
from shared.webhooks import sign_headers, verify

SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()
OTHER = "whsec_" + base64.b64encode(b"z" * 24).decode()
NOW = datetime(2026, 11, 23, tzinfo=UTC)


def change(to_tier: str, from_tier: str | None = "prospect") -> TierChangeEvent:
    return TierChangeEvent(
        id="c-1",
        subject="p-1",
        time=NOW,
        data=TierChanged(
            oneid="p-1",
            from_tier=from_tier,
            to_tier=to_tier,
            lifecycle_stage="growing",
            scores=Scores(total=50),
            model_version="v",
            cause=TierChangeCause(kind="event", event_id="e"),
            changed_at=NOW,
        ),
    )


def test_each_default_tier_has_its_playbook() -> None:
    playbooks = load_playbooks()
    steps = {
        tier: [p.step.name for p in plan_actions(change(tier), playbooks)]
        for tier in ("vip", "growth", "prospect", "at_risk")
    }
    assert steps == {
        "vip": ["assign_success_manager", "exclusive_offer"],
        "growth": ["industry_solutions", "webinar_invitation"],
        "prospect": ["case_studies"],
        "at_risk": ["winback_offer", "satisfaction_survey"],
    }


def test_action_ids_are_deterministic_idempotency_keys() -> None:
    playbooks = load_playbooks()
    first = [p.action_id for p in plan_actions(change("vip"), playbooks)]
    assert first == [p.action_id for p in plan_actions(change("vip"), playbooks)]
    assert first[0] == action_id("c-1", "vip_welcome", "assign_success_manager")
    assert len(set(first)) == len(first)


def test_signatures_verify_and_tampering_or_staleness_fails() -> None:
    body = b'{"a":1}'
    headers = sign_headers([SECRET], "msg-1", body, timestamp=1_000_000)
    assert verify(SECRET, headers, body, now=1_000_010)
    assert not verify(SECRET, headers, b'{"a":2}', now=1_000_010)
    assert not verify(SECRET, headers, body, now=1_000_000 + 301)
    assert not verify(OTHER, headers, body, now=1_000_010)


def test_rotation_signs_with_every_active_secret() -> None:
    body = b"{}"
    headers = sign_headers([OTHER, SECRET], "msg-2", body, timestamp=50)
    assert verify(SECRET, headers, body, now=50)
    assert verify(OTHER, headers, body, now=50)


def test_backoff_honours_retry_after_and_grows_with_jitter() -> None:
    assert backoff_s(1, 0.5, 30, "7") == 7
    assert backoff_s(1, 0.5, 30, "999") == 30
    assert all(0 <= backoff_s(3, 0.5, 30, None) <= 4 for _ in range(50))
