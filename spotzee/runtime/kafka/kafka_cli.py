"""``spotzee topics create|describe`` and ``spotzee lag``: Kafka administration from the command line.

Mounted by ``spotzee.cli``::

    app.add_typer(topics_app, name="topics")
    app.command("lag")(lag)

Settings come from the environment (``SPOTZEE_*``); ``--bootstrap`` / ``--partitions`` override them. Errors print
one line to stderr and exit with status 2.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from spotzee.errors import SpotzeeError
from spotzee.settings import Settings

_T = TypeVar("_T")

topics_app = typer.Typer(
    help="Kafka topics of the Kafka runtime: create the missing ones, describe them.",
    no_args_is_help=True,
    add_completion=False,
)

BootstrapOption = Annotated[
    str | None,
    typer.Option("--bootstrap", help="Kafka bootstrap servers host:port[,...]. Env: SPOTZEE_KAFKA_BOOTSTRAP."),
]
PartitionsOption = Annotated[
    int | None,
    typer.Option("--partitions", min=1, help="Partitions of the contact key space. Env: SPOTZEE_PARTITIONS."),
]
FormatOption = Annotated[str, typer.Option("--format", help="table or json")]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _settings(bootstrap: str | None = None, partitions: int | None = None) -> Settings:
    overrides: dict[str, Any] = {
        key: value
        for key, value in {"kafka_bootstrap": bootstrap, "partitions": partitions}.items()
        if value is not None
    }
    try:
        return Settings.model_validate(overrides)
    except ValueError as exc:  # pydantic's ValidationError
        _fail(f"invalid settings: {exc}".replace("\n", " "))


def _run(call: Callable[[], _T]) -> _T:
    try:
        return call()
    except SpotzeeError as exc:
        _fail(exc.message)


def _check_format(output: str) -> None:
    if output not in ("table", "json"):
        _fail(f"unknown format {output!r}: use table or json")


def _topic_rows(described: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            item["name"],
            "yes" if item["exists"] else "no",
            item["partitions"],
            item["expected_partitions"],
            item["replication_factor"],
            item["configs"].get("cleanup.policy"),
            item["configs"].get("retention.ms"),
            item["configs"].get("min.insync.replicas"),
            item["configs"].get("min.compaction.lag.ms"),
        ]
        for item in described
    ]


_TOPIC_COLUMNS = [
    "topic",
    "exists",
    "partitions",
    "expected",
    "replication",
    "cleanup.policy",
    "retention.ms",
    "min.insync.replicas",
    "min.compaction.lag.ms",
]


@topics_app.command("create")
def create(bootstrap: BootstrapOption = None, partitions: PartitionsOption = None) -> None:
    """Create the missing topics (idempotent); fails if an existing topic has another partition count."""
    # kafka-python loads only for the command that talks to the broker (``spotzee --help`` stays quick).
    from spotzee.runtime.kafka.admin import create_topics, topic_specs

    settings = _settings(bootstrap, partitions)
    created = _run(lambda: create_topics(settings))
    present = [spec.name for spec in topic_specs(settings) if spec.name not in created]
    for name in created:
        typer.echo(f"created  {name}")
    for name in present:
        typer.echo(f"exists   {name}")
    typer.echo(f"{len(created)} created, {len(present)} already present on {settings.kafka_bootstrap}")


@topics_app.command("describe")
def describe(
    bootstrap: BootstrapOption = None, partitions: PartitionsOption = None, output: FormatOption = "table"
) -> None:
    """Partitions, replication factor and retention/compaction configs of every topic, as on the broker."""
    # spotzee.cli mounts these commands at import (a cycle at the top); kafka-python loads only when used.
    from spotzee.cli import format_table
    from spotzee.runtime.kafka.admin import describe_topics

    _check_format(output)
    settings = _settings(bootstrap, partitions)
    described = _run(lambda: describe_topics(settings))
    if output == "json":
        typer.echo(json.dumps(described))
        return
    typer.echo(format_table(_TOPIC_COLUMNS, _topic_rows(described)))
    wrong = [item["name"] for item in described if item["exists"] and item["partitions"] != item["expected_partitions"]]
    missing = [item["name"] for item in described if not item["exists"]]
    if missing:
        typer.echo(f"missing: {', '.join(missing)} (run `spotzee topics create`)")
    if wrong:
        typer.echo(f"partition count differs from the spec: {', '.join(wrong)}")


def lag(
    group: Annotated[
        list[str] | None,
        typer.Option("--group", help="Consumer group (repeatable). Default: spotzee-processor and spotzee-sink."),
    ] = None,
    output: FormatOption = "table",
    bootstrap: BootstrapOption = None,
) -> None:
    """Consumer lag per partition: committed offset vs end offset, and the total."""
    # spotzee.cli mounts these commands at import (a cycle at the top); kafka-python loads only when used.
    from spotzee.cli import format_table
    from spotzee.runtime.kafka.admin import consumer_lag

    _check_format(output)
    settings = _settings(bootstrap)
    rows = _run(lambda: consumer_lag(settings, group or None))
    per_group: dict[str, int] = {}
    for row in rows:
        per_group[row.group] = per_group.get(row.group, 0) + row.lag
    total = sum(per_group.values())
    if output == "json":
        typer.echo(json.dumps({"rows": [asdict(row) for row in rows], "groups": per_group, "total": total}))
        return
    columns = ["group", "topic", "partition", "committed", "end", "lag"]
    table = [[row.group, row.topic, row.partition, row.committed, row.end, row.lag] for row in rows]
    typer.echo(format_table(columns, table))
    by_group = ", ".join(f"{name} {value}" for name, value in per_group.items())
    typer.echo(f"total lag: {total}" + (f" ({by_group})" if len(per_group) > 1 else ""))
