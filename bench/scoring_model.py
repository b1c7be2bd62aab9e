"""CPU cost of the scoring model alone, no broker: ``python -m bench.scoring_model``.

Runs ``processor.process`` over the stream ``bench.scoring_throughput`` produces (in 4,000-record
batches, like the worker's polls, over a dict standing in for the table) and prints events/s and
µs per event, with the phases timed on their own: decode, score (apply + evaluate + tier
changes), profile; and the cyclic garbage collector's share of the whole (default thresholds:
the worker raises them, see ``services/scoring/__main__.py``). The ceiling of the same run is
orjson parsing the same records. Prints numbers; it is not a test.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from datetime import UTC, datetime

import orjson

from bench.harness import box_reference
from bench.scoring_throughput import events
from services.scoring import service
from services.scoring.processor import Record, process
from services.scoring.rules import ScoringModel, load_model
from services.scoring.schemas import ScoredEvent
from services.scoring.scorer import State
from shared.contracts import ResolvedEvent, decode, encode
from shared.topics import EVENTS_RESOLVED
from tests.factories import T0

BATCH = 4_000


def timed(run: Callable[[], object], repeat: int) -> float:
    """The best of ``repeat`` runs, in seconds (the minimum is the least disturbed by others)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def whole(records: list[Record], model: ScoringModel, now: float) -> None:
    """Every record through ``process``, batch by batch, writes applied like the worker does."""
    table: dict[bytes, State] = {}
    for start in range(0, len(records), BATCH):
        outcome = process(records[start : start + BATCH], table.get, model, now)
        table.update(outcome.writes)


class Collections:
    """Time spent in the cyclic garbage collector while installed as a ``gc`` callback."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started


def scores(resolved: list[ResolvedEvent], model: ScoringModel) -> dict[bytes, State]:
    """Apply and evaluate every decoded event (what ``process`` does between decode and
    profiles); returns the final states."""
    table: dict[bytes, State] = {}
    for event in resolved:
        key = event.oneid.encode()
        table[key] = service.score_event(table.get(key), event, model)[0]
    return table


def profiles(records: list[Record], table: dict[bytes, State], model: ScoringModel) -> None:
    """One profile per changed person per batch, as ``process`` sends them."""
    for start in range(0, len(records), BATCH):
        for key in dict.fromkeys(r.key for r in records[start : start + BATCH]):
            service.profile_json(key.decode(), table[key], model)


def main() -> None:
    """Generate the stream, time each phase and the whole, print the numbers."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(box_reference(), flush=True)
    model = load_model()
    stream = events("bench", args.events, args.people, T0)
    records = [
        Record(EVENTS_RESOLVED.name, 0, n, r.oneid.encode(), encode(r))
        for n, r in enumerate(stream)
    ]
    now = datetime.now(UTC).timestamp()
    count = len(records)
    size = sum(len(r.value or b"") for r in records) / count
    print(f"{count} events of {size:.0f} bytes over {args.people} people, best of {args.repeat}")
    gc.freeze()  # the generated stream is long-lived: keep the collector from rescanning it

    def per_event(seconds: float) -> str:
        return f"{seconds / count * 1e6:6.1f} µs/event"

    ceiling = timed(lambda: [orjson.loads(r.value or b"") for r in records], args.repeat)
    print(
        f"ceiling (orjson.loads of each record)   {per_event(ceiling)} {count / ceiling:>10,.0f}/s"
    )
    decoded = timed(lambda: [decode(ScoredEvent, r.value or b"") for r in records], args.repeat)
    print(f"decode (ScoredEvent)                    {per_event(decoded)}")
    scored = timed(lambda: scores(stream, model), args.repeat)
    print(f"score (apply + evaluate)                {per_event(scored)}")
    final = scores(stream, model)
    profiled = timed(lambda: profiles(records, final, model), args.repeat)
    print(f"profiles (one per person per batch)     {per_event(profiled)}")
    collections = Collections()
    gc.callbacks.append(collections)
    total = timed(lambda: whole(records, model, now), args.repeat)
    gc.callbacks.remove(collections)
    print(
        f"process() whole                         {per_event(total)} {count / total:>10,.0f}/s"
        f" = {ceiling / total:.3f} of the ceiling"
    )
    print(f"  garbage collection within (mean)      {per_event(collections.seconds / args.repeat)}")


if __name__ == "__main__":
    main()
