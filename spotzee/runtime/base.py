"""What the API needs from a runtime (embedded or Kafka)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Position:
    """Where an appended record landed."""

    partition: int
    offset: int


@dataclass(frozen=True)
class Health:
    log: bool
    state: bool
    detail: dict[str, str]


class Runtime(Protocol):
    async def append(self, records: list[tuple[str, bytes]]) -> list[Position]:
        """Append ``(key, value)`` records to the ``events`` topic; returns once durable.

        Raises Overloaded over the inbound bound, LogUnavailable when the log can't take writes.
        """

    async def broadcast(self, key: str, value: bytes) -> list[Position]:
        """Append one control record to every partition of ``events``."""

    async def wait_processed(self, positions: list[Position], timeout: float) -> bool: ...

    async def wait_sink(self, timeout: float) -> bool:
        """Wait until ClickHouse holds every analytics row emitted before the call."""

    def read(self, table: str, key: str) -> bytes | None: ...

    def scan(self, table: str, prefix: str, after: str | None = None) -> Iterator[tuple[str, bytes]]:
        """Rows of a processor table whose key starts with ``prefix``, in key order (after ``after``)."""

    def processing_lag(self) -> int: ...

    def sink_lag(self) -> int: ...

    def health(self) -> Health: ...

    # definitions (the compacted `definitions` topic's model)
    def put_definitions(self, items: list[tuple[str, bytes | None]], outbox: list[bytes]) -> None:
        """Write definitions (None deletes) and analytics records (audit) atomically."""

    def scan_definitions(self, prefix: str) -> Iterator[tuple[str, bytes]]: ...
