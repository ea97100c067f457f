"""Fixtures shared by the security tests: one embedded server per module where tests only read."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Stack, running_stack


@pytest.fixture(scope="module")
def shared_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """An embedded server for tests whose requests are refused (they change nothing, so they can share it)."""
    data_dir: Path = tmp_path_factory.mktemp("shared") / "data"
    with running_stack(data_dir) as stack:
        yield stack
