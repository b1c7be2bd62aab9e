"""The topic registry: every Kafka topic Tierflow uses, with its key, partitions and configs.

Topics are created from here (``tierflow topics create``) and code refers to them by these
constants, so a name lives in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic: its name, what keys it, and the configs it is created with."""

    name: str
    key: str
    description: str
    configs: dict[str, str] = field(default_factory=dict)
    partitions: int | None = None  # None: the deployment's default (TIERFLOW_TOPIC_PARTITIONS)


SEVEN_DAYS_MS = str(7 * 24 * 3600 * 1000)

EVENTS_RAW = TopicSpec(
    "tierflow.events.raw",
    key="routing id (userId, else anonymousId)",
    description="Validated event envelopes accepted by ingest.",
    configs={"retention.ms": SEVEN_DAYS_MS},
)
EVENTS_RESOLVED = TopicSpec(
    "tierflow.events.resolved",
    key="oneid",
    description="Events with the OneID identity resolved them to.",
    configs={"retention.ms": SEVEN_DAYS_MS},
)
IDENTITY_MERGES = TopicSpec(
    "tierflow.identity.merges",
    key="absorbed oneid",
    description="Identity notices: 'oneid B is now part of A' merges and erasures.",
)
TIERS_CHANGES = TopicSpec(
    "tierflow.tiers.changes",
    key="oneid",
    description="Tier changes as CloudEvents: from, to, scores, reasons, model version.",
)
PROFILES = TopicSpec(
    "tierflow.profiles",
    key="oneid",
    description="Latest scored profile per OneID.",
    # compaction keeps a tombstone this long (Kafka's default: a day): a read model or an
    # automation consumer further behind would never see the erasure
    configs={"cleanup.policy": "compact", "delete.retention.ms": SEVEN_DAYS_MS},
)
SCORING_COMMANDS = TopicSpec(
    "tierflow.scoring.commands",
    key="oneid the command applies to",
    description="Scoring's own commands between partitions: merge folds, erasures, timer "
    "re-evaluations.",
    configs={"retention.ms": SEVEN_DAYS_MS},
)
ACTIONS = TopicSpec(
    "tierflow.actions",
    key="oneid",
    description="Each touch action and its outcome.",
)
DEADLETTER = TopicSpec(
    "tierflow.deadletter",
    key="original key",
    description="Messages that could not be processed, with the error and their origin.",
    configs={"retention.ms": str(30 * 24 * 3600 * 1000)},
)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    EVENTS_RAW,
    EVENTS_RESOLVED,
    IDENTITY_MERGES,
    TIERS_CHANGES,
    PROFILES,
    SCORING_COMMANDS,
    ACTIONS,
    DEADLETTER,
)
