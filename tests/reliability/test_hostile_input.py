"""Drill 7: poison and hostile input.

* Decoder fuzzing (hypothesis, >= 10k inputs): bad UTF-8, huge, deeply nested, wrong types,
  missing fields, duplicate ids. Every input decodes to a valid Alert or raises InvalidAlert with
  a known reason; nothing else. A decoded alert must also survive the rest of the hot path
  that needs no I/O: key building and the service request body. Memory per decode is bounded
  (tracemalloc peak) and repeated decoding does not grow memory.
* A real worker gets a few hundred hostile payloads between valid alerts: each lands in the DLQ
  with its reason, the worker stays alive and decides the valid alerts after them.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from harness.drills import Publisher, Tail, account, clickhouse_rows, record
from harness.procs import Proc, start_worker
from stream_engine.keys import KeyBuilder
from stream_engine.models import Alert, DeadLetter
from stream_engine.propositions.client import alert_payload
from stream_engine.settings import Settings
from stream_engine.validation import MAX_ATTRIBUTE_DEPTH, AlertDecoder, InvalidAlert
from stream_engine.workload import Workload

pytestmark = [pytest.mark.reliability]

REASONS = {"too_large", "not_utf8", "not_json", "too_deep", "not_object", "schema"}
SEVERITIES = ["critical", "high", "medium", "low", "info"]
BASE_SETTINGS = Settings()
DECODER = AlertDecoder.from_settings(BASE_SETTINGS)
KEYS = KeyBuilder.from_settings(BASE_SETTINGS)
FUZZ_EXAMPLES = int(os.environ.get("DRILL_FUZZ_EXAMPLES", "10000"))
PEAK_BOUND = 64 * BASE_SETTINGS.max_alert_bytes  # parse tree of the largest accepted alert, generously

def to_json(value: Any) -> bytes:
    """stdlib json: unlike orjson it writes integers beyond 64 bits and lone surrogates (both hostile)."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=6,
)
small_values = json_scalars | st.lists(json_scalars, max_size=3)  # cheap to draw: 10k examples stay fast
field_values = {
    "id": st.text(min_size=1, max_size=40) | small_values,
    "type": st.sampled_from(["ci_failure", "scam", "infra", "x.y-z", "Bad Type", ""]) | small_values,
    "timestamp": st.sampled_from(["2026-01-01T00:00:00Z", "yesterday", -1, 0, 1.5e9]) | small_values,
    "severity": st.sampled_from([*SEVERITIES, "urgent"]) | small_values,
    "source": st.text(min_size=1, max_size=20) | small_values,
    "attributes": st.dictionaries(st.text(max_size=10), json_values, max_size=8) | small_values,
    "fingerprint": st.text(max_size=20) | small_values,
}


ATTRIBUTE_NAMES = ["repo", "job", "error_class", "service", "check", "pattern", "merchant", "x"]


@st.composite
def near_alerts(draw: st.DrawFn) -> bytes:
    """Mostly-valid alerts with fields dropped, retyped, or duplicated in the raw text."""
    alert: dict[str, Any] = {
        "id": draw(st.text(min_size=1, max_size=40)),
        "type": draw(st.sampled_from(["ci_failure", "scam", "infra", "other"])),
        "timestamp": draw(st.sampled_from(["2026-01-01T00:00:00Z", 1.7e9])),
        "severity": draw(st.sampled_from(SEVERITIES)),
        "source": "fuzz",
        "attributes": draw(st.dictionaries(st.sampled_from(ATTRIBUTE_NAMES), small_values, max_size=4)),
    }
    for name in draw(st.lists(st.sampled_from(sorted(field_values)), max_size=3, unique=True)):
        if draw(st.booleans()):
            alert.pop(name, None)
        else:
            alert[name] = draw(field_values[name])
    raw = to_json(alert)
    if draw(st.booleans()) and raw.startswith(b"{") and len(raw) > 2:  # duplicate ids: last one wins
        dup = to_json(draw(st.text(max_size=10) | small_values))
        raw = b'{"id":' + dup + b"," + raw[1:]
    return raw


@st.composite
def deep(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(1, 3000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    core = opener * depth + b"1" + closer * depth
    if draw(st.booleans()):  # nested inside an otherwise valid alert's attributes
        return b'{"id":"d","type":"infra","timestamp":1,"severity":"low","source":"s","attributes":{"n":' + core + b"}}"
    return core


@st.composite
def bad_utf8(draw: st.DrawFn) -> bytes:
    raw = orjson.dumps({"id": "u", "type": "infra", "timestamp": 1, "severity": "low", "source": "s", "attributes": {"t": "xx"}})
    junk = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80\x80"]))
    at = draw(st.integers(0, len(raw)))
    return raw[:at] + junk + raw[at:]


@st.composite
def huge(draw: st.DrawFn) -> bytes:
    size = draw(st.integers(BASE_SETTINGS.max_alert_bytes - 64, BASE_SETTINGS.max_alert_bytes * 4))
    head = b'{"id":"h","type":"infra","timestamp":1,"severity":"low","source":"s","attributes":{"blob":"'
    return head + b"a" * max(0, size - len(head) - 3) + b'"}}'


hostile = st.one_of(
    st.binary(max_size=200),
    json_values.map(to_json),
    near_alerts(),
    deep(),
    bad_utf8(),
    huge(),
    st.text(max_size=50).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


def check_outcome(raw: bytes) -> str:
    """'ok' or the InvalidAlert reason; fails on any other exception or an invalid Alert."""
    try:
        alert = DECODER.decode(raw)
    except InvalidAlert as exc:
        assert exc.reason in REASONS and exc.detail, (exc.reason, exc.detail)
        return exc.reason
    assert isinstance(alert, Alert)
    assert isinstance(alert.id, str) and alert.id and isinstance(alert.type, str) and alert.type
    assert alert.severity in SEVERITIES and isinstance(alert.source, str) and isinstance(alert.attributes, dict)
    assert isinstance(KEYS.key_for(alert), str)
    return "ok"


def test_decoder_fuzz_every_input_decodes_or_is_rejected_with_a_reason() -> None:
    outcomes: Counter[str] = Counter()
    failures: list[tuple[bytes, str]] = []

    @hsettings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(hostile)
    def run(raw: bytes) -> None:
        # Failures are collected, not raised: the full count of bad inputs is more useful here than
        # one shrunk example, and 10k examples must stay fast (no shrinking, no tracemalloc).
        try:
            outcomes[check_outcome(raw)] += 1
        except Exception as exc:  # noqa: BLE001 - anything but InvalidAlert is the finding
            failures.append((raw[:300], f"{type(exc).__name__}: {exc}"[:300]))

    run()
    assert not failures, f"{len(failures)} inputs broke the contract, e.g. {failures[:3]}"
    assert sum(outcomes.values()) >= FUZZ_EXAMPLES
    assert outcomes["ok"] and len(outcomes) >= 5, outcomes  # the strategies reach both sides and most reasons


def test_decoding_hostile_input_has_bounded_peak_and_does_not_grow_memory() -> None:
    rng = random.Random(7)
    worst = [
        b"[" * 5000,  # deeper than orjson's limit
        b"[" * 1000 + b"]" * 1000,  # as deep as it allows
        b"[" + b"0," * (BASE_SETTINGS.max_alert_bytes // 2 - 2) + b"0]",  # widest array that fits
        b'{"id":"w","type":"infra","timestamp":1,"severity":"low","source":"s","attributes":{'
        + b",".join(b'"k%d":[]' % i for i in range(BASE_SETTINGS.max_alert_bytes // 12))
        + b"}}",  # too many attributes (schema), after parsing them all
        b"\xff" * BASE_SETTINGS.max_alert_bytes,
        b"a" * 10 * BASE_SETTINGS.max_alert_bytes,  # too large: rejected before parsing
    ]
    corpus = worst + [hostile.example() for _ in range(40)]
    for raw in corpus:  # warm caches (fastjsonschema regexes, interned strings)
        check_outcome(raw)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        peak = 0
        for _ in range(10):
            for raw in rng.sample(corpus, len(corpus)):
                tracemalloc.reset_peak()
                start = tracemalloc.get_traced_memory()[0]
                check_outcome(raw)
                peak = max(peak, tracemalloc.get_traced_memory()[1] - start)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BOUND, f"one decode peaked at {peak} bytes (bound {PEAK_BOUND})"
    assert grown < 256 * 1024, f"{grown} bytes retained after {10 * len(corpus)} decodes"


def deep_attributes_alert(alert_id: str, depth: int) -> bytes:
    """Valid for the decoder (orjson parses 1024 levels) but deeper than orjson.dumps allows (254)."""
    nested = b'{"a":' * depth + b"1" + b"}" * depth
    return (
        b'{"id":"' + alert_id.encode() + b'","type":"infra","timestamp":1,"severity":"low","source":"s",'
        b'"attributes":{"service":"deep-svc","check":"c","n":' + nested + b"}}"
    )


def test_deep_attributes_are_rejected_before_they_can_break_later_steps() -> None:
    """Found by this drill: 300-deep attributes decoded, then broke orjson.dumps in the service
    request and the batch retried forever. The decoder now rejects them; anything it accepts
    serialises for the service."""
    with pytest.raises(InvalidAlert) as rejected:
        DECODER.decode(deep_attributes_alert("deep-1", 300))
    assert rejected.value.reason == "too_deep"
    alert = DECODER.decode(deep_attributes_alert("deep-2", MAX_ATTRIBUTE_DEPTH - 3))
    orjson.dumps({"items": [{"key": KEYS.key_for(alert), "alert": alert_payload(alert)}]})


def hostile_corpus(n: int, seed: int) -> list[tuple[bytes, str]]:
    """(payload, expected reason): every kind, deterministic; expected reason from the decoder itself
    (the fuzz test above holds the decoder to its contract; here the worker is under test)."""
    rng = random.Random(seed)
    kinds = [
        lambda i: b"\xff\xfe" + bytes([rng.randrange(256) for _ in range(20)]),
        lambda i: b"not json " + str(i).encode(),
        lambda i: orjson.dumps([i, {"id": f"arr-{i}"}]),
        lambda i: b"[" * rng.randrange(1100, 5000),
        lambda i: orjson.dumps({"id": f"missing-{i}", "type": "infra"}),
        lambda i: orjson.dumps({"id": i, "type": "infra", "timestamp": 1, "severity": "low", "source": "s"}),
        lambda i: orjson.dumps({"id": f"sev-{i}", "type": "infra", "timestamp": 1, "severity": "urgent", "source": "s"}),
        lambda i: b'{"id":"big-' + str(i).encode() + b'","blob":"' + b"x" * 70_000 + b'"}',
        lambda i: b"",
        lambda i: b"null",
    ]
    corpus = []
    for i in range(n):
        raw = kinds[i % len(kinds)](i)
        reason = check_outcome(raw)
        assert reason != "ok", raw[:80]
        corpus.append((raw, reason))
    return corpus


@pytest.mark.timeout(180)
async def test_worker_sends_hostile_payloads_to_the_dlq_and_keeps_deciding(
    drill_settings: Settings, propositions: Proc, tmp_path: Path
) -> None:
    s = drill_settings
    bad = hostile_corpus(300, seed=71)
    before, after = Workload("typical", seed=72).alerts(100), Workload("typical", seed=73).alerts(100)
    # Duplicate ids inside one payload are not poison: the last value wins and it is decided.
    dup = [(f"dup-first-{i}", f"dup-last-{i}") for i in range(20)]
    dup_raw = [
        b'{"id":"' + first.encode() + b'",' + orjson.dumps({**before[i], "id": last})[1:] for i, (first, last) in enumerate(dup)
    ]
    ids = [a["id"] for a in before + after] + [last for _, last in dup]
    worker = await asyncio.to_thread(start_worker, s, tmp_path, "worker")
    try:
        async with Tail(s.kafka_bootstrap, s.topic_decisions) as tail, Tail(
            s.kafka_bootstrap, s.topic_dlq, DeadLetter.from_json
        ) as dlq, Publisher(s.kafka_bootstrap, s.topic_alerts) as pub:
            await pub.send(before)
            await pub.send_raw([raw for raw, _ in bad] + dup_raw)
            await pub.send(after)
            decisions = await tail.wait_ids(ids, 90, "decisions around the hostile payloads")
            dead = await dlq.wait_for(lambda r: len(r) >= len(bad), 60, "dead letters")
            assert worker.alive
    finally:
        worker.stop()

    assert Counter((d.original, d.reason) for d in dead) == Counter(bad)
    assert all(d.error and d.source_topic == s.topic_alerts for d in dead)
    assert not {d["alert_id"] for d in decisions} & {first for first, _ in dup}
    log = clickhouse_rows(s)
    row = record(account("7 hostile input", ids, decisions, log.rows, None, engine=s.engine))
    assert row.missing == 0
    assert log.ids == set(ids)


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "poison",
    [
        pytest.param(
            lambda: deep_attributes_alert("poison-deep", 300),
            id="attributes-300-deep",
        ),
        # Regression: the dead letter (base64, ~1.2 MB) must fit the DLQ producer's max request size.
        pytest.param(lambda: b'{"id":"poison-big","blob":"' + b"x" * 900_000 + b'"}', id="900KB-too-large"),
    ],
)
async def test_one_poison_pill_does_not_stall_the_worker(
    drill_settings: Settings, propositions: Proc, tmp_path: Path, poison: Any
) -> None:
    s = drill_settings
    after = Workload("infra", seed=74).alerts(20)
    worker = await asyncio.to_thread(start_worker, s, tmp_path, "worker")
    try:
        async with Tail(s.kafka_bootstrap, s.topic_decisions) as tail, Tail(
            s.kafka_bootstrap, s.topic_dlq, DeadLetter.from_json
        ) as dlq, Publisher(s.kafka_bootstrap, s.topic_alerts) as pub:
            await pub.send_raw([poison()])
            await pub.send(after)
            await tail.wait_ids([a["id"] for a in after], 20, "decisions after the poison pill")
            # The pill itself ends somewhere: a dead letter, or a decision (it may be a valid alert).
            await dlq.wait_for(lambda r: bool(r) or any(d["alert_id"].startswith("poison") for d in tail.records), 30, "the pill")
    finally:
        worker.stop()
