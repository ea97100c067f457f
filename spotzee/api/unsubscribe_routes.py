"""Unsubscribe links: ``GET /u/{token}`` asks, ``POST /u/{token}`` unsubscribes (RFC 8058 one-click).

A GET never changes anything (mail scanners prefetch links); the page's button and a mail
client's one-click ``List-Unsubscribe-Post`` both POST. The token is signed (no key needed): it
names the project, the contact and the channel. Unsubscribing sets the trait
``subscriptions.<channel>`` to ``unsubscribed``, which the delivery agent checks at send time.
"""

from __future__ import annotations

import html
import uuid
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from spotzee.api.deps import ServicesDep
from spotzee.api.error_handlers import envelope_responses
from spotzee.providers.unsubscribe_tokens import InvalidUnsubscribeToken, UnsubscribeClaim, read_token
from spotzee.schemas.records import ContactPatch, record_key
from spotzee.services.container import Services, unsubscribe_secret
from spotzee.streams.record_codec import dumps

router = APIRouter(tags=["unsubscribe"])
WAIT_SECONDS = 10.0
_INVALID_LINK: dict[int | str, dict[str, Any]] = {
    400: {
        "description": "Not a link Spotzee signed: an HTML page says so",
        "content": {"text/html": {"schema": {"type": "string"}}},
    }
}


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    text = f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body>{body}</body></html>"
    return HTMLResponse(text, status_code=status)


def _claim(services: Services, token: str) -> UnsubscribeClaim | None:
    """Who the token names, or None when it is not a token of this installation."""
    try:
        return read_token(unsubscribe_secret(services.settings), token)
    except InvalidUnsubscribeToken:
        return None


def _invalid_link() -> HTMLResponse:
    return _page("Invalid link", "<p>This unsubscribe link is not valid.</p>", 400)


@router.get("/u/{token}", response_class=HTMLResponse, responses={**_INVALID_LINK, **envelope_responses("default")})
async def confirm_unsubscribe(token: str, services: ServicesDep) -> HTMLResponse:
    claim = _claim(services, token)
    if claim is None:
        return _invalid_link()
    action = html.escape(f"/u/{token}", quote=True)
    return _page(
        "Unsubscribe",
        f"<p>Stop receiving {html.escape(claim.channel)} messages?</p>"
        f"<form method='post' action='{action}'><button type='submit'>Unsubscribe</button></form>",
    )


@router.post(
    "/u/{token}",
    response_class=HTMLResponse,
    responses={**_INVALID_LINK, **envelope_responses(429, 503, "default")},
)
async def unsubscribe(token: str, services: ServicesDep) -> HTMLResponse:
    claim = _claim(services, token)
    if claim is None:
        return _invalid_link()
    patch = ContactPatch(
        project_id=claim.project_id,
        id=claim.contact_id,
        traits={"subscriptions": {claim.channel: "unsubscribed"}},
        requested_at=services.clock.now(),
        request_id=f"unsubscribe:{uuid.uuid4()}",
        only_existing=True,
        only_created_ms=claim.contact_created_ms,
    )
    positions = await services.runtime.append([(record_key(patch), dumps(patch))])
    await services.runtime.wait_processed(positions, WAIT_SECONDS)  # durable already; this is for read-your-writes
    return _page("Unsubscribed", f"<p>You will not receive {html.escape(claim.channel)} messages any more.</p>")
