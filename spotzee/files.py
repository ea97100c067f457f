"""The data directory is private: it holds key hashes, provider credentials and every contact.

Directories are created 0700 and files 0600, whoever creates them (RocksDB, chDB, our own
writes): a Spotzee process runs with umask 077, and an existing data directory made by an
older version is narrowed to 0700, which closes everything below it to other users.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

PRIVATE_UMASK: Final = 0o077
PRIVATE_DIR_MODE: Final = 0o700


def private_process() -> None:
    """Files this process creates from now on are readable by its user only."""
    os.umask(PRIVATE_UMASK)


def private_dir(path: Path) -> Path:
    """``path`` (and missing parents) created 0700; an existing ``path`` narrowed to 0700."""
    private_process()
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != PRIVATE_DIR_MODE:
        path.chmod(PRIVATE_DIR_MODE)
    return path
