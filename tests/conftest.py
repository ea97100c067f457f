from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kafka_broker import KafkaBrokerError, broker_from_env, kafka_bootstrap_session
from tests.support import Stack, running_stack

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


RUNTIMES = ("embedded", "kafka")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "runtimes(*names): run a `stack` test only on these runtimes")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test using ``stack`` runs on both runtimes, with the same assertions."""
    if "stack" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("runtimes")
        metafunc.parametrize("stack", marker.args if marker else RUNTIMES, indirect=True)


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    runtime = getattr(request, "param", "embedded")
    bootstrap = request.getfixturevalue("kafka_bootstrap") if runtime == "kafka" else None
    with running_stack(tmp_path / "data", runtime=runtime, kafka_bootstrap=bootstrap) as running:
        yield running


def require_kafka_tools() -> None:
    """Outside CI, Kafka suites skip when Java or Maven is missing; under CI=true they fail."""
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing and broker_from_env() is None:
        message = (
            f"Kafka tests need {' and '.join(missing)} to fetch and run Apache Kafka "
            "(or SPOTZEE_KAFKA_BOOTSTRAP=host:port pointing at a broker); `make test` runs them where both exist"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Apache Kafka broker (KRaft, loopback) for the whole session."""
    require_kafka_tools()
    try:
        yield from kafka_bootstrap_session(tmp_path_factory.mktemp("kafka"))
    except KafkaBrokerError as exc:
        if IN_CI:
            raise
        pytest.skip(f"could not start Apache Kafka: {exc}")
