"""The runtime interface: what the API and the application services need from a runtime.

Two implementations, one lifecycle: ``runtime/embedded/`` (one process, RocksDB) and
``runtime/kafka/kafka_runtime.py`` (the API process's side of the Kafka runtime);
``runtime/factory.open_runtime`` opens the one the settings name, and ``spotzee.testing.MemoryRuntime``
is an in-memory one for tests. A runtime owns everything it runs in this process (processing,
timers, the analytics sink, delivery): ``start`` starts all of it, ``stop`` drains and stops it,
``close`` releases the stores.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, Protocol


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


class Sink(Protocol):
    """Whatever writes analytics records to ClickHouse in this process."""

    last_error: str | None

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def alive(self) -> bool: ...

    @property
    def rows_written(self) -> int: ...


class _Done:
    """An awaitable with nothing left to wait for."""

    def __await__(self) -> Generator[Any, None, None]:
        yield from ()


DONE: Awaitable[None] = _Done()
"""What ``start`` returns when the call itself did the starting (the embedded runtime's threads):
awaiting it returns at once, and a caller outside an event loop (a test, a tool) may ignore it."""


class Runtime(Protocol):
    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Awaitable[None]:
        """Start what this runtime runs here (processing, timers, the sink, delivery); appends are
        accepted from then on. Call it on the serving event loop and await the result: the Kafka
        runtime's producer binds to that loop."""

    def stop(self) -> None:
        """Graceful: refuse appends (503), drain what was accepted, stop every loop and the sink.
        Blocks (up to the drain timeouts): call it from a worker thread, not the event loop."""

    def close(self) -> None:
        """Release the stores (after ``stop``, or instead of ``start``)."""

    def health(self) -> Health: ...

    def stats(self) -> dict[str, float]:
        """Gauges for ``/metrics``: lags, timers pending, records processed and dead-lettered, rows written."""

    @property
    def sink(self) -> Sink | None:
        """The analytics sink this runtime runs in this process, if any."""

    # -- the log --------------------------------------------------------------------------------

    async def append(self, records: list[tuple[str, bytes]]) -> list[Position]:
        """Append ``(key, value)`` records to the ``events`` topic; returns once durable.

        Raises Overloaded over the inbound bound, LogUnavailable when the log can't take writes.
        """

    async def broadcast(self, key: str, value: bytes) -> list[Position]:
        """Append one control record to every partition of ``events``."""

    async def wait_processed(self, positions: list[Position], timeout: float) -> bool: ...

    async def wait_sink(self, timeout: float) -> bool:
        """Wait until ClickHouse holds every analytics row emitted before the call."""

    def processing_lag(self) -> int: ...

    def sink_lag(self) -> int: ...

    # -- state ----------------------------------------------------------------------------------

    def read(self, table: str, key: str) -> bytes | None: ...

    def scan(self, table: str, prefix: str, after: str | None = None) -> Iterator[tuple[str, bytes]]:
        """Rows of a processor table whose key starts with ``prefix``, in key order (after ``after``)."""

    # -- definitions (the compacted `definitions` topic's model) --------------------------------

    def put_definitions(self, items: list[tuple[str, bytes | None]], outbox: list[bytes]) -> None:
        """Write definitions (None deletes) and analytics records (audit) atomically."""

    def scan_definitions(self, prefix: str) -> Iterator[tuple[str, bytes]]: ...

    def on_definition(self, listener: Callable[[str, bytes | None], None]) -> None:
        """Call ``listener`` with each definition written from now on by any process (the Kafka
        runtime follows its definitions topic). The embedded runtime never calls it: only this
        process writes its definitions, and the services that write them update themselves."""
