"""Static checks of the operations kit's docker-compose.yml and Dockerfile.

No Docker engine runs here, so nothing is started: the compose file is validated against the
Compose Specification's JSON schema (as vendored by check-jsonschema), and the files that must
agree with one another (compose, Dockerfile, .dockerignore, collector-config/*, examples/) are
cross-checked: ports, hostnames, mount paths, pinned images, the store every process of a
service shares, the Celery deployment's commands. tests/test_celery_example.py runs those
commands (and the worker's and web app's healthchecks) for real, against a redis-server.

Each check is a function of a `Kit` (every file, parsed) returning a list of problems; each
has a negative test that breaks a copy of the kit in memory and expects the problem reported.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import importlib.resources
import json
import posixpath
import re
import shlex
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "collector-config"

APP = "app"
COLLECTOR = "otel-collector"
JAEGER = "jaeger"
PROMETHEUS = "prometheus"
GRAFANA = "grafana"
REDIS = "redis"
CELERY_WORKER = "celery-worker"
CELERY_BEAT = "celery-beat"
CELERY_WEB = "celery-web"
#: The services of the Celery example: one deployment, one service name, one store.
CELERY_SERVICES = (CELERY_WORKER, CELERY_BEAT, CELERY_WEB)
SERVICES = (APP, COLLECTOR, JAEGER, PROMETHEUS, GRAFANA, REDIS, *CELERY_SERVICES)
CELERY_APP = "examples.celery_app"

LOOPBACK = "127.0.0.1"
JAEGER_OTLP_GRPC_PORT = 4317
JAEGER_UI_PORT = 16686
PROMETHEUS_DEFAULT_PORT = 9090
PROMETHEUS_DEFAULT_CONFIG = "/etc/prometheus/prometheus.yml"
APP_EXTRAS = {"prometheus", "otlp", "starlette", "apscheduler"}
#: The Celery example: its worker and beat, its broker's (and the store's) Redis client, and
#: its web app with uvicorn.
CELERY_EXTRAS = {"celery", "redis", "starlette", "server", "otlp"}
REDIS_PORT = 6379
REDIS_DATABASES = 16  # redis-server's default `databases`
STORE_VARIABLE = "JOBPULSE_STORE"
BROKER_VARIABLE = "CELERY_BROKER_URL"
HEALTH_PATH = "/api/v1/health/jobs"
_PIP_EXTRAS = re.compile(r"\.\[(?P<extras>[^\]]*)\]")
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_?KEY", re.IGNORECASE)
_INTERPOLATION = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?][^}]*)?\}$")

Document = dict[str, Any]


@dataclasses.dataclass
class Kit:
    """Every file of the operations kit, parsed; `root` is where relative paths start.
    Mutable, so that a negative test can break a deep copy."""

    root: Path
    compose: Document
    dockerfile: str
    dockerignore: str
    collector: Document
    prometheus: Document
    datasources: Document
    dashboard_providers: Document


def _yaml(path: Path) -> Document:
    document: Document = yaml.safe_load(path.read_text(encoding="utf-8"))
    return document


def load_kit(root: Path = ROOT) -> Kit:
    config = root / CONFIG
    return Kit(
        root=root,
        compose=_yaml(root / "docker-compose.yml"),
        dockerfile=(root / "Dockerfile").read_text(encoding="utf-8"),
        dockerignore=(root / ".dockerignore").read_text(encoding="utf-8"),
        collector=_yaml(config / "otel-collector.yaml"),
        prometheus=_yaml(config / "prometheus.yml"),
        datasources=_yaml(config / "grafana/provisioning/datasources/prometheus.yml"),
        dashboard_providers=_yaml(config / "grafana/provisioning/dashboards/jobpulse.yml"),
    )


@pytest.fixture(scope="module")
def kit() -> Kit:
    return load_kit()


# -- parsing helpers -----------------------------------------------------------------------


def _services(kit: Kit) -> dict[str, Document]:
    services: dict[str, Document] = kit.compose.get("services", {})
    return services


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        return dict(str(item).partition("=")[::2] for item in environment)
    return {str(key): str(value) for key, value in environment.items()}


def _command(service: Mapping[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _flag(arguments: list[str], name: str) -> str | None:
    """The value of ``--name=value`` (or ``--name value``) in `arguments`."""
    for index, argument in enumerate(arguments):
        if argument.startswith(f"{name}="):
            return argument.partition("=")[2]
        if argument == name and index + 1 < len(arguments):
            return arguments[index + 1]
    return None


@dataclasses.dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool
    bind: bool


def _mounts(service: Mapping[str, Any]) -> list[Mount]:
    mounts: list[Mount] = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
            options = parts[2].split(",") if len(parts) > 2 else []
            bind = source.startswith((".", "/", "~"))
            mounts.append(Mount(source, target, "ro" in options, bind))
        else:
            mounts.append(
                Mount(
                    str(volume.get("source", "")),
                    str(volume["target"]),
                    bool(volume.get("read_only", False)),
                    volume.get("type") == "bind",
                )
            )
    return mounts


def _mount_target(kit: Kit, service: str, source: str) -> str | None:
    """Where `service` mounts the host path `source` (relative to the kit's root)."""
    wanted = posixpath.normpath(source)
    for mount in _mounts(_services(kit).get(service, {})):
        if mount.bind and posixpath.normpath(mount.source) == wanted:
            return mount.target
    return None


@dataclasses.dataclass(frozen=True)
class Port:
    host_ip: str | None
    published: str | None
    target: int


def _ports(service: Mapping[str, Any]) -> list[Port]:
    ports: list[Port] = []
    for entry in service.get("ports", []):
        if isinstance(entry, Mapping):
            published = entry.get("published")
            ports.append(
                Port(
                    entry.get("host_ip"),
                    None if published is None else str(published),
                    int(entry["target"]),
                )
            )
            continue
        # "[ip:]published:target[/protocol]"; a bare int or "target" publishes on every
        # interface. IPv6 addresses are bracketed ("[::1]:80:80").
        text = str(entry).split("/")[0]
        ip: str | None = None
        if text.startswith("["):
            ip, _, text = text[1:].partition("]:")
        parts = text.split(":")
        if len(parts) == 3:
            ip = parts[0]
            parts = parts[1:]
        ports.append(Port(ip, parts[0] if len(parts) == 2 else None, int(parts[-1].split("-")[0])))
    return ports


def _host_port(endpoint: str) -> tuple[str, int | None]:
    """("host", port) from "host:port", "scheme://host:port/path" or ":port"."""
    if "//" in endpoint:
        parts = urlsplit(endpoint)
        return parts.hostname or "", parts.port
    host, _, port = endpoint.rpartition(":")
    return host, int(port) if port.isdigit() else None


def _scrape_targets(kit: Kit, job: str) -> list[str]:
    for scrape in kit.prometheus.get("scrape_configs", []):
        if scrape.get("job_name") == job:
            return [
                target
                for static in scrape.get("static_configs", [])
                for target in static.get("targets", [])
            ]
    return []


def _collector_component(kit: Kit, kind: str, name: str) -> Document:
    component: Document = (kit.collector.get(kind) or {}).get(name) or {}
    return component


@dataclasses.dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def _dockerfile(text: str) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, arguments = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
    return instructions


def _words(arguments: str) -> list[str]:
    """An instruction's arguments: a JSON array (exec form) or shell words."""
    if arguments.startswith("["):
        words: list[str] = json.loads(arguments)
        return words
    return shlex.split(arguments)


def _dockerfile_env(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            for word in shlex.split(instruction.arguments):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def dockerignore_excludes(patterns_text: str, path: str) -> bool:
    """Whether .dockerignore `patterns_text` keeps `path` (relative, "/"-separated) out of
    the build context: the last matching pattern wins, ``!`` lets a path back in, and a
    pattern that matches a directory matches everything under it."""
    excluded = False
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    for raw in patterns_text.splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = posixpath.normpath(pattern.lstrip("!").strip("/"))
        candidates = [pattern, pattern[3:]] if pattern.startswith("**/") else [pattern]
        if any(
            fnmatch.fnmatchcase(prefix, candidate)
            and (candidate.count("/") == prefix.count("/") or "**" in candidate)
            for prefix in prefixes
            for candidate in candidates
        ):
            excluded = not negated
    return excluded


# -- checks --------------------------------------------------------------------------------


def compose_schema() -> Document:
    resource = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath(
        "compose-spec.json"
    )
    schema: Document = json.loads(resource.read_text(encoding="utf-8"))
    return schema


def schema_problems(kit: Kit) -> list[str]:
    """Where docker-compose.yml breaks the Compose Specification."""
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{'/'.join(str(part) for part in error.absolute_path) or '(top)'}: {error.message}"
        for error in validator.iter_errors(kit.compose)
    ]


def service_problems(kit: Kit) -> list[str]:
    problems = [f"service {name!r} is missing" for name in SERVICES if name not in _services(kit)]
    for name, service in _services(kit).items():
        depends_on = service.get("depends_on") or {}
        if isinstance(depends_on, list):  # the short syntax: started, not healthy
            depends_on = {dependency: {} for dependency in depends_on}
        for dependency, condition in depends_on.items():
            if dependency not in _services(kit):
                problems.append(f"{name} depends on an unknown service {dependency!r}")
            elif condition.get("condition") == "service_healthy" and not _services(kit)[
                dependency
            ].get("healthcheck"):
                problems.append(
                    f"{name} waits for {dependency} to be healthy: it has no healthcheck"
                )
    return problems


def path_problems(kit: Kit) -> list[str]:
    """Bind-mounted host paths and the app's build context and Dockerfile must exist;
    configuration is mounted read-only."""
    problems: list[str] = []
    for name, service in _services(kit).items():
        for mount in _mounts(service):
            if not mount.bind:
                continue
            if not (kit.root / mount.source).exists():
                problems.append(f"{name} mounts {mount.source}, which does not exist")
            if not mount.read_only:
                problems.append(f"{name} mounts {mount.source} writable: add :ro")
        build = service.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = (
                "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            )
            if not (kit.root / context).is_dir():
                problems.append(f"{name} builds from {context}, which is not a directory")
            elif not (kit.root / context / dockerfile).is_file():
                problems.append(f"{name} builds with {dockerfile}, which does not exist")
    return problems


def _image_problem(name: str, image: str) -> str | None:
    reference, _, digest = image.partition("@")
    repository_end = reference.rfind("/")
    tag = reference[repository_end + 1 :].partition(":")[2]
    if digest:
        return None
    if not tag:
        return f"{name}: image {image!r} has no tag"
    if tag == "latest" or not re.search(r"[0-9]", tag):
        return f"{name}: image {image!r} is not pinned to a version ({tag!r})"
    return None


def image_problems(kit: Kit) -> list[str]:
    """Every service runs a pinned image or one built here; so does the Dockerfile."""
    problems: list[str] = []
    for name, service in _services(kit).items():
        image = service.get("image")
        if image is None:
            if "build" not in service:
                problems.append(f"{name} has neither an image nor a build")
            continue
        problem = _image_problem(name, str(image))
        if problem:
            problems.append(problem)
    for instruction in _dockerfile(kit.dockerfile):
        if instruction.keyword == "FROM":
            problem = _image_problem("Dockerfile", instruction.arguments.split()[0])
            if problem:
                problems.append(problem)
    return problems


def port_problems(kit: Kit) -> list[str]:
    """Every published port is bound to 127.0.0.1; Jaeger publishes its UI only."""
    problems: list[str] = []
    for name, service in _services(kit).items():
        for port in _ports(service):
            if port.host_ip != LOOPBACK:
                problems.append(
                    f"{name} publishes port {port.target} on {port.host_ip or 'every interface'}"
                )
    jaeger_ports = {port.target for port in _ports(_services(kit).get(JAEGER, {}))}
    if jaeger_ports != {JAEGER_UI_PORT}:
        problems.append(
            f"jaeger publishes {sorted(jaeger_ports)}, not the UI {JAEGER_UI_PORT} alone"
        )
    return problems


def app_problems(kit: Kit) -> list[str]:
    """The app listens where Prometheus scrapes it and sends OTLP where the collector listens."""
    problems: list[str] = []
    app = _services(kit).get(APP, {})
    env = _environment(app)
    port = int(env.get("PORT", "0"))
    container_ports = {published.target for published in _ports(app)}
    if port not in container_ports:
        problems.append(
            f"app PORT {port} is not among its published ports {sorted(container_ports)}"
        )
    if env.get("HOST") != "0.0.0.0":
        problems.append(
            f"app HOST is {env.get('HOST')!r}: only 0.0.0.0 is reachable from other containers"
        )
    targets = [_host_port(target) for target in _scrape_targets(kit, "icy-backend")]
    if targets != [(APP, port)]:
        problems.append(f"prometheus.yml scrapes icy-backend at {targets}, the app is {APP}:{port}")

    return problems + _otlp_problems(kit, APP)


def _otlp_problems(kit: Kit, name: str) -> list[str]:
    """`name` sends OTLP where the collector's receiver of its protocol listens."""
    problems: list[str] = []
    env = _environment(_services(kit).get(name, {}))
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    receiver = _collector_component(kit, "receivers", "otlp").get("protocols", {})
    listen = (receiver.get("grpc" if protocol == "grpc" else "http") or {}).get("endpoint", "")
    host, otlp_port = _host_port(endpoint)
    _, receiver_port = _host_port(listen)
    prefix = "" if name == APP else f"{name}: "
    if host != COLLECTOR:
        problems.append(
            f"{prefix}OTEL_EXPORTER_OTLP_ENDPOINT {endpoint!r} is not the {COLLECTOR} service"
        )
    if otlp_port is None or otlp_port != receiver_port:
        problems.append(
            f"{prefix}OTEL_EXPORTER_OTLP_ENDPOINT {endpoint!r} is not the collector's OTLP "
            f"{protocol} receiver ({listen!r})"
        )
    if not endpoint.startswith("http://"):
        problems.append(
            f"{prefix}OTEL_EXPORTER_OTLP_ENDPOINT {endpoint!r}: the collector speaks plain http"
        )
    return problems


def _healthcheck_test(service: Mapping[str, Any]) -> list[str]:
    test = (service.get("healthcheck") or {}).get("test", [])
    return [test] if isinstance(test, str) else [str(word) for word in test]


def healthcheck_problems(kit: Kit) -> list[str]:
    """The app's healthcheck reads /metrics: a degraded job (HTTP 206/503 from the health
    endpoint) is what the demo shows, not a reason to call the container unhealthy. The
    Celery web app's may read its health route, taking any HTTP answer for a live app. The
    worker's pings it without importing the example (which would set jobpulse up: an
    instance of the store at each check). Redis and the services that wait for it healthy
    have one."""
    test = " ".join(_healthcheck_test(_services(kit).get(APP, {})))
    port = _environment(_services(kit).get(APP, {})).get("PORT")
    problems: list[str] = []
    if f":{port}/metrics" not in test:
        problems.append(f"the app's healthcheck does not read :{port}/metrics: {test!r}")
    if "/api/v1/health" in test:
        problems.append(
            "the app's healthcheck reads the jobs' health: a degraded job would make the "
            "container unhealthy"
        )
    web = _services(kit).get(CELERY_WEB, {})
    web_test = " ".join(_healthcheck_test(web))
    web_port = _flag(_command(web), "--port")
    if not web_test:
        problems.append(f"{CELERY_WEB} has no healthcheck")
    elif f"127.0.0.1:{web_port}/" not in web_test:
        problems.append(f"{CELERY_WEB}'s healthcheck does not ask its port {web_port}")
    if "/api/v1/health" in web_test and "HTTPError" not in web_test:
        problems.append(
            f"{CELERY_WEB}'s healthcheck fails on an HTTP error: a failing job (503) would "
            "make the container unhealthy"
        )
    worker_test = _healthcheck_test(_services(kit).get(CELERY_WORKER, {}))
    worker_words = shlex.split(" ".join(worker_test[1:])) if worker_test else []
    if "ping" not in worker_words:
        problems.append(f"{CELERY_WORKER}'s healthcheck does not ping the worker: {worker_test}")
    if "-A" in worker_words or "--app" in worker_words or CELERY_APP in worker_words:
        problems.append(
            f"{CELERY_WORKER}'s healthcheck imports {CELERY_APP}, which sets jobpulse up: "
            "each check would be an instance of the store"
        )
    if worker_test and "$$HOSTNAME" not in " ".join(worker_test):
        problems.append(f"{CELERY_WORKER}'s healthcheck does not ping its own node")
    if not _healthcheck_test(_services(kit).get(REDIS, {})):
        problems.append(f"{REDIS} has no healthcheck: the services that need it cannot wait")
    return problems


def _redis_services(kit: Kit) -> set[str]:
    """The services that run a Redis image."""
    return {
        name
        for name, service in _services(kit).items()
        if str(service.get("image", "")).rpartition("/")[2].partition(":")[0] == "redis"
    }


def _redis_url_problems(kit: Kit, name: str, variable: str) -> list[str]:
    """`variable` of `name` is a URL of a Redis service of the kit, which `name` waits for."""
    url = _environment(_services(kit)[name]).get(variable, "")
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return [f"{name}: {variable} {url!r} is not a redis:// URL"]
    problems: list[str] = []
    if parts.hostname not in _redis_services(kit):
        problems.append(
            f"{name}: {variable} {url!r} names {parts.hostname!r}, no Redis service of the kit "
            f"({sorted(_redis_services(kit))})"
        )
    if (parts.port or REDIS_PORT) != REDIS_PORT:
        problems.append(f"{name}: {variable} {url!r}: Redis listens on {REDIS_PORT}")
    database = parts.path.strip("/") or "0"
    if not database.isdigit() or int(database) >= REDIS_DATABASES:
        problems.append(f"{name}: {variable} {url!r}: no database {database!r}")
    depends_on = _services(kit)[name].get("depends_on") or {}
    condition = (
        depends_on.get(parts.hostname) or {} if isinstance(depends_on, Mapping) else {}
    ).get("condition")
    if condition != "service_healthy":
        problems.append(f"{name} does not wait for {parts.hostname} to be healthy")
    return problems


def _service_name(service: Mapping[str, Any]) -> str | None:
    """The service.name its environment sets (OTEL_SERVICE_NAME wins), if any."""
    env = _environment(service)
    if env.get("OTEL_SERVICE_NAME"):
        return env["OTEL_SERVICE_NAME"]
    for pair in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, _, value = pair.partition("=")
        if key.strip() == "service.name":
            return value.strip()
    return None


def store_problems(kit: Kit) -> list[str]:
    """Every service with ``JOBPULSE_STORE`` has the same one, a database of the kit's Redis
    service, which it waits for; the Celery services all have it, and one service name (the
    store's keys are ``jobpulse:<namespace>:<service name>:``). A SQLite file is not shared
    between containers."""
    problems: list[str] = []
    stores = {
        name: env[STORE_VARIABLE]
        for name, service in _services(kit).items()
        if (env := _environment(service)).get(STORE_VARIABLE)
    }
    for name in CELERY_SERVICES:
        if name in _services(kit) and name not in stores:
            problems.append(f"{name} has no {STORE_VARIABLE}: its view is its own process's")
    if len(set(stores.values())) > 1:
        problems.append(f"the services have different stores: {stores}")
    for name, url in stores.items():
        if url.startswith("sqlite:"):
            problems.append(
                f"{name}: {STORE_VARIABLE} {url!r} is a file in its own container: "
                "no other service sees it"
            )
        else:
            problems += _redis_url_problems(kit, name, STORE_VARIABLE)
    names = {
        name: _service_name(_services(kit)[name])
        for name in CELERY_SERVICES
        if name in _services(kit)
    }
    if len(set(names.values())) > 1:
        problems.append(
            f"the Celery services set different service names, so different store keys: {names}"
        )
    return problems


def _web_target(kit: Kit, target: str) -> str | None:
    """Why uvicorn's ``module:attribute`` `target` is not in examples/, or None."""
    module, _, attribute = target.partition(":")
    path = kit.root / (module.replace(".", "/") + ".py")
    if not path.is_file():
        return f"{module} is no file of the build context ({path.relative_to(kit.root)})"
    if not re.search(rf"(?m)^{re.escape(attribute)}\b.*=", path.read_text(encoding="utf-8")):
        return f"{path.relative_to(kit.root)} defines no {attribute!r}"
    return None


def celery_problems(kit: Kit) -> list[str]:
    """The Celery example as a deployment: a prefork worker sending task events, exactly one
    beat, a web app on every interface of its container; all built here, on the broker of
    the kit's Redis, sending OTLP over HTTP to the collector."""
    problems: list[str] = []
    services = _services(kit)
    app_build = services.get(APP, {}).get("build")
    beats: list[str] = []
    for name in CELERY_SERVICES:
        service = services.get(name)
        if service is None:
            continue
        if service.get("build") != app_build:
            problems.append(f"{name} is not built as the app is: {service.get('build')}")
        command = _command(service)
        if name != CELERY_WEB and command[:3] != ["celery", "-A", CELERY_APP]:
            problems.append(f"{name} runs {command[:3]}, not celery -A {CELERY_APP}")
        if "beat" in command[3:4] or {"-B", "--beat"} & set(command):
            beats.append(name)
        if name == CELERY_WORKER:
            if command[3:4] != ["worker"]:
                problems.append(f"{name} runs {command[3:4]}, not a worker")
            if not {"-E", "--task-events"} & set(command):
                problems.append(f"{name} sends no task events (-E): beat cannot see its tasks")
            pool = _flag(command, "--pool") or _flag(command, "-P") or "prefork"
            if pool != "prefork":
                problems.append(f"{name} runs the {pool} pool, not prefork")
        if name == CELERY_WEB:
            if command[:3] != ["python", "-m", "uvicorn"] or len(command) < 4:
                problems.append(f"{name} runs {command[:3]}, not python -m uvicorn")
            else:
                problem = _web_target(kit, command[3])
                if problem:
                    problems.append(f"{name}: {problem}")
            if _flag(command, "--host") != "0.0.0.0":
                problems.append(f"{name} listens on {_flag(command, '--host')}, not 0.0.0.0")
            port = _flag(command, "--port")
            published = {published.target for published in _ports(service)}
            if port is None or int(port) not in published:
                problems.append(f"{name} listens on {port}, it publishes {sorted(published)}")
        problems += _redis_url_problems(kit, name, BROKER_VARIABLE)
        problems += _otlp_problems(kit, name)
        protocol = _environment(service).get("OTEL_EXPORTER_OTLP_PROTOCOL")
        if protocol != "http/protobuf":
            problems.append(f"{name} exports OTLP over {protocol}: gRPC breaks with a fork")
    if len(beats) != 1:
        problems.append(f"beat runs in {beats}: exactly one beat, or every task is sent twice")
    brokers = {
        name: _environment(services[name]).get(BROKER_VARIABLE)
        for name in CELERY_SERVICES
        if name in services
    }
    if len(set(brokers.values())) > 1:
        problems.append(f"the Celery services have different brokers: {brokers}")
    if not (kit.root / CELERY_APP.replace(".", "/") / "__init__.py").is_file():
        problems.append(f"{CELERY_APP} is not a package of the build context")
    return problems


def collector_problems(kit: Kit) -> list[str]:
    """The collector listens on every interface where others reach it, exports traces to the
    jaeger service, and serves metrics where prometheus.yml scrapes them."""
    problems: list[str] = []
    listeners = [
        (
            "receivers.otlp.grpc",
            _collector_component(kit, "receivers", "otlp").get("protocols", {}).get("grpc", {}),
        ),
        (
            "receivers.otlp.http",
            _collector_component(kit, "receivers", "otlp").get("protocols", {}).get("http", {}),
        ),
        ("exporters.prometheus", _collector_component(kit, "exporters", "prometheus")),
        ("extensions.health_check", _collector_component(kit, "extensions", "health_check")),
    ]
    for where, component in listeners:
        host, port = _host_port(str((component or {}).get("endpoint", "")))
        if host != "0.0.0.0" or port is None:
            problems.append(f"{where} listens on {host or '(default)'}:{port}, not 0.0.0.0:<port>")

    pipelines = kit.collector.get("service", {}).get("pipelines", {})
    trace_exporters = pipelines.get("traces", {}).get("exporters", [])
    jaeger = [name for name in trace_exporters if name == "otlp" or name.startswith("otlp/")]
    if not jaeger:
        problems.append(f"the traces pipeline exports over OTLP to nothing: {trace_exporters}")
    for name in jaeger:
        endpoint = str(_collector_component(kit, "exporters", name).get("endpoint", ""))
        if _host_port(endpoint) != (JAEGER, JAEGER_OTLP_GRPC_PORT):
            problems.append(
                f"exporters.{name} sends to {endpoint!r}, not {JAEGER}:{JAEGER_OTLP_GRPC_PORT}"
            )
    if "prometheus" not in pipelines.get("metrics", {}).get("exporters", []):
        problems.append("the metrics pipeline does not export to the prometheus exporter")

    _, exporter_port = _host_port(
        str(_collector_component(kit, "exporters", "prometheus").get("endpoint", ""))
    )
    targets = [_host_port(target) for target in _scrape_targets(kit, "otel-collector")]
    if targets != [(COLLECTOR, exporter_port)]:
        problems.append(
            f"prometheus.yml scrapes otel-collector at {targets}, "
            f"the exporter is {COLLECTOR}:{exporter_port}"
        )

    self_targets = [_host_port(target) for target in _scrape_targets(kit, "otel-collector-self")]
    if self_targets:
        metrics = kit.collector.get("service", {}).get("telemetry", {}).get("metrics", {})
        listening: list[tuple[str, int | None]] = []
        if "address" in metrics:
            listening.append(_host_port(str(metrics["address"])))
        for reader in metrics.get("readers", []):
            exporter = reader.get("pull", {}).get("exporter", {}).get("prometheus", {})
            if exporter:
                listening.append((str(exporter.get("host", "")), exporter.get("port")))
        # The collector's default (localhost:8888) is not reachable from Prometheus.
        for host, port in self_targets:
            if host != COLLECTOR or ("0.0.0.0", port) not in listening:
                problems.append(
                    f"prometheus.yml scrapes otel-collector-self at {host}:{port}; the collector "
                    f"serves its telemetry on {listening or 'localhost:8888 (default)'}"
                )
    config = _flag(_command(_services(kit).get(COLLECTOR, {})), "--config")
    mounted = _mount_target(kit, COLLECTOR, f"./{CONFIG}/otel-collector.yaml")
    if config is None or config != mounted:
        problems.append(
            f"the collector runs --config={config}, otel-collector.yaml is mounted at {mounted}"
        )
    return problems


def prometheus_problems(kit: Kit) -> list[str]:
    """Prometheus reads prometheus.yml where it is mounted, finds alerts.yml beside it, and
    scrapes only compose services."""
    problems: list[str] = []
    command = _command(_services(kit).get(PROMETHEUS, {}))
    config = _flag(command, "--config.file") or PROMETHEUS_DEFAULT_CONFIG
    mounted = _mount_target(kit, PROMETHEUS, f"./{CONFIG}/prometheus.yml")
    if config != mounted:
        problems.append(f"prometheus reads {config}, prometheus.yml is mounted at {mounted}")
    for rule_file in kit.prometheus.get("rule_files", []):
        if posixpath.isabs(rule_file):
            problems.append(
                f"rule_files entry {rule_file!r} is absolute: keep it beside prometheus.yml"
            )
            continue
        expected = posixpath.join(posixpath.dirname(config), rule_file)
        at = _mount_target(kit, PROMETHEUS, f"./{CONFIG}/{rule_file}")
        if at != expected:
            problems.append(
                f"rule file {rule_file} is mounted at {at}, prometheus reads {expected}"
            )
    for scrape in kit.prometheus.get("scrape_configs", []):
        for static in scrape.get("static_configs", []):
            for target in static.get("targets", []):
                host, _ = _host_port(target)
                if host not in _services(kit):
                    problems.append(f"{scrape['job_name']} scrapes {target}: {host} is no service")
    return problems


def _prometheus_port(kit: Kit) -> int:
    listen = _flag(_command(_services(kit).get(PROMETHEUS, {})), "--web.listen-address")
    port = _host_port(listen)[1] if listen else None
    return port or PROMETHEUS_DEFAULT_PORT


def grafana_problems(kit: Kit) -> list[str]:
    """Grafana's datasource is the prometheus service, its dashboards are provisioned from
    where they are mounted, viewers need no login, and no secret is written down."""
    problems: list[str] = []
    for source in kit.datasources.get("datasources", []):
        host, port = _host_port(str(source.get("url", "")))
        if (host, port) != (PROMETHEUS, _prometheus_port(kit)):
            problems.append(
                f"datasource {source.get('name')} is {host}:{port}, prometheus listens on "
                f"{PROMETHEUS}:{_prometheus_port(kit)}"
            )
    dashboards_at = _mount_target(kit, GRAFANA, f"./{CONFIG}/grafana/dashboards")
    for provider in kit.dashboard_providers.get("providers", []):
        path = provider.get("options", {}).get("path")
        if path != dashboards_at:
            problems.append(
                f"dashboard provider {provider.get('name')} reads {path}, "
                f"the dashboards are at {dashboards_at}"
            )
    for kind in ("datasources", "dashboards"):
        at = _mount_target(kit, GRAFANA, f"./{CONFIG}/grafana/provisioning/{kind}")
        if at != f"/etc/grafana/provisioning/{kind}":
            problems.append(f"provisioning/{kind} is mounted at {at}")
    env = _environment(_services(kit).get(GRAFANA, {}))
    if (
        env.get("GF_AUTH_ANONYMOUS_ENABLED") != "true"
        or env.get("GF_AUTH_ANONYMOUS_ORG_ROLE") != "Viewer"
    ):
        problems.append("Grafana does not let anonymous users view")
    for name, service in _services(kit).items():
        for key, value in _environment(service).items():
            if _SECRET_NAME.search(key) and not _INTERPOLATION.match(value):
                problems.append(
                    f"{name} has a literal secret in {key}: take it from the environment"
                )
    return problems


def dockerfile_problems(kit: Kit) -> list[str]:
    """Every COPY source exists and is in the build context; the CMD's module is copied; the
    app listens on every interface as a non-root user with the extras the demo needs."""
    problems: list[str] = []
    instructions = _dockerfile(kit.dockerfile)
    workdir = "/"
    copied: list[tuple[str, str]] = []  # (container path, context path)
    for instruction in instructions:
        if instruction.keyword == "WORKDIR":
            workdir = posixpath.join(workdir, instruction.arguments)
        elif instruction.keyword == "COPY":
            words = [word for word in _words(instruction.arguments) if not word.startswith("--")]
            sources, destination = words[:-1], posixpath.join(workdir, words[-1])
            for source in sources:
                if not (kit.root / source).exists():
                    problems.append(f"COPY {source}: it does not exist")
                elif dockerignore_excludes(kit.dockerignore, source):
                    problems.append(f"COPY {source}: .dockerignore leaves it out of the context")
                target = destination
                if destination.endswith("/") and not source.endswith("/"):
                    target = posixpath.join(destination, posixpath.basename(source))
                copied.append((posixpath.normpath(target), posixpath.normpath(source)))

    commands = [_words(i.arguments) for i in instructions if i.keyword == "CMD"]
    command = commands[-1] if commands else []
    if command[:2] != ["python", "-m"] or len(command) < 3:
        problems.append(f"CMD {command} does not run a module with python -m")
    else:
        module = command[2].replace(".", "/")
        candidates = [
            posixpath.join(workdir, module, "__main__.py"),
            posixpath.join(workdir, f"{module}.py"),
        ]
        found = False
        for candidate in candidates:
            for container_path, source in copied:
                if candidate.startswith(container_path + "/"):
                    relative = posixpath.join(source, candidate[len(container_path) + 1 :])
                    found = found or (kit.root / relative).is_file()
        if not found:
            problems.append(f"CMD runs {command[2]}, which no COPY puts under {workdir}")

    users = [i.arguments.split(":")[0] for i in instructions if i.keyword == "USER"]
    if not users or users[-1] in ("root", "0"):
        problems.append("the image runs as root: add a USER")
    env = _dockerfile_env(instructions)
    if env.get("HOST") != "0.0.0.0":
        problems.append(f"the image's HOST is {env.get('HOST')!r}, not 0.0.0.0")
    if env.get("DEMO_CONSOLE_SPANS") != "0":
        problems.append("the image prints spans to stdout: set DEMO_CONSOLE_SPANS=0")
    app_port = _environment(_services(kit).get(APP, {})).get("PORT")
    if env.get("PORT") != app_port:
        problems.append(
            f"the image's PORT {env.get('PORT')} differs from the app service's {app_port}"
        )
    exposed = {word for i in instructions if i.keyword == "EXPOSE" for word in i.arguments.split()}
    if app_port not in exposed:
        problems.append(f"the image does not EXPOSE the app's port {app_port}")
    installs = " ".join(
        i.arguments for i in instructions if i.keyword == "RUN" and "pip install" in i.arguments
    )
    extras = {
        extra.strip()
        for match in _PIP_EXTRAS.finditer(installs)
        for extra in match["extras"].split(",")
    }
    if not extras >= APP_EXTRAS:
        problems.append(
            f"pip installs the extras {sorted(extras)}, the demo needs {sorted(APP_EXTRAS)}"
        )
    if any(name in _services(kit) for name in CELERY_SERVICES) and not extras >= CELERY_EXTRAS:
        problems.append(
            f"pip installs the extras {sorted(extras)}, the Celery example needs "
            f"{sorted(CELERY_EXTRAS)}"
        )
    if "server" not in extras and "uvicorn" not in installs:
        problems.append("pip does not install uvicorn (the server extra), which serves the demo")
    return problems


def _context_files(root: Path, directory: str) -> Iterator[str]:
    for path in sorted((root / directory).rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_file() and "__pycache__" not in relative:
            yield relative


def dockerignore_problems(kit: Kit) -> list[str]:
    """The build context has the sources the image needs and no virtualenv, cache or VCS."""
    problems: list[str] = []
    needed = [
        "pyproject.toml",
        "README.md",
        *_context_files(kit.root, "src"),
        *_context_files(kit.root, "examples"),
    ]
    problems += [
        f"{path} is left out of the build context"
        for path in needed
        if dockerignore_excludes(kit.dockerignore, path)
    ]
    junk = [
        ".venv/bin/python",
        ".git/HEAD",
        "src/jobpulse/__pycache__/_monitor.cpython-311.pyc",
        "examples/icy_backend/__pycache__/app.cpython-311.pyc",
        ".mypy_cache/3.11/cache.db",
        ".pytest_cache/v/cache/lastfailed",
        ".ruff_cache/CACHEDIR.TAG",
        ".coverage",
        ".coverage.host.1234",
        "htmlcov/index.html",
        "tests/test_compose.py",
        "dist/jobpulse-0.1.0.tar.gz",
        "src/jobpulse.egg-info/PKG-INFO",
    ]
    problems += [
        f"{path} is sent to the build"
        for path in junk
        if not dockerignore_excludes(kit.dockerignore, path)
    ]
    return problems


CHECKS: dict[str, Callable[[Kit], list[str]]] = {
    "schema": schema_problems,
    "services": service_problems,
    "paths": path_problems,
    "images": image_problems,
    "ports": port_problems,
    "app": app_problems,
    "healthcheck": healthcheck_problems,
    "store": store_problems,
    "celery": celery_problems,
    "collector": collector_problems,
    "prometheus": prometheus_problems,
    "grafana": grafana_problems,
    "dockerfile": dockerfile_problems,
    "dockerignore": dockerignore_problems,
}


@pytest.mark.parametrize("check", CHECKS)
def test_kit_has_no_problems(kit: Kit, check: str) -> None:
    assert CHECKS[check](kit) == []


# -- negative tests: each check reports a broken copy of the kit -------------------------

Breakage = Callable[[Kit], None]
BREAKAGES: list[tuple[str, str, Breakage]] = []


def breaks(check: str, expected: str) -> Callable[[Breakage], Breakage]:
    """Register a change that `CHECKS[check]` must report with a problem containing
    `expected`."""

    def register(change: Breakage) -> Breakage:
        BREAKAGES.append((check, expected, change))
        return change

    return register


def _service(kit: Kit, name: str) -> Document:
    return _services(kit)[name]


@breaks("schema", "'imagee' was unexpected")
def misspelt_key(kit: Kit) -> None:
    _service(kit, JAEGER)["imagee"] = _service(kit, JAEGER).pop("image")


@breaks("schema", "services/app/ports")
def ports_not_a_list(kit: Kit) -> None:
    _service(kit, APP)["ports"] = "127.0.0.1:8000:8000"


@breaks("services", "service 'jaeger' is missing")
def jaeger_removed(kit: Kit) -> None:
    del _services(kit)[JAEGER]


@breaks("services", "grafana waits for prometheus to be healthy: it has no healthcheck")
def prometheus_healthcheck_removed(kit: Kit) -> None:
    del _service(kit, PROMETHEUS)["healthcheck"]


@breaks("paths", "./collector-config/otel-collector.yml, which does not exist")
def collector_config_misnamed(kit: Kit) -> None:
    _service(kit, COLLECTOR)["volumes"] = [
        "./collector-config/otel-collector.yml:/etc/otelcol-contrib/config.yaml:ro"
    ]


@breaks("paths", "mounts ./collector-config/alerts.yml writable")
def alerts_writable(kit: Kit) -> None:
    volumes = _service(kit, PROMETHEUS)["volumes"]
    volumes[:] = [volume.removesuffix(":ro") for volume in volumes]


@breaks("paths", "builds with Dockerfile.app, which does not exist")
def dockerfile_missing(kit: Kit) -> None:
    _service(kit, APP)["build"]["dockerfile"] = "Dockerfile.app"


@breaks("images", "image 'prom/prometheus' has no tag")
def image_untagged(kit: Kit) -> None:
    _service(kit, PROMETHEUS)["image"] = "prom/prometheus"


@breaks("images", "image 'localhost:5000/grafana' has no tag")
def image_untagged_on_a_registry_port(kit: Kit) -> None:
    _service(kit, GRAFANA)["image"] = "localhost:5000/grafana"


@breaks("images", "'latest'")
def image_latest(kit: Kit) -> None:
    _service(kit, JAEGER)["image"] = "jaegertracing/all-in-one:latest"


@breaks("images", "Dockerfile: image 'python:slim' is not pinned")
def base_image_unpinned(kit: Kit) -> None:
    kit.dockerfile = re.sub(r"(?m)^FROM .*$", "FROM python:slim", kit.dockerfile)


@breaks("images", "app has neither an image nor a build")
def app_without_build(kit: Kit) -> None:
    del _service(kit, APP)["build"]


@breaks("ports", "grafana publishes port 3000 on every interface")
def port_on_every_interface(kit: Kit) -> None:
    _service(kit, GRAFANA)["ports"] = ["3000:3000"]


@breaks("ports", "prometheus publishes port 9090 on 0.0.0.0")
def port_on_any_address(kit: Kit) -> None:
    _service(kit, PROMETHEUS)["ports"] = ["0.0.0.0:9090:9090"]


@breaks("ports", "app publishes port 8000 on every interface")
def port_in_long_syntax(kit: Kit) -> None:
    _service(kit, APP)["ports"] = [{"target": 8000, "published": "8000"}]


@breaks("ports", "jaeger publishes [4317, 16686]")
def jaeger_otlp_published(kit: Kit) -> None:
    _service(kit, JAEGER)["ports"].append("127.0.0.1:4317:4317")


@breaks("app", "app PORT 8080 is not among its published ports [8000]")
def app_port_changed(kit: Kit) -> None:
    _service(kit, APP)["environment"]["PORT"] = "8080"


@breaks("app", "prometheus.yml scrapes icy-backend at [('app', 8001)]")
def scrape_port_changed(kit: Kit) -> None:
    kit.prometheus["scrape_configs"][0]["static_configs"][0]["targets"] = ["app:8001"]


@breaks("app", "only 0.0.0.0 is reachable")
def app_on_loopback(kit: Kit) -> None:
    _service(kit, APP)["environment"]["HOST"] = "127.0.0.1"


@breaks("app", "is not the otel-collector service")
def otlp_to_jaeger(kit: Kit) -> None:
    _service(kit, APP)["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://jaeger:4317"


@breaks("app", "is not the collector's OTLP grpc receiver")
def otlp_grpc_to_http_port(kit: Kit) -> None:
    _service(kit, APP)["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://otel-collector:4318"


@breaks("app", "is not the collector's OTLP grpc receiver ('0.0.0.0:4319')")
def receiver_port_changed(kit: Kit) -> None:
    kit.collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] = "0.0.0.0:4319"


@breaks("healthcheck", "a degraded job would make the container unhealthy")
def healthcheck_on_job_health(kit: Kit) -> None:
    _service(kit, APP)["healthcheck"]["test"] = [
        "CMD",
        "python",
        "-c",
        "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/api/v1/health/jobs')",
    ]


@breaks("healthcheck", "the app's healthcheck does not read :8000/metrics")
def healthcheck_on_another_port(kit: Kit) -> None:
    test = _service(kit, APP)["healthcheck"]["test"]
    test[:] = [word.replace(":8000/", ":8080/") for word in test]


@breaks("services", "app depends on an unknown service 'collector'")
def depends_on_unknown_service(kit: Kit) -> None:
    _service(kit, APP)["depends_on"] = ["collector"]


@breaks("collector", "receivers.otlp.grpc listens on localhost:4317")
def receiver_on_loopback(kit: Kit) -> None:
    kit.collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] = "localhost:4317"


@breaks("collector", "extensions.health_check listens on (default):None")
def health_check_default_endpoint(kit: Kit) -> None:
    kit.collector["extensions"]["health_check"] = None


@breaks("collector", "exporters.otlp/jaeger sends to 'jaegar:4317', not jaeger:4317")
def jaeger_host_misspelt(kit: Kit) -> None:
    kit.collector["exporters"]["otlp/jaeger"]["endpoint"] = "jaegar:4317"


@breaks("collector", "scrapes otel-collector at [('otel-collector', 8889)]")
def exporter_port_changed(kit: Kit) -> None:
    kit.collector["exporters"]["prometheus"]["endpoint"] = "0.0.0.0:9464"


@breaks("collector", "scrapes otel-collector-self at otel-collector:8888")
def telemetry_port_changed(kit: Kit) -> None:
    readers = kit.collector["service"]["telemetry"]["metrics"]["readers"]
    readers[0]["pull"]["exporter"]["prometheus"]["port"] = 8899


@breaks("collector", "localhost:8888 (default)")
def telemetry_default(kit: Kit) -> None:
    del kit.collector["service"]["telemetry"]


@breaks("collector", "the collector runs --config=/etc/otelcol/config.yaml")
def collector_reads_another_config(kit: Kit) -> None:
    _service(kit, COLLECTOR)["command"] = ["--config=/etc/otelcol/config.yaml"]


@breaks("collector", "the collector runs --config=None")
def collector_without_config_flag(kit: Kit) -> None:
    del _service(kit, COLLECTOR)["command"]


@breaks("prometheus", "prometheus reads /etc/prometheus/config.yml")
def prometheus_reads_another_config(kit: Kit) -> None:
    command = _service(kit, PROMETHEUS)["command"]
    command[:] = [
        "--config.file=/etc/prometheus/config.yml" if word.startswith("--config.file") else word
        for word in command
    ]


@breaks("prometheus", "rule file alerts.yml is mounted at /etc/alerts.yml")
def alerts_mounted_elsewhere(kit: Kit) -> None:
    volumes = _service(kit, PROMETHEUS)["volumes"]
    volumes[:] = [
        volume.replace("/etc/prometheus/alerts.yml", "/etc/alerts.yml") for volume in volumes
    ]


@breaks("prometheus", "is absolute")
def rule_file_absolute(kit: Kit) -> None:
    kit.prometheus["rule_files"] = ["/etc/prometheus/alerts.yml"]


@breaks("prometheus", "icy-backend scrapes backend:8000: backend is no service")
def scrape_unknown_host(kit: Kit) -> None:
    kit.prometheus["scrape_configs"][0]["static_configs"][0]["targets"] = ["backend:8000"]


@breaks("grafana", "datasource Prometheus is prometheus:9091")
def datasource_port_changed(kit: Kit) -> None:
    kit.datasources["datasources"][0]["url"] = "http://prometheus:9091"


@breaks("grafana", "prometheus listens on prometheus:9191")
def prometheus_listen_port_changed(kit: Kit) -> None:
    command = _service(kit, PROMETHEUS)["command"]
    command[:] = [word for word in command if not word.startswith("--web.listen-address")]
    command.append("--web.listen-address=:9191")


@breaks("grafana", "reads /etc/grafana/dashboards, the dashboards are at")
def provider_path_changed(kit: Kit) -> None:
    kit.dashboard_providers["providers"][0]["options"]["path"] = "/etc/grafana/dashboards"


@breaks("grafana", "provisioning/datasources is mounted at None")
def datasources_not_mounted(kit: Kit) -> None:
    volumes = _service(kit, GRAFANA)["volumes"]
    volumes[:] = [volume for volume in volumes if "provisioning/datasources" not in volume]


@breaks("grafana", "grafana has a literal secret in GF_SECURITY_ADMIN_PASSWORD")
def literal_password(kit: Kit) -> None:
    _service(kit, GRAFANA)["environment"]["GF_SECURITY_ADMIN_PASSWORD"] = "hunter2"


@breaks("grafana", "Grafana does not let anonymous users view")
def anonymous_access_off(kit: Kit) -> None:
    _service(kit, GRAFANA)["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] = "false"


@breaks("dockerfile", "COPY example/: it does not exist")
def copy_source_missing(kit: Kit) -> None:
    kit.dockerfile = kit.dockerfile.replace("COPY examples/", "COPY example/")


@breaks("dockerfile", "CMD runs examples.icy_backend, which no COPY puts under /app")
def cmd_module_not_copied(kit: Kit) -> None:
    kit.dockerfile = kit.dockerfile.replace("COPY examples/ ./examples/", "COPY examples/ ./demo/")


@breaks("dockerfile", "CMD runs examples.icy_frontend, which no COPY puts under /app")
def cmd_module_missing(kit: Kit) -> None:
    kit.dockerfile = kit.dockerfile.replace("examples.icy_backend", "examples.icy_frontend")


@breaks("dockerfile", "COPY src/: .dockerignore leaves it out of the context")
def copy_source_ignored(kit: Kit) -> None:
    kit.dockerignore += "\nsrc\n"


@breaks("dockerfile", "the image runs as root")
def runs_as_root(kit: Kit) -> None:
    kit.dockerfile = re.sub(r"(?m)^USER .*$", "USER root", kit.dockerfile)


@breaks("dockerfile", "the demo needs ['apscheduler', 'otlp', 'prometheus', 'starlette']")
def extra_missing(kit: Kit) -> None:
    kit.dockerfile = kit.dockerfile.replace(",apscheduler,", ",")


@breaks("dockerfile", "the Celery example needs ['celery', 'otlp', 'redis', 'server', 'starlette']")
def celery_extra_missing(kit: Kit) -> None:
    kit.dockerfile = kit.dockerfile.replace(",redis,", ",")


@breaks("dockerfile", "pip does not install uvicorn")
def uvicorn_missing(kit: Kit) -> None:
    kit.dockerfile = kit.dockerfile.replace(",server]", "]")


@breaks("dockerfile", "the image's HOST is '127.0.0.1'")
def image_on_loopback(kit: Kit) -> None:
    kit.dockerfile = kit.dockerfile.replace("HOST=0.0.0.0", "HOST=127.0.0.1")


@breaks("dockerfile", "the image does not EXPOSE the app's port 8000")
def port_not_exposed(kit: Kit) -> None:
    kit.dockerfile = re.sub(r"(?m)^EXPOSE .*$", "EXPOSE 8080", kit.dockerfile)


@breaks("dockerignore", ".venv/bin/python is sent to the build")
def dockerignore_empty(kit: Kit) -> None:
    kit.dockerignore = ""


@breaks("dockerignore", "examples/icy_backend/app.py is left out of the build context")
def example_ignored(kit: Kit) -> None:
    kit.dockerignore += "\nexamples/icy_backend/app.py\n"


@breaks("services", "service 'redis' is missing")
def redis_removed(kit: Kit) -> None:
    del _services(kit)[REDIS]


@breaks("services", "celery-worker waits for redis to be healthy: it has no healthcheck")
def redis_healthcheck_removed(kit: Kit) -> None:
    del _service(kit, REDIS)["healthcheck"]


@breaks("images", "redis: image 'redis:alpine' is not pinned")
def redis_unpinned(kit: Kit) -> None:
    _service(kit, REDIS)["image"] = "redis:alpine"


@breaks("ports", "celery-web publishes port 8001 on every interface")
def celery_web_on_every_interface(kit: Kit) -> None:
    _service(kit, CELERY_WEB)["ports"] = ["8001:8001"]


@breaks("healthcheck", "redis has no healthcheck")
def redis_without_healthcheck(kit: Kit) -> None:
    del _service(kit, REDIS)["healthcheck"]


@breaks("healthcheck", "celery-web's healthcheck fails on an HTTP error")
def celery_web_healthcheck_fails_on_503(kit: Kit) -> None:
    _service(kit, CELERY_WEB)["healthcheck"]["test"] = [
        "CMD",
        "python",
        "-c",
        "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/api/v1/health/jobs')",
    ]


@breaks("healthcheck", "celery-web's healthcheck does not ask its port 8002")
def celery_web_port_changed_not_its_healthcheck(kit: Kit) -> None:
    command = _service(kit, CELERY_WEB)["command"]
    command[:] = ["--port=8002" if word == "--port=8001" else word for word in command]


@breaks("healthcheck", "celery-web has no healthcheck")
def celery_web_without_healthcheck(kit: Kit) -> None:
    del _service(kit, CELERY_WEB)["healthcheck"]


@breaks("healthcheck", "celery-worker's healthcheck imports examples.celery_app")
def celery_worker_healthcheck_imports_the_example(kit: Kit) -> None:
    _service(kit, CELERY_WORKER)["healthcheck"]["test"] = [
        "CMD-SHELL",
        'celery -A examples.celery_app inspect ping -d "celery@$$HOSTNAME"',
    ]


@breaks("healthcheck", "celery-worker's healthcheck does not ping its own node")
def celery_worker_healthcheck_pings_any_node(kit: Kit) -> None:
    _service(kit, CELERY_WORKER)["healthcheck"]["test"] = [
        "CMD-SHELL",
        'celery -b "$$CELERY_BROKER_URL" inspect ping',
    ]


@breaks("healthcheck", "celery-worker's healthcheck does not ping the worker")
def celery_worker_without_healthcheck(kit: Kit) -> None:
    del _service(kit, CELERY_WORKER)["healthcheck"]


@breaks("store", "celery-web has no JOBPULSE_STORE")
def celery_web_without_store(kit: Kit) -> None:
    del _service(kit, CELERY_WEB)["environment"][STORE_VARIABLE]


@breaks("store", "the services have different stores")
def celery_beat_on_another_database(kit: Kit) -> None:
    _service(kit, CELERY_BEAT)["environment"][STORE_VARIABLE] = "redis://redis:6379/2"


@breaks("store", "names 'localhost', no Redis service of the kit (['redis'])")
def store_on_localhost(kit: Kit) -> None:
    for name in (APP, *CELERY_SERVICES):
        _service(kit, name)["environment"][STORE_VARIABLE] = "redis://localhost:6379/1"


@breaks("store", "names 'redis', no Redis service of the kit ([])")
def redis_image_replaced(kit: Kit) -> None:
    _service(kit, REDIS)["image"] = "valkey/valkey:8.0.1"


@breaks("store", "Redis listens on 6379")
def store_on_another_port(kit: Kit) -> None:
    for name in (APP, *CELERY_SERVICES):
        _service(kit, name)["environment"][STORE_VARIABLE] = "redis://redis:6380/1"


@breaks("store", "no database '16'")
def store_database_out_of_range(kit: Kit) -> None:
    for name in (APP, *CELERY_SERVICES):
        _service(kit, name)["environment"][STORE_VARIABLE] = "redis://redis:6379/16"


@breaks("store", "is a file in its own container")
def store_in_sqlite(kit: Kit) -> None:
    for name in (APP, *CELERY_SERVICES):
        _service(kit, name)["environment"][STORE_VARIABLE] = "sqlite:////tmp/jobs.db"


@breaks("store", "celery-beat does not wait for redis to be healthy")
def celery_beat_does_not_wait_for_redis(kit: Kit) -> None:
    del _service(kit, CELERY_BEAT)["depends_on"][REDIS]


@breaks("store", "the Celery services set different service names, so different store keys")
def celery_worker_renamed(kit: Kit) -> None:
    _service(kit, CELERY_WORKER)["environment"]["OTEL_SERVICE_NAME"] = "celery-worker"


@breaks("store", "the Celery services set different service names")
def celery_web_renamed_by_resource_attributes(kit: Kit) -> None:
    environment = _service(kit, CELERY_WEB)["environment"]
    environment["OTEL_RESOURCE_ATTRIBUTES"] = "deployment.environment=demo,service.name=web"


@breaks("celery", "celery-worker sends no task events (-E)")
def celery_worker_without_events(kit: Kit) -> None:
    command = _service(kit, CELERY_WORKER)["command"]
    command.remove("-E")


@breaks("celery", "celery-worker runs the solo pool, not prefork")
def celery_worker_solo(kit: Kit) -> None:
    command = _service(kit, CELERY_WORKER)["command"]
    command[:] = ["--pool=solo" if word == "--pool=prefork" else word for word in command]


@breaks("celery", "beat runs in ['celery-worker', 'celery-beat']: exactly one beat")
def beat_twice(kit: Kit) -> None:
    _service(kit, CELERY_WORKER)["command"].append("--beat")


@breaks("celery", "beat runs in []")
def beat_removed(kit: Kit) -> None:
    del _services(kit)[CELERY_BEAT]


@breaks("celery", "celery-beat runs ['celery', '-A', 'examples.celery'], not celery -A")
def celery_beat_app_misnamed(kit: Kit) -> None:
    command = _service(kit, CELERY_BEAT)["command"]
    command[:] = ["examples.celery" if word == CELERY_APP else word for word in command]


@breaks("celery", "celery-web: examples/celery_app/web.py defines no 'app'")
def celery_web_attribute_misnamed(kit: Kit) -> None:
    command = _service(kit, CELERY_WEB)["command"]
    command[:] = [word.replace(":web", ":app") for word in command]


@breaks("celery", "celery-web: examples.celery_app.website is no file of the build context")
def celery_web_module_missing(kit: Kit) -> None:
    command = _service(kit, CELERY_WEB)["command"]
    command[:] = [word.replace(".web:", ".website:") for word in command]


@breaks("celery", "celery-web listens on 127.0.0.1, not 0.0.0.0")
def celery_web_on_loopback(kit: Kit) -> None:
    command = _service(kit, CELERY_WEB)["command"]
    command[:] = ["--host=127.0.0.1" if word == "--host=0.0.0.0" else word for word in command]


@breaks("celery", "celery-web listens on 8002, it publishes [8001]")
def celery_web_port_not_published(kit: Kit) -> None:
    command = _service(kit, CELERY_WEB)["command"]
    command[:] = ["--port=8002" if word == "--port=8001" else word for word in command]


@breaks("celery", "celery-web is not built as the app is")
def celery_web_built_elsewhere(kit: Kit) -> None:
    _service(kit, CELERY_WEB)["build"] = {"context": ".", "dockerfile": "Dockerfile.web"}


@breaks("celery", "the Celery services have different brokers")
def celery_beat_on_another_broker(kit: Kit) -> None:
    _service(kit, CELERY_BEAT)["environment"][BROKER_VARIABLE] = "redis://redis:6379/3"


@breaks("celery", "celery-worker: CELERY_BROKER_URL 'amqp://rabbitmq//' is not a redis:// URL")
def celery_worker_on_rabbitmq(kit: Kit) -> None:
    _service(kit, CELERY_WORKER)["environment"][BROKER_VARIABLE] = "amqp://rabbitmq//"


@breaks("celery", "celery-beat exports OTLP over grpc: gRPC breaks with a fork")
def celery_beat_over_grpc(kit: Kit) -> None:
    environment = _service(kit, CELERY_BEAT)["environment"]
    environment["OTEL_EXPORTER_OTLP_PROTOCOL"] = "grpc"
    environment["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://otel-collector:4317"


@breaks("celery", "celery-worker: OTEL_EXPORTER_OTLP_ENDPOINT 'http://otel-collector:4317' is not")
def celery_worker_otlp_to_the_grpc_port(kit: Kit) -> None:
    environment = _service(kit, CELERY_WORKER)["environment"]
    environment["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://otel-collector:4317"


@pytest.mark.parametrize(
    ("check", "expected", "change"),
    BREAKAGES,
    ids=[change.__name__ for _, _, change in BREAKAGES],
)
def test_check_reports_a_broken_kit(kit: Kit, check: str, expected: str, change: Breakage) -> None:
    changed = copy.deepcopy(kit)
    change(changed)
    problems = CHECKS[check](changed)
    assert any(expected in problem for problem in problems), problems


def test_every_check_has_a_negative_test() -> None:
    assert {check for check, _, _ in BREAKAGES} == set(CHECKS)


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        ("README.md", False),
        ("src/jobpulse/_monitor.py", False),
        ("src/jobpulse/__pycache__/_monitor.cpython-311.pyc", True),
        ("tests/conftest.py", True),
        (".venv", True),
        ("Makefile", True),
    ],
)
def test_dockerignore_excludes(kit: Kit, path: str, excluded: bool) -> None:
    assert dockerignore_excludes(kit.dockerignore, path) is excluded


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("127.0.0.1:8000:8000", Port("127.0.0.1", "8000", 8000)),
        ("8000:8000/udp", Port(None, "8000", 8000)),
        ("8000", Port(None, None, 8000)),
        (8000, Port(None, None, 8000)),
        ("[::1]:80:8080", Port("::1", "80", 8080)),
        ({"target": 80, "host_ip": "127.0.0.1", "published": 81}, Port("127.0.0.1", "81", 80)),
    ],
)
def test_port_parsing(entry: object, expected: Port) -> None:
    assert _ports({"ports": [entry]}) == [expected]
