"""Does the embedded broker (Tansu) report the right end offset after multi-record batches?

Faust ends changelog recovery at the partition's end offset (ListOffsets latest). If that
under-counts records written in multi-record batches, recovery stops early and the worker
continues from stale state. This script produces N records per batch for several batch sizes
and compares the reported end offset with the records actually readable.
Run: ``python -m bench.scoring_offsets``.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

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


async def main() -> None:
    """Start a private broker and probe several batch sizes."""
    port = free_port()
    child = start_broker(port, Path(tempfile.mkdtemp(prefix="offsets-")))
    try:
        bootstrap = f"127.0.0.1:{port}"
        print("records_per_batch written end_offset readable")
        for batch in (1, 2, 10, 100):
            written, end, readable = await probe(bootstrap, batch, rounds=20)
            print(f"{batch:>17} {written:>7} {end:>10} {readable:>8}")
    finally:
        child.stop()


if __name__ == "__main__":
    asyncio.run(main())
