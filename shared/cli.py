"""``tierflow``: the front door — run the stack, manage topics, schemas, migrations and sources."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from shared.settings import CommonSettings

app = typer.Typer(
    help="Tierflow: event-driven customer tiering.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # operational failures are explained by main(), bugs raise
)
topics_app = typer.Typer(help="Kafka topics from the registry.", no_args_is_help=True)
db_app = typer.Typer(help="Postgres schemas and migrations.", no_args_is_help=True)
schemas_app = typer.Typer(help="JSON Schemas of the wire contracts.", no_args_is_help=True)
rules_app = typer.Typer(help="Scoring models.", no_args_is_help=True)
playbooks_app = typer.Typer(help="Automation playbooks.", no_args_is_help=True)
sources_app = typer.Typer(help="Ingest sources and write keys.", no_args_is_help=True)
identity_app = typer.Typer(help="Identity resolution rules.", no_args_is_help=True)
for sub, name in (
    (topics_app, "topics"),
    (db_app, "db"),
    (schemas_app, "schemas"),
    (rules_app, "rules"),
    (playbooks_app, "playbooks"),
    (sources_app, "sources"),
    (identity_app, "identity"),
):
    app.add_typer(sub, name=name)

T = TypeVar("T")
console = Console()
errors = Console(stderr=True)
SCHEMAS_DIR = Path("docs/schemas")


@app.command()
def up(
    demo: Annotated[bool, typer.Option(help="Run the demo traffic generator.")] = True,
    dashboard: Annotated[
        bool, typer.Option(help="Show the live view (plain lines if not a TTY).")
    ] = True,
) -> None:
    """Start broker, Postgres, migrations, topics, the four services (and demo traffic)."""
    from shared.stack.launcher import StackSettings

    if not asyncio.run(_up(StackSettings(), demo=demo, dashboard=dashboard)):
        raise typer.Exit(1)  # a part of the stack died: scripts and `make run` must see it


async def _up(settings: object, *, demo: bool, dashboard: bool) -> bool:
    """Run the stack until a signal (True) or until a part of it exits on its own (False)."""
    from shared.stack.dashboard import run_dashboard
    from shared.stack.launcher import StackSettings, start_stack

    assert isinstance(settings, StackSettings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = loop.time()
    console.print("[bold]Starting Tierflow[/] (embedded broker and Postgres unless configured)")
    stack = await start_stack(settings, demo=demo)
    died: list[str] = []
    try:
        console.print(f"[green]Ready in {loop.time() - started:.1f}s[/]")
        table = Table("what", "where")
        table.add_row("ingest API docs", f"{stack.urls['ingest']}/docs")
        for name in ("identity", "scoring", "automation"):
            table.add_row(f"{name} API", stack.urls[name])
        for name in ("ingest", "identity", "scoring", "automation"):
            table.add_row(f"{name} metrics", f"{stack.urls[name]}/metrics")
        if "sink" in stack.urls:
            table.add_row("webhook sink", stack.urls["sink"])
        table.add_row("kafka", stack.urls["kafka"])
        table.add_row("postgres", stack.urls["postgres"])
        table.add_row("dev write key", settings.dev_write_key)
        table.add_row("admin token", stack.env["TIERFLOW_ADMIN_TOKEN"])
        table.add_row("logs", str(stack.work_dir / "logs"))
        console.print(table)
        watchers = [asyncio.create_task(_watch_children(stack, stop, died))]
        if dashboard:
            watchers.append(
                asyncio.create_task(
                    run_dashboard(
                        stack.env["TIERFLOW_KAFKA_BOOTSTRAP"],
                        stack.urls["ingest"],
                        stop,
                        live=sys.stdout.isatty(),
                    )
                )
            )
        await stop.wait()
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
    finally:
        console.print("Stopping…")
        stack.stop()
        console.print("Stopped.")
    return not died


async def _watch_children(stack: object, stop: asyncio.Event, died: list[str]) -> None:
    from shared.stack.launcher import Stack
    from shared.stack.processes import tail

    assert isinstance(stack, Stack)
    while not stop.is_set():
        dead = stack.failed()
        if dead is not None:
            console.print(f"[red]{dead.name} exited[/]\n{tail(dead.log_path)}")
            died.append(dead.name)
            stop.set()
            return
        await asyncio.sleep(1)


@topics_app.command("create")
def topics_create() -> None:
    """Create every registry topic that does not exist yet (safe to run again)."""
    from shared.kafka import create_topics

    created = asyncio.run(create_topics(CommonSettings()))
    console.print(f"created: {', '.join(created) or 'nothing (all exist)'}")


@topics_app.command("list")
def topics_list() -> None:
    """The registry: names, keys and configs."""
    from shared.topics import ALL_TOPICS

    table = Table("topic", "key", "configs", "what")
    for spec in ALL_TOPICS:
        table.add_row(
            spec.name,
            spec.key,
            ", ".join(f"{k}={v}" for k, v in spec.configs.items()),
            spec.description,
        )
    console.print(table)


@db_app.command("migrate")
def db_migrate() -> None:
    """Upgrade every service schema to the latest migration (safe to run again)."""
    from shared.migrations import SCHEMAS, migrate

    migrate(CommonSettings())
    console.print(f"migrated: {', '.join(SCHEMAS)}")


@db_app.command("check")
def db_check() -> None:
    """Fail if models and migrations disagree."""
    from shared.migrations import check

    check(CommonSettings())
    console.print("models and migrations agree")


@schemas_app.command("export")
def schemas_export(out: Path = SCHEMAS_DIR) -> None:
    """Write the JSON Schema of every contract into ``out``."""
    from shared.schemas import write_schemas

    for path in write_schemas(out):
        console.print(f"wrote {path}")


@schemas_app.command("check")
def schemas_check(out: Path = SCHEMAS_DIR) -> None:
    """Fail if the checked-in schemas differ from the contracts."""
    from shared.schemas import stale_schemas

    stale = stale_schemas(out)
    if stale:
        console.print(f"[red]stale schemas[/]: {', '.join(stale)} — run `tierflow schemas export`")
        raise typer.Exit(1)
    console.print("schemas are current")


@rules_app.command("validate")
def rules_validate(path: Path) -> None:
    """Validate a scoring model file."""
    from services.scoring.rules import load_model

    _validate(lambda: load_model(path), path)


@identity_app.command("validate")
def identity_validate(path: Path) -> None:
    """Validate an identity rules file (priority, per-type limits, blocked values)."""
    from services.identity.rules import load_rules

    _validate(lambda: load_rules(path), path)


ModelOption = Annotated[
    Path | None,
    typer.Option(
        "--model",
        help="Scoring model whose tiers, stages and tags the playbooks may name "
        "(default: the shipped model).",
    ),
]


@playbooks_app.command("validate")
def playbooks_validate(path: Path, model: ModelOption = None) -> None:
    """Validate a playbook file, and check the names it uses against a scoring model."""
    from services.automation.playbooks import load_playbooks, unknown_names
    from services.scoring.rules import DEFAULT_MODEL_PATH, load_model

    model_path = model or DEFAULT_MODEL_PATH
    scoring = _validate(lambda: load_model(model_path), model_path, quiet=True)

    def load() -> object:
        playbooks = load_playbooks(path)
        unknown = unknown_names(
            playbooks,
            tiers=[tier.name for tier in scoring.tiers],
            stages=[stage.name for stage in scoring.stages],
            tags=[tag.name for tag in scoring.tags],
        )
        if unknown:
            raise ValueError(
                f"against the scoring model {model_path} (version {scoring.version}):\n"
                + "\n".join(unknown)
            )
        return playbooks

    _validate(load, path)


def _validate(load: Callable[[], T], path: Path, *, quiet: bool = False) -> T:
    """What ``load`` reads from ``path``, or exit 1 naming the file and what is wrong."""
    try:
        loaded = load()
    except (ValidationError, ValueError, OSError, yaml.YAMLError) as exc:
        console.print(f"[red]{path} is invalid[/]\n{exc}")
        raise typer.Exit(1) from exc
    if not quiet:
        console.print(f"{path} is valid ({type(loaded).__name__})")
    return loaded


RateOption = Annotated[
    int | None,
    typer.Option(
        "--rate-limit", min=1, help="Events per second per ingest replica (default: deployment's)."
    ),
]


SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A source's name is its id (in metrics labels and dead letters): 1-64 plain characters."""


@sources_app.command("create")
def sources_create(name: str, rate_limit: RateOption = None) -> None:
    """Create a source and print its write key (shown once; only its hash is stored). An
    existing source is left alone: `tierflow sources rotate` gives it a new key."""
    from services.ingest import repository
    from services.ingest.sources import hash_key, new_write_key
    from shared.db import unit_of_work

    if not SOURCE_NAME.fullmatch(name):
        errors.print(
            f"[red]{name!r}: a name is 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit[/]"
        )
        raise typer.Exit(2)
    key = new_write_key()

    async def create(sessions: object) -> None:
        async with unit_of_work(sessions) as session:  # type: ignore[arg-type]
            if not await repository.add_source(
                session,
                source_id=name,
                name=name,
                key_hash=hash_key(key),
                rate_limit_per_s=rate_limit,
            ):
                errors.print(f"[red]source {name} exists; `tierflow sources rotate {name}`[/]")
                raise typer.Exit(1)

    asyncio.run(_with_sessions(create))
    _print_key(name, key)


@sources_app.command("rotate")
def sources_rotate(source_id: str) -> None:
    """Give a source a new write key and print it; the old key is refused within ingest's
    cache TTL. A revoked source is active again; its rate limit stays."""
    from services.ingest import repository
    from services.ingest.sources import hash_key, new_write_key
    from shared.db import unit_of_work

    key = new_write_key()

    async def rotate(sessions: object) -> None:
        async with unit_of_work(sessions) as session:  # type: ignore[arg-type]
            if not await repository.rekey_source(session, source_id, hash_key(key)):
                errors.print(f"[red]no source {source_id}[/]")
                raise typer.Exit(1)

    asyncio.run(_with_sessions(rotate))
    _print_key(source_id, key)


def _print_key(source_id: str, key: str) -> None:
    """The key alone on stdout when piped (for a script to capture), with words otherwise."""
    if console.is_terminal:
        console.print(f"source {source_id}: write key [bold]{key}[/]")
    else:
        print(key)


@sources_app.command("limit")
def sources_limit(source_id: str, rate_limit: RateOption = None) -> None:
    """Set a source's rate limit; without --rate-limit it goes back to the deployment default."""
    from services.ingest import repository
    from shared.db import unit_of_work

    async def change(sessions: object) -> None:
        async with unit_of_work(sessions) as session:  # type: ignore[arg-type]
            if not await repository.set_rate_limit(session, source_id, rate_limit):
                errors.print(f"[red]no source {source_id}[/]")
                raise typer.Exit(1)
        console.print(f"{source_id}: {rate_limit or 'default'} events/s")

    asyncio.run(_with_sessions(change))


@sources_app.command("list")
def sources_list() -> None:
    """Every source and whether it is revoked."""
    from services.ingest import repository
    from shared.db import unit_of_work

    async def listing(sessions: object) -> None:
        async with unit_of_work(sessions) as session:  # type: ignore[arg-type]
            rows = await repository.list_sources(session)
        lines = [
            (
                row.source_id,
                str(row.rate_limit_per_s or "default"),
                f"{row.created_at:%Y-%m-%d %H:%M:%S%z}",
                f"{row.revoked_at:%Y-%m-%d %H:%M:%S%z}" if row.revoked_at else "-",
            )
            for row in rows
        ]
        if not console.is_terminal:  # a script's: one tab-separated line per source, uncut
            for line in lines:
                print("\t".join(line))
            return
        table = Table("source", "events/s", "created", "revoked")
        for line in lines:
            table.add_row(*line)
        console.print(table)

    asyncio.run(_with_sessions(listing))


@sources_app.command("revoke")
def sources_revoke(source_id: str) -> None:
    """Revoke a source's write key (ingest refuses it within its cache TTL)."""
    from services.ingest import repository
    from shared.db import unit_of_work

    async def revoke(sessions: object) -> None:
        async with unit_of_work(sessions) as session:  # type: ignore[arg-type]
            if not await repository.revoke_source(session, source_id):
                errors.print(f"[red]no active source {source_id}[/]")
                raise typer.Exit(1)
        console.print(f"revoked {source_id}")

    asyncio.run(_with_sessions(revoke))


async def _with_sessions(action: object) -> None:
    from shared.db import build_engine, build_sessionmaker

    assert callable(action)
    engine = build_engine(CommonSettings(), application_name="tierflow-cli")
    try:
        await action(build_sessionmaker(engine))
    finally:
        await engine.dispose()


def main() -> None:
    """Console-script entry point: a database, broker or settings problem is one line naming
    what failed and what to do, not a page of frames (``TIERFLOW_CLI_TRACEBACK=1`` shows them)."""
    from aiokafka.errors import KafkaError
    from sqlalchemy.exc import SQLAlchemyError

    from shared.kafka import TopicsRefused
    from shared.stack.processes import StackFailed

    try:
        app()
    except (SQLAlchemyError, KafkaError, TopicsRefused, StackFailed, OSError, TimeoutError) as exc:
        if os.environ.get("TIERFLOW_CLI_TRACEBACK") == "1":
            raise
        errors.print(f"[red]error:[/] {failure(exc)}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
    except ValidationError as exc:  # settings from the environment
        errors.print(f"[red]invalid settings:[/]\n{exc}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None


def failure(exc: BaseException) -> str:
    """What an operational failure means, with the setting or command that mends it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ProgrammingError, SQLAlchemyError

    from shared.stack.processes import StackFailed

    if isinstance(exc, StackFailed):
        return f"the embedded stack did not start: {exc}"
    if isinstance(exc, SQLAlchemyError | OSError) and _from_database(exc):
        try:
            where = make_url(CommonSettings().database_url).render_as_string(hide_password=True)
        except (ValueError, ValidationError):
            where = "TIERFLOW_DATABASE_URL"
        cause = getattr(exc, "orig", None) or exc
        if isinstance(exc, ProgrammingError) and "does not exist" in str(cause):
            return f"the database {where} is not migrated ({cause}): run `tierflow db migrate`"
        return f"cannot use the database {where} ({type(cause).__name__}: {cause})"
    if not isinstance(exc, SQLAlchemyError):
        try:
            where = CommonSettings().kafka_bootstrap
        except ValidationError:
            where = "TIERFLOW_KAFKA_BOOTSTRAP"
        if not isinstance(exc, OSError) or _from_kafka(exc):
            return f"Kafka at {where}: {type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _from_database(exc: BaseException) -> bool:
    """Whether the failure came from SQLAlchemy or asyncpg (a refused connection is an
    ``OSError`` raised inside asyncpg)."""
    return _raised_in(exc, ("sqlalchemy", "asyncpg"))


def _from_kafka(exc: BaseException) -> bool:
    return _raised_in(exc, ("aiokafka",))


def _raised_in(exc: BaseException, packages: tuple[str, ...]) -> bool:
    trace = exc.__traceback__
    while trace is not None:
        module = trace.tb_frame.f_globals.get("__name__", "")
        if module.split(".")[0] in packages:
            return True
        trace = trace.tb_next
    return False


if __name__ == "__main__":
    main()
