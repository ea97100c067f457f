"""The small runtime-neutral interface processors are written against.

A processor sees one record at a time through a ``Context``: its tables (key -> bytes, scoped
to the partition that owns the record; the ``Table`` interface is the state layer's,
``tables/table_protocol.py``), ``emit`` to a topic, the injected clock, and timers that re-deliver a record
at a given time. Both runtimes implement ``Context`` with ``tables/overlay.BatchContext``, and
``spotzee.testing.MemoryContext`` runs a processor in memory; the processor code is the same.
"""

from __future__ import annotations

import contextlib
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from spotzee.tables.table_protocol import Table

# ``Table`` is re-exported: processors import the whole interface from here.
__all__ = ["Clock", "Context", "Processor", "ShiftedClock", "SystemClock", "Table", "clock_from"]


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ShiftedClock:
    """System time plus an offset in seconds read from a file: time travel across processes.

    For tests and drills ("what does this journey do a week from now?") on either runtime: the
    API process and every worker read the same file, so moving time is writing a number. The
    offset only grows in practice; the file is re-read at most every 50 ms (``now`` is called per
    record). A missing or unreadable file means no shift at first, then the last offset read.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = timedelta(0)
        self._read_at = -1.0

    def now(self) -> datetime:
        tick = time.monotonic()
        if tick - self._read_at >= 0.05:
            self._read_at = tick
            # On a bad read the last offset stays: time never jumps back.
            with contextlib.suppress(OSError, ValueError):
                self._offset = timedelta(seconds=float(self.path.read_text().strip() or 0))
        return datetime.now(UTC) + self._offset

    @staticmethod
    def shift(path: Path, by: timedelta) -> None:
        """Move the clocks reading ``path`` forward by ``by`` (atomic replace: readers never see half a number)."""
        try:
            current = float(path.read_text().strip() or 0)
        except (OSError, ValueError):
            current = 0.0
        tmp = path.with_suffix(".tmp")
        tmp.write_text(repr(current + by.total_seconds()))
        os.replace(tmp, path)


def clock_from(path: Path | None) -> Clock:
    return ShiftedClock(path) if path is not None else SystemClock()


class Context(Protocol):
    @property
    def clock(self) -> Clock: ...

    def table(self, name: str) -> Table: ...

    def emit(self, topic: str, key: str, value: bytes) -> None:
        """Send a record; it becomes visible only when the current record commits."""

    def schedule(
        self, timer_id: str, at: datetime, topic: str, key: str, value: bytes, *, keep_existing: bool = False
    ) -> None:
        """Deliver ``value`` to ``topic`` at ``at`` (or later). Same id replaces, unless ``keep_existing``."""

    def cancel(self, timer_id: str) -> None: ...


class Processor(Protocol):
    """A stateful processor of one input topic."""

    @property
    def topic(self) -> str: ...

    @property
    def tables(self) -> tuple[str, ...]: ...

    def process(self, ctx: Context, key: str, value: bytes) -> None: ...
