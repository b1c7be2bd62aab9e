"""The people table's store: Faust's, except that RocksDB finds a key's partition from the key.

Faust's RocksDB store puts a key into the database of the *current stream event's* partition
and fails outside a stream event; outside one, it reads through an LRU index of keys (behind a
lock) and tries every open database for a key it does not know. The scoring loop reads and
writes people of several partitions at once, outside any stream event; the table is partitioned
by key like every input (murmur2 over the topic's partitions), so the key alone names the
database.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import faust
from faust.stores.rocksdb import Store as RocksDBStore
from yarl import URL

from shared.kafka import partition_of


class KeyPartitionedRocksDBStore(RocksDBStore):
    """RocksDB, one database per partition as Faust keeps it, the partition taken from the key."""

    def _partition(self, key: bytes) -> int:
        return partition_of(key, self.table.partitions or self.app.conf.topic_partitions)

    def _open_db(self, key: bytes) -> Any:
        """The database of the key's partition, if this worker opened it (a partition it holds
        or held)."""
        return self._dbs.get(self._partition(key))

    def _set(self, key: bytes, value: bytes | None) -> None:
        self._db_for_partition(self._partition(key)).put(key, value)

    def _get(self, key: bytes) -> bytes | None:
        db = self._open_db(key)
        return None if db is None else db.get(key)

    def _contains(self, key: bytes) -> bool:
        return self._get(key) is not None

    def _dbs_for_key(self, key: bytes) -> Iterable[Any]:
        db = self._open_db(key)
        return [] if db is None else [db]

    def items_of(self, partition: int) -> Iterator[tuple[bytes, Any]]:
        """Every person stored in one partition's database, decoded (none if this worker has
        not opened it). RocksDB iterates a snapshot: writes made meanwhile are not seen."""
        db = self._dbs.get(partition)
        if db is None:
            return
        for key, value in self._visible_items(db):
            yield key, self._decode_value(value)

    def write_encoded(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Store values already encoded with the table's value serializer (the scoring loop
        encodes each state once, for its changelog record, and stores those bytes), one write
        batch per partition as Faust's changelog replay does."""
        from rocksdict import WriteBatch  # the rocksdb extra, needed by this store only

        batches: dict[int, WriteBatch] = {}
        for key, value in items:
            partition = self._partition(key)
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = WriteBatch(raw_mode=True)
            batch.put(key, value)
        for partition, batch in batches.items():
            self._db_for_partition(partition).write(batch)


class PeopleTable(faust.Table[bytes, Any]):
    """A Faust table whose RocksDB store is :class:`KeyPartitionedRocksDBStore`."""

    def _new_store_by_url(self, url: str | URL) -> Any:
        if URL(str(url)).scheme != "rocksdb":
            return super()._new_store_by_url(url)
        return KeyPartitionedRocksDBStore(
            url,
            self.app,
            self,
            table_name=self.name,
            key_type=self.key_type,
            key_serializer=self.key_serializer,
            value_serializer=self.value_serializer,
            value_type=self.value_type,
            loop=self.loop,
            options=self.options,
        )
