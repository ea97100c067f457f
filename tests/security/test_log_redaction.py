"""Issue 9, class 6: no secret in a log line or a traceback.

A real ``spotzee up`` at DEBUG is driven through every kind of error (bad keys, wrong key kinds,
bad bodies, bad SQL, bad templates, unsubscribe links, provider credentials), then its whole log
is searched for every secret it was given. An unhandled exception raised where the request's
``Authorization`` header is a local variable is logged without it.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from spotzee.logging import RedactingFormatter, configure, redact, register_secret
from spotzee.providers.unsubscribe_tokens import make_token
from tests.support import Stack, free_port, wait_until

UNSUBSCRIBE_SECRET = "unsubscribe-secret-" + "9" * 32
PROVIDER_PASSWORD = "smtp-password-Zq8!xk2"
SIGNING_SECRET = "whsec_signing-secret-4f1d"


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def debug_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Path]]:
    data_dir, port, log_path = tmp_path / "data", free_port(), tmp_path / "server.log"
    env = {
        **os.environ,
        "SPOTZEE_LOG_LEVEL": "DEBUG",
        "SPOTZEE_UNSUBSCRIBE_SECRET": UNSUBSCRIBE_SECRET,
        "SPOTZEE_OUTBOUND_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
    }
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "spotzee", "up", "--data-dir", str(data_dir), "--port", str(port)],
            env=env,
            # stdout shows the bootstrap keys once, by design (README); the log is stderr
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _healthy(base), timeout=90)
        keys = json.loads((data_dir / "keys.json").read_text())
        yield base, keys, log_path
    finally:
        server.terminate()
        server.wait(timeout=60)


def _exercise_error_paths(base: str, keys: dict[str, str]) -> None:
    write, secret, admin = keys["write_key"], keys["secret_key"], keys["admin_key"]
    bearer = {"authorization": f"Bearer {secret}"}
    with httpx.Client(base_url=base, timeout=30) as http:
        # wrong key kinds, revoked-looking keys, malformed credentials
        http.get("/api/v1/segments", headers={"authorization": f"Bearer {write}"})
        http.get("/api/v1/audit", headers={"authorization": f"Bearer {secret}"})
        http.post("/api/v1/sql", headers={"authorization": f"Bearer {secret}"}, json={"query": "SELECT 1"})
        http.post("/v1/track", auth=(secret, ""), json={"userId": "u", "event": "e"})
        http.post("/v1/track", auth=(write + "x", ""), json={"userId": "u", "event": "e"})
        http.post("/v1/track", headers={"authorization": ("Basic " + "é" * 4).encode()}, content=b"{}")
        http.post("/v1/track", json={"writeKey": write + "nope", "userId": "u", "event": "e"})
        # bad bodies, with the key in the body as well
        http.post("/v1/track", auth=(write, ""), content=b"{not json")
        http.post("/v1/batch", json={"writeKey": write, "batch": [{"type": "track"}]})
        http.post("/v1/identify", auth=(write, ""), json={"userId": "u", "traits": {"email": "bad"}})
        http.post("/api/v1/segments", headers=bearer, json={"name": "s", "rule": {"type": "nope"}})
        http.post("/api/v1/sql", headers={"authorization": f"Bearer {admin}"}, json={"query": "SELEC nonsense"})
        http.post("/api/v1/templates", headers=bearer, json={"name": "t", "channel": "email", "content": {}})
        http.get("/api/v1/contacts/nobody", headers=bearer)
        # provider credentials: created, read back, used by a failing send
        for provider in (
            {
                "name": "relay",
                "channel": "email",
                "type": "smtp",
                "config": {"host": "127.0.0.1", "port": free_port(), "username": "u", "password": PROVIDER_PASSWORD},
            },
            {
                "name": "hook",
                "channel": "webhook",
                "type": "webhook",
                "config": {"signing_secret": SIGNING_SECRET},
            },
        ):
            created = http.post("/api/v1/providers", headers=bearer, json=provider)
            if created.status_code == 201:
                http.get(f"/api/v1/providers/{created.json()['id']}", headers=bearer)
        # unsubscribe links, valid and forged
        token = make_token(UNSUBSCRIBE_SECRET, keys["project_id"], "u", "email")
        http.get(f"/u/{token}")
        http.post(f"/u/{token}")
        http.post(f"/u/{token}x")
        # keys made and rotated through the API are secrets too
        made = http.post("/api/v1/keys", headers={"authorization": f"Bearer {admin}"}, json={"kind": "secret"})
        if made.status_code == 201:
            http.get("/api/v1/segments", headers={"authorization": f"Bearer {made.json().get('key', '')}x"})


def test_a_debug_log_holds_no_secret(debug_server: tuple[str, dict[str, str], Path]) -> None:
    base, keys, log_path = debug_server
    _exercise_error_paths(base, keys)
    text = log_path.read_text(errors="replace")
    assert len(text) > 200, "the server logged nothing: the test would prove nothing"
    secrets = [keys["write_key"], keys["secret_key"], keys["admin_key"], UNSUBSCRIBE_SECRET]
    secrets += [PROVIDER_PASSWORD, SIGNING_SECRET, base64.b64encode(f"{keys['write_key']}:".encode()).decode()]
    for secret in secrets:
        assert secret not in text, f"a secret ({secret[:4]}...) is in the log"
    # a key is recognisable even without its full value: no long run of it either
    for key in (keys["write_key"], keys["secret_key"], keys["admin_key"]):
        assert key[3:19] not in text


def test_an_unhandled_exception_is_logged_without_the_request_headers(
    shared_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    configure("DEBUG")
    root = logging.getLogger()
    handler = root.handlers[0]
    assert isinstance(handler.formatter, RedactingFormatter)
    capture = logging.StreamHandler(stream)
    capture.setFormatter(handler.formatter)
    root.addHandler(capture)
    secret_key = shared_stack.keys.secret_key

    def explode(*args: object, **kwargs: object) -> None:
        authorization = f"Bearer {secret_key}"  # a local in the failing frame, as in the report
        raise RuntimeError(f"boom while handling {authorization!r} and {secret_key}")

    monkeypatch.setattr(shared_stack.services.segments, "get", explode)
    try:
        response = shared_stack.project.get("/api/v1/segments/seg_0000000000000000")
        assert response.status_code == 500
        assert secret_key not in response.text
    finally:
        root.removeHandler(capture)
    text = stream.getvalue()
    assert "RuntimeError" in text, text[:2000]
    assert "Traceback" in text
    assert secret_key not in text
    assert secret_key[3:19] not in text


def test_registered_secrets_and_key_shapes_are_masked() -> None:
    register_secret("a-provider-password-123")
    line = redact("login a-provider-password-123 with sk_0123456789abcdef and Bearer ak_zzzzzzzzzzzzzzzz")
    assert "a-provider-password-123" not in line
    assert "0123456789abcdef" not in line
    assert "zzzzzzzzzzzzzzzz" not in line
    assert "http://user:***@host" in redact("dsn http://user:hunter22@host:8123/db")
