"""Class 8 (last point): provider secrets are sealed at rest.

A copied data directory (RocksDB, chDB, every file) or the raw Kafka ``definitions`` topic holds
no SMTP password nor webhook signing secret; delivery still uses them; the API never returns them.
"""

from __future__ import annotations

import asyncio
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from kafka import KafkaConsumer
from pydantic import SecretStr

from spotzee.providers.delivery_service import Deliverer, DeliverySettings, definition_lookups
from spotzee.providers.safety import OutboundPolicy
from spotzee.providers.sealing import (
    SecretBox,
    SecretsKeyMissing,
    SecretsUnreadable,
    open_definition,
    seal_definition,
    secrets_box,
)
from spotzee.providers.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from spotzee.runtime.kafka import admin
from spotzee.schemas.contact_models import ContactState
from spotzee.schemas.messages import SendCommand
from spotzee.schemas.provider_models import ProviderDefinition, SmtpConfig, StoredProvider
from spotzee.schemas.template_models import TemplateDefinition
from spotzee.streams import topics
from tests.integration.test_catalogue import WELCOME_EMAIL, welcome_journey
from tests.support import LOOPBACK_RELAY, Stack, files_holding, free_port, running_stack, wait_until

PASSWORD = f"smtp-pw-{uuid.uuid4().hex}"
SIGNING = f"whsec-{uuid.uuid4().hex}"
USERNAME = f"app-{uuid.uuid4().hex[:12]}"  # stored in clear: proves the grep sees the provider record
NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Mailbox:
    def __init__(self) -> None:
        self.received: list[Envelope] = []
        self.logins: list[tuple[bytes, bytes]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.append(envelope)
        return "250 OK"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        self.logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=(auth_data.login, auth_data.password) == (USERNAME.encode(), PASSWORD.encode()))


class Hooks(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        type(self).seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def receivers() -> Iterator[tuple[Mailbox, int, int]]:
    mailbox = Mailbox()
    smtp_port = free_port()
    controller = Controller(
        mailbox, hostname="127.0.0.1", port=smtp_port, authenticator=mailbox.authenticate, auth_require_tls=False
    )
    controller.start()
    Hooks.seen.clear()
    http = ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        yield mailbox, smtp_port, int(http.server_address[1])
    finally:
        http.shutdown()
        http.server_close()
        controller.stop()


def publish(stack: Stack, template_id: str, event: str, channel: str) -> None:
    body = welcome_journey(template_id)
    body["trigger"] = {"type": "event", "event": event}
    body["steps"]["wait"]["duration"] = {"value": 1, "unit": "second"}
    body["steps"]["mail"]["channel"] = channel
    journey_id = stack.project.post("/api/v1/journeys", json=body).json()["id"]
    assert stack.project.post(f"/api/v1/journeys/{journey_id}/publish").status_code == 200


def definitions_records(stack: Stack) -> list[bytes]:
    settings = stack.services.settings
    consumer = KafkaConsumer(
        admin.topic_name(settings, topics.DEFINITIONS),
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=3000,
    )
    try:
        return [(record.key or b"") + b"\x00" + (record.value or b"") for record in consumer]
    finally:
        consumer.close()


@pytest.mark.parametrize("runtime", ["embedded", "kafka"])
def test_secrets_are_sealed_in_every_file_and_topic_and_still_deliver(
    request: pytest.FixtureRequest, tmp_path: Path, runtime: str, receivers: tuple[Mailbox, int, int]
) -> None:
    mailbox, smtp_port, http_port = receivers
    bootstrap = request.getfixturevalue("kafka_bootstrap") if runtime == "kafka" else None
    data = tmp_path / "data"
    with running_stack(data, runtime=runtime, kafka_bootstrap=bootstrap, **LOOPBACK_RELAY) as stack:
        project = stack.project
        smtp = {
            "name": "relay",
            "channel": "email",
            "type": "smtp",
            "config": {
                "host": "127.0.0.1",
                "port": smtp_port,
                "security": "none",
                "username": USERNAME,
                "password": PASSWORD,
            },
        }
        hook = {"name": "hooks", "channel": "webhook", "type": "webhook", "config": {"signing_secret": SIGNING}}
        for body in (smtp, hook):
            created = project.post("/api/v1/providers", json=body)
            assert created.status_code == 201, created.text
            shown = [created.text, project.get(f"/api/v1/providers/{created.json()['id']}").text]
            for text in [*shown, project.get("/api/v1/providers").text]:
                assert PASSWORD not in text
                assert SIGNING not in text
        email_tpl = project.post("/api/v1/templates", json=WELCOME_EMAIL).json()["id"]
        webhook_tpl = {
            "name": "hook",
            "channel": "webhook",
            "content": {"url": f"http://127.0.0.1:{http_port}/hook", "body": "{{ contact.id }}"},
        }
        created_hook = project.post("/api/v1/templates", json=webhook_tpl)
        assert created_hook.status_code == 201, created_hook.text
        publish(stack, email_tpl, "signed_up", "email")
        publish(stack, created_hook.json()["id"], "hooked", "webhook")
        traits = {"plan": "free", "email": "ada@example.com"}
        stack.ingest.post("/v1/identify", json={"userId": "ada", "traits": traits})
        stack.ingest.post("/v1/track", json={"userId": "ada", "event": "signed_up"})
        stack.ingest.post("/v1/track", json={"userId": "ada", "event": "hooked"})

        # Delivery opened the secrets: the relay accepted the login, the receiver the signature.
        wait_until(lambda: len(mailbox.received) == 1 and len(Hooks.seen) == 1, timeout=60)
        assert mailbox.logins == [(USERNAME.encode(), PASSWORD.encode())]
        headers, body = Hooks.seen[0]
        assert verify_signature(
            SIGNING, headers[TIMESTAMP_HEADER.lower()], body, headers[SIGNATURE_HEADER.lower()], now=time.time()
        )
        stack.settle()

        assert files_holding(data, USERNAME.encode()), "the grep must see the stored provider"
        assert files_holding(data, PASSWORD.encode()) == []
        assert files_holding(data, SIGNING.encode()) == []
        if runtime == "kafka":
            records = definitions_records(stack)
            assert any(b"provider/" in r and USERNAME.encode() in r for r in records)
            assert not [r for r in records if PASSWORD.encode() in r or SIGNING.encode() in r]


def test_clear_secrets_of_an_earlier_version_still_load_and_are_sealed_at_the_next_write(tmp_path: Path) -> None:
    with running_stack(tmp_path / "data") as stack:
        services = stack.services
        project_id = stack.keys.project_id
        legacy = ProviderDefinition(
            id="prv_legacy",
            project_id=project_id,
            name="old relay",
            channel="email",
            provider_type="smtp",
            config=SmtpConfig(host="smtp.example.com", username=USERNAME, password=SecretStr(PASSWORD)),
            version=1,
            created_at=NOW,
            updated_at=NOW,
        )
        # What the previous version wrote: the secret in clear.
        services.runtime.put_definitions([("provider/prv_legacy", orjson.dumps(legacy.storage_dump()))], [])

        def stored() -> bytes:
            return next(value for key, value in services.runtime.scan_definitions("provider/prv_legacy"))

        assert PASSWORD.encode() in stored()
        loaded = services.providers.get(project_id, "prv_legacy")
        assert isinstance(loaded.config, SmtpConfig)
        assert loaded.config.password is not None
        assert loaded.config.password.get_secret_value() == PASSWORD
        shown = stack.project.get("/api/v1/providers/prv_legacy")
        assert shown.json()["config"]["has_password"] is True
        assert PASSWORD not in shown.text
        body = {
            "name": "old relay",
            "channel": "email",
            "type": "smtp",
            "config": {"host": "smtp.example.com", "username": USERNAME},
        }
        assert stack.project.put("/api/v1/providers/prv_legacy", json=body).status_code == 200
        assert PASSWORD.encode() not in stored()
        assert "sealed" in orjson.loads(stored())["config"]["password"]
        kept = services.providers.get(project_id, "prv_legacy").config
        assert isinstance(kept, SmtpConfig)
        assert kept.password is not None
        assert kept.password.get_secret_value() == PASSWORD


def test_a_provider_sealed_with_another_key_does_not_hide_the_others(tmp_path: Path) -> None:
    with running_stack(tmp_path / "data") as stack:
        project_id = stack.keys.project_id
        foreign = definition("prv_foreign").model_copy(update={"project_id": project_id, "channel": "email"})
        sealed = seal_definition(foreign, SecretBox(SecretStr("o" * 40)))
        stack.services.runtime.put_definitions([("provider/prv_foreign", sealed.model_dump_json().encode())], [])
        hook = {"name": "hooks", "channel": "webhook", "type": "webhook", "config": {"signing_secret": SIGNING}}
        assert stack.project.post("/api/v1/providers", json=hook).status_code == 201
        listed = stack.project.get("/api/v1/providers")
        assert listed.status_code == 200, listed.text
        assert {p["id"]: p["config"].get("has_password") for p in listed.json()["items"]}["prv_foreign"] is True
        assert stack.project.get("/api/v1/providers/prv_foreign").json()["config"]["has_password"] is True
        # The webhook channel's provider opens; the email one says which key it needs.
        webhook = stack.services.providers.first_for(project_id, "webhook")
        assert webhook is not None
        with pytest.raises(SecretsUnreadable, match="key id"):
            stack.services.providers.first_for(project_id, "email")


def definition(provider_id: str = "prv_1") -> ProviderDefinition:
    return ProviderDefinition(
        id=provider_id,
        project_id="p",
        name="relay",
        channel="email",
        provider_type="smtp",
        config=SmtpConfig(host="smtp.example.com", username=USERNAME, password=SecretStr(PASSWORD)),
        version=1,
        created_at=NOW,
        updated_at=NOW,
    )


def test_a_sealed_secret_opens_only_with_its_key_and_in_its_place() -> None:
    box = SecretBox(SecretStr("k" * 40))
    sealed = seal_definition(definition(), box)
    assert PASSWORD not in sealed.model_dump_json()
    opened = open_definition(sealed, box).config
    assert isinstance(opened, SmtpConfig)
    assert opened.password is not None
    assert opened.password.get_secret_value() == PASSWORD
    other = SecretBox(SecretStr("o" * 40))
    with pytest.raises(SecretsUnreadable, match=f"key id {box.key_id}.*key id {other.key_id}"):
        open_definition(sealed, other)
    # Copied into another provider, the sealed value does not open (bound to its place).
    moved = StoredProvider.model_validate({**sealed.model_dump(), "id": "prv_2"})
    with pytest.raises(SecretsUnreadable, match="does not open"):
        open_definition(moved, box)
    with pytest.raises(SecretsKeyMissing):
        SecretBox(SecretStr("short"))


def test_a_worker_with_another_key_retries_and_says_why() -> None:
    stored = orjson.dumps(seal_definition(definition(), SecretBox(SecretStr("k" * 40))).model_dump(mode="json"))
    template = WELCOME_EMAIL | {"id": "tpl", "project_id": "p", "version": 1, "created_at": NOW, "updated_at": NOW}
    rows = {
        "provider/prv_1": stored,
        "template/tpl": TemplateDefinition.model_validate(template).model_dump_json().encode(),
    }

    def scan(prefix: str) -> list[tuple[str, bytes]]:
        return [(key, value) for key, value in rows.items() if key.startswith(prefix)]

    wrong = SecretBox(SecretStr("o" * 40))
    lookup_template, provider_for = definition_lookups(scan, wrong)
    deliverer = Deliverer(
        DeliverySettings("https://spotzee.example", SecretStr("u" * 40), outbound=OutboundPolicy()),
        lookup_template,
        provider_for,
    )
    command = SendCommand(
        project_id="p",
        contact_id="ada",
        send_id="run:mail:1",
        channel="email",
        template_id="tpl",
        journey_id="j",
        run_id="run",
        step_id="mail",
        variables={},
        queued_at=NOW,
    )
    contact = ContactState(project_id="p", id="ada", email="ada@example.com", created_at=NOW, updated_at=NOW)
    result = asyncio.run(deliverer.deliver(command, contact))
    assert result.status == "retry"
    assert "SPOTZEE_SECRETS_KEY" in str(result.detail["reason"])
    assert wrong.key_id in str(result.detail["reason"])


def test_the_key_is_made_once_per_data_dir_and_required_on_kafka(tmp_path: Path) -> None:
    first = secrets_box(None, data_dir=tmp_path, embedded=True)
    key_file = tmp_path / "secrets.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert secrets_box(None, data_dir=tmp_path, embedded=True).key_id == first.key_id
    assert secrets_box(SecretStr("x" * 32), data_dir=tmp_path, embedded=False).key_id != first.key_id
    with pytest.raises(SecretsKeyMissing, match="SPOTZEE_SECRETS_KEY"):
        secrets_box(None, data_dir=tmp_path / "api", embedded=False)
