"""The scoring crash test at full size: ``python -m bench.scoring_crash --events 50000``.

Starts its own embedded broker and Postgres, runs the scenario of ``tests/crash`` (kill -9 and
restart at once, one or two workers) ``--runs`` times and prints one line per run. When a run
diverges or fails, the work directory (worker logs, broker and database) is kept for a post-mortem.
``--unsafe`` runs workers with Faust's own recovery (no end-offset probe) for comparison.
``--notices`` runs the scenario with merges, erasures and late events after the stream
(``tests/crash/notices_scenario.py``; its kills are fixed per phase, ``--kills`` is ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from pathlib import Path

from shared.stack.launcher import Stack, StackSettings, prepare, start_infrastructure
from tests.crash import notices_scenario
from tests.crash.scenario import Result, run
from tests.factories import free_port


async def main() -> None:
    """Parse options, start the infrastructure, run the scenario, print the results."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--people", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--unsafe", action="store_true")
    parser.add_argument("--max-batch-size", type=int, default=None)
    parser.add_argument("--notices", action="store_true")
    args = parser.parse_args()
    work_dir = Path(tempfile.mkdtemp(prefix="scoring-crash-"))
    (work_dir / "logs").mkdir()
    stack = Stack(work_dir=work_dir, env={}, urls={}, owns_work_dir=True)
    settings = StackSettings(stack_broker_port=free_port(), stack_postgres_port=free_port())
    extra = {}
    if args.max_batch_size is not None:
        extra["TIERFLOW_SCORING_PRODUCER_MAX_BATCH_SIZE"] = str(args.max_batch_size)
    module = "bench.scoring_unsafe_worker" if args.unsafe else "services.scoring"
    keep = False  # the work directory, for a post-mortem of a run that went wrong
    try:
        start_infrastructure(settings, stack)
        await prepare(stack, args.partitions)
        print("workers events people kills seconds ok mismatched stale missing conflicting dup")
        for n in range(args.runs):
            for workers in args.workers:
                seed = random.randrange(1 << 30)
                run_dir = work_dir / f"run-{n}-{workers}"
                run_dir.mkdir()
                bootstrap = stack.env["TIERFLOW_KAFKA_BOOTSTRAP"]
                database_url = stack.env["TIERFLOW_DATABASE_URL"]
                result: Result
                if args.notices:
                    result = await notices_scenario.run(
                        bootstrap,
                        database_url,
                        run_dir,
                        people=args.people,
                        events=args.events,
                        workers=workers,
                        partitions=args.partitions,
                        seed=seed,
                    )
                else:
                    result = await run(
                        bootstrap,
                        database_url,
                        run_dir,
                        people=args.people,
                        events=args.events,
                        kills=args.kills,
                        workers=workers,
                        partitions=args.partitions,
                        seed=seed,
                        settle=180,
                        extra_env=extra,
                        module=module,
                    )
                print(
                    f"{workers} {result.events} {result.people} {result.kills} "
                    f"{result.seconds:.1f} {result.ok} {len(result.mismatched)} "
                    f"{len(result.stale_in_memory)} "
                    f"{len(result.missing_changes)} {len(result.conflicting_changes)} "
                    f"{result.duplicate_deliveries} seed={seed}"
                    + (
                        f" refolds={result.refolds}"
                        if isinstance(result, notices_scenario.NoticesResult)
                        else ""
                    ),
                    flush=True,
                )
                for line in result.divergence if not result.ok else []:
                    print(f"  {line}", flush=True)
                keep = keep or not result.ok
    except BaseException:
        keep = True
        raise
    finally:
        if keep:
            stack.owns_work_dir = False
            print(f"kept for a post-mortem: {work_dir}", flush=True)
        stack.stop()


if __name__ == "__main__":
    asyncio.run(main())
