"""Does the embedded broker (Tansu) report the right end offset after multi-record batches?

Faust ends changelog recovery at the partition's end offset (ListOffsets latest). If that
under-counts records written in multi-record batches, recovery stops early and the worker
continues from stale state. This script produces N records per batch for several batch sizes
and compares the reported end offset with the records actually readable.

Recovery reads past the reported end with :func:`services.scoring.recovery.true_ends`; a probe
that stops short is the same lost update. The second part calls it ``--probes`` times over
partitions whose real ends are known, with ``--load`` busy processes competing for the CPU (as
the test suite's workers, broker and database do), and counts the answers that fall short.
Run: ``python -m bench.scoring_offsets [--probes 200 --load 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.scoring.recovery import true_ends
from shared.stack.broker import start_broker
from tests.factories import free_port


async def probe(bootstrap: str, batch: int, rounds: int) -> tuple[int, int, int]:
    """Write ``rounds`` batches of ``batch`` records; return (written, end offset, readable)."""
    topic = f"offsets-{batch}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=50)
    await producer.start()
    for r in range(rounds):
        futures = [
            await producer.send(topic, f"v{r}-{i}".encode(), key=b"k", partition=0)
            for i in range(batch)
        ]
        await asyncio.gather(*futures)
    await producer.stop()
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    consumer.assign([tp])
    end = (await consumer.end_offsets([tp]))[tp]
    readable = 0
    while True:
        got = await consumer.getmany(tp, timeout_ms=1000)
        if not got:
            break
        readable += sum(len(records) for records in got.values())
    await consumer.stop()
    return batch * rounds, end, readable


async def probe_ends(
    bootstrap: str, topic: str, probes: int, partitions: int = 4
) -> tuple[int, float]:
    """Call :func:`true_ends` ``probes`` times on a topic of known ends (batches of 10 records,
    a different count per partition); return the answers short of the truth and the mean
    seconds per probe."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=50)
    await producer.start()
    for n in range(partitions):
        for _ in range(n + 2):
            sent = [await producer.send(topic, b"v", partition=n) for _ in range(10)]
            await asyncio.gather(*sent)
    await producer.stop()
    truth = {TopicPartition(topic, n): 10 * (n + 2) for n in range(partitions)}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    reported = await consumer.end_offsets(list(truth))
    await consumer.stop()
    short = 0
    started = time.perf_counter()
    for _ in range(probes):
        found = await true_ends(bootstrap, dict(reported))
        short += any(found[tp] < end for tp, end in truth.items())
    return short, (time.perf_counter() - started) / probes


def _spin() -> None:
    while True:
        pass


async def main() -> None:
    """Start a private broker, probe several batch sizes, then the end probe under load."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--load", type=int, nargs="+", default=[0, 3])
    args = parser.parse_args()
    port = free_port()
    child = start_broker(port, Path(tempfile.mkdtemp(prefix="offsets-")))
    try:
        bootstrap = f"127.0.0.1:{port}"
        print("records_per_batch written end_offset readable")
        for batch in (1, 2, 10, 100):
            written, end, readable = await probe(bootstrap, batch, rounds=20)
            print(f"{batch:>17} {written:>7} {end:>10} {readable:>8}")
        print("busy_processes probes short ms_per_probe")
        for load in args.load:
            spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(load)]
            for spinner in spinners:
                spinner.start()
            try:
                short, seconds = await probe_ends(bootstrap, f"probe-ends-{load}", args.probes)
            finally:
                for spinner in spinners:
                    spinner.terminate()
            print(f"{load:>14} {args.probes:>6} {short:>5} {1000 * seconds:>12.0f}")
    finally:
        child.stop()


if __name__ == "__main__":
    asyncio.run(main())
