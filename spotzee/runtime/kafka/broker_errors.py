"""The Kafka edge: a broker failure becomes ``LogUnavailable`` (HTTP 503), in one place.

Both clients' errors -- aiokafka's (the API's producer and consumers) and kafka-python's (the
synchronous producer, the definitions loader, the admin client) -- and OS-level failures
(connection refused; timeouts: ``TimeoutError`` is an ``OSError``) mean the same to a caller: the
log can't take or give records now. ``kafka_errors`` maps them; each caller says what failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from aiokafka.errors import KafkaError
from kafka.errors import KafkaError as SyncKafkaError

from spotzee.errors import LogUnavailable

BROKER_ERRORS: tuple[type[Exception], ...] = (KafkaError, SyncKafkaError, OSError)


def describe_error(exc: BaseException) -> str:
    """``Name: text``; the name alone without text, the text alone when it starts with the name."""
    text = str(exc).strip()
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}" if text else name


def with_type(exc: BaseException) -> str:
    """``Name: text``, always."""
    return f"{type(exc).__name__}: {exc}"


@contextmanager
def kafka_errors(
    message: str, *, detail: Callable[[BaseException], str] = str, on_error: Callable[[str], None] | None = None
) -> Iterator[None]:
    """A broker failure inside the block raises ``LogUnavailable(f"{message}: {detail(exc)}")``
    (chained); ``on_error`` gets the detail first (to record it, or to release what failed)."""
    try:
        yield
    except BROKER_ERRORS as exc:
        text = detail(exc)
        if on_error is not None:
            on_error(text)
        raise LogUnavailable(f"{message}: {text}") from exc
