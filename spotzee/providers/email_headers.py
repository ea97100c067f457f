"""What every email channel adapter puts on a message besides its content: the mailbox parts and
the unsubscribe headers, shared by SMTP (``spotzee.providers.smtp``) and the HTTP email APIs
(SendGrid, Postmark, SES) so that every path sends the same headers.

- ``List-Unsubscribe: <https://.../u/{token}>`` (plus ``<mailto:...?subject=unsubscribe>`` when
  configured) and, for an HTTPS link only, ``List-Unsubscribe-Post: List-Unsubscribe=One-Click``
  (RFC 8058 one-click requires an HTTPS URI; mailbox providers act on it without a visit).
"""

from __future__ import annotations

from email.utils import getaddresses
from typing import Final

from spotzee.providers.adapter import EmailDelivery

ONE_CLICK: Final = "List-Unsubscribe=One-Click"


def addr_spec(mailbox: str) -> str:
    """``Name <a@b>`` -> ``a@b`` (mailboxes were validated when the template was created)."""
    return getaddresses([mailbox])[0][1]


def mailbox_parts(mailbox: str) -> tuple[str, str]:
    """``Name <a@b>`` -> ``("Name", "a@b")``; ``a@b`` -> ``("", "a@b")``."""
    name, address = getaddresses([mailbox])[0]
    return name, address


def unsubscribe_headers(delivery: EmailDelivery) -> list[tuple[str, str]]:
    """``List-Unsubscribe`` and, for an HTTPS link, ``List-Unsubscribe-Post`` (in that order)."""
    targets = [f"<{delivery.unsubscribe_url}>"]
    if delivery.unsubscribe_mailto is not None:
        targets.append(f"<mailto:{addr_spec(delivery.unsubscribe_mailto)}?subject=unsubscribe>")
    headers = [("List-Unsubscribe", ", ".join(targets))]
    if delivery.unsubscribe_url.startswith("https://"):
        headers.append(("List-Unsubscribe-Post", ONE_CLICK))
    return headers
