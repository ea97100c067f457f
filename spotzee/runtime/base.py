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

    async def wait_processed(self, positions: list[Position], timeout: float) -> bool: ...

    def read(self, table: str, key: str) -> bytes | None: ...

    def processing_lag(self) -> int: ...

    def sink_lag(self) -> int: ...

    def health(self) -> Health: ...

    # definitions (the compacted `definitions` topic's model)
    def put_definitions(self, items: list[tuple[str, bytes | None]], outbox: list[bytes]) -> None:
        """Write definitions (None deletes) and analytics records (audit) atomically."""

    def scan_definitions(self, prefix: str) -> Iterator[tuple[str, bytes]]: ...
