"""ClickHouse: schema migrations, the batching sink, read-only SQL."""
