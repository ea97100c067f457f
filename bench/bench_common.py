"""What every part of the benchmark shares: the error that ends a run, progress lines, percentiles."""

from __future__ import annotations

import math
import sys
import time

HOST = "127.0.0.1"
_STARTED = time.perf_counter()


class BenchError(Exception):
    """A failure that ends the run with a non-zero exit code (and a ``FAIL`` line)."""


def progress(message: str) -> None:
    """One progress line on stderr (stdout carries only the result)."""
    print(f"[bench {time.perf_counter() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
