"""When to try a failed send again: exponential backoff with full jitter, honouring ``Retry-After``.

Full jitter (a uniform draw between 0 and the exponential ceiling) spreads retries of many sends
that failed together, so a recovering receiver is not hit by all of them at once. A receiver's
``Retry-After`` is a floor: we never come back earlier than asked (up to ``max_retry_after``, so
a hostile value cannot park a send for years). Seeding the draw with the send_id makes a replayed
decision come out the same.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Final

from pydantic import ConfigDict, Field

from spotzee.providers.adapter import Permanent, Sent, Transient
from spotzee.schemas.common import Model

_MAX_EXPONENT: Final = 62  # beyond this the ceiling is the cap anyway; avoids float overflow


def next_delay(
    attempt: int,
    retry_after: float | None = None,
    *,
    base: float = 1.0,
    cap: float = 600.0,
    max_retry_after: float = 86_400.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 is the first retry)."""
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
    delay = (rng or random).uniform(0.0, ceiling)
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, max_retry_after))
    return delay


def seeded_rng(send_id: str, attempt: int) -> random.Random:
    """A generator that draws the same jitter for the same send and attempt (replays agree)."""
    return random.Random(f"{send_id}:{attempt}")


class RetryPolicy(Model):
    model_config = ConfigDict(frozen=True)

    max_retries: int = Field(default=5, ge=0, le=50)
    base: float = Field(default=2.0, gt=0, description="Seconds: the first retry waits up to this long.")
    cap: float = Field(default=600.0, gt=0, description="Largest backoff ceiling, in seconds.")
    max_retry_after: float = Field(default=86_400.0, gt=0, description="Largest Retry-After honoured, in seconds.")

    def delay(self, attempt: int, outcome: Transient, *, send_id: str | None = None) -> float | None:
        """Seconds before retry ``attempt`` after ``outcome``, or None when retries are used up."""
        if attempt > self.max_retries:
            return None
        rng = seeded_rng(send_id, attempt) if send_id is not None else None
        return next_delay(
            attempt,
            outcome.retry_after,
            base=self.base,
            cap=self.cap,
            max_retry_after=self.max_retry_after,
            rng=rng,
        )


async def send_with_retries(
    attempt: Callable[[], Awaitable[Sent | Transient | Permanent]],
    policy: RetryPolicy,
    *,
    send_id: str | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Sent | Transient | Permanent:
    """Call ``attempt`` until it is not transient or retries run out; the last outcome.

    For in-process use (tools, tests). The delivery agent schedules retries on durable timers
    with ``RetryPolicy.delay`` instead, so a restart does not forget them.
    """
    retry = 0
    while True:
        outcome = await attempt()
        if not isinstance(outcome, Transient):
            return outcome
        retry += 1
        delay = policy.delay(retry, outcome, send_id=send_id)
        if delay is None:
            return outcome
        await sleep(delay)
