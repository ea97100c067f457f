"""Issue 9, class 8: the data directory is private, erased contacts stay erased, and what was
erased can't be brought back by an old unsubscribe link."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import httpx

from spotzee.providers.unsubscribe_tokens import make_token
from spotzee.schemas.common import epoch_ms
from spotzee.services.container import unsubscribe_secret
from tests.support import Stack, free_port, running_stack, wait_until

LOOSE_UMASK = "import os; os.umask(0o022); from spotzee.cli import main; main()"


def test_the_data_directory_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    env = {**os.environ, "SPOTZEE_LOG_LEVEL": "WARNING"}
    # a permissive umask, as on many desktops: the server must not inherit it
    server = subprocess.Popen(
        [sys.executable, "-c", LOOSE_UMASK, "up", "--data-dir", str(data_dir), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _healthy(port), timeout=90)
        write_key = json.loads((data_dir / "keys.json").read_text())["write_key"]
        sent = httpx.post(f"http://127.0.0.1:{port}/v1/track", auth=(write_key, ""), json={"userId": "u", "event": "e"})
        assert sent.status_code == 200, sent.text
    finally:
        server.terminate()
        server.wait(timeout=60)
    loose = []
    for root, dirs, files in os.walk(data_dir):
        for name in dirs:
            mode = stat.S_IMODE((Path(root) / name).stat().st_mode)
            if mode & 0o077:
                loose.append((os.path.join(root, name), oct(mode)))
        for name in files:
            path = Path(root) / name
            if path.is_symlink():
                continue
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                loose.append((str(path), oct(mode)))
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert not loose, f"readable by others: {loose[:10]}"
    assert sum(len(files) for _, _, files in os.walk(data_dir)) > 10  # RocksDB and chDB files were checked


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_an_existing_world_readable_data_dir_is_narrowed(tmp_path: Path) -> None:
    data_dir = tmp_path / "old"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    with running_stack(data_dir):
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700


def _email_link(stack: Stack, contact_id: str) -> tuple[str, str]:
    """The contact, created now, and the unsubscribe token an email to it carries (u2: bound to the
    contact's creation instant), with the older u1 form bound to the id only."""
    stack.ingest.post("/v1/identify", json={"userId": contact_id, "traits": {"email": f"{contact_id}@example.com"}})
    stack.settle()
    contact = stack.project.get(f"/api/v1/contacts/{contact_id}").json()
    created_ms = epoch_ms(datetime.fromisoformat(contact["created_at"]))
    secret = unsubscribe_secret(stack.services.settings)
    token = make_token(secret, stack.keys.project_id, contact_id, "email", contact_created_ms=created_ms)
    return token, make_token(secret, stack.keys.project_id, contact_id, "email")


def test_an_unsubscribe_link_does_nothing_after_the_contact_is_erased(shared_stack: Stack) -> None:
    stack = shared_stack
    token, legacy = _email_link(stack, "gone")
    assert stack.project.delete("/api/v1/contacts/gone").status_code == 202
    stack.settle()
    assert stack.project.get("/api/v1/contacts/gone").status_code == 404
    for link in (token, legacy):
        assert stack.client().post(f"/u/{link}").status_code == 200  # the page answers; it names nobody now
        stack.settle()
        assert stack.project.get("/api/v1/contacts/gone").status_code == 404, "the erased contact came back"
    # the same id used again later is a new person: the old link still does nothing to them
    stack.ingest.post("/v1/identify", json={"userId": "gone", "traits": {"email": "new@example.com"}})
    stack.settle()
    assert stack.client().post(f"/u/{token}").status_code == 200
    stack.settle()
    fresh = stack.project.get("/api/v1/contacts/gone").json()
    assert "subscriptions" not in fresh["traits"], fresh["traits"]


def test_an_unsubscribe_link_still_works_for_a_living_contact(shared_stack: Stack) -> None:
    stack = shared_stack
    token, _ = _email_link(stack, "alive")
    assert stack.client().post(f"/u/{token}").status_code == 200
    stack.settle()
    traits = stack.project.get("/api/v1/contacts/alive").json()["traits"]
    assert traits["subscriptions"]["email"] == "unsubscribed"


def test_an_unsubscribe_link_follows_the_contact_into_a_merge(shared_stack: Stack) -> None:
    stack = shared_stack
    token, _ = _email_link(stack, "merged-away")
    # the contact is merged into another (created at another instant): the link still unsubscribes it
    assert stack.ingest.post("/v1/alias", json={"userId": "survivor", "previousId": "merged-away"}).status_code == 200
    stack.settle()
    assert stack.client().post(f"/u/{token}").status_code == 200
    stack.settle()
    traits = stack.project.get("/api/v1/contacts/survivor").json()["traits"]
    assert traits["subscriptions"]["email"] == "unsubscribed"
