"""``spotzee up | sql``: the command line."""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from spotzee.errors import SpotzeeError
from spotzee.runtime.kafka.kafka_cli import lag, topics_app
from spotzee.settings import Settings

app = typer.Typer(help="Spotzee: customer-engagement engine.", no_args_is_help=True, add_completion=False)


DataDirOption = Annotated[Path | None, typer.Option(help="Data directory (state, log, chDB). Env: SPOTZEE_DATA_DIR.")]
PortOption = Annotated[int | None, typer.Option(help="HTTP port. Env: SPOTZEE_PORT.")]
HostOption = Annotated[str | None, typer.Option(help="Listen address. Env: SPOTZEE_HOST.")]
PartitionsOption = Annotated[
    int | None, typer.Option(help="Partitions of the contact key space (fixed per data dir / topic).")
]


def _settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the command line's options on top."""
    given: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**given)


@app.command()
def up(
    data_dir: DataDirOption = None,
    port: PortOption = None,
    host: HostOption = None,
    partitions: PartitionsOption = None,
) -> None:
    """Run the whole stack in one process: ingestion API, processors, ClickHouse (chDB) sink."""
    _serve(_settings(data_dir=data_dir, port=port, host=host, partitions=partitions, runtime="embedded"), sink=True)


@app.command()
def api(
    runtime: Annotated[str | None, typer.Option(help="embedded or kafka. Env: SPOTZEE_RUNTIME.")] = None,
    data_dir: DataDirOption = None,
    port: PortOption = None,
    host: HostOption = None,
    partitions: PartitionsOption = None,
    sink: Annotated[
        bool | None, typer.Option(help="Kafka runtime: also run the ClickHouse sink here (default: when chDB).")
    ] = None,
) -> None:
    """Run the HTTP API. With --runtime kafka it produces to Kafka and reads state from the changelog."""
    settings = _settings(data_dir=data_dir, port=port, host=host, partitions=partitions, runtime=runtime)
    run_sink = sink if sink is not None else settings.resolved_clickhouse_dsn().startswith("chdb://")
    _serve(settings, sink=run_sink)


@app.command()
def worker(
    data_dir: DataDirOption = None,
    partitions: PartitionsOption = None,
    worker_id: Annotated[
        str | None, typer.Option(help="Names this worker's state dir. Env: SPOTZEE_WORKER_ID.")
    ] = None,
    sink: Annotated[
        bool, typer.Option(help="Also run the ClickHouse analytics sink (needs a ClickHouse server).")
    ] = True,
    processor: Annotated[bool, typer.Option(help="Run the contact processor.")] = True,
) -> None:
    """Run a Kafka runtime worker: faust agents for the contact processor and the analytics sink."""
    # Imported here, not at the top: faust (the worker) and structlog load only for the command that runs them.
    from spotzee.agents.worker import run_worker
    from spotzee.logging import configure, settings_secrets

    settings = _settings(data_dir=data_dir, partitions=partitions, worker_id=worker_id, runtime="kafka")
    configure(settings.log_level, json_lines=settings.log_json, secrets=settings_secrets(settings))
    try:
        run_worker(settings, sink=sink, processor=processor)
    except SpotzeeError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc


def _serve(settings: Settings, *, sink: bool) -> None:
    # Imported here, not at the top: the server, the runtimes and chDB load only for the commands that serve.
    import uvicorn

    from spotzee.api.app import create_app
    from spotzee.logging import configure, settings_secrets
    from spotzee.services.container import Services

    configure(settings.log_level, json_lines=settings.log_json, secrets=settings_secrets(settings))
    try:
        services = Services.open(settings, run_sink=sink)
    except SpotzeeError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    keys = services.tenancy.bootstrap(settings.data_dir)
    if keys is not None:
        typer.echo(
            "Created a default organisation and project. These keys are shown once (also in keys.json, mode 0600):"
        )
        typer.echo(f"  organisation_id  {keys.organisation_id}")
        typer.echo(f"  project_id       {keys.project_id}")
        typer.echo(f"  write_key        {keys.write_key}   (ingestion: HTTP Basic username)")
        typer.echo(f"  secret_key       {keys.secret_key}   (project admin API: Bearer)")
        typer.echo(f"  admin_key        {keys.admin_key}   (organisation: projects, keys, audit, SQL)")
        typer.echo(f"  keys file        {(settings.data_dir / 'keys.json').resolve()}")
    where = f"http://{settings.host}:{settings.port}"
    typer.echo(f"Spotzee ({settings.runtime}) listening on {where}  (data: {settings.data_dir.resolve()})")
    sys.stdout.flush()
    # Everything made at start-up (modules, services, definitions) lives as long as the server:
    # out of the collector's way, so full collections stop rescanning it while requests and the
    # processor allocate (measured: orjson.loads of a 500-event batch 1.26 -> 0.51 ms).
    gc.freeze()
    uvicorn.run(
        create_app(settings, services=services),
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=30,
    )


def _admin_key(data_dir: Path | None) -> str:
    settings = Settings(data_dir=data_dir) if data_dir else Settings()
    keys_file = settings.data_dir / "keys.json"
    if keys_file.exists():
        return str(json.loads(keys_file.read_text())["admin_key"])
    if settings.admin_key is not None:
        return settings.admin_key.get_secret_value()
    raise typer.BadParameter(
        f"no admin key: {keys_file} does not exist and SPOTZEE_ADMIN_KEY is not set", param_hint="--data-dir"
    )


def format_table(columns: list[str], rows: list[list[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    line = "-+-".join("-" * w for w in widths)
    out = [" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)), line]
    out += [" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="A read-only ClickHouse SQL query.")],
    url: Annotated[str, typer.Option(help="The running Spotzee server.")] = "http://127.0.0.1:8000",
    data_dir: Annotated[
        Path | None, typer.Option(help="Where keys.json is (admin key); else SPOTZEE_ADMIN_KEY.")
    ] = None,
    output: Annotated[str, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """Run SQL against the history through the running server (chDB is opened by one process)."""
    key = _admin_key(data_dir)
    try:
        response = httpx.post(
            f"{url.rstrip('/')}/api/v1/sql",
            json={"query": query},
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        )
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach Spotzee at {url}: {exc}", err=True)
        raise typer.Exit(2) from exc
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        typer.echo(f"error ({response.status_code}): {message}", err=True)
        raise typer.Exit(1)
    result = response.json()
    if output == "json":
        typer.echo(json.dumps(result))
    else:
        typer.echo(format_table(result["columns"], result["rows"]))
        if result.get("truncated"):
            typer.echo("(truncated at the server's row limit)")


def _mount_kafka_commands() -> None:
    app.add_typer(topics_app, name="topics", help="Create or describe the Kafka topics (explicit partitions, configs).")
    app.command("lag", help="Consumer lag per partition of the processor and sink groups.")(lag)


_mount_kafka_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
