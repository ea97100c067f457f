"""The in-memory store: a processor table in a dict (what ``spotzee.testing.MemoryContext`` runs on)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

from spotzee.tables.table_specs import TableSpec

V = TypeVar("V")


class MemoryTable:
    """A ``tables.base.Table`` in a dict. Writes apply at once; ``rollback`` undoes those made
    since the last ``fold``: the per-record savepoint ``tables/overlay.OverlayTable`` has too."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self._undo: dict[str, bytes | None] = {}  # key -> its value at the last fold (None: absent)

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def set(self, key: str, value: bytes) -> None:
        self._remember(key)
        self.data[key] = value

    def delete(self, key: str) -> None:
        self._remember(key)
        self.data.pop(key, None)

    def scan_prefix(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        for key in sorted(self.data):
            if key.startswith(prefix):
                yield key, self.data[key]

    def get_value(self, key: str, spec: TableSpec[V]) -> V | None:
        """Decoded on every read: tests run the codec each time, as a store without a cache would."""
        raw = self.data.get(key)
        return None if raw is None else spec.decode(raw)

    def put_value(self, key: str, value: V, spec: TableSpec[V]) -> None:
        self.set(key, spec.encode(value))

    def scan_values(self, prefix: str, spec: TableSpec[V]) -> Iterator[tuple[str, V]]:
        for key, raw in self.scan_prefix(prefix):
            yield key, spec.decode(raw)

    def fold(self) -> None:
        """Keep the writes made since the last fold."""
        self._undo.clear()

    def rollback(self) -> None:
        """Undo the writes made since the last fold."""
        for key, value in self._undo.items():
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
        self._undo.clear()

    def _remember(self, key: str) -> None:
        if key not in self._undo:
            self._undo[key] = self.data.get(key)
