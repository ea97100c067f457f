"""The deployment manifests (deploy/compose, deploy/k8s, docs/deploy.md) agree with the real CLI and Settings.

No container engine runs here: the YAML is parsed and checked against

- the typer app (``spotzee.cli.app``): every ``spotzee ...`` invocation a manifest makes must name existing
  subcommands and parse with their real options (click's own parser, so unknown options, bad values and
  missing arguments all fail);
- ``spotzee.settings.Settings``: every ``SPOTZEE_*`` name must be a field (``SPOTZEE_`` + field name upper-cased)
  and the configured values must validate;
- where secrets live: never in a ConfigMap, never inline in compose ``environment``, placeholders only in the
  repository.
"""

from __future__ import annotations

import os
import re
import shlex
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from pydantic import SecretStr

from spotzee.cli import app
from spotzee.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "deploy" / "compose"
K8S_DIR = ROOT / "deploy" / "k8s"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

ENV_PREFIX = "SPOTZEE_"
ENV_NAME = re.compile(r"\bSPOTZEE_[A-Z0-9_]*[A-Z0-9]\b")
SECRET_LOOKING = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|PRIVATE|(^|_)(API_|ADMIN_|ACCESS_)?KEY$")
PLACEHOLDER = "CHANGE-ME"
SHELL_OPERATOR = re.compile(r"&&|\|\||[;|&\n]")
POD_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}


# -- loading -------------------------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(
        p for d in (COMPOSE_DIR, K8S_DIR) if d.is_dir() for p in d.rglob("*") if p.suffix in {".yaml", ".yml"}
    )


@cache
def documents(path: Path) -> tuple[Any, ...]:
    return tuple(doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def compose_files() -> list[Path]:
    return [p for p in yaml_files() if p.is_relative_to(COMPOSE_DIR) and any("services" in d for d in documents(p))]


def compose_services() -> Iterator[tuple[Path, str, dict[str, Any]]]:
    for path in compose_files():
        for doc in documents(path):
            for name, service in (doc.get("services") or {}).items():
                yield path, name, service


def k8s_objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in yaml_files():
        if path.is_relative_to(K8S_DIR):
            for doc in documents(path):
                if isinstance(doc, dict) and "kind" in doc:
                    yield path, doc


def k8s_name(obj: Mapping[str, Any]) -> str:
    return f"{obj['kind']}/{obj.get('metadata', {}).get('name', '?')}"


def pod_spec(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    kind = obj.get("kind")
    if kind not in POD_KINDS:
        return None
    spec: dict[str, Any] = obj.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    result: dict[str, Any] = spec.get("template", {}).get("spec", {})
    return result


def pod_template_labels(obj: Mapping[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = obj.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
    return labels


def pod_containers(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(obj) or {}
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for path, obj in k8s_objects():
        for container in pod_containers(obj):
            yield f"{rel(path)}:{k8s_name(obj)}:{container.get('name')}", container


def is_spotzee_image(image: object) -> bool:
    """``spotzee:0.1``, ``registry.example.com/team/spotzee@sha256:…`` → True."""
    if not isinstance(image, str):
        return False
    name = image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]
    return name == "spotzee"


def as_argv(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, list):
        return [str(v) for v in value]
    raise TypeError(f"not a command: {value!r}")


def shell_script(argv: list[str]) -> str | None:
    """The script of ``CMD-SHELL script`` or ``sh|bash [-e…] -c script``."""
    head = argv[0].rsplit("/", 1)[-1] if argv else ""
    if head == "CMD-SHELL" and len(argv) > 1:
        return argv[1]
    if head in {"sh", "bash"}:
        flags = [i for i, a in enumerate(argv[1:-1], 1) if re.fullmatch(r"-[a-z]*c[a-z]*", a)]
        return argv[flags[0] + 1] if flags else None
    return None


def spotzee_calls_in(argv: list[str]) -> Iterator[list[str]]:
    """Every ``spotzee …`` (or ``python -m spotzee …``) call in a command line, shell scripts included."""
    while argv and argv[0] in {"CMD", "exec"}:
        argv = argv[1:]
    head = argv[0].rsplit("/", 1)[-1] if argv else ""
    if head == "spotzee":
        yield argv[1:]
    elif head.startswith("python") and argv[1:3] == ["-m", "spotzee"]:
        yield argv[3:]
    elif (script := shell_script(argv)) is not None:
        for segment in SHELL_OPERATOR.split(script):
            yield from spotzee_calls_in([w for w in shlex.split(segment) if not re.match(r"^\d?>", w)])


# -- what the manifests run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Invocation:
    where: str
    argv: tuple[str, ...]


def invocations() -> list[Invocation]:
    found: list[Invocation] = []

    def add(where: str, argv: list[str]) -> None:
        found.extend(Invocation(where, tuple(call)) for call in spotzee_calls_in(argv))

    for path, name, service in compose_services():
        where = f"{rel(path)}:{name}"
        entrypoint, command = as_argv(service.get("entrypoint")), as_argv(service.get("command"))
        if entrypoint:
            add(where, entrypoint + command)
        elif is_spotzee_image(service.get("image")) or "build" in service:
            if command:  # the image's entrypoint is `spotzee`
                found.append(Invocation(where, tuple(command)))
        else:
            add(where, command)
        add(f"{where}:healthcheck", as_argv((service.get("healthcheck") or {}).get("test")))

    for where, container in containers():
        command, args = as_argv(container.get("command")), as_argv(container.get("args"))
        if command:
            add(where, command + args)
        elif is_spotzee_image(container.get("image")) and args:
            found.append(Invocation(where, tuple(args)))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            add(f"{where}:{probe}", as_argv((container.get(probe) or {}).get("exec", {}).get("command")))
    return found


def cli_problem(argv: tuple[str, ...]) -> str | None:
    """Why ``spotzee *argv`` would not parse with the real typer app, or None when it does."""
    command: Any = typer.main.get_command(app)
    path = ["spotzee"]
    args = list(argv)
    while hasattr(command, "commands"):  # a group: the next word must be one of its subcommands
        available = ", ".join(sorted(command.commands))
        if not args or args[0].startswith("-"):
            return f"`{' '.join(path)}` needs a subcommand (available: {available})"
        name = args.pop(0)
        if name not in command.commands:
            return f"`{' '.join(path)}` has no subcommand {name!r} (available: {available})"
        path.append(name)
        command = command.commands[name]
    try:
        command.make_context(" ".join(path), list(args))  # click consumes the list it is given
    except Exception as exc:  # click's UsageError / BadParameter / NoSuchOption …, whichever click typer ships
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        return f"`{' '.join(path)} {shlex.join(args)}`: {message}"
    return None


INVOCATIONS = invocations()


# -- environment -------------------------------------------------------------------------------------------


def settings_env_names() -> set[str]:
    return {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def is_secret_annotation(annotation: object) -> bool:
    return annotation is SecretStr or any(is_secret_annotation(a) for a in typing.get_args(annotation))


def secret_settings() -> set[str]:
    return {ENV_PREFIX + n.upper() for n, f in Settings.model_fields.items() if is_secret_annotation(f.annotation)}


def looks_secret(name: str) -> bool:
    return name in secret_settings() or bool(SECRET_LOOKING.search(name))


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        values[key.strip()] = value.strip().strip("'\"")
    return values


def env_file_paths(compose_file: Path, service: Mapping[str, Any]) -> list[Path]:
    entries = service.get("env_file") or []
    entries = [entries] if isinstance(entries, str | dict) else entries
    return [compose_file.parent / (e["path"] if isinstance(e, dict) else e) for e in entries]


def env_file_values(path: Path) -> dict[str, str]:
    """A referenced env file, or its committed ``.example`` when the real one (git-ignored) is absent."""
    example = path.with_name(path.name + ".example")
    source = path if path.exists() else example
    assert source.exists(), f"{rel(path)} is referenced but neither it nor {example.name} exists"
    return read_env_file(source)


def compose_environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def env_sources() -> Iterator[tuple[str, str]]:
    """(where, name) of every environment variable the manifests set."""
    for path, name, service in compose_services():
        for key in compose_environment(service):
            yield f"{rel(path)}:{name}:environment", key
        for env_file in env_file_paths(path, service):
            for key in env_file_values(env_file):
                yield f"{rel(path)}:{name}:env_file {env_file.name}", key
    for path, obj in k8s_objects():
        if obj["kind"] in {"ConfigMap", "Secret"}:
            for section in ("data", "stringData"):
                for key in obj.get(section) or {}:
                    yield f"{rel(path)}:{k8s_name(obj)}:{section}", key
    for where, container in containers():
        for item in container.get("env") or []:
            yield f"{where}:env", item["name"]


def k8s_by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for _, obj in k8s_objects() if obj["kind"] == kind}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    return monkeypatch


def validate_settings(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    for key, value in env.items():
        if key.startswith(ENV_PREFIX):
            monkeypatch.setenv(key, value)
    try:
        Settings()
    except Exception as exc:
        pytest.fail(f"{where}: the configured SPOTZEE_* values do not validate:\n{exc}")


# -- tests: files ----------------------------------------------------------------------------------------------


def test_manifests_exist_and_parse() -> None:
    files = yaml_files()
    assert any(p.is_relative_to(COMPOSE_DIR) for p in files), "no YAML under deploy/compose"
    assert any(p.is_relative_to(K8S_DIR) for p in files), "no YAML under deploy/k8s"
    for path in files:
        assert documents(path), f"{rel(path)} holds no YAML document"
    assert compose_files(), "no compose file (a YAML document with `services`) under deploy/compose"
    assert DEPLOY_DOC.exists(), "docs/deploy.md is missing"


def test_every_k8s_object_has_api_version_kind_and_name() -> None:
    for path in yaml_files():
        if path.is_relative_to(K8S_DIR):
            for doc in documents(path):
                assert isinstance(doc, dict), f"{rel(path)}: a document is not a mapping"
                assert doc.get("apiVersion"), f"{rel(path)}: apiVersion missing"
                assert doc.get("kind"), f"{rel(path)}: kind missing"
                if doc["kind"] != "Kustomization":
                    assert doc.get("metadata", {}).get("name"), f"{rel(path)}: {doc['kind']} without a name"
                    assert "namespace" not in doc["metadata"], f"{rel(path)}: manifests stay namespace-agnostic"


# -- tests: the CLI ---------------------------------------------------------------------------------------------


def test_the_manifests_run_spotzee() -> None:
    used = {inv.argv[0] for inv in INVOCATIONS if inv.argv}
    assert {"api", "worker", "topics"} <= used, f"expected api, worker and topics invocations, found {used}"


def test_the_cli_check_catches_mistakes() -> None:
    root: Any = typer.main.get_command(app)
    assert cli_problem(("no-such-command",)) is not None
    name = sorted(root.commands)[0]
    assert cli_problem((name, "--no-such-option")) is not None


@pytest.mark.parametrize("invocation", INVOCATIONS, ids=[f"{i.where}:{' '.join(i.argv[:2])}" for i in INVOCATIONS])
def test_spotzee_invocation_matches_the_cli(invocation: Invocation) -> None:
    problem = cli_problem(invocation.argv)
    assert problem is None, f"{invocation.where}: {problem}"


# -- tests: settings --------------------------------------------------------------------------------------------


def test_every_spotzee_env_name_is_a_settings_field() -> None:
    known = settings_env_names()
    unknown = sorted(
        {f"{where}: {name}" for where, name in env_sources() if name.startswith(ENV_PREFIX) and name not in known}
    )
    assert not unknown, "not fields of spotzee.settings.Settings:\n" + "\n".join(unknown)


def test_spotzee_names_in_comments_and_docs_are_settings_fields() -> None:
    """Commented-out examples (SASL/TLS) and docs/deploy.md must name real settings too."""
    known = settings_env_names()
    files = [*yaml_files(), DEPLOY_DOC, *COMPOSE_DIR.glob("*.env*")]
    unknown = sorted(
        f"{rel(path)}: {name}"
        for path in files
        if path.exists()
        for name in set(ENV_NAME.findall(path.read_text()))
        if name not in known
    )
    assert not unknown, "not fields of spotzee.settings.Settings:\n" + "\n".join(unknown)


def test_compose_values_validate(clean_env: pytest.MonkeyPatch) -> None:
    for path, name, service in compose_services():
        env: dict[str, str] = {}
        for env_file in env_file_paths(path, service):
            env.update(env_file_values(env_file))
        env.update(compose_environment(service))  # `environment` wins over env_file, as in compose
        if any(k.startswith(ENV_PREFIX) for k in env):
            with pytest.MonkeyPatch.context() as mp:
                validate_settings(env, mp, f"{rel(path)}:{name}")


def test_k8s_values_validate(clean_env: pytest.MonkeyPatch) -> None:
    config_maps, secrets = k8s_by_kind("ConfigMap"), k8s_by_kind("Secret")
    for where, container in containers():
        env: dict[str, str] = {}
        for ref in container.get("envFrom") or []:
            if "configMapRef" in ref:
                env.update(config_maps[ref["configMapRef"]["name"]].get("data") or {})
            if "secretRef" in ref:
                env.update(secrets[ref["secretRef"]["name"]].get("stringData") or {})
        for item in container.get("env") or []:
            env[item["name"]] = str(item.get("value", "sample-from-valueFrom"))
        if any(k.startswith(ENV_PREFIX) for k in env):
            with pytest.MonkeyPatch.context() as mp:
                validate_settings(env, mp, where)


# -- tests: secrets ---------------------------------------------------------------------------------------------


def test_no_secret_in_a_config_map() -> None:
    leaks = [
        f"{rel(path)}:{k8s_name(obj)}: {key}"
        for path, obj in k8s_objects()
        if obj["kind"] == "ConfigMap"
        for key in obj.get("data") or {}
        if looks_secret(key)
    ]
    assert not leaks, "secrets belong in a Secret, not a ConfigMap:\n" + "\n".join(leaks)


def test_no_secret_inline_in_container_env() -> None:
    leaks = [
        f"{where}: {item['name']}"
        for where, container in containers()
        for item in container.get("env") or []
        if looks_secret(item["name"]) and "value" in item
    ]
    assert not leaks, "use valueFrom.secretKeyRef or envFrom.secretRef:\n" + "\n".join(leaks)


def test_committed_secret_values_are_placeholders() -> None:
    real = [
        f"{rel(path)}:{k8s_name(obj)}: {key}"
        for path, obj in k8s_objects()
        if obj["kind"] == "Secret"
        for section in ("stringData", "data")
        for key, value in (obj.get(section) or {}).items()
        if PLACEHOLDER not in str(value)
    ]
    assert not real, f"Secret values in the repository must be {PLACEHOLDER} placeholders:\n" + "\n".join(real)


def test_compose_secrets_come_from_env_files() -> None:
    inline = [
        f"{rel(path)}:{name}: {key}"
        for path, name, service in compose_services()
        for key, value in compose_environment(service).items()
        if looks_secret(key) and value and not re.fullmatch(r"\$\{[^}]+\}", value)
    ]
    assert not inline, "put secrets in an env_file or compose secrets, not inline:\n" + "\n".join(inline)
    for path, _, service in compose_services():
        for env_file in env_file_paths(path, service):
            example = env_file.with_name(env_file.name + ".example")
            assert example.exists(), f"{rel(example)} (committed template of {env_file.name}) is missing"
            for key, value in read_env_file(example).items():
                if looks_secret(key):
                    assert PLACEHOLDER in value, f"{rel(example)}: {key} must be a {PLACEHOLDER} placeholder"
            ignored = (path.parent / ".gitignore").read_text().split() if (path.parent / ".gitignore").exists() else []
            assert env_file.name in ignored, f"{env_file.name} must be listed in {rel(path.parent)}/.gitignore"


# -- tests: wiring ----------------------------------------------------------------------------------------------


def test_k8s_references_resolve() -> None:
    config_maps, secrets = k8s_by_kind("ConfigMap"), k8s_by_kind("Secret")
    for where, container in containers():
        for ref in container.get("envFrom") or []:
            for key, known in (("configMapRef", config_maps), ("secretRef", secrets)):
                if key in ref and not ref[key].get("optional"):
                    assert ref[key]["name"] in known, f"{where}: {key} {ref[key]['name']!r} is not defined"
    workloads = [obj for _, obj in k8s_objects() if pod_spec(obj) is not None]
    for _, service in k8s_objects():
        if service["kind"] == "Service":
            selector = service["spec"].get("selector") or {}
            assert selector, f"{k8s_name(service)} has no selector"
            assert any(selector.items() <= pod_template_labels(w).items() for w in workloads), (
                f"{k8s_name(service)} selects no pod template"
            )
    for path in K8S_DIR.glob("kustomization.y*ml"):
        for resource in documents(path)[0].get("resources") or []:
            assert (K8S_DIR / resource).exists(), f"{rel(path)} lists missing {resource}"


def test_k8s_api_probes_health_and_workers_keep_state() -> None:
    deployments, services = k8s_by_kind("Deployment"), k8s_by_kind("Service")
    api = [c for d in deployments.values() for c in pod_containers(d) if as_argv(c.get("args"))[:1] == ["api"]]
    assert api, "no Deployment runs `spotzee api`"
    for container in api:
        assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    workers = [
        (sts, container)
        for sts in k8s_by_kind("StatefulSet").values()
        for container in pod_containers(sts)
        if as_argv(container.get("args"))[:1] == ["worker"]
    ]
    assert workers, "no StatefulSet runs `spotzee worker`"
    for sts, container in workers:
        headless = services.get(sts["spec"]["serviceName"])
        assert headless is not None, f"{k8s_name(sts)}: serviceName names no Service"
        assert headless["spec"].get("clusterIP") == "None", f"{k8s_name(headless)} must be headless"
        claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates") or []}
        argv = as_argv(container.get("args"))
        data_dir = argv[argv.index("--data-dir") + 1]
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or []}
        assert mounts.get(data_dir) in claims, f"{k8s_name(sts)}: {data_dir} is not on a volumeClaimTemplate"
        names = {e["name"] for e in container.get("env") or []}
        assert "SPOTZEE_WORKER_ID" in names, f"{k8s_name(sts)}: each pod needs its own SPOTZEE_WORKER_ID"


def test_compose_wiring() -> None:
    for path in compose_files():
        for doc in documents(path):
            services: dict[str, dict[str, Any]] = doc.get("services") or {}
            for name, service in services.items():
                depends = service.get("depends_on") or []
                for target in depends:
                    assert target in services, f"{rel(path)}:{name} depends on unknown service {target!r}"
            runs = {name: as_argv(s.get("command"))[:1] for name, s in services.items()}
            topics = [n for n, argv in runs.items() if argv == ["topics"]]
            assert topics, f"{rel(path)}: no one-shot `topics create` service"
            workers = [n for n, argv in runs.items() if argv == ["worker"]]
            for name in [n for n, argv in runs.items() if argv in (["api"], ["worker"])]:
                depends = services[name].get("depends_on") or {}
                assert isinstance(depends, dict), f"{rel(path)}:{name}: depends_on needs conditions"
                assert depends.get(topics[0], {}).get("condition") == "service_completed_successfully", (
                    f"{rel(path)}:{name} must start after the topics are created"
                )
            ids = [compose_environment(services[n]).get("SPOTZEE_WORKER_ID") for n in workers]
            assert len(workers) >= 2, f"{rel(path)}: expected at least two workers"
            assert None not in ids, f"{rel(path)}: every worker needs SPOTZEE_WORKER_ID"
            assert len(set(ids)) == len(ids), f"{rel(path)}: workers need distinct SPOTZEE_WORKER_IDs, got {ids}"
            volumes = [tuple(services[n].get("volumes") or []) for n in workers]
            assert all(volumes), f"{rel(path)}: every worker needs a data volume"
            assert len(set(volumes)) == len(volumes), f"{rel(path)}: workers need their own volumes"
