"""Pure domain logic: no Faust, RocksDB, HTTP or ClickHouse. Time is passed in."""
