"""The local stack on private ports and a private stack_dir (never the dev services).

Tests run in file order on one module-scoped stack: up, reuse, health, restart, then down.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_engine.cli import build_parser, main, settings_from_args
from stream_engine.settings import Settings
from stream_engine.stack import Stack, StackError, StackUpError, ensure_kafka_libs, kafka_answers, libs_dir
from stream_engine.stack.process import PidFile, group_members, port_is_open, process_start_time, spawn_detached, stop_group
from stream_engine.stack.propositions import PropositionsComponent, settings_flags
from stream_engine.stack.sync import run_coroutine

pytestmark = pytest.mark.timeout(240)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def share_jar_cache(stack_dir: Path, version: str) -> None:
    """Point a fresh stack_dir at the project's jar cache: Maven runs once per machine, not per test."""
    shared, _ = ensure_kafka_libs(Settings().stack_dir, version)
    target = libs_dir(stack_dir, version)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(shared, target_is_directory=True)


def free_cluster_port() -> int:
    """The first of 3 consecutive free ports whose cluster bus ports (+10000) are free too."""
    for first in range(21000, 29000, 7):
        try:
            with socket.socket() as a, socket.socket() as b, socket.socket() as c:
                for sock, port in ((a, first), (b, first + 1), (c, first + 2)):
                    sock.bind(("127.0.0.1", port))
            with socket.socket() as a, socket.socket() as b, socket.socket() as c:
                for sock, port in ((a, first), (b, first + 1), (c, first + 2)):
                    sock.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return first
    raise AssertionError("no free ports for a Redis Cluster")


def private_settings(stack_dir: Path) -> Settings:
    kafka, controller, redis, props, clickhouse = free_port(), free_port(), free_port(), free_port(), free_port()
    return Settings(
        redis_cluster_port=free_cluster_port(),
        stack_dir=stack_dir,
        clickhouse_port=clickhouse,
        kafka_port=kafka,
        kafka_controller_port=controller,
        kafka_bootstrap=f"127.0.0.1:{kafka}",
        redis_port=redis,
        redis_url=f"redis://127.0.0.1:{redis}/0",
        propositions_port=props,
        propositions_url=f"http://127.0.0.1:{props}",
    )


def global_flags(s: Settings) -> list[str]:
    return settings_flags(s)


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    stack_dir = tmp_path_factory.mktemp("stack")
    s = private_settings(stack_dir)
    share_jar_cache(stack_dir, s.kafka_version)
    yield s
    Stack(s).down()  # whatever a failed test left running


# --- helpers without the stack ----------------------------------------------------------------


def test_settings_flags_reproduce_settings_in_a_child_cli(tmp_path: Path) -> None:
    s = Settings(stack_dir=tmp_path, kafka_port=1234, key_fields={"x": ["a", "b"]}, batch_max=7)
    args = build_parser().parse_args([*settings_flags(s), "stack", "status"])
    assert settings_from_args(args) == s
    assert "--kafka-port" in settings_flags(s) and "--topic-alerts" not in settings_flags(s)  # defaults omitted


def test_stop_group_kills_grandchildren_and_stale_pid_files_are_ignored(tmp_path: Path) -> None:
    # A shell that ignores SIGTERM and has a child: needs SIGKILL, and the child must die too.
    script = "trap '' TERM; sleep 300 & wait"
    record = spawn_detached(["bash", "-c", script], log_path=tmp_path / "x.log")
    pid_file = PidFile(tmp_path / "x.pid")
    pid_file.write(record)
    time.sleep(0.3)
    assert len(group_members(record.pid)) == 2
    assert pid_file.live_record() == record
    assert stop_group(record, timeout_s=0.5) == "killed"
    assert group_members(record.pid) == []
    assert process_start_time(record.pid) is None
    assert pid_file.live_record() is None and not pid_file.path.exists()  # stale file removed
    assert stop_group(record, timeout_s=0.5) == "not running"


def test_missing_java_names_the_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no java, no mvn
    s = private_settings(tmp_path / "stack")
    with pytest.raises(StackUpError, match="openjdk-17-jre-headless maven") as caught:
        Stack(s, only=["kafka"]).up()
    assert caught.value.report.by_name()["kafka"].state == "failed"


def test_maven_failure_is_reported(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="Maven could not fetch Apache Kafka 0.0.0-nonexistent"):
        ensure_kafka_libs(tmp_path, "0.0.0-nonexistent")
    assert not libs_dir(tmp_path, "0.0.0-nonexistent").exists()


def test_unknown_part_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="unknown stack parts"):
        Stack(Settings(stack_dir=tmp_path), only=["zookeeper"])


def test_port_held_by_a_foreign_process_is_reported(tmp_path: Path) -> None:
    s = private_settings(tmp_path / "stack")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", s.redis_port))
        squatter.listen()
        with pytest.raises(StackUpError, match=rf"port {s.redis_port} already in use by pid {os.getpid()}"):
            Stack(s, only=["redis"]).up()
    assert not (tmp_path / "stack" / "run" / "redis.pid").exists()


# --- the private stack, in order ------------------------------------------------------------


@pytest.mark.integration
def test_up_starts_every_part(private: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    report = Stack(private).up()
    states = {p.name: p.state for p in report.parts}
    assert states["kafka"] == "started" and states["redis"] == "started" and states["clickhouse"] == "started"
    assert "redis-cluster" not in states  # only when named
    assert states["propositions"] == "started"
    assert all(p.seconds > 0 for p in report.parts)
    assert kafka_answers(private.kafka_bootstrap)
    assert main([*global_flags(private), "stack", "status"]) == 0
    out = capsys.readouterr().out
    assert "kafka" in out and "running" in out


@pytest.mark.integration
def test_second_up_reuses_the_same_processes(private: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    pids = {p.name: p.pid for p in Stack(private).status()}
    assert main([*global_flags(private), "stack", "up"]) == 0
    out = capsys.readouterr().out
    assert "reused" in out and "started" not in out
    assert {p.name: p.pid for p in Stack(private).status()} == pids


@pytest.mark.integration
def test_redis_answers(private: Settings) -> None:
    import redis

    client = redis.Redis.from_url(private.redis_url)
    assert client.ping()
    client.set("stack-test", b"v")
    assert client.get("stack-test") == b"v"
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "volatile-ttl"}
    client.close()


@pytest.mark.integration
def test_proposition_service_answers_healthz(private: Settings) -> None:
    import httpx

    assert httpx.get(f"http://127.0.0.1:{private.propositions_port}/healthz", timeout=5).status_code == 200
    # It was pointed at the stack's own Kafka and Redis, not the caller's defaults.
    command = " ".join(PropositionsComponent(private, Stack(private).layout).command())
    assert f"--kafka-bootstrap 127.0.0.1:{private.kafka_port}" in command


@pytest.mark.integration
def test_the_stack_service_needs_the_admin_token_it_generated(
    private: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    from stream_engine.propositions.admin import token_path
    from stream_engine.stack.process import PidFile

    path = token_path(private)
    token = path.read_text().strip()
    assert token and oct(path.stat().st_mode & 0o777) == "0o600"
    url = f"http://127.0.0.1:{private.propositions_port}/v1/rules"
    assert httpx.get(url, timeout=5).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer nope"}, timeout=5).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code == 200

    monkeypatch.delenv("STREAM_ENGINE_ADMIN_TOKEN", raising=False)
    capsys.readouterr()
    assert main([*global_flags(private), "stack", "up"]) == 0  # says where the token is, never what
    out = capsys.readouterr().out
    assert f"admin token (rules, admin, stats routes): {path}" in out and token not in out
    assert main([*global_flags(private), "propositions", "rules", "get"]) == 0  # the CLI reads the file
    assert '"types"' in capsys.readouterr().out
    monkeypatch.setenv("STREAM_ENGINE_ADMIN_TOKEN", "not-the-one")  # the environment wins, and is wrong
    assert main([*global_flags(private), "propositions", "rules", "get"]) == 1
    assert "401" in capsys.readouterr().err

    record = PidFile(Stack(private).layout.pid_path("propositions")).read()
    assert record is not None
    cmdline = Path(f"/proc/{record.pid}/cmdline").read_bytes().decode()
    assert token not in cmdline and token not in " ".join(record.command)  # not on any command line
    assert token not in Stack(private).layout.log_path("propositions").read_text()


@pytest.mark.integration
def test_a_second_stack_on_the_same_ports_reuses_them_as_external(private: Settings, tmp_path: Path) -> None:
    other = private.with_overrides(stack_dir=tmp_path / "other")
    report = Stack(other, only=["redis"]).up()
    assert report.by_name()["redis"].state == "external"
    assert "not started by this stack" in report.by_name()["redis"].detail
    assert Stack(other, only=["redis"]).down().by_name()["redis"].state == "external"
    assert port_is_open(private.redis_port)  # left alone


@pytest.mark.integration
def test_clickhouse_answers_sql_and_keeps_its_data_across_a_restart(private: Settings) -> None:
    from stream_engine.sinks.clickhouse.client import connect

    url = private.effective_clickhouse_url
    assert url == f"http://127.0.0.1:{private.clickhouse_port}"  # workers' default: the stack's endpoint
    client = connect(url, None)
    assert client.command("EXISTS DATABASE stream_engine") == 1  # created at start, like CLICKHOUSE_DB
    client.command("CREATE TABLE IF NOT EXISTS stream_engine.kept (a UInt8) ENGINE = MergeTree ORDER BY a")
    client.command("INSERT INTO stream_engine.kept VALUES (7)")
    clickhouse = Stack(private, only=["clickhouse"])
    assert clickhouse.down().by_name()["clickhouse"].state == "stopped"  # SIGTERM was enough: a graceful stop
    assert not port_is_open(private.clickhouse_port)
    assert clickhouse.up().by_name()["clickhouse"].state == "started"
    assert connect(url, None).command("SELECT sum(a) FROM stream_engine.kept") == 7
    log = (private.stack_dir / "logs" / "clickhouse.log").read_text()
    assert '"stopped"' in log and "ClickHouse HTTP interface on" in log


@pytest.mark.integration
def test_a_configured_clickhouse_is_used_instead_of_a_local_one(private: Settings, tmp_path: Path) -> None:
    # The private stack's endpoint stands in for a real server the settings name.
    server = f"http://default:not-shown@127.0.0.1:{private.clickhouse_port}"
    configured = private.with_overrides(stack_dir=tmp_path / "other", clickhouse_url=server, clickhouse_port=free_port())
    part = Stack(configured, only=["clickhouse"]).up().by_name()["clickhouse"]
    assert part.state == "external" and f"127.0.0.1:{private.clickhouse_port}" in part.detail
    assert "not-shown" not in part.detail and "***" in part.detail
    assert not port_is_open(configured.clickhouse_port)  # nothing started
    status = Stack(configured, only=["clickhouse"]).status()[0]
    assert status.health == "external" and "not-shown" not in status.line()

    nobody = configured.with_overrides(clickhouse_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StackUpError, match="does not answer; nothing started"):
        Stack(nobody, only=["clickhouse"]).up()
    embedded = configured.with_overrides(clickhouse_url=f"chdb://{tmp_path / 'chdb'}")
    assert Stack(embedded, only=["clickhouse"]).up().by_name()["clickhouse"].state == "skipped"


@pytest.mark.integration
def test_redis_cluster_starts_when_named_and_serves_the_redis_tier(private: Settings) -> None:
    from stream_engine.cache.redis_tier import RedisTier
    from stream_engine.models import Proposition
    from stream_engine.stack.redis_cluster import cluster_ok

    report = Stack(private, only=["redis-cluster"]).up()
    assert report.by_name()["redis-cluster"].state == "started"
    ports = [private.redis_cluster_port + i for i in range(3)]
    assert all(cluster_ok(port) for port in ports)
    assert "redis-cluster" in {p.name for p in Stack(private).status()}  # listed while it runs
    url = report.by_name()["redis-cluster"].detail
    assert url == "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)

    async def roundtrip() -> dict[str, object]:
        tier = RedisTier.from_settings(private.with_overrides(redis_url=url))
        try:
            assert await tier.check_eviction_policy() == "volatile-ttl"
            await tier.put_many({f"k|{i}": [Proposition("a", 0.5)] for i in range(100)}, 0)
            return {k: props for k, (props, _, _) in (await tier.get_many([f"k|{i}" for i in range(100)])).items()}
        finally:
            await tier.close()

    assert len(run_coroutine(roundtrip)) == 100


@pytest.mark.integration
def test_chdb_answers_select_1(tmp_path: Path) -> None:
    # One chDB path per process: run it in a child so this test process stays clean.
    code = textwrap.dedent(
        f"""
        import clickhouse_connect
        client = clickhouse_connect.get_client(interface="chdb", path={str(tmp_path / "chdb")!r})
        print(client.query("SELECT 1").result_rows[0][0])
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "1"


@pytest.mark.integration
def test_kafka_restart_keeps_topics_and_committed_offsets(private: Settings) -> None:
    from stream_engine.kafka import apply_topics

    topic = private.topic_alerts
    assert run_coroutine(lambda: apply_topics(private)).in_sync
    run_coroutine(lambda: _produce(private, topic, [b"a0", b"a1", b"a2"]))
    assert run_coroutine(lambda: _consume_and_commit(private, topic, "restart-group", 3)) == [b"a0", b"a1", b"a2"]

    kafka_only = Stack(private, only=["kafka"])
    assert kafka_only.down().by_name()["kafka"].state in ("stopped", "killed")
    assert not port_is_open(private.kafka_port)
    assert port_is_open(private.redis_port)  # only Kafka went down
    assert kafka_only.up().by_name()["kafka"].state == "started"

    report = run_coroutine(lambda: apply_topics(private))
    assert report.created == [] and report.in_sync  # topics survived
    run_coroutine(lambda: _produce(private, topic, [b"b0"]))
    # Same group after the restart: resumes after the committed offset, no re-delivery.
    assert run_coroutine(lambda: _consume_and_commit(private, topic, "restart-group", 1)) == [b"b0"]


@pytest.mark.integration
def test_down_leaves_nothing_behind(private: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    stack = Stack(private)
    records = [r for r in (PidFile(stack.layout.pid_path(c.name)).read() for c in stack.components) if r]
    assert len(records) >= 2
    assert main([*global_flags(private), "stack", "down"]) == 0
    for record in records:
        assert process_start_time(record.pid) is None
        assert group_members(record.pid) == []
    cluster = range(private.redis_cluster_port, private.redis_cluster_port + 3)  # stopped too, though on request only
    for port in (private.kafka_port, private.kafka_controller_port, private.redis_port, private.propositions_port,
                 private.clickhouse_port, *cluster):  # fmt: skip
        assert not port_is_open(port)
    assert list((private.stack_dir / "run").glob("*.pid")) == []
    capsys.readouterr()
    assert main([*global_flags(private), "stack", "status"]) == 1
    assert "down" in capsys.readouterr().out


@pytest.mark.integration
def test_changing_the_controller_port_of_formatted_storage_is_refused(private: Settings) -> None:
    moved = private.with_overrides(kafka_controller_port=free_port())
    with pytest.raises(StackUpError, match="was formatted for controller_port"):
        Stack(moved, only=["kafka"]).up()
    assert not port_is_open(moved.kafka_port)


# --- aiokafka helpers ---------------------------------------------------------------------


async def _produce(s: Settings, topic: str, values: list[bytes]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, partition=0)
    finally:
        await producer.stop()


async def _consume_and_commit(s: Settings, topic: str, group: str, count: int) -> list[bytes]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=s.kafka_bootstrap, group_id=group, auto_offset_reset="earliest",
        enable_auto_commit=False, session_timeout_ms=6000, heartbeat_interval_ms=1000,
    )  # fmt: skip
    await consumer.start()
    values: list[bytes] = []
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while len(values) < count and asyncio.get_running_loop().time() < deadline:
            for messages in (await consumer.getmany(timeout_ms=300)).values():
                values += [m.value for m in messages]
        await consumer.commit()
        # Anything beyond `count` would mean the committed offset was not honoured.
        for messages in (await consumer.getmany(timeout_ms=500)).values():
            values += [m.value for m in messages]
    finally:
        await consumer.stop()
    return values
