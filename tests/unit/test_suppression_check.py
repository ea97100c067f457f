"""The send-time suppression check in ``Deliverer.deliver`` for SMS (the contact's phone), over
the same index the embedded runtime uses, against a Twilio server on loopback: a suppressed
number is never sent to, another project's entry doesn't count, and removing the entry lets the
next send out."""

from __future__ import annotations

import asyncio
from typing import Any

from spotzee.providers.delivery_service import DeliveryResult
from spotzee.schemas.suppression_models import SuppressionEntry, suppression_key
from spotzee.services.suppression_service import SuppressionIndex, suppression_lookup
from spotzee.streams.record_codec import dumps
from tests.unit.test_sms_delivery_service import NOW, World, ada, command, twilio
from tests.vendors.twilio_server import TwilioServer

__all__ = ["twilio"]  # the Twilio server fixture, shared with test_sms_delivery_service

PHONE = "+447700900123"


def entry(project_id: str, channel: str = "sms") -> tuple[str, bytes]:
    item = SuppressionEntry(
        project_id=project_id, channel=channel, address=PHONE, reason="stop", note=None, created_at=NOW
    )
    return suppression_key(project_id, channel, PHONE), dumps(item)


def test_a_suppressed_phone_is_not_sent_to_until_its_entry_is_removed(twilio: TwilioServer) -> None:
    index = SuppressionIndex([entry("p"), entry("other"), entry("p", "whatsapp")])
    deliverer = World(twilio).deliverer()
    deliverer.suppressed = suppression_lookup(index.get)

    async def run() -> list[DeliveryResult]:
        results: list[Any] = []
        try:
            results.append(await deliverer.deliver(command(1), ada()))
            results.append(await deliverer.deliver(command(2), ada(phone="+44 7700 900123")))
            index.apply(entry("p")[0], None)  # removed from the list
            results.append(await deliverer.deliver(command(3), ada()))
        finally:
            await deliverer.aclose()
        return results

    suppressed, formatted, sent = asyncio.run(run())
    assert (suppressed.status, suppressed.detail) == ("suppressed", {"reason": "suppressed address (stop)"})
    assert formatted.status == "suppressed"  # the number in another spelling is the same entry
    assert sent.status == "sent"  # the whatsapp entry and another project's don't suppress SMS
    assert len(twilio.accepted) == 1
    assert twilio.accepted[0].form()["To"] == PHONE
