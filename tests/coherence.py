"""Shared pieces of the cache-coherence tests: rule books whose answers say which rules made them,
and the accounting that finds decisions served from an answer older than an invalidation.

The check is made from the outside, from records any user can see, so it holds whatever the
engine's internals do:

* every rule book of a run stamps its round into every proposition's rationale (``round 7``),
  so a decision says which rules produced the answer it used;
* a worker logs ``invalidation applied scope=… key=… type=…`` once per invalidation it took in,
  in the order of the (single-partition) updates topic; the n-th such line on every worker is
  the n-th invalidation published, and its ``ts`` is when that worker applied it;
* the publisher notes the wall-clock time just before it hands each alert to the producer.

A decision is **stale** when its alert was sent after every worker had applied an invalidation
covering its key, and its answer comes from rules older than that invalidation's round.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from stream_engine.keys import type_prefix
from stream_engine.propositions.rules import DEFAULT_RULES_PATH

ROUND = re.compile(r"^round (\d+)$")
APPLIED = re.compile(r"invalidation applied scope=(\w+) key=(\S+) type=(\S+)")
# A log ts has millisecond resolution: an alert counts as "after" only beyond this margin.
TS_RESOLUTION_S = 0.001


def rules_round(n: int, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The shipped rule book with every rationale set to ``round n`` (and the label to match)."""
    document = copy.deepcopy(base) if base is not None else orjson.loads(DEFAULT_RULES_PATH.read_bytes())
    document["version"] = f"round-{n}"
    for rules in document["types"].values():
        for rule in rules:
            for proposition in rule["propositions"]:
                proposition["rationale"] = f"round {n}"
    return document


def answer_round(decision: dict[str, Any]) -> int | None:
    """The rules round a decision's answer came from; None without propositions."""
    if not decision["propositions"]:
        return None
    matches = [ROUND.match(p.get("rationale", "")) for p in decision["propositions"]]
    found = {int(m.group(1)) for m in matches if m}
    assert len(found) == 1 and all(matches), f"an answer without one round: {decision['propositions']}"
    return found.pop()


@dataclass(frozen=True, slots=True)
class Published:
    """One invalidation the test published, with the rules round that was live before it."""

    round: int
    scope: str
    key: str | None = None
    alert_type: str | None = None

    def covers(self, key: str) -> bool:
        if self.scope == "all":
            return True
        if self.scope == "type":
            return key.startswith(type_prefix(self.alert_type or ""))
        return key == self.key


@dataclass(frozen=True, slots=True)
class Applied:
    ts: float
    scope: str
    key: str | None
    alert_type: str | None


def applied_lines(log: str) -> list[Applied]:
    """The ``invalidation applied`` lines of one worker's JSON log, in order."""
    out = []
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        match = APPLIED.search(str(doc.get("msg", "")))
        if match:
            scope, key, alert_type = match.groups()
            ts = datetime.fromisoformat(doc["ts"]).timestamp()
            out.append(Applied(ts, scope, None if key == "None" else key, None if alert_type == "None" else alert_type))
    return out


def applied_everywhere(published: Sequence[Published], logs: Iterable[str]) -> list[float]:
    """For each published invalidation, when the last worker applied it (asserts every worker
    applied every one of them, in order, and nothing else)."""
    latest = [0.0] * len(published)
    for log in logs:
        lines = applied_lines(log)
        assert len(lines) == len(published), f"a worker applied {len(lines)} of {len(published)} invalidations"
        for i, (line, inv) in enumerate(zip(lines, published)):
            assert (line.scope, line.key, line.alert_type) == (inv.scope, inv.key, inv.alert_type), (i, line, inv)
            latest[i] = max(latest[i], line.ts)
    return latest


@dataclass(slots=True)
class StaleCount:
    checked: int = 0  # decisions whose alert was sent after at least one covering invalidation
    stale: int = 0
    by_scope: dict[str, int] = field(default_factory=dict)  # checked decisions per newest covering scope
    stale_by_tier: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)


def count_stale(
    decisions: Iterable[dict[str, Any]],
    sent_at: dict[str, float],
    published: Sequence[Published],
    applied_at: Sequence[float],
) -> StaleCount:
    result = StaleCount()
    order = sorted(range(len(published)), key=lambda i: applied_at[i])
    for decision in decisions:
        sent = sent_at.get(decision["alert_id"])
        got = answer_round(decision)
        if sent is None or got is None:
            continue
        required, scope = -1, ""
        for i in order:
            if applied_at[i] + TS_RESOLUTION_S >= sent:
                break
            if published[i].covers(decision["key"]) and published[i].round > required:
                required, scope = published[i].round, published[i].scope
        if required < 0:
            continue
        result.checked += 1
        result.by_scope[scope] = result.by_scope.get(scope, 0) + 1
        if got < required:
            result.stale += 1
            tier = decision["cache_tier"]
            result.stale_by_tier[tier] = result.stale_by_tier.get(tier, 0) + 1
            if len(result.examples) < 5:
                result.examples.append({"decision": decision, "required_round": required, "scope": scope})
    return result


def now() -> float:
    return time.time()
