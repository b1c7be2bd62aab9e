"""Identity notices: merges of two persons into one."""

from __future__ import annotations

from typing import Literal

from shared.contracts.base import Contract, Timestamp


class IdentityMerge(Contract):
    """``absorbed`` is now part of ``winner``; keyed by the absorbed oneid."""

    schema_version: Literal[1] = 1
    kind: Literal["merge"] = "merge"
    merge_id: str
    winner: str
    absorbed: str
    cause_event_id: str
    rule: str
    merged_at: Timestamp
