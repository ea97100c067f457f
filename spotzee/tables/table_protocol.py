"""The table interface: what a processor's state looks like to it, whatever the store behind it.

Implementations: ``tables/overlay.OverlayTable`` (a batch's overlay over RocksDB: the embedded
runtime and the Kafka runtime's partition stores) and ``tables/memory_store.MemoryTable`` (a dict,
for ``spotzee.testing.MemoryContext``). tests/unit/test_table_contract.py runs the same contract
over each of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol


class Table(Protocol):
    """One processor table. Reads see the record's own uncommitted writes."""

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes) -> None: ...

    def delete(self, key: str) -> None: ...

    def scan_prefix(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        """Live entries whose key starts with ``prefix``, in key order, uncommitted writes included."""
