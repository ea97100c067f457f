"""The state layer: the table interface (``base.Table``) and the stores behind it.

- ``rocksdb_store``: one RocksDB database with a column family per concern (and its encodings);
- ``overlay``: ``BatchContext``, a batch's overlay over RocksDB with per-record savepoints (both runtimes);
- ``partition_store``: one partition's RocksDB on a Kafka worker, restorable from the changelog;
- ``changelog``: the Kafka runtime's batched, marker-delimited state changelog and its replay;
- ``memory_store``: ``MemoryTable``, a table in a dict (``spotzee.testing.MemoryContext``).
"""
