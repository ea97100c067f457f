"""The delivery agents' per-batch work: lookups answered once per batch (``BatchLookups``), and
renders of the sends in flight coalesced into one job per template worker
(``TemplateWorkers(coalesce=True)``), each send still with its own answer and its own deadline."""

from __future__ import annotations

import asyncio
import operator
import time
from collections import Counter

import pytest
from pydantic import SecretStr

from spotzee.domain.templates import TemplateRenderError
from spotzee.providers.delivery_service import Deliverer, DeliverySettings
from spotzee.providers.safety import OutboundPolicy
from spotzee.runtime.delivery_loop import BatchLookups
from spotzee.schemas.provider_models import ProviderDefinition
from spotzee.schemas.template_models import TemplateDefinition
from spotzee.services.template_workers import TemplateWorkers


def counting_deliverer() -> tuple[Deliverer, Counter[tuple[str, str, str]]]:
    reads: Counter[tuple[str, str, str]] = Counter()

    def template(project_id: str, template_id: str) -> TemplateDefinition | None:
        reads["template", project_id, template_id] += 1
        return None

    def provider_for(project_id: str, channel: str) -> ProviderDefinition | None:
        reads["provider", project_id, channel] += 1
        if channel == "broken":
            raise RuntimeError("secrets unreadable")
        return None

    settings = DeliverySettings("http://localhost", SecretStr("x" * 32), OutboundPolicy())
    return Deliverer(settings, template, provider_for), reads


async def test_a_batch_reads_each_template_and_provider_once_and_the_next_batch_afresh() -> None:
    deliverer, reads = counting_deliverer()
    BatchLookups(deliverer)

    async def send(project: str) -> None:
        deliverer.template(project, "tpl_1")
        await asyncio.sleep(0)
        deliverer.provider_for(project, "sms")

    async def batch(projects: list[str]) -> None:
        BatchLookups.batch()
        await asyncio.gather(*(send(p) for p in projects))

    await asyncio.create_task(batch(["p1"] * 50 + ["p2"] * 50))
    assert reads == {
        ("template", "p1", "tpl_1"): 1,
        ("template", "p2", "tpl_1"): 1,
        ("provider", "p1", "sms"): 1,
        ("provider", "p2", "sms"): 1,
    }
    await asyncio.create_task(batch(["p1"] * 10))  # a later batch sees edits made since: read again
    assert reads["template", "p1", "tpl_1"] == 2
    assert reads["provider", "p1", "sms"] == 2
    # Two batches at once (two Kafka partitions) each have their own memo.
    await asyncio.gather(asyncio.create_task(batch(["p3"] * 5)), asyncio.create_task(batch(["p3"] * 5)))
    assert reads["template", "p3", "tpl_1"] == 2
    # Outside a batch (a tool calling the deliverer directly) every lookup reads.
    deliverer.template("p1", "tpl_1")
    deliverer.template("p1", "tpl_1")
    assert reads["template", "p1", "tpl_1"] == 4


async def test_a_lookup_that_raises_is_not_memoised() -> None:
    deliverer, reads = counting_deliverer()
    BatchLookups(deliverer)

    async def batch() -> None:
        BatchLookups.batch()
        for _ in range(3):
            with pytest.raises(RuntimeError, match="secrets unreadable"):
                deliverer.provider_for("p1", "broken")

    await asyncio.create_task(batch())
    assert reads["provider", "p1", "broken"] == 3


async def test_coalesced_calls_each_get_their_own_answer() -> None:
    workers = TemplateWorkers(2, 5.0, coalesce=True)
    try:
        results = await asyncio.gather(
            *(workers.call(operator.add, i, 1) for i in range(20)),
            workers.call(operator.truediv, 1, 0),
            return_exceptions=True,
        )
        assert results[:20] == [i + 1 for i in range(20)]
        assert isinstance(results[20], RuntimeError)
        assert "ZeroDivisionError" in str(results[20])
        assert workers.killed == 0
    finally:
        workers.close()


async def test_a_slow_job_in_a_coalesced_chunk_fails_alone_the_others_are_rendered() -> None:
    workers = TemplateWorkers(1, 1.0, coalesce=True)  # one worker: every job in one chunk
    try:
        await workers.warm()
        started = time.monotonic()
        results = await asyncio.gather(
            workers.call(operator.add, 1, 1),
            workers.call(time.sleep, 30),
            workers.call(operator.mul, 3, 3),
            return_exceptions=True,
        )
        took = time.monotonic() - started
        assert results[0] == 2
        assert results[2] == 9
        assert isinstance(results[1], TemplateRenderError)
        assert "longer than 1s" in results[1].reason
        # The chunk's deadline, then the slow job's own (plus starting the workers that replace the killed ones).
        assert took < 2 * 1.0 + 6.0
        assert workers.killed == 2  # the chunk's worker, then the slow job's
    finally:
        workers.close()


async def test_without_coalescing_calls_go_one_by_one() -> None:
    workers = TemplateWorkers(1, 5.0)
    try:
        assert await asyncio.gather(*(workers.call(operator.add, i, i) for i in range(3))) == [0, 2, 4]
    finally:
        workers.close()
