from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Stack, running_stack


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(tmp_path / "data") as running:
        yield running
