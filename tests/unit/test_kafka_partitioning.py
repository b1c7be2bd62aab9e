"""Every service and the scoring table must put a key where Kafka's Java client would: the
table is partitioned like its inputs, and producers other than ours share the topics."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner

from shared.kafka import partition_of

# Kafka's own test vectors for its murmur2 (UtilsTest.testMurmur2), as signed 32-bit values
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize("partitions", [1, 4, 6, 12])
def test_a_key_goes_where_the_java_client_puts_it(partitions: int) -> None:
    for key, signed in JAVA_MURMUR2.items():
        # the Java client: Utils.toPositive(murmur2(key)) % partitions
        assert partition_of(key, partitions) == (signed & 0x7FFFFFFF) % partitions


def test_the_memoised_choice_is_the_producers_default_partitioner() -> None:
    partitioner = DefaultPartitioner()
    every = list(range(6))
    keys = [f"oneid-{n}".encode() for n in range(600)]
    for _ in range(2):  # the second pass is answered from the memo
        assert [partition_of(key, 6) for key in keys] == [
            partitioner(key, every, every) for key in keys
        ]
    assert {partition_of(key, 6) for key in keys} == set(every)
