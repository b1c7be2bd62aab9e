"""The live terminal view of a running stack: events/s, tiers, latest changes and actions."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import httpx
from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from shared.contracts import ActionRecord, TierChangeEvent, decode
from shared.topics import ACTIONS, TIERS_CHANGES


@dataclass
class View:
    """What the dashboard shows, updated from the topics and ingest's metrics."""

    tiers: dict[str, str] = field(default_factory=dict)
    changes: deque[TierChangeEvent] = field(default_factory=lambda: deque(maxlen=8))
    actions: deque[ActionRecord] = field(default_factory=lambda: deque(maxlen=8))
    outcomes: Counter[str] = field(default_factory=Counter)
    accepted: float = 0.0
    rate: float = 0.0

    def add(self, topic: str, raw: bytes) -> None:
        """Fold one message into the view."""
        try:
            if topic == TIERS_CHANGES.name:
                change = decode(TierChangeEvent, raw)
                self.tiers[change.data.oneid] = change.data.to_tier
                self.changes.appendleft(change)
            else:
                action = decode(ActionRecord, raw)
                self.actions.appendleft(action)
                self.outcomes[action.outcome] += 1
        except ValidationError:
            return

    def render(self) -> Group:
        """The rich renderable."""
        distribution = Counter(self.tiers.values())
        head = Table.grid(padding=(0, 3))
        head.add_row(
            f"[bold]events/s[/] {self.rate:,.0f}",
            f"[bold]accepted[/] {self.accepted:,.0f}",
            f"[bold]people tiered[/] {len(self.tiers):,}",
            "  ".join(f"[bold]{t}[/] {n:,}" for t, n in sorted(distribution.items())),
            "  ".join(f"{o} {n:,}" for o, n in sorted(self.outcomes.items())),
        )
        changes = Table("oneid", "from", "to", "score", "cause", expand=True)
        for change in self.changes:
            d = change.data
            changes.add_row(
                d.oneid[:13], d.from_tier or "-", d.to_tier, f"{d.scores.total:.1f}", d.cause.kind
            )
        actions = Table("oneid", "playbook", "step", "channel", "outcome", expand=True)
        for a in self.actions:
            actions.add_row(a.oneid[:13], a.playbook, a.step, a.channel, a.outcome)
        return Group(
            Panel(head, title="Tierflow"),
            Panel(changes, title="latest tier changes"),
            Panel(actions, title="latest actions"),
        )


def _accepted(metrics_text: str) -> float:
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("tierflow_ingest_events_total{") and 'outcome="accepted"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def run_dashboard(
    bootstrap: str, ingest_url: str, stop: asyncio.Event, *, live: bool
) -> None:
    """Follow the topics and ingest's counters until ``stop`` is set."""
    view = View()
    consumer = AIOKafkaConsumer(
        TIERS_CHANGES.name,
        ACTIONS.name,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    last = (time.monotonic(), 0.0)
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            display = Live(view.render(), refresh_per_second=2) if live else None
            with display if display is not None else contextlib.nullcontext():
                while not stop.is_set():
                    batches = await consumer.getmany(timeout_ms=500, max_records=2000)
                    for tp, records in batches.items():
                        for record in records:
                            view.add(tp.topic, record.value or b"")
                    with contextlib.suppress(httpx.HTTPError):
                        view.accepted = _accepted((await client.get(f"{ingest_url}/metrics")).text)
                    now = time.monotonic()
                    if now - last[0] >= (1.0 if live else 5.0):
                        view.rate = (view.accepted - last[1]) / (now - last[0])
                        last = (now, view.accepted)
                        if display is None:
                            print(
                                f"events/s={view.rate:.0f} accepted={view.accepted:.0f} "
                                f"tiers={dict(Counter(view.tiers.values()))} "
                                f"actions={dict(view.outcomes)}",
                                flush=True,
                            )
                    if display is not None:
                        display.update(view.render())
    finally:
        await consumer.stop()
