"""Playbooks as data: validation, what each default playbook plans, branches, exit rules,
idempotency keys, signatures and the retry schedule."""

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from services.automation.delivery import (
    CircuitBreaker,
    parse_retry_after,
    retry_delay_s,
    retryable_status,
)
from services.automation.playbooks import (
    DEFAULT_PLAYBOOKS_PATH,
    PlaybookSet,
    action_id,
    leaves,
    load_playbooks,
    plan_actions,
    unknown_names,
)
from services.automation.settings import AutomationSettings
from services.scoring.rules import load_model
from shared import cli
from shared.contracts import Scores, TierChangeCause, TierChanged, TierChangeEvent
from shared.webhooks import sign_headers, verify

SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()
OTHER = "whsec_" + base64.b64encode(b"z" * 24).decode()
NOW = datetime(2026, 11, 23, tzinfo=UTC)


def change(
    to_tier: str,
    from_tier: str | None = "prospect",
    *,
    change_id: str = "c-1",
    oneid: str = "p-1",
    tags: list[str] | None = None,
    stage: str = "growing",
    from_stage: str | None = None,
) -> TierChangeEvent:
    return TierChangeEvent(
        id=change_id,
        subject=oneid,
        time=NOW,
        data=TierChanged(
            oneid=oneid,
            from_tier=from_tier,
            to_tier=to_tier,
            lifecycle_stage=stage,
            from_stage=from_stage,
            scores=Scores(total=50),
            tags=tags or [],
            model_version="v",
            cause=TierChangeCause(kind="event", event_id="e"),
            changed_at=NOW,
        ),
    )


def plan(event: TierChangeEvent, playbooks: PlaybookSet | None = None) -> list[tuple[str, int]]:
    """(step, delay in days) of everything a change plans."""
    planned = plan_actions(event, playbooks or load_playbooks())
    return [(p.step.send, p.delay // timedelta(days=1)) for p in planned]


def test_each_default_playbook_plans_its_sequence_with_delays() -> None:
    assert plan(change("vip", "growth")) == [
        ("assign_success_manager", 0),
        ("exclusive_offer", 0),
        ("early_access", 3),
    ]
    assert plan(change("growth", "prospect")) == [
        ("industry_solutions", 0),
        ("webinar_invitation", 3),
        ("product_trial", 7),
    ]
    assert plan(change("prospect", None)) == [
        ("light_education", 0),
        ("case_studies", 5),
        ("free_resources", 10),
    ]
    assert plan(change("at_risk", "vip")) == [
        ("winback_offer", 0),
        ("satisfaction_survey", 3),
        ("winback_call", 7),
    ]


def test_branch_is_decided_on_the_change() -> None:
    steps = plan(change("at_risk", "vip", tags=["price_sensitive"]))
    assert steps[0] == ("winback_offer_discount", 0)


def test_staying_in_a_tier_triggers_nothing() -> None:
    assert plan(change("vip", "vip")) == []


def custom(playbook: dict[str, Any]) -> PlaybookSet:
    return PlaybookSet.model_validate({"playbooks": [playbook]})


SEND = {"send": "hello", "channel": "email"}


def test_exited_transition_and_stage_triggers() -> None:
    exited = custom({"name": "miss_you", "trigger": {"exited": "vip"}, "steps": [SEND]})
    assert plan(change("growth", "vip"), exited) == [("hello", 0)]
    assert plan(change("growth", "prospect"), exited) == []
    moved = custom({"name": "upgrade", "trigger": {"from": "growth", "to": "vip"}, "steps": [SEND]})
    assert plan(change("vip", "growth"), moved) == [("hello", 0)]
    assert plan(change("vip", "prospect"), moved) == []
    stage = custom({"name": "declining", "trigger": {"stage": "declining"}, "steps": [SEND]})
    assert plan(change("at_risk", "vip", stage="declining"), stage) == [("hello", 0)]
    assert plan(change("at_risk", "vip"), stage) == []


def test_stage_trigger_fires_on_entering_the_stage_with_or_without_a_tier_move() -> None:
    stage = custom({"name": "declining", "trigger": {"stage": "declining"}, "steps": [SEND]})
    within_vip = change("vip", "vip", stage="declining", from_stage="mature")
    assert plan(within_vip, stage) == [("hello", 0)]
    # already declining: a later tier move does not enter the stage again
    assert plan(change("at_risk", "vip", stage="declining", from_stage="declining"), stage) == []
    # a stage change within a tier enters no tier: of the defaults only the stage playbook fires
    assert plan(within_vip) == [("success_manager_checkin", 0)]
    assert plan(change("growth", "growth", stage="declining", from_stage="growing")) == [
        ("whats_new", 0)
    ]
    assert plan(change("growth", "growth", stage="mature", from_stage="growing")) == []


def test_exit_rule_holds_people_in_the_trigger_tier() -> None:
    planned = plan_actions(change("growth"), load_playbooks())
    assert {p.hold_tier for p in planned} == {"growth"}
    assert leaves("growth", "vip")
    assert not leaves("growth", "growth")
    assert not leaves(None, "vip")
    sticky = custom(
        {"name": "sticky", "trigger": {"entered": "vip"}, "exit_on_leave": False, "steps": [SEND]}
    )
    assert plan_actions(change("vip"), sticky)[0].hold_tier is None


@pytest.mark.parametrize(
    "playbook",
    [
        {"name": "x", "trigger": {"entered": "vip", "stage": "new"}, "steps": [SEND]},
        {"name": "x", "trigger": {"from": "vip"}, "steps": [SEND]},
        {"name": "x", "trigger": {"from": "vip", "to": "vip"}, "steps": [SEND]},
        {"name": "x", "trigger": {"entered": "vip"}, "steps": [SEND, SEND]},
        {"name": "x", "trigger": {"entered": "vip"}, "steps": [{"wait": "1d"}]},
        {"name": "x", "trigger": {"entered": "vip"}, "steps": [{"wait": "0s"}, SEND]},
        {"name": "x", "trigger": {"entered": "vip"}, "steps": [{**SEND, "channel": "fax"}]},
        {"name": "x", "trigger": {"entered": "vip"}, "steps": [{**SEND, "colour": "red"}]},
        {"name": "x", "trigger": {"entered": "vip"}, "steps": [{"branch": "b", "when": {}}]},
        # longer than the columns that store them: every insert of its actions failed
        {"name": "x" * 65, "trigger": {"entered": "vip"}, "steps": [SEND]},
        {"name": "x", "trigger": {"entered": "vip"}, "steps": [{**SEND, "send": "s" * 65}]},
        {"name": "x", "trigger": {"entered": "v" * 65}, "steps": [SEND]},
    ],
)
def test_invalid_playbooks_are_refused(playbook: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        custom(playbook)


@pytest.mark.parametrize(
    "guards",
    [
        {"holdout": {"shares": {"vip": 1.5}}},
        # a window of 0 or less turned the cap off
        {"frequency_caps": {"email": {"max": 1, "per": "0s"}}},
        {"frequency_caps": {"email": {"max": 1, "per": -86400}}},
        # counted back from now, a longer window overflowed at send time
        {"frequency_caps": {"email": {"max": 1, "per": "3651d"}}},
    ],
)
def test_guards_validate(tmp_path: Any, guards: dict[str, Any]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"guards": guards, "playbooks": []}))
    with pytest.raises(ValidationError):
        load_playbooks(path)


def waiting(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"name": "slow", "trigger": {"entered": "vip"}, "steps": [SEND, *steps]}


# 3000000d validated, then planning overflowed (now + delay); 99999999999d overflowed timedelta
# itself, a bare OverflowError out of validation; 400000000 is seconds, parsed by pydantic
@pytest.mark.parametrize("wait", ["3000000d", "99999999999d", "3651d", "522w", 400_000_000])
def test_a_wait_longer_than_ten_years_is_refused(wait: object) -> None:
    with pytest.raises(ValidationError, match="longer than the 3650 days"):
        custom(waiting({"wait": wait}))


def test_a_playbooks_waits_add_up_to_ten_years_at_most() -> None:
    longest = custom(waiting({"wait": "3650d"}, {**SEND, "send": "later"}))
    assert plan(change("vip", "growth"), longest) == [("hello", 0), ("later", 3650)]
    with pytest.raises(ValidationError, match="waits add up to 4000 days"):
        custom(waiting({"wait": "2000d"}, {"wait": "2000d"}, {**SEND, "send": "later"}))
    then = {"send": "a", "channel": "email"}
    otherwise = {"send": "b", "channel": "email"}

    def branch(then_wait: str, else_wait: str) -> dict[str, Any]:
        return {
            "branch": "b",
            "when": {"tag": "t"},
            "then": [{"wait": then_wait}, then],
            "else": [{"wait": else_wait}, otherwise],
        }

    # the longer side counts, whichever side a change takes
    custom(waiting({"wait": "1000d"}, branch("2650d", "1d")))
    with pytest.raises(ValidationError, match="waits add up to 3650 days, 0:00:01"):
        custom(waiting({"wait": "1000d"}, branch("1d", "2650d"), {"wait": "1s"}))


def test_playbooks_validate_refuses_an_overlong_wait_naming_the_limit(tmp_path: Any) -> None:
    for wait in ("3000000d", "99999999999d"):
        path = tmp_path / "slow.yaml"
        path.write_text(yaml.safe_dump({"playbooks": [waiting({"wait": wait})]}))
        result = CliRunner().invoke(cli.app, ["playbooks", "validate", str(path)])
        assert result.exit_code == 1
        assert isinstance(result.exception, SystemExit)  # not an OverflowError
        output = result.output.replace("\n", "")
        assert f"{path} is invalid" in output
        assert f"{wait} is longer than the 3650 days" in output


def test_names_the_scoring_model_lacks_are_found_in_triggers_branches_and_holdouts() -> None:
    typo = PlaybookSet.model_validate(
        {
            "guards": {"holdout": {"shares": {"vipp": 0.1, "vip": 0.05}}},
            "playbooks": [
                {"name": "a", "trigger": {"entered": "at_risc"}, "steps": [SEND]},
                {"name": "b", "trigger": {"from": "vip", "to": "gold"}, "steps": [SEND]},
                {"name": "c", "trigger": {"stage": "dormant"}, "steps": [SEND]},
                {
                    "name": "d",
                    "trigger": {"exited": "vip"},
                    "steps": [
                        {"wait": "1d"},
                        {
                            "branch": "outer",
                            "when": {"tag": "active", "stage": "mature"},
                            "then": [
                                {
                                    "branch": "inner",
                                    "when": {"not_tag": "cheap", "tier": "prospect"},
                                    "then": [SEND],
                                }
                            ],
                            "else": [{**SEND, "send": "other"}],
                        },
                    ],
                },
            ],
        }
    )
    model = load_model()
    found = unknown_names(
        typo,
        tiers=[t.name for t in model.tiers],
        stages=[s.name for s in model.stages],
        tags=[t.name for t in model.tags],
    )
    assert [line.split(", which")[0] for line in found] == [
        "playbook a trigger names tier 'at_risc'",
        "playbook b trigger names tier 'gold'",
        "playbook c trigger names stage 'dormant'",
        "playbook d branch inner names tag 'cheap'",
        "guards holdout names tier 'vipp'",
    ]
    assert "(at_risk, growth, prospect, vip)" in found[0]
    shipped = load_playbooks()
    assert unknown_names(shipped, tiers=["vip"], stages=[], tags=[])  # the check can fail
    assert (
        unknown_names(
            shipped,
            tiers=[t.name for t in model.tiers],
            stages=[s.name for s in model.stages],
            tags=[t.name for t in model.tags],
        )
        == []
    )


def test_playbooks_validate_refuses_a_file_naming_a_tier_the_model_lacks(tmp_path: Any) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        yaml.safe_dump(
            {"playbooks": [{"name": "a", "trigger": {"entered": "gold"}, "steps": [SEND]}]}
        )
    )
    result = CliRunner().invoke(cli.app, ["playbooks", "validate", str(path)])
    assert result.exit_code == 1
    assert "tier 'gold'" in result.output
    shipped = ["playbooks", "validate", str(DEFAULT_PLAYBOOKS_PATH)]
    assert CliRunner().invoke(cli.app, shipped).exit_code == 0
    missing = tmp_path / "no-model.yaml"  # the model is blamed for its own faults
    result = CliRunner().invoke(cli.app, [*shipped, "--model", str(missing)])
    assert result.exit_code == 1
    assert f"{missing} is invalid" in result.output.replace("\n", "")
    assert f"{DEFAULT_PLAYBOOKS_PATH} is invalid" not in result.output.replace("\n", "")


def test_a_webhook_secret_must_be_base64_after_its_prefix() -> None:
    def settings(secret: str) -> AutomationSettings:
        return AutomationSettings.model_validate(
            {"TIERFLOW_WEBHOOK_SECRET": secret, "admin_token": "t"}
        )

    with pytest.raises(ValidationError, match="not base64"):
        settings("whsec_not-base64!")
    assert settings(SECRET).webhook_secrets


@pytest.mark.parametrize("key_bytes", [0, 1, 23, 65])
def test_a_webhook_secret_outside_24_to_64_key_bytes_is_refused(key_bytes: int) -> None:
    # an empty or 1-byte HMAC key makes every signature forgeable
    secret = "whsec_" + base64.b64encode(b"k" * key_bytes).decode()
    settings = {"TIERFLOW_WEBHOOK_SECRET": f"{SECRET},{secret}", "admin_token": "t"}
    with pytest.raises(
        ValidationError, match=f"TIERFLOW_WEBHOOK_SECRET.* {key_bytes} key bytes"
    ) as refused:
        AutomationSettings.model_validate(settings)
    assert SECRET not in str(refused.value), "a refusal must not print the secrets (logs keep it)"


@pytest.mark.parametrize("key_bytes", [24, 64])
def test_a_webhook_secret_of_24_or_64_key_bytes_is_accepted(key_bytes: int) -> None:
    secret = "whsec_" + base64.b64encode(b"k" * key_bytes).decode()
    settings = {"TIERFLOW_WEBHOOK_SECRET": secret, "admin_token": "t"}
    assert AutomationSettings.model_validate(settings).webhook_secrets[0].get_secret_value() == (
        secret
    )


def test_action_ids_are_deterministic_idempotency_keys() -> None:
    playbooks = load_playbooks()
    first = [p.action_id for p in plan_actions(change("vip"), playbooks)]
    assert first == [p.action_id for p in plan_actions(change("vip"), playbooks)]
    assert first[0] == action_id("c-1", "vip_welcome", "assign_success_manager")
    assert len(set(first)) == len(first)
    other = [p.action_id for p in plan_actions(change("vip", change_id="c-2"), playbooks)]
    assert not set(first) & set(other)


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


def test_retry_schedule_grows_with_jitter_and_honours_retry_after() -> None:
    low = [
        retry_delay_s(n, base_s=10, cap_s=300, retry_after_s=None, rand=lambda: 0.0)
        for n in (1, 2, 3, 6)
    ]
    high = [
        retry_delay_s(n, base_s=10, cap_s=300, retry_after_s=None, rand=lambda: 1.0)
        for n in (1, 2, 3, 6)
    ]
    assert low == [5, 10, 20, 150]
    assert high == [10, 20, 40, 300]
    assert retry_delay_s(1, base_s=10, cap_s=300, retry_after_s=42) == 42
    assert retry_delay_s(1, base_s=10, cap_s=300, retry_after_s=9999) == 300
    assert parse_retry_after("7", NOW) == 7
    later = (NOW + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after(later, NOW) == 90
    assert parse_retry_after("soon", NOW) is None
    # RFC 5322's "-0000" (UTC, offset unknown) parses as a naive time
    naive = (NOW + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S -0000")
    assert parse_retry_after(naive, NOW) == 30


def test_only_transient_statuses_are_retried() -> None:
    assert all(retryable_status(s) for s in (500, 502, 503, 504, 429, 408))
    assert not any(retryable_status(s) for s in (400, 401, 403, 404, 410, 422))


def test_circuit_opens_after_failures_and_probes_after_cooldown() -> None:
    breaker = CircuitBreaker(threshold=3, cooldown_s=30)
    for _ in range(3):
        assert breaker.allows(100)
        breaker.record(False, 100)
    assert breaker.is_open
    assert not breaker.allows(110)
    assert breaker.allows(131)
    breaker.record(False, 131)
    assert not breaker.allows(140)
    breaker.record(True, 170)
    assert not breaker.is_open
    assert breaker.allows(170)
