"""Our C-murmur2 partitioner picks exactly the partition aiokafka's (= the Java client's) does."""

from __future__ import annotations

import random

from aiokafka.partitioner import DefaultPartitioner

from stream_engine.kafka.partitioner import kafka_partitioner


def test_same_partition_as_aiokafka_for_random_keys_and_partition_counts() -> None:
    rng = random.Random(7)
    reference = DefaultPartitioner()
    for _ in range(20_000):
        key = rng.randbytes(rng.randint(0, 80))
        parts = list(range(rng.choice((1, 2, 3, 6, 7, 12, 64, 1000))))
        assert kafka_partitioner(key, parts, parts) == reference(key, parts, parts), key


def test_known_java_client_values() -> None:
    # org.apache.kafka.common.utils.Utils.murmur2: "hello" -> 2132663229; toPositive & mod 6.
    assert kafka_partitioner(b"hello", list(range(6)), []) == 2132663229 % 6
    assert kafka_partitioner(b"", [0], []) == 0


def test_no_key_picks_an_available_partition_else_any() -> None:
    assert {kafka_partitioner(None, [0, 1, 2, 3], [2]) for _ in range(50)} == {2}
    assert {kafka_partitioner(None, [0, 1], []) for _ in range(200)} == {0, 1}


async def test_the_engines_one_producer_uses_it(tmp_path: object) -> None:
    from stream_engine.engines.core import create_producer
    from stream_engine.settings import Settings

    producer = create_producer(Settings(data_dir=tmp_path))  # type: ignore[arg-type]
    assert producer._partitioner is kafka_partitioner
