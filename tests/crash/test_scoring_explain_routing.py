"""/explain while the worker owning a person is dead but still in the group: 503 with
Retry-After (not a 500), then the person's answer once the group has rebalanced, and never a
state older than the changelog's while the survivor takes the partitions over."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx

from services.scoring.app import EXPLAIN_RETRY_AFTER_SECONDS
from services.scoring.scorer import State
from shared.settings import CommonSettings
from tests.crash.scenario import Replayed, changelog_states, explains, produce_events
from tests.crash.scoring_worker import Worker

REGROUP_SECONDS = 60


@contextlib.asynccontextmanager
async def two_answering(
    bootstrap: str, setup: Replayed, work_dir: Path
) -> AsyncIterator[list[Worker]]:
    """Two workers that scored ``setup``'s stream, the first answering /explain for everyone;
    both stopped at the end."""
    workers = [Worker("a", setup.env, work_dir), Worker("b", setup.env, work_dir)]
    try:
        await asyncio.gather(*(w.ready() for w in workers))
        await produce_events(bootstrap, setup.stream)
        await changelog_states(bootstrap, setup.app_id, setup.expected, timeout=60)
        async with httpx.AsyncClient(timeout=10) as client:
            await _until_all_answer(client, workers[0], setup.expected)
        yield workers
    finally:
        for worker in workers:
            worker.stop()


async def test_explain_answers_503_for_people_of_a_dead_member(
    settings: CommonSettings, tmp_path: Path, fresh_app: Callable[..., Replayed]
) -> None:
    setup = fresh_app("scoring-route")
    expected = setup.expected
    async with (
        two_answering(settings.kafka_bootstrap, setup, tmp_path) as (survivor, dying),
        httpx.AsyncClient(timeout=10) as client,
    ):
        dying.kill()  # its session lasts seconds more: it still owns its partitions
        answers = await _answers(client, survivor, expected)
        statuses = {a.status_code for a in answers}
        assert statuses <= {200, 503}, statuses
        unavailable = [a for a in answers if a.status_code == 503]
        assert unavailable, "the dead member's people should be unavailable until it left"
        assert all(
            a.headers["Retry-After"] == str(EXPLAIN_RETRY_AFTER_SECONDS)
            and a.json()["error"] == "unavailable"
            for a in unavailable
        )
        await _until_all_answer(client, survivor, expected)  # it took the people over


async def test_explain_forwarded_to_an_owner_that_never_answers_is_503_not_a_hang(
    settings: CommonSettings, tmp_path: Path, fresh_app: Callable[..., Replayed]
) -> None:
    """An owner that accepts the connection and never answers (stopped here; a wedged loop or
    a long batch alike): Faust's forwarding client waited 300 s."""
    setup = fresh_app("scoring-stopped")
    async with (
        two_answering(settings.kafka_bootstrap, setup, tmp_path) as (survivor, stopping),
        httpx.AsyncClient(timeout=60) as client,
    ):
        stopped = stopping.child.process
        stopped.send_signal(signal.SIGSTOP)
        try:
            answers = await asyncio.gather(
                *(
                    client.get(f"{survivor.url}/v1/scores/{key.decode()}/explain")
                    for key in setup.expected
                )
            )
        finally:
            stopped.send_signal(signal.SIGCONT)
    statuses = {a.status_code for a in answers}
    assert statuses == {200, 503}, statuses  # its own people, and the stopped one's
    assert all(
        a.headers["Retry-After"] == str(EXPLAIN_RETRY_AFTER_SECONDS)
        for a in answers
        if a.status_code == 503
    )


async def _answers(
    client: httpx.AsyncClient, worker: Worker, expected: dict[bytes, State]
) -> list[httpx.Response]:
    """``worker``'s /explain of everyone; each 200 must show the changelog's latest state (a
    worker taking partitions over answers 503 until it has recovered them)."""
    answers = []
    for key, state in expected.items():
        oneid = key.decode()
        answer = await client.get(f"{worker.url}/v1/scores/{oneid}/explain")
        if answer.status_code == 200:
            assert explains(oneid, state, answer.json()), f"a stale answer for {oneid}"
        answers.append(answer)
    return answers


async def _until_all_answer(
    client: httpx.AsyncClient, worker: Worker, expected: dict[bytes, State]
) -> None:
    """Until ``worker`` answers 200 for everyone (503 meanwhile: a rebalance under way)."""
    deadline = time.monotonic() + REGROUP_SECONDS
    while True:
        statuses = {a.status_code for a in await _answers(client, worker, expected)}
        assert statuses <= {200, 503}, statuses
        if statuses == {200}:
            return
        assert time.monotonic() < deadline, f"still {statuses} after {REGROUP_SECONDS} s"
        await asyncio.sleep(1)
