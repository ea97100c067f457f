"""`spotzee worker` keeps Spotzee's redacting log handler: faust's worker (mode) must not replace it."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import faust
from pydantic import SecretStr

from spotzee.agents.worker import faust_worker
from spotzee.logging import MASK, RedactingFormatter, configure
from spotzee.settings import Settings


def test_the_faust_worker_leaves_the_redacting_handler_in_place(tmp_path: Path) -> None:
    secret = "kafka-sasl-password-0123456789"
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        configure("INFO", secrets=(SecretStr(secret),))
        app = faust.App("spotzee-logging-test", broker="memory://", datadir=str(tmp_path / "faust"))
        worker = faust_worker([app], Settings(data_dir=tmp_path / "data"))
        # What mode does on first start when it owns logging: replace the root handlers.
        if worker.override_logging:
            worker._setup_logging()
        assert worker.spinner is None
        handlers = logging.getLogger().handlers
        assert handlers
        assert all(isinstance(h.formatter, RedactingFormatter) for h in handlers)
        stream = io.StringIO()
        handler = handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)
        logging.getLogger("aiokafka").warning("connecting with password %s", secret)
        assert secret not in stream.getvalue()
        assert MASK in stream.getvalue()
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
