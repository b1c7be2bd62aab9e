"""The people table's store: Faust's, except that a RocksDB write finds its partition by key.

Faust's RocksDB store puts a key into the database of the *current stream event's* partition
and fails outside a stream event. The scoring loop writes a batch of people (of several
partitions) at once, outside any stream event; the table is partitioned by key like every input
(murmur2 over the topic's partitions), so the key alone names the partition.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.stores.rocksdb import Store as RocksDBStore
from yarl import URL

from services.scoring.deadlines import partition_of


class KeyPartitionedRocksDBStore(RocksDBStore):
    """RocksDB, one database per partition as Faust keeps it, the partition taken from the key."""

    def _set(self, key: bytes, value: bytes | None) -> None:
        partition = partition_of(key, self.table.partitions or self.app.conf.topic_partitions)
        self._key_index[key] = partition
        self._db_for_partition(partition).put(key, value)


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
