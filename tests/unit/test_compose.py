"""docker-compose.yml and the Dockerfile, checked statically (no Docker on this machine)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from stream_engine.cli import build_parser
from stream_engine.settings import PROJECT_ROOT, Settings

COMPOSE = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
LONG_RUNNING = ("kafka", "redis", "clickhouse", "propositions", "worker")


def env_of(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


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


def test_host_ports() -> None:
    ports = {name: [str(p) for p in SERVICES[name].get("ports", [])] for name in SERVICES}
    assert "6379:6379" in ports["redis"]
    assert "8123:8123" in ports["clickhouse"]
    assert "8700:8700" in ports["propositions"]
    assert "9094:9094" in ports["kafka"]


def test_worker_can_scale() -> None:
    worker = SERVICES["worker"]
    assert "container_name" not in worker and "ports" not in worker  # `--scale worker=N` needs both absent
    assert "build" in worker and worker["command"] == ["worker"]


def test_worker_replicas_share_the_journal_volume() -> None:
    worker = SERVICES["worker"]
    assert "worker-journal:/data/journal" in worker["volumes"]
    assert "worker-journal" in COMPOSE["volumes"]
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    assert "mkdir -p /data/journal" in dockerfile and "chown -R stream /data" in dockerfile  # volume owned by the worker


def test_worker_environment_points_at_the_services() -> None:
    env = env_of("worker")
    assert env["STREAM_ENGINE_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["STREAM_ENGINE_REDIS_URL"] == "${STREAM_ENGINE_REDIS_URL:-redis://redis:6379/0}"  # or a cluster URL
    assert env["STREAM_ENGINE_CLICKHOUSE_URL"].startswith("http://") and env["STREAM_ENGINE_CLICKHOUSE_URL"].endswith(
        "@clickhouse:8123"
    )
    assert env["STREAM_ENGINE_PROPOSITIONS_URL"] == "http://propositions:8700"


@pytest.mark.parametrize("service", ["worker", "propositions", "topics-init"])
def test_engine_environment_is_valid_settings(service: str) -> None:
    env = env_of(service)
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


def test_every_redis_evicts_only_entries_with_a_ttl() -> None:
    """The invalidation floors have no TTL: an allkeys-* policy could evict them."""
    redis_services = [name for name, svc in SERVICES.items() if svc.get("image", "").startswith("redis:") and "command" in svc
                      and svc["command"][0] == "redis-server"]  # fmt: skip
    assert {"redis", "redis-cluster-1", "redis-cluster-2", "redis-cluster-3"} <= set(redis_services)
    for name in redis_services:
        command = SERVICES[name]["command"]
        assert command[command.index("--maxmemory-policy") + 1] == "volatile-ttl", name


def test_the_cluster_profile_is_three_masters_joined_by_a_one_shot() -> None:
    nodes = [f"redis-cluster-{i}" for i in (1, 2, 3)]
    for node in nodes:
        assert SERVICES[node]["profiles"] == ["cluster"]
        command = SERVICES[node]["command"]
        assert command[command.index("--cluster-enabled") + 1] == "yes"
        assert command[command.index("--cluster-require-full-coverage") + 1] == "no"
    init = SERVICES["redis-cluster-init"]
    script = " ".join(init["command"])
    assert "--cluster create" in script and "--cluster-replicas 0" in script
    assert all(f"getent hosts {node}" in script for node in nodes)
    assert set(init["depends_on"]) == set(nodes)
    header = (PROJECT_ROOT / "docker-compose.yml").read_text().split("services:")[0]
    assert "redis+cluster://redis-cluster-1:6379" in header and "--profile cluster" in header
