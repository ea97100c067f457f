"""The embedded runtime: the whole topology in one process, durable in RocksDB
(``embedded_runtime.EmbeddedRuntime``; one module per group of the numbered steps it implements)."""
