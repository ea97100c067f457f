"""Vetting the destinations a tenant writes, before anything is stored (400 with the field path).

Provider configs declare their destinations (``ProviderConfigModel.destinations``), so a provider
added later is vetted here without a change; webhook templates carry their URL. Both go through
the ``OutboundPolicy`` the senders connect with, and the senders check again on the resolved
address at every connection.
"""

from __future__ import annotations

from spotzee.errors import InvalidInput
from spotzee.providers.safety import DestinationRefused, OutboundPolicy
from spotzee.schemas.provider_models import ProviderConfig
from spotzee.schemas.template_models import Content, WebhookContent


async def check_provider(config: ProviderConfig, policy: OutboundPolicy, *, prefix: str = "config") -> None:
    """Refuse a config whose destinations the policy refuses (``InvalidInput``, one detail per field)."""
    details = []
    for endpoint in config.destinations():
        try:
            await policy.check_host(endpoint.host, endpoint.port)
        except DestinationRefused as exc:
            details.append({"path": f"{prefix}.{endpoint.field}", "reason": f"destination refused: {exc.message}"})
    if details:
        raise InvalidInput("provider destination refused", details=details)


async def check_template(content: Content, policy: OutboundPolicy) -> None:
    """Refuse a webhook template whose URL names a refused host (a merge-tag host is checked at send)."""
    if not isinstance(content, WebhookContent):
        return
    try:
        await policy.check_url_template(content.url)
    except DestinationRefused as exc:
        raise InvalidInput(
            "webhook destination refused",
            details=[{"path": "content.url", "reason": f"destination refused: {exc.message}"}],
        ) from None
