"""OutcomeStore against real Redis (single and the local 3-master cluster): decision records,
verdicts counted once whoever applies them, and the key's evidence riding the propositions' MGET."""

from __future__ import annotations

import pytest

from stream_engine.models import Decision, Proposition
from stream_engine.outcomes import Counts, OutcomeStore, Verdict
from stream_engine.outcomes.store import DecisionRecord
from tests.integration import test_redis_tier as tier_tests
from tests.integration.test_redis_tier import P1, CountingConnection, RedisTier, Workers, make_client

# The Redis tier's fixtures: single Redis and the local cluster, a fresh namespace deleted afterwards.
namespace, redis_url, single_url, workers = tier_tests.namespace, tier_tests.redis_url, tier_tests.single_url, tier_tests.workers

pytestmark = pytest.mark.integration

WEEK = 604_800
KEY = "ci_failure|repo=a|job=b|error_class=Timeout"


def decision(alert_id: str, key: str = KEY, action: str | None = "retry_job", mode: str = "auto") -> Decision:
    props = [Proposition(action, 0.92)] if action else []
    return Decision(alert_id, key.split("|")[0], key, mode, action, 0.92 if action else None, props, "redis", 1.0, 1_700_000_000.5)


async def test_records_resolve_on_every_worker_for_the_window_and_unknown_ids_are_absent(workers: Workers) -> None:
    one, two = OutcomeStore(workers(), WEEK), OutcomeStore(workers(), WEEK)
    ids = [f"alert-{i}" for i in range(100)]
    assert await one.record([decision(i) for i in ids] + [decision("esc", action=None, mode="escalate")]) is True
    found = await two.resolve([*ids, "esc", "never"])
    assert set(found) == {*ids, "esc"}
    assert found["alert-7"] == DecisionRecord(KEY, "ci_failure", "retry_job", "auto", 1_700_000_000.5)
    assert found["esc"].action is None and found["esc"].mode == "escalate"
    ttl_ms = await two.tier.client.pttl(two.record_key("alert-7"))
    assert WEEK * 1000 - 60_000 < ttl_ms <= WEEK * 1000


async def test_records_live_for_the_hot_window_only_and_never_past_the_outcome_window(workers: Workers) -> None:
    hot = OutcomeStore(workers(), WEEK, record_ttl_s=600)
    assert await hot.record([decision("hot-1")]) is True
    assert 590_000 < await hot.tier.client.pttl(hot.record_key("hot-1")) <= 600_000
    assert OutcomeStore(workers(), 3600, record_ttl_s=7200).record_ttl_ms == 3_600_000


async def test_a_verdict_counts_once_for_its_key_and_type_whoever_applies_it_and_however_often(workers: Workers) -> None:
    group, listener = OutcomeStore(workers(), WEEK), OutcomeStore(workers(), WEEK)
    other_key = KEY.replace("repo=a", "repo=z")
    verdicts = [Verdict(f"a{i}", "retry_job", "rejected", KEY) for i in range(3)] + [
        Verdict("a9", "retry_job", "accepted", KEY),
        Verdict("b1", "retry_job", "accepted", other_key),
        Verdict("a0", "notify_owner", "accepted", KEY),  # another action on the same alert: its own verdict
    ]
    first = await group.apply(verdicts)
    assert first.new == [True] * 6
    again = await listener.apply(verdicts)  # the same verdicts, read by another worker's listener
    assert again.new == [False] * 6
    for applied in (first, again):
        evidence = applied.keys[KEY]
        assert evidence.n == 5
        assert evidence.get("retry_job") == Counts(accepted=1, rejected=3)
        assert evidence.get("notify_owner") == Counts(accepted=1)
        assert applied.keys[other_key].get("retry_job") == Counts(accepted=1)
        assert applied.types["ci_failure"].get("retry_job") == Counts(accepted=2, rejected=3)
    # A restarted worker reads the type level back.
    restarted = OutcomeStore(workers(), WEEK)
    assert (await restarted.type_evidence())["ci_failure"].get("retry_job") == Counts(accepted=2, rejected=3)


async def test_the_key_evidence_is_read_in_the_same_single_mget_as_the_propositions(single_url: str, namespace: str) -> None:
    tier = RedisTier(make_client(single_url, CountingConnection), ttl_s=60, namespace=namespace)
    store = OutcomeStore(tier, WEEK)
    try:
        keys = [f"ci_failure|repo=r{i}" for i in range(50)]
        await tier.put_many({key: P1 for key in keys}, 0)
        await store.apply([Verdict("x1", "rerun", "rejected", keys[3]), Verdict("x2", "rerun", "accepted", "ci_failure|repo=cold")])
        CountingConnection.reset()
        evidence: dict = {}
        hits = await tier.get_many([*keys, "ci_failure|repo=cold"], evidence)
        assert CountingConnection.commands == ["MGET"] and len(CountingConnection.round_trips) == 1
        assert len(hits) == 50
        # Found for a cached key and for a key with no cached propositions (a miss still gets its evidence).
        assert set(evidence) == {keys[3], "ci_failure|repo=cold"}
        assert evidence[keys[3]].get("rerun") == Counts(rejected=1)
    finally:
        await tier.close()
