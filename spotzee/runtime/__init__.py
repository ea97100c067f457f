"""The embedded runtime: the whole topology in one process, durable in RocksDB."""
