"""Provider secrets at rest: sealed with AES-256-GCM before they reach the definitions store.

A copied RocksDB directory or a read of the Kafka ``definitions`` topic must not give away SMTP
passwords or webhook signing secrets. Each secret field of a provider config is stored as
``{"sealed": "v1.<key id>.<base64url(nonce | ciphertext+tag)>"}``:

- the AES key is derived (HKDF-SHA256) from ``SPOTZEE_SECRETS_KEY`` (at least 32 characters,
  the same on every API process and worker); the embedded runtime, when it is unset, makes one
  once in ``<data_dir>/secrets.key`` (mode 0600, beside ``keys.json``). The Kafka runtime needs it
  set: a key made by one process would be unknown to the others;
- a fresh 96-bit nonce per seal; the associated data binds the ciphertext to its project,
  provider and field, so a sealed value copied into another provider does not open;
- the key id (derived from the key, not revealing it) names the key a value was sealed with, so
  a process holding another key says so instead of failing obscurely.

Values written before sealing existed are clear strings: they are still read, and sealed on the
next write of that provider (``PUT``, ``DELETE``). Rotating the key means re-entering the secrets.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

from spotzee.errors import SpotzeeError
from spotzee.logging import register_secret
from spotzee.schemas.provider_models import CONFIG_MODELS, ProviderDefinition, StoredProvider

VERSION: Final = "v1"
NONCE_BYTES: Final = 12
MIN_KEY_CHARS: Final = 32
KEY_FILE: Final = "secrets.key"


class SecretsKeyMissing(SpotzeeError):
    """No key to seal provider secrets with (the Kafka runtime needs ``SPOTZEE_SECRETS_KEY``)."""

    code = "secrets_key_missing"


class SecretsUnreadable(SpotzeeError):
    """A sealed secret does not open with this process's key (another key, or altered data)."""

    code = "secrets_unreadable"


def _derive(material: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(material)


class SecretBox:
    """Seals and opens secret strings with one key."""

    def __init__(self, key: SecretStr) -> None:
        material = key.get_secret_value().encode("utf-8")
        if len(material) < MIN_KEY_CHARS:
            raise SecretsKeyMissing(f"the secrets key must be at least {MIN_KEY_CHARS} characters")
        register_secret(key)  # never in a log line
        self._aead = AESGCM(_derive(material, b"spotzee provider secrets v1"))
        self.key_id = _derive(material, b"spotzee provider secrets key id").hex()[:12]

    def seal(self, plaintext: str, context: str) -> dict[str, str]:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode("utf-8"), context.encode("utf-8"))
        token = base64.urlsafe_b64encode(nonce + sealed).decode("ascii")
        return {"sealed": f"{VERSION}.{self.key_id}.{token}"}

    def open(self, value: object, context: str) -> str:
        """The secret in ``value``: a sealed dict, or a clear string written before sealing.

        Every secret opened is registered with the log redactor: from here on it is in memory,
        and a vendor's error message or a traceback might repeat it."""
        if isinstance(value, str):
            register_secret(value)
            return value
        if not (isinstance(value, dict) and isinstance(value.get("sealed"), str)):
            raise SecretsUnreadable(f"{context}: not a sealed secret")
        version, key_id, token = [*value["sealed"].split(".", 2), "", ""][:3]
        if version != VERSION:
            raise SecretsUnreadable(f"{context}: unknown sealing version {version!r}")
        if key_id != self.key_id:
            raise SecretsUnreadable(
                f"{context}: sealed with secrets key id {key_id}, this process has key id {self.key_id} "
                "(SPOTZEE_SECRETS_KEY must be the same on every API process and worker)"
            )
        try:
            raw = base64.urlsafe_b64decode(token)
            plain = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode("utf-8"))
        except (binascii.Error, ValueError, InvalidTag):
            raise SecretsUnreadable(f"{context}: the sealed secret does not open (altered or moved)") from None
        secret = plain.decode("utf-8")
        register_secret(secret)
        return secret


def _context(project_id: str, provider_id: str, field: str) -> str:
    return f"spotzee/{project_id}/provider/{provider_id}/config.{field}"


def seal_definition(definition: ProviderDefinition, box: SecretBox) -> StoredProvider:
    """The store's form of ``definition``: every secret field of its config sealed."""
    dumped = definition.storage_dump()
    config: dict[str, Any] = dumped["config"]
    for field in CONFIG_MODELS[definition.provider_type].secret_fields:
        value = config.get(field)
        if isinstance(value, str):
            config[field] = box.seal(value, _context(definition.project_id, definition.id, field))
    return StoredProvider.model_validate(dumped)


def open_definition(stored: StoredProvider, box: SecretBox) -> ProviderDefinition:
    """The usable definition: sealed secrets opened (raises ``SecretsUnreadable``)."""
    config = dict(stored.config)
    for field in CONFIG_MODELS[stored.provider_type].secret_fields:
        if config.get(field) is not None:
            config[field] = box.open(config[field], _context(stored.project_id, stored.id, field))
            register_secret(config[field])  # an opened secret is masked in every log line
    return ProviderDefinition.model_validate({**stored.model_dump(), "config": config})


def has_clear_secrets(stored: StoredProvider) -> bool:
    """Written before sealing existed: a secret field still in clear."""
    fields = CONFIG_MODELS[stored.provider_type].secret_fields
    return any(isinstance(stored.config.get(field), str) for field in fields)


def secrets_box(key: SecretStr | None, *, data_dir: Path, embedded: bool) -> SecretBox:
    """The configured key; else, on the embedded runtime, the one made once for this data dir."""
    if key is not None:
        return SecretBox(key)
    if not embedded:
        raise SecretsKeyMissing(
            "SPOTZEE_SECRETS_KEY is not set: the Kafka runtime needs it (at least 32 characters, the same on "
            "every API process and worker) to seal and open provider secrets"
        )
    return SecretBox(SecretStr(_key_file(data_dir / KEY_FILE)))


def _key_file(path: Path) -> str:
    """Read ``path``, or create it (0600) atomically: a concurrent process reads the same key."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        draft = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):  # another process made it first: theirs is the key
                os.link(draft, path)
        finally:
            draft.unlink(missing_ok=True)
    return path.read_text().strip()
