"""JSON Schemas of the wire contracts, generated into ``docs/schemas`` and checked in CI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from pydantic import TypeAdapter

from shared.contracts import (
    IDENTITY_NOTICE,
    ActionRecord,
    Contract,
    DeadLetter,
    EventEnvelope,
    Profile,
    ResolvedEvent,
    TierChangeEvent,
)
from shared.topics import (
    ACTIONS,
    DEADLETTER,
    EVENTS_RAW,
    EVENTS_RESOLVED,
    IDENTITY_MERGES,
    PROFILES,
    TIERS_CHANGES,
)

CONTRACTS: dict[str, type[Contract] | TypeAdapter[Any]] = {
    EVENTS_RAW.name: EventEnvelope,
    EVENTS_RESOLVED.name: ResolvedEvent,
    IDENTITY_MERGES.name: IDENTITY_NOTICE,
    TIERS_CHANGES.name: TierChangeEvent,
    PROFILES.name: Profile,
    ACTIONS.name: ActionRecord,
    DEADLETTER.name: DeadLetter,
}


def rendered() -> dict[str, bytes]:
    """File name -> schema bytes, one per topic."""
    out: dict[str, bytes] = {}
    for topic, model in CONTRACTS.items():
        schema = {
            "$id": f"https://tierflow.dev/schemas/{topic}.json",
            **(
                model.json_schema(by_alias=True)
                if isinstance(model, TypeAdapter)
                else model.model_json_schema(by_alias=True)
            ),
        }
        out[f"{topic}.json"] = (
            orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        )
    return out


def write_schemas(directory: Path) -> list[Path]:
    """Write every schema; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, body in rendered().items():
        path = directory / name
        path.write_bytes(body)
        paths.append(path)
    return paths


def stale_schemas(directory: Path) -> list[str]:
    """Names of schema files missing or different from the contracts."""
    return [
        name
        for name, body in rendered().items()
        if not (directory / name).is_file() or (directory / name).read_bytes() != body
    ]
