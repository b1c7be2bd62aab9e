"""Identity notices on ``tierflow.identity.merges``: merges and erasures, keyed by the oneid.

Both kinds share one topic so that a consumer sees them in the order identity decided them for a
given oneid (an erasure after a merge must not be overtaken by it).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from shared.contracts.base import Contract, OneId, Timestamp


class IdentityMerge(Contract):
    """``absorbed`` is now part of ``winner``; keyed by the absorbed oneid."""

    schema_version: Literal[1] = 1
    kind: Literal["merge"] = "merge"
    merge_id: str
    winner: OneId
    absorbed: OneId
    cause_event_id: str
    rule: str
    merged_at: Timestamp


class IdentityErasure(Contract):
    """Everything held about ``oneid`` must be deleted (a regulation request); keyed by that oneid.

    ``oneids`` lists the erased person and every person merged into it, so a consumer that still
    holds state under an absorbed id can delete it too.
    """

    schema_version: Literal[1] = 1
    kind: Literal["erasure"] = "erasure"
    erasure_id: str
    oneid: OneId
    oneids: tuple[OneId, ...]
    requested_at: Timestamp
    reason: str = ""


IdentityNotice = Annotated[IdentityMerge | IdentityErasure, Field(discriminator="kind")]
IDENTITY_NOTICE = TypeAdapter(IdentityNotice)
"""Parses either notice: ``IDENTITY_NOTICE.validate_json(raw)``."""
