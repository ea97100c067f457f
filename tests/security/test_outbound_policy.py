"""Class 3: one outbound destination policy for every provider (SMTP, webhooks, later ones).

Destinations are vetted when written (400 with the field path) and again when connecting, on
the resolved address; the connection goes to the checked address. The operator's allow-list
(``SPOTZEE_OUTBOUND_ALLOWED_NETWORKS``, earlier ``SPOTZEE_WEBHOOK_ALLOWED_NETWORKS``) admits a
private relay.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Sink
from aiosmtpd.smtp import SMTP
from pydantic import SecretStr

from spotzee.providers.adapter import EmailDelivery, Permanent, Sent, WebhookDelivery
from spotzee.providers.safety import OutboundPolicy
from spotzee.providers.sealing import seal_definition
from spotzee.providers.smtp import SmtpSender
from spotzee.providers.webhook import WebhookSender
from spotzee.schemas.provider_models import SmtpConfig, WebhookConfig
from spotzee.schemas.template_models import RenderedEmail, RenderedWebhook
from spotzee.settings import Settings
from tests.integration.test_catalogue import WELCOME_EMAIL, welcome_journey
from tests.support import Stack, free_port, running_stack, wait_until

# Every form of an internal destination the issue lists, plus the resolver's other numeric forms.
INTERNAL_HOSTS = [
    "127.0.0.1",
    "10.0.0.1",
    "169.254.169.254",
    "::1",
    "::ffff:127.0.0.1",
    "2130706433",
    "0x7f.1",
    "017700000001",
    "127.1",
    "0177.0.0.1",
    "metadata.google.internal",
    "localhost",
    "0.0.0.0",
    "[::ffff:7f00:1]",
]
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


class CountingSMTP(SMTP):
    """An aiosmtpd session that counts TCP connections as they are accepted."""

    connections: ClassVar[list[object]] = []

    def connection_made(self, transport: Any) -> None:
        type(self).connections.append(transport)
        super().connection_made(transport)


class CountingController(Controller):
    def factory(self) -> SMTP:
        return CountingSMTP(self.handler, **self.SMTP_kwargs)


@pytest.fixture
def relay() -> Iterator[int]:
    """An SMTP server on loopback that records every TCP connection it accepts."""
    port = free_port()
    controller = CountingController(Sink(), hostname="127.0.0.1", port=port)
    controller.start()
    wait_until(lambda: len(CountingSMTP.connections) > 0, timeout=5)  # start() checks it answers
    CountingSMTP.connections.clear()
    try:
        yield port
    finally:
        controller.stop()


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def smtp_body(host: str, port: int = 25) -> dict[str, Any]:
    return {
        "name": "relay",
        "channel": "email",
        "type": "smtp",
        "config": {"host": host, "port": port, "security": "none", "username": "u", "password": "p"},
    }


@pytest.mark.runtimes("embedded")
def test_internal_destinations_are_refused_when_written_with_the_field_path(stack: Stack) -> None:
    project = stack.project
    existing = project.post("/api/v1/providers", json=smtp_body("smtp.example.com"))
    assert existing.status_code == 201, existing.text
    provider_id = existing.json()["id"]
    for host in INTERNAL_HOSTS:
        created = project.post("/api/v1/providers", json=smtp_body(host))
        assert created.status_code == 400, (host, created.text)
        details = created.json()["error"]["details"]
        assert [d["path"] for d in details] == ["config.host"], (host, details)
        assert "destination refused" in details[0]["reason"], (host, details)
        updated = project.put(f"/api/v1/providers/{provider_id}", json=smtp_body(host))
        assert updated.status_code == 400, (host, updated.text)
        assert [d["path"] for d in updated.json()["error"]["details"]] == ["config.host"]
        template = {"name": "hook", "channel": "webhook", "content": {"url": f"http://{url_host(host)}:8080/hook"}}
        hook = project.post("/api/v1/templates", json=template)
        assert hook.status_code == 400, (host, hook.text)
        assert [d["path"] for d in hook.json()["error"]["details"]] == ["content.url"], (host, hook.text)
    # Nothing was stored or changed.
    listed = project.get("/api/v1/providers").json()["items"]
    assert [(p["id"], p["config"]["host"], p["version"]) for p in listed] == [(provider_id, "smtp.example.com", 1)]
    assert project.get("/api/v1/templates").json()["items"] == []
    # A public destination, and a host that comes from a merge tag (checked when sending), pass.
    ok = {"name": "hook", "channel": "webhook", "content": {"url": "https://{{ contact.domain }}/hook"}}
    assert project.post("/api/v1/templates", json=ok).status_code == 201
    public = project.post("/api/v1/providers", json=smtp_body("93.184.216.34"))
    assert public.status_code == 201, public.text


def test_numeric_host_forms_are_stored_as_the_address_they_mean() -> None:
    assert SmtpConfig(host="2130706433").host == "127.0.0.1"
    assert SmtpConfig(host="0x7f.1").host == "127.0.0.1"
    assert SmtpConfig(host="017700000001").host == "127.0.0.1"
    assert SmtpConfig(host="[::FFFF:7F00:1]").host == "::ffff:7f00:1"
    with pytest.raises(ValueError, match="host"):
        SmtpConfig(host="08.1")  # a numeric last label is no name, and no resolver reads it alike


def email() -> EmailDelivery:
    return EmailDelivery(
        send_id="s1",
        to="ada@example.com",
        email=RenderedEmail(subject="Hi", text="Hello", from_="Team <team@example.com>"),
        unsubscribe_url="https://spotzee.example/u/t",
    )


def resolving_to(address: str) -> Any:
    asked: list[str] = []

    async def resolver(host: str, port: int) -> Sequence[str]:
        asked.append(host)
        return [address]

    resolver.asked = asked  # type: ignore[attr-defined]
    return resolver


async def test_a_name_resolving_to_loopback_is_refused_at_connect_time(relay: int) -> None:
    resolver = resolving_to("127.0.0.1")
    config = SmtpConfig(host="relay.example.com", port=relay, security="none", timeout=5)
    refused = await SmtpSender(config, policy=OutboundPolicy(resolver=resolver)).send(email())
    assert isinstance(refused, Permanent), refused
    assert "destination refused" in refused.reason
    assert "loopback" in refused.reason
    assert resolver.asked == ["relay.example.com"]
    await asyncio.sleep(0.2)
    assert CountingSMTP.connections == []  # no TCP connection reached the server
    # The same name with the operator's allow-list: connected to the checked address, delivered.
    allowed = await SmtpSender(config, policy=OutboundPolicy(allowed_networks=LOOPBACK, resolver=resolver)).send(
        email()
    )
    assert isinstance(allowed, Sent), allowed
    assert len(CountingSMTP.connections) == 1


class Hits(BaseHTTPRequestHandler):
    count: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        type(self).count.append(self.path)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


async def test_a_webhook_name_resolving_to_loopback_is_refused_at_connect_time() -> None:
    Hits.count.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hits)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = int(server.server_address[1])
    try:
        resolver = resolving_to("127.0.0.1")
        request = WebhookDelivery(
            send_id="s1", request=RenderedWebhook(method="POST", url=f"http://hooks.example.com:{port}/x", headers={})
        )
        config = WebhookConfig(signing_secret=SecretStr("s" * 32))
        sender = WebhookSender(config, policy=OutboundPolicy(resolver=resolver))
        try:
            refused = await sender.send(request)
        finally:
            await sender.aclose()
        assert isinstance(refused, Permanent), refused
        assert "loopback" in refused.reason
        assert Hits.count == []
        allowed_sender = WebhookSender(config, policy=OutboundPolicy(allowed_networks=LOOPBACK, resolver=resolver))
        try:
            assert isinstance(await allowed_sender.send(request), Sent)
        finally:
            await allowed_sender.aclose()
        assert Hits.count == ["/x"]
    finally:
        server.shutdown()
        server.server_close()


def test_a_stored_destination_that_became_internal_is_never_connected(tmp_path: Path, relay: int) -> None:
    """A provider stored before the policy (or written to the store directly) points at loopback:
    the send is refused at connect time and recorded failed; the relay sees no connection."""
    with running_stack(tmp_path / "data") as stack:
        project = stack.project
        created = project.post("/api/v1/providers", json=smtp_body("smtp.example.com", relay))
        assert created.status_code == 201, created.text
        services = stack.services
        provider = services.providers.get(stack.keys.project_id, created.json()["id"])
        internal = provider.model_copy(update={"config": provider.config.model_copy(update={"host": "127.0.0.1"})})
        stored = orjson.dumps(seal_definition(internal, services.providers.box).model_dump(mode="json"))
        services.runtime.put_definitions([(f"provider/{provider.id}", stored)], [])
        template_id = project.post("/api/v1/templates", json=WELCOME_EMAIL).json()["id"]
        journey = welcome_journey(template_id)
        journey["steps"]["wait"]["duration"] = {"value": 1, "unit": "second"}
        journey_id = project.post("/api/v1/journeys", json=journey).json()["id"]
        assert project.post(f"/api/v1/journeys/{journey_id}/publish").status_code == 200
        traits = {"plan": "free", "email": "ada@example.com"}
        stack.ingest.post("/v1/identify", json={"userId": "ada", "traits": traits})
        stack.ingest.post("/v1/track", json={"userId": "ada", "event": "signed_up"})

        def failed() -> list[list[Any]]:
            stack.settle()
            return stack.sql(
                f"SELECT detail FROM messages FINAL WHERE journey_id = '{journey_id}' AND status = 'failed'"
            )

        wait_until(lambda: bool(failed()), timeout=60, interval=0.5)
        assert "destination refused" in failed()[0][0]
        assert "loopback" in failed()[0][0]
    assert CountingSMTP.connections == []


def test_the_allow_list_settings_and_their_earlier_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OUTBOUND_ALLOW_PRIVATE",
        "OUTBOUND_ALLOWED_NETWORKS",
        "WEBHOOK_ALLOW_PRIVATE",
        "WEBHOOK_ALLOWED_NETWORKS",
    ):
        monkeypatch.delenv(f"SPOTZEE_{name}", raising=False)
    assert Settings(outbound_allowed_networks=["127.0.0.0/8"]).outbound_allowed_networks == ["127.0.0.0/8"]
    assert Settings().outbound_allowed_networks == []
    assert Settings().outbound_allow_private is False
    monkeypatch.setenv("SPOTZEE_WEBHOOK_ALLOW_PRIVATE", "true")
    monkeypatch.setenv("SPOTZEE_WEBHOOK_ALLOWED_NETWORKS", '["10.1.0.0/16"]')
    old = Settings()
    assert old.outbound_allow_private is True
    assert old.outbound_allowed_networks == ["10.1.0.0/16"]
    monkeypatch.setenv("SPOTZEE_OUTBOUND_ALLOWED_NETWORKS", '["127.0.0.0/8"]')
    assert Settings().outbound_allowed_networks == ["127.0.0.0/8"]  # the current name wins
    with pytest.raises(ValueError, match="network"):
        Settings(outbound_allowed_networks=["not-a-network"])
