"""docker-compose.yml and the Dockerfile, checked statically (no Docker on this machine)."""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import pytest
import yaml
from redis.asyncio.cluster import RedisCluster

from stream_engine.api.auth import check_api_exposure
from stream_engine.auth import TokenRequired, is_loopback
from stream_engine.cache.redis_tier import client_from_url
from stream_engine.cli import build_parser
from stream_engine.settings import PROJECT_ROOT, Settings

COMPOSE_TEXT = (PROJECT_ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, Any] = COMPOSE["services"]
LONG_RUNNING = ("kafka", "redis", "clickhouse", "propositions", "worker")
# Every redis-server: the single Redis and the cluster profile's nodes.
REDIS_SERVERS = sorted(
    name for name, svc in SERVICES.items() if svc.get("image", "").startswith("redis:") and "redis-server" in str(svc.get("command"))
)
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"
# Compose variable references: ${NAME}, ${NAME:?error}, ${NAME?error}, ${NAME:-default}, ${NAME-default}.
VARIABLE = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[?-])(?P<arg>[^}]*))?\}")
# Values standing in for an operator's .env: distinct, so a test can tell where each one lands.
DOT_ENV = {
    "STREAM_ENGINE_API_TOKEN": "api-token-from-env",
    "STREAM_ENGINE_ADMIN_TOKEN": "admin-token-from-env",
    "REDIS_PASSWORD": "redis-password-from-env",
    "CLICKHOUSE_USER": "ch-user-from-env",
    "CLICKHOUSE_PASSWORD": "ch-password-from-env",
}


def interpolate(value: str, env: dict[str, str]) -> str:
    """What `docker compose` makes of ``value`` with ``env`` as its .env (``:?`` fails when unset or empty)."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"] or "", match["arg"] or ""
        found = env.get(name)
        if op in (":?", "?") and (found is None or (op == ":?" and found == "")):
            raise LookupError(f"{name}: {arg}")
        if op in (":-", "-") and (found is None or (op == ":-" and found == "")):
            return arg
        return found or ""

    return VARIABLE.sub(one, value).replace("$$", "$")


def env_of(service: str, dot_env: dict[str, str] | None = None) -> dict[str, str]:
    """The service's environment as written, or interpolated with ``dot_env``."""
    env = SERVICES[service].get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    raw = {str(k): str(v) for k, v in env.items()}
    return raw if dot_env is None else {k: interpolate(v, dot_env) for k, v in raw.items()}


class Published(NamedTuple):
    host_ip: str  # "" = every interface
    host_port: str | None  # None = Docker picks one
    container_port: str


def published(service: dict[str, Any]) -> list[Published]:
    """The service's ``ports`` in compose's short ("[ip:][host:]container") or long syntax."""
    out = []
    for spec in service.get("ports", []):
        if isinstance(spec, dict):
            out.append(Published(str(spec.get("host_ip", "")), _str_or_none(spec.get("published")), str(spec["target"])))
            continue
        parts = str(spec).rsplit(":", 2)
        if len(parts) == 1:
            out.append(Published("", None, parts[0]))
        elif len(parts) == 2:
            out.append(Published("", parts[0], parts[1]))
        else:
            out.append(Published(parts[0], parts[1] or None, parts[2]))
    return out


def _str_or_none(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def test_every_part_of_the_engine_is_a_service() -> None:
    assert set(LONG_RUNNING) | {"topics-init"} <= set(SERVICES)


@pytest.mark.parametrize("service", LONG_RUNNING)
def test_long_running_services_have_a_healthcheck(service: str) -> None:
    check = SERVICES[service].get("healthcheck", {})
    assert not check.get("disable"), service
    assert isinstance(check.get("test"), list) and check["test"][0] in ("CMD", "CMD-SHELL"), service
    assert check.get("retries", 0) >= 3


def test_kafka_is_apache_kraft_4_1_1_or_newer() -> None:
    kafka = SERVICES["kafka"]
    image, _, tag = kafka["image"].partition(":")
    assert image == "apache/kafka"
    assert tuple(int(p) for p in re.findall(r"\d+", tag)[:3]) >= (4, 1, 1)
    env = env_of("kafka")
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"


def test_worker_can_scale() -> None:
    worker = SERVICES["worker"]
    assert "container_name" not in worker  # `--scale worker=N` needs no fixed name …
    assert all(port.host_port is None for port in published(worker))  # … and no fixed host port
    assert "build" in worker and worker["command"] == ["worker"]


def test_worker_replicas_share_the_journal_volume() -> None:
    worker = SERVICES["worker"]
    assert "worker-journal:/data/journal" in worker["volumes"]
    assert "worker-journal" in COMPOSE["volumes"]
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    assert "mkdir -p /data/journal" in dockerfile and "chown -R stream /data" in dockerfile  # volume owned by the worker


def test_worker_environment_points_at_the_services() -> None:
    env = env_of("worker", DOT_ENV)
    assert env["STREAM_ENGINE_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["STREAM_ENGINE_REDIS_URL"] == "redis://:redis-password-from-env@redis:6379/0"
    assert env["STREAM_ENGINE_CLICKHOUSE_URL"] == "http://ch-user-from-env:ch-password-from-env@clickhouse:8123"
    assert env["STREAM_ENGINE_PROPOSITIONS_URL"] == "http://propositions:8700"


@pytest.mark.parametrize("service", ["worker", "propositions", "topics-init"])
def test_engine_environment_is_valid_settings(service: str) -> None:
    env = env_of(service, DOT_ENV)
    overrides = {k.removeprefix("STREAM_ENGINE_").lower(): v for k, v in env.items() if k.startswith("STREAM_ENGINE_")}
    assert set(overrides) <= set(Settings.model_fields), set(overrides) - set(Settings.model_fields)
    Settings(**overrides)  # every value parses


@pytest.mark.parametrize(
    ("service", "needs"),
    [
        ("worker", {"kafka", "redis", "clickhouse", "propositions", "topics-init"}),
        ("propositions", {"kafka", "redis", "topics-init"}),
        ("topics-init", {"kafka"}),
    ],
)
def test_startup_order_waits_for_health(service: str, needs: set[str]) -> None:
    depends = SERVICES[service]["depends_on"]
    assert set(depends) == needs
    for name, rule in depends.items():
        expected = "service_completed_successfully" if name == "topics-init" else "service_healthy"
        assert rule["condition"] == expected, (service, name)


@pytest.mark.parametrize("service", ["worker", "propositions", "topics-init"])
def test_engine_commands_exist_in_the_cli(service: str) -> None:
    command = SERVICES[service]["command"]
    build_parser().parse_args(command)  # argparse exits (SystemExit) on an unknown subcommand/flag


def test_topics_init_is_a_one_shot_topics_apply() -> None:
    init = SERVICES["topics-init"]
    assert init["command"][:2] == ["topics", "apply"] and init["restart"] == "no"


def test_dockerfile_installs_the_package_and_points_paths_at_the_image() -> None:
    text = (PROJECT_ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.1[1-9]", text, re.M)
    assert "pip install ." in text and "COPY topics" in text
    assert "STREAM_ENGINE_TOPICS_DIR=/app/topics" in text
    assert 'ENTRYPOINT ["stream-engine"]' in text


# --- security: what is reachable, with which credential -----------------------------------------


@pytest.mark.parametrize("service", sorted(set(SERVICES) - {"worker"}))
def test_nothing_but_the_worker_api_is_published_beyond_this_host(service: str) -> None:
    for port in published(SERVICES[service]):
        assert port.host_ip and is_loopback(port.host_ip), f"{service} publishes {port} beyond 127.0.0.1"


def test_redis_is_not_published_at_all() -> None:
    assert published(SERVICES["redis"]) == []


def test_the_worker_api_is_published_only_with_a_token() -> None:
    (port,) = published(SERVICES["worker"])
    env = env_of("worker")
    assert port.container_port == env["STREAM_ENGINE_API_PORT"]
    assert not is_loopback(env["STREAM_ENGINE_API_HOST"])  # listening for the published port …
    assert re.fullmatch(r"\$\{STREAM_ENGINE_API_TOKEN:\?[^}]+\}", env["STREAM_ENGINE_API_TOKEN"])  # … so required
    with pytest.raises(LookupError, match="STREAM_ENGINE_API_TOKEN"):
        env_of("worker", {**DOT_ENV, "STREAM_ENGINE_API_TOKEN": ""})  # compose refuses to start
    settings = Settings(**{k.removeprefix("STREAM_ENGINE_").lower(): v for k, v in env_of("worker", DOT_ENV).items()
                           if k.startswith("STREAM_ENGINE_")})  # fmt: skip
    check_api_exposure(settings)  # the token reaches the worker: it starts …
    with pytest.raises(TokenRequired):
        check_api_exposure(settings.with_overrides(api_token=""))  # … and would not without it


def test_the_proposition_service_gets_its_admin_token_from_the_env_file() -> None:
    env = env_of("propositions")
    assert re.fullmatch(r"\$\{STREAM_ENGINE_ADMIN_TOKEN:\?[^}]+\}", env["STREAM_ENGINE_ADMIN_TOKEN"])
    assert "STREAM_ENGINE_ADMIN_TOKEN" not in env_of("worker")  # the read path needs no admin token


@pytest.mark.parametrize("service", REDIS_SERVERS)
def test_every_redis_needs_a_password_and_evicts_only_keys_with_a_ttl(service: str) -> None:
    """The invalidation floors have no TTL (stream_engine/cache/redis_tier.py): an allkeys-*
    policy could evict them and bring old answers back."""
    command = " ".join(SERVICES[service]["command"])
    # requirepass from the environment (here on stdin: `redis-server -` reads its config there)
    assert "requirepass" in command and ("$$REDIS_PASSWORD" in command or "${REDIS_PASSWORD:?" in command), command
    policy = re.search(r"--maxmemory-policy\s+(\S+)", command)
    assert policy and policy.group(1).startswith("volatile-"), command
    env = env_of(service, DOT_ENV)
    assert env["REDIS_PASSWORD"] == DOT_ENV["REDIS_PASSWORD"] and env["REDISCLI_AUTH"] == DOT_ENV["REDIS_PASSWORD"]


def test_the_engine_reaches_redis_with_its_password() -> None:
    for service in ("worker", "propositions", "topics-init"):
        assert env_of(service, DOT_ENV)["STREAM_ENGINE_REDIS_URL"].startswith("redis://:redis-password-from-env@")


def test_clickhouse_has_its_own_user_and_password_from_the_env_file() -> None:
    env = env_of("clickhouse")
    assert re.fullmatch(r"\$\{CLICKHOUSE_USER:\?[^}]+\}", env["CLICKHOUSE_USER"])
    assert re.fullmatch(r"\$\{CLICKHOUSE_PASSWORD:\?[^}]+\}", env["CLICKHOUSE_PASSWORD"])
    assert "CLICKHOUSE_SKIP_USER_SETUP" not in env
    example = dot_env_example()
    assert example["CLICKHOUSE_USER"] not in ("", "default"), "a non-default user"
    check = " ".join(SERVICES["clickhouse"]["healthcheck"]["test"])
    assert "$$CLICKHOUSE_PASSWORD" in check and DOT_ENV["CLICKHOUSE_PASSWORD"] not in check


def test_no_secret_is_written_in_the_compose_file() -> None:
    for value in DOT_ENV.values():
        assert value not in COMPOSE_TEXT
    for word in ("PASSWORD", "TOKEN"):
        for line in COMPOSE_TEXT.splitlines():
            key, sep, value = line.strip().partition(":")
            if sep and word in key and value.strip() and not key.startswith("#"):
                assert "${" in value, f"literal secret? {line.strip()}"


def test_every_variable_the_compose_file_needs_is_in_env_example_and_env_is_ignored() -> None:
    needed = {m["name"] for m in VARIABLE.finditer(COMPOSE_TEXT) if m["op"] in (":?", "?")}
    assert needed == set(DOT_ENV), needed  # DOT_ENV above stands for a complete .env
    example = dot_env_example()
    assert needed <= set(example), needed - set(example)
    secrets = {k for k in needed if "PASSWORD" in k or "TOKEN" in k}
    assert all(example[k] == "" for k in secrets), "the example must not ship usable secrets"
    ignored = (PROJECT_ROOT / ".gitignore").read_text().split()
    assert "/.env" in ignored or ".env" in ignored


def test_the_image_keeps_the_api_on_loopback_unless_told_otherwise() -> None:
    text = (PROJECT_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env = dict(
        pair.split("=", 1)
        for line in text.splitlines()
        if line.startswith("ENV ")
        for pair in line[4:].split()
        if "=" in pair
    )
    assert "STREAM_ENGINE_TOPICS_DIR" in env  # the ENV lines were found
    assert is_loopback(env.get("STREAM_ENGINE_API_HOST", Settings.model_fields["api_host"].default))


def dot_env_example() -> dict[str, str]:
    lines = ENV_EXAMPLE.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.lstrip().startswith("#"))


# --- the Redis Cluster profile ------------------------------------------------------------------

CLUSTER_ENV = {
    **DOT_ENV,
    "REDIS_SCHEME": "redis+cluster",
    "REDIS_NODES": "redis-cluster-1:6379,redis-cluster-2:6379,redis-cluster-3:6379",
}


def test_the_cluster_profile_is_three_masters_joined_by_a_one_shot() -> None:
    nodes = [f"redis-cluster-{i}" for i in (1, 2, 3)]
    for node in nodes:
        assert SERVICES[node]["profiles"] == ["cluster"]
        assert published(SERVICES[node]) == []  # like the single Redis: containers only
        command = " ".join(SERVICES[node]["command"])
        assert "--cluster-enabled yes" in command and "--cluster-require-full-coverage no" in command
    init = SERVICES["redis-cluster-init"]
    script = " ".join(init["command"])
    assert "--cluster create" in script and "--cluster-replicas 0" in script
    assert all(f"getent hosts {node}" in script for node in nodes)
    assert set(init["depends_on"]) == set(nodes)
    assert env_of("redis-cluster-init", DOT_ENV)["REDISCLI_AUTH"] == DOT_ENV["REDIS_PASSWORD"]
    header = COMPOSE_TEXT.split("services:")[0]
    assert "COMPOSE_PROFILES=cluster" in header and "REDIS_SCHEME=redis+cluster" in header


@pytest.mark.parametrize("service", ["worker", "propositions", "topics-init"])
def test_the_cluster_variables_give_the_engine_a_cluster_url(service: str) -> None:
    url = env_of(service, CLUSTER_ENV)["STREAM_ENGINE_REDIS_URL"]
    assert url == "redis+cluster://:redis-password-from-env@" + CLUSTER_ENV["REDIS_NODES"]
    client = client_from_url(url, 1.0)  # what the worker builds from it
    assert isinstance(client, RedisCluster)
    assert [node.name for node in client.startup_nodes] == CLUSTER_ENV["REDIS_NODES"].split(",")
    assert client.connection_kwargs["password"] == DOT_ENV["REDIS_PASSWORD"]
    example = (PROJECT_ROOT / ".env.example").read_text()
    assert all(f"# {k}={v}" in example for k, v in CLUSTER_ENV.items() if k.startswith("REDIS_") and k != "REDIS_PASSWORD")
