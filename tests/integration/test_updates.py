"""The invalidation channel against the real Kafka broker (the ``stack`` fixture: STREAM_ENGINE_KAFKA_BOOTSTRAP, started if absent).

The Invalidation (de)serialisation tests at the top need no broker.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream_engine.propositions.updates import (
    Invalidation,
    InvalidInvalidation,
    UpdatesListener,
    UpdatesPublisher,
)
from stream_engine.settings import Settings

BOOTSTRAP = Settings().kafka_bootstrap  # the address the `stack` fixture makes answer
WAIT_S = 20.0  # generous upper bound on delivery, not a latency assertion


# --- Invalidation messages (no broker) ------------------------------------------------------------


def test_invalidation_round_trips() -> None:
    for inv in (
        Invalidation("key", "v1", key="ci_failure|web|build|Timeout"),
        Invalidation("type", "v1", alert_type="scam"),
        Invalidation("all", "v2", published_at=12.5),
    ):
        assert Invalidation.from_json(inv.to_json()) == inv


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe",
        b"",
        b"[]",
        b'{"scope": "all", "version": "v"}',
        b'{"scope": "partition", "version": "v", "published_at": 1}',
        b'{"scope": "key", "version": "v", "published_at": 1}',
        b'{"scope": "type", "version": "v", "published_at": 1}',
        b'{"scope": "all", "version": 1, "published_at": 1}',
        b'{"scope": "all", "version": "v", "published_at": "now"}',
        b'{"scope": "all", "version": "v", "published_at": 1, "extra": 1}',
        b'{"scope": "key", "version": "v", "key": 5, "published_at": 1}',
    ],
)
def test_bad_invalidation_messages_are_rejected(raw: bytes) -> None:
    with pytest.raises(InvalidInvalidation):
        Invalidation.from_json(raw)


def test_invalidation_constructor_validates() -> None:
    with pytest.raises(InvalidInvalidation):
        Invalidation("key", "v1")  # type: ignore[call-arg]


# --- against Kafka -------------------------------------------------------------------------------


@pytest.fixture
async def topic(stack: Settings) -> AsyncIterator[str]:
    name = f"test-updates-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=1)])
        yield name
        await admin.delete_topics([name])
    finally:
        await admin.close()


class Collector:
    def __init__(self, fail_first: int = 0) -> None:
        self.queue: asyncio.Queue[Invalidation] = asyncio.Queue()
        self.sequences: list[int] = []
        self.fail_first = fail_first

    async def __call__(self, invalidation: Invalidation, seq: int) -> None:
        if self.fail_first:
            self.fail_first -= 1
            raise RuntimeError("cache is on fire")
        self.sequences.append(seq)
        await self.queue.put(invalidation)

    async def next(self) -> Invalidation:
        return await asyncio.wait_for(self.queue.get(), WAIT_S)


@pytest.fixture
async def publisher(topic: str) -> AsyncIterator[UpdatesPublisher]:
    pub = UpdatesPublisher(BOOTSTRAP, topic)
    await pub.start()
    yield pub
    await pub.stop()


async def send_raw(topic: str, value: bytes, key: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


@pytest.mark.integration
async def test_every_listener_sees_every_invalidation(topic: str, publisher: UpdatesPublisher) -> None:
    collectors = [Collector(), Collector()]
    listeners = [UpdatesListener(BOOTSTRAP, topic, c) for c in collectors]
    for listener in listeners:
        await listener.start()
    try:
        sent = [
            Invalidation("key", "v1", key="scam|card_testing|m1"),
            Invalidation("type", "v1", alert_type="infra"),
            Invalidation("all", "v2"),
        ]
        for inv in sent:  # different keys -> spread over the 3 partitions
            await publisher.publish(inv)
        for collector in collectors:
            received = [await collector.next() for _ in sent]
            assert sorted(received, key=lambda i: i.scope) == sorted(sent, key=lambda i: i.scope)
    finally:
        for listener in listeners:
            await listener.stop()
    assert [listener.received for listener in listeners] == [3, 3]


@pytest.mark.integration
async def test_listener_starts_at_the_end_of_the_topic(topic: str, publisher: UpdatesPublisher) -> None:
    await publisher.publish(Invalidation("all", "old"))
    collector = Collector()
    listener = UpdatesListener(BOOTSTRAP, topic, collector)
    await listener.start()
    try:
        await publisher.publish(Invalidation("all", "new"))
        assert (await collector.next()).version == "new"
    finally:
        await listener.stop()
    assert collector.queue.empty() and listener.received == 1


@pytest.mark.integration
async def test_garbage_is_skipped_and_the_next_valid_message_arrives(topic: str, publisher: UpdatesPublisher) -> None:
    collector = Collector()
    listener = UpdatesListener(BOOTSTRAP, topic, collector)
    await listener.start()
    try:
        # Same message key as the valid one below: one partition, so the garbage comes first.
        await send_raw(topic, b"\x00garbage{", key=b"*")
        await send_raw(topic, orjson.dumps({"scope": "everything", "version": "v", "published_at": 1}), key=b"*")
        await publisher.publish(Invalidation("all", "after-garbage"))
        assert (await collector.next()).version == "after-garbage"
    finally:
        await listener.stop()
    assert (listener.skipped, listener.received) == (2, 1)


@pytest.mark.integration
async def test_a_failing_callback_does_not_stop_the_listener(topic: str, publisher: UpdatesPublisher) -> None:
    collector = Collector(fail_first=1)
    listener = UpdatesListener(BOOTSTRAP, topic, collector)
    await listener.start()
    try:
        await publisher.publish(Invalidation("type", "v1", alert_type="scam"))
        await publisher.publish(Invalidation("type", "v1", alert_type="scam"))
        assert (await collector.next()).alert_type == "scam"
    finally:
        await listener.stop()
    assert listener.received == 2


@pytest.mark.integration
async def test_publisher_reports_an_unreachable_broker_and_can_start_later(topic: str) -> None:
    down = UpdatesPublisher("127.0.0.1:1", topic, timeout_s=5)
    with pytest.raises(Exception):
        await down.start()
    with pytest.raises(Exception):
        await down.publish(Invalidation("all", "v"))
    await down.stop()  # nothing started: a no-op, not an error

    # Not started explicitly: publish starts it (the service may come up before Kafka).
    late = UpdatesPublisher(BOOTSTRAP, topic)
    collector = Collector()
    listener = UpdatesListener(BOOTSTRAP, topic, collector)
    await listener.start()
    try:
        await late.publish(Invalidation("all", "late"))
        assert (await collector.next()).version == "late"
    finally:
        await listener.stop()
        await late.stop()


@pytest.mark.integration
async def test_service_rule_change_reaches_a_listener(topic: str, publisher: UpdatesPublisher) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from stream_engine.propositions.rules import RuleBook
    from stream_engine.propositions.service import make_app

    book = RuleBook.load()
    collector = Collector()
    listener = UpdatesListener(BOOTSTRAP, topic, collector)
    await listener.start()
    try:
        app = make_app(book, admin_token="t0ken", updates_publisher=publisher)
        async with TestClient(TestServer(app), headers={"Authorization": "Bearer t0ken"}) as client:
            document = book.to_dict()
            document["types"]["scam"].pop()
            response = await client.put("/v1/rules", data=orjson.dumps(document))
            assert response.status == 200
            new_version = (await response.json())["version"]
            received = await collector.next()
    finally:
        await listener.stop()
    assert (received.scope, received.alert_type, received.version) == ("type", "scam", new_version)


@pytest.mark.integration
async def test_cli_invalidate_publishes_one_message(topic: str) -> None:
    from stream_engine.cli import main

    collector = Collector()
    listener = UpdatesListener(BOOTSTRAP, topic, collector)
    await listener.start()
    try:
        argv = ["--kafka-bootstrap", BOOTSTRAP, "--topic-updates", topic, "propositions", "invalidate", "--scope", "key", "--key", "k1"]
        assert await asyncio.to_thread(main, argv) == 0
        received = await collector.next()
        assert await asyncio.to_thread(main, [*argv[:-2]]) == 2  # scope key without --key: refused
    finally:
        await listener.stop()
    assert (received.scope, received.key, received.version) == ("key", "k1", "manual")


@pytest.mark.integration
def test_serve_comes_up_without_kafka_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream_engine.cli", "--kafka-bootstrap", "127.0.0.1:1", "propositions", "serve", "--port", str(port)],
            env={**os.environ, "STREAM_ENGINE_ADMIN_TOKEN": "t0ken"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            health = None
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).json()
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            assert health is not None and health["status"] == "ok", log_path.read_text()
            answer = httpx.post(
                f"http://127.0.0.1:{port}/v1/admin/invalidate",
                json={"scope": "all"},
                headers={"Authorization": "Bearer t0ken"},
                timeout=15,
            )
            assert answer.status_code == 502  # Kafka still down: reported, service keeps serving
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(20)
    assert code == 0
    text = log_path.read_text()
    assert "serving anyway" in text and "shutting down" in text
