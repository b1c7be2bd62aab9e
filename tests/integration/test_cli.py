"""The command line against real infrastructure: a database or broker problem is one line that
names what failed and what mends it, with exit code 1, never a page of frames."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from shared.cli import _watch_children
from shared.stack.launcher import Stack
from shared.stack.processes import spawn
from tests.factories import free_port


def tierflow(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``tierflow ARGS`` in a child process, with ``env`` over this one's."""
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
async def unmigrated(infra: Stack) -> str:
    """The URL of a new, empty database on the session's Postgres."""
    url = make_url(infra.env["TIERFLOW_DATABASE_URL"])
    name = f"cli_{uuid.uuid4().hex[:8]}"
    connection = await asyncpg.connect(host=url.host, port=url.port, user=url.username)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return url.set(database=name).render_as_string(hide_password=False)


async def test_an_unmigrated_database_is_named_with_the_command_that_mends_it(
    unmigrated: str,
) -> None:
    result = tierflow("sources", "list", TIERFLOW_DATABASE_URL=unmigrated)
    assert result.returncode == 1
    assert "is not migrated" in result.stderr
    assert "run `tierflow db migrate`" in result.stderr
    assert "Traceback" not in result.stderr
    migrated = tierflow("db", "migrate", TIERFLOW_DATABASE_URL=unmigrated)
    assert migrated.returncode == 0, migrated.stderr
    assert tierflow("sources", "list", TIERFLOW_DATABASE_URL=unmigrated).returncode == 0


def test_unreachable_database_and_broker_are_one_line_each() -> None:
    port = free_port()
    database = f"postgresql+asyncpg://tierflow:secret@127.0.0.1:{port}/tierflow"
    result = tierflow("sources", "list", TIERFLOW_DATABASE_URL=database)
    assert result.returncode == 1
    assert f"cannot use the database postgresql+asyncpg://tierflow:***@127.0.0.1:{port}" in (
        result.stderr
    )
    assert "secret" not in result.stderr
    assert "Traceback" not in result.stderr
    broker = tierflow("topics", "create", TIERFLOW_KAFKA_BOOTSTRAP=f"127.0.0.1:{port}")
    assert broker.returncode == 1
    assert f"Kafka at 127.0.0.1:{port}" in broker.stderr
    assert "Traceback" not in broker.stderr


def test_broken_yaml_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "model.yaml"
    broken.write_text("a: [1, 2\nb: }\n")
    for command in ("rules", "playbooks", "identity"):
        result = tierflow(command, "validate", str(broken))
        assert result.returncode == 1
        assert f"{broken} is invalid" in result.stdout.replace("\n", "")
        assert "Traceback" not in result.stdout + result.stderr


def test_up_with_a_port_taken_names_the_setting_and_starts_nothing(tmp_path: Path) -> None:
    """A taken port is one line naming the setting to change, before any child starts."""
    ports = {
        name: str(free_port())
        for name in (
            "TIERFLOW_STACK_BROKER_PORT",
            "TIERFLOW_STACK_POSTGRES_PORT",
            "TIERFLOW_STACK_SINK_PORT",
            "TIERFLOW_IDENTITY_PORT",
            "TIERFLOW_SCORING_PORT",
            "TIERFLOW_AUTOMATION_PORT",
        )
    }
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = tierflow(
            "up",
            "--no-demo",
            "--no-dashboard",
            TIERFLOW_INGEST_PORT=str(port),
            TIERFLOW_STACK_DIR=str(tmp_path),
            **ports,
        )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"port {port} is taken; set TIERFLOW_INGEST_PORT to a free port" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "logs" / "broker.log").exists()


async def test_up_reports_a_part_of_the_stack_that_died(tmp_path: Path) -> None:
    """``tierflow up`` stops the stack when a child exits on its own, and then exits 1."""
    stack = Stack(work_dir=tmp_path, env={}, urls={}, owns_work_dir=False)
    stack.children.append(
        spawn("short", [sys.executable, "-c", "raise SystemExit(3)"], log_dir=tmp_path)
    )
    stop, died = asyncio.Event(), list[str]()
    await asyncio.wait_for(_watch_children(stack, stop, died), 30)
    assert stop.is_set()
    assert died == ["short"]


def test_an_overlong_playbook_wait_is_one_error_not_a_traceback(tmp_path: Path) -> None:
    """A wait too long for a due time validated, or overflowed into a traceback."""
    for wait in ("3000000d", "99999999999d"):
        playbooks = tmp_path / "slow.yaml"
        steps = f"[{{send: a, channel: email}}, {{wait: {wait}}}, {{send: b, channel: email}}]"
        playbooks.write_text(
            f"playbooks:\n- {{name: p, trigger: {{entered: vip}}, steps: {steps}}}\n"
        )
        result = tierflow("playbooks", "validate", str(playbooks))
        assert result.returncode == 1
        output = result.stdout.replace("\n", "")
        assert f"{playbooks} is invalid" in output
        assert f"{wait} is longer than the 3650 days" in output
        assert "Traceback" not in result.stdout + result.stderr


def test_the_embedded_postgres_starts_without_a_fatal_in_its_log(infra: Stack) -> None:
    """Its readiness probe connects as postgres: as the OS user it logged `FATAL: role "root"
    does not exist` on every probe, the first thing a newcomer finds grepping the logs."""
    log = (infra.work_dir / "logs" / "postgres.log").read_text()
    assert "FATAL:  role" not in log, log
