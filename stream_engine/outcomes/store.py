"""The outcomes' state in Redis: decision records, verdict counts, and their deduplication.

Same client, namespace and hash-tag buckets as the proposition cache (``{B}`` = a key's bucket,
``{ns}`` = the namespace's own tag; :mod:`stream_engine.cache.redis_tier`)::

    {B(alert id)}:a:<alert id>     decision record: orjson [key, alert type, action, mode, decided_at ms] (hot window)
    {B(key)}:o:<prop key>          the key's evidence {"n": applied, "a": {action: [acc, rej, fp, resolved]}}
    {B(key)}:od:[id,action,verdict]  "this verdict was counted for the key" (deduplication)
    {ns}:ot:<type part>            the alert type's evidence, same form
    {ns}:otd:[id,action,verdict]   "this verdict was counted for the type"
    {ns}:otypes                    the type parts that have evidence (read once at start)

Decision records live for the hot window only (``STREAM_ENGINE_OUTCOME_RECORD_TTL_S``, default 10
minutes); everything else has the outcome window as its TTL (``STREAM_ENGINE_OUTCOME_WINDOW_S``;
evidence's is renewed by each new verdict). A verdict on an older decision is resolved from
ClickHouse (``decision_lookup``, :meth:`OutcomeLearning._resolve`), whose rows arrive one sink
flush after the decision: the hot window is at least ten flush intervals (``Settings`` checks it),
so a just-decided alert is always in one of the two.

**Records** are written for every decision of a batch by ONE script per bucket (one Redis: one
call, one round trip, one argument holding the batch's records), concurrently with the batch's ClickHouse rows (``DecisionLog.write``); a
Redis outage skips them (counted, ``records_failed``: ClickHouse still resolves those decisions
once their rows are in). Memory: one record costs ~216 bytes of Redis
(``benchmarks/outcomes_cost.py`` measures it with ``MEMORY USAGE``), times alerts/s times the hot
window: README, "Learning from outcomes".

**Verdicts are counted once.** A verdict (alert id, action, outcome) is counted for the key and for
the type by a script that sets its marker with ``SET NX`` and adds to the counts only if the
marker was not there: atomic, because the marker lives in the slot of the counts it guards. So
the same verdict applied again — redelivered, applied by the consumer group and by every worker's
listener, or published twice — changes nothing; the script returns the evidence after the call
either way. Key and type level are one script on one Redis, two (one per slot) on a cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from stream_engine.cache.invalidation import type_part
from stream_engine.cache.redis_tier import OUTAGE_ERRORS, RedisTier
from stream_engine.outcomes.evidence import OUTCOME_INDEX, Evidence

if TYPE_CHECKING:
    from stream_engine.models import Decision

log = logging.getLogger(__name__)

# KEYS[1]: the bucket's record prefix "{B}:a:" (it routes the call; every record shares its hash
# tag, so its slot). ARGV[1]: TTL ms; ARGV[2]: ONE JSON array of [alert id, key, type, action,
# mode, decided_at ms]. One argument for the whole batch rather than a key and a value per record:
# redis-py packs every argument in Python, which cost the worker about three times the CPU (the
# commit that made this change says how much); Redis does the per-record work. Values keep the
# form _record() reads (cjson writes integers below 1e14 exactly).
RECORD_SCRIPT = """
local prefix, ttl = KEYS[1], ARGV[1]
local records = cjson.decode(ARGV[2])
for _, r in ipairs(records) do
  redis.call('SET', prefix .. r[1], cjson.encode({r[2], r[3], r[4], r[5], r[6]}), 'PX', ttl)
end
return #records
"""

# KEYS: m markers, then the evidence keys. ARGV: TTL ms, m, then per marker: the index of its
# evidence key (1-based), the action, the verdict's index in OUTCOMES (0-based).
# Returns {indexes of the markers newly set, each evidence key's value after the call (false: none)}.
APPLY_SCRIPT = """
local ttl = ARGV[1]
local m = tonumber(ARGV[2])
local evidence, changed, new = {}, {}, {}
for i = 1, m do
  local base = 3 + (i - 1) * 3
  if redis.call('SET', KEYS[i], '1', 'NX', 'PX', ttl) then
    local j = tonumber(ARGV[base])
    if evidence[j] == nil then
      local raw = redis.call('GET', KEYS[m + j])
      evidence[j] = raw and cjson.decode(raw) or {n = 0, a = {}}
    end
    local action, k = ARGV[base + 1], tonumber(ARGV[base + 2]) + 1
    local counts = evidence[j].a[action]
    if counts == nil then counts = {0, 0, 0, 0}; evidence[j].a[action] = counts end
    counts[k] = counts[k] + 1
    evidence[j].n = evidence[j].n + 1
    changed[j] = true
    new[#new + 1] = i
  end
end
local out = {}
for j = 1, #KEYS - m do
  if changed[j] then
    out[j] = cjson.encode(evidence[j])
    redis.call('SET', KEYS[m + j], out[j], 'PX', ttl)
  else
    out[j] = redis.call('GET', KEYS[m + j])
  end
end
return {new, out}
"""


class DecisionRecord(NamedTuple):
    """What the engine keeps of a decision for the outcome window."""

    key: str
    alert_type: str
    action: str | None
    mode: str
    decided_at: float  # epoch seconds


class Verdict(NamedTuple):
    """One outcome to count: the alert, the action judged, the verdict, and the decision's key."""

    alert_id: str
    action: str
    outcome: str
    key: str


@dataclass(slots=True)
class Applied:
    """What a call of :meth:`OutcomeStore.apply` left in Redis."""

    new: list[bool] = field(default_factory=list)  # per verdict: counted now for its key (not a repeat)
    keys: dict[str, Evidence] = field(default_factory=dict)  # prop key -> evidence after the call
    types: dict[str, Evidence] = field(default_factory=dict)  # type part -> evidence after the call


@dataclass(slots=True)
class StoreCounters:
    records_written: int = 0
    records_failed: int = 0  # records of decisions Redis did not take (outage): their verdicts become unknown_alert
    resolve_failures: int = 0
    apply_failures: int = 0


class OutcomeStore:
    def __init__(self, tier: RedisTier, window_s: int, record_ttl_s: float | None = None) -> None:
        self.tier = tier
        self.window_ms = int(window_s * 1000)
        # The records' hot window (older decisions are looked up in ClickHouse), never past the window.
        self.record_ttl_ms = max(1, min(self.window_ms, int((record_ttl_s if record_ttl_s is not None else window_s) * 1000)))
        self._record = tier.register_script(RECORD_SCRIPT)
        self._apply = tier.register_script(APPLY_SCRIPT)
        ns = tier.namespace_tag
        self._types_key = f"{ns}:otypes"
        self._ns = ns
        self.counters = StoreCounters()

    def record_key(self, alert_id: str) -> str:
        return f"{self.tier.bucket_of(alert_id)}:a:{alert_id}"

    def type_key(self, part: str) -> str:
        return f"{self._ns}:ot:{part}"

    # --- decisions -----------------------------------------------------------------------------

    async def record(self, decisions: Sequence[Decision]) -> bool:
        """Keep each decision's key, type, action and mode for the window; False if Redis did not
        take them (skipped while the tier is degraded, or failed: counted, never raised)."""
        if not decisions:
            return True
        if self.tier.degraded:
            self.counters.records_failed += len(decisions)
            return False
        groups: dict[str, list[tuple[str, str, str, str | None, str, int]]] = {}
        bucket_of = self.tier.bucket_of
        for d in decisions:
            groups.setdefault(bucket_of(d.alert_id), []).append(
                (d.alert_id, d.key, d.alert_type, d.action, d.mode, int(d.decided_at * 1000))
            )
        dumps = orjson.dumps
        calls = [(self._record, [f"{bucket}:a:"], [self.record_ttl_ms, dumps(records)]) for bucket, records in groups.items()]
        try:
            await self.tier.run(calls)
        except OUTAGE_ERRORS as exc:
            self.counters.records_failed += len(decisions)
            self.tier.failed("record decisions", exc)
            return False
        self.counters.records_written += len(decisions)
        return True

    async def resolve(self, alert_ids: Iterable[str]) -> dict[str, DecisionRecord]:
        """The records of the ids that have one in Redis (absent: never decided, or longer ago than
        the hot window: ClickHouse knows those). Raises on an outage: the caller retries, a verdict
        is never dropped on a guess."""
        ids = list(dict.fromkeys(alert_ids))
        if not ids:
            return {}
        groups: dict[str, list[str]] = {}
        for alert_id in ids:
            groups.setdefault(self.tier.bucket_of(alert_id), []).append(alert_id)
        commands = [("MGET", *(f"{bucket}:a:{i}" for i in group)) for bucket, group in groups.items()]
        try:
            replies = await self.tier.pipeline(commands)
        except OUTAGE_ERRORS:
            self.counters.resolve_failures += 1
            raise
        found: dict[str, DecisionRecord] = {}
        for group, values in zip(groups.values(), replies):
            for alert_id, raw in zip(group, values):
                record = _record(raw)
                if record is not None:
                    found[alert_id] = record
        return found

    # --- verdicts ------------------------------------------------------------------------------

    async def apply(self, verdicts: Sequence[Verdict]) -> Applied:
        """Count each verdict once for its key and its alert type; returns the evidence after it.
        Raises on an outage (idempotent: the caller retries until Redis takes it)."""
        applied = Applied(new=[False] * len(verdicts))
        if not verdicts:
            return applied
        # One group per hash tag: (markers, their evidence indexes, actions, outcomes, evidence keys, owners).
        groups: dict[str, _Group] = {}
        parts = [type_part(v.key) for v in verdicts]
        for i, (v, part) in enumerate(zip(verdicts, parts)):
            suffix = orjson.dumps((v.alert_id, v.action, v.outcome)).decode()
            bucket = self.tier.bucket_of(v.key)
            groups.setdefault(bucket, _Group()).add(i, f"{bucket}:od:{suffix}", f"{bucket}:o:{v.key}", ("key", v.key), v)
            groups.setdefault(self._ns, _Group()).add(i, f"{self._ns}:otd:{suffix}", self.type_key(part), ("type", part), v)
        calls = [(self._apply, g.keys(), g.args(self.window_ms)) for g in groups.values()]
        commands: list[tuple[Any, ...]] = [("SADD", self._types_key, *dict.fromkeys(parts))]
        try:
            await self.tier.pipeline(commands)
            replies = await self.tier.run(calls)
        except OUTAGE_ERRORS:
            self.counters.apply_failures += 1
            raise
        for group, (new, values) in zip(groups.values(), replies):
            for index in new:
                verdict_index, level = group.markers[int(index) - 1]
                if level == "key":
                    applied.new[verdict_index] = True
            for (level, name), raw in zip(group.owners, values):
                evidence = Evidence.from_json(raw) if raw else None
                if evidence is not None:
                    (applied.keys if level == "key" else applied.types)[name] = evidence
        return applied

    async def type_evidence(self) -> dict[str, Evidence]:
        """Every alert type's evidence (read once when a worker starts)."""
        parts = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in await self.tier.client.smembers(self._types_key))
        if not parts:
            return {}
        values = await self.tier.client.mget([self.type_key(p) for p in parts])
        found = {}
        for part, raw in zip(parts, values):
            evidence = Evidence.from_json(raw)
            if evidence is not None:
                found[part] = evidence
        return found

    def stats(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self.counters)


@dataclass(slots=True)
class _Group:
    """The apply script's arguments for the verdicts of one hash tag."""

    markers: list[tuple[int, str]] = field(default_factory=list)  # (verdict index, "key" | "type"), in KEYS order
    marker_keys: list[str] = field(default_factory=list)
    evidence_index: list[int] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    outcomes: list[int] = field(default_factory=list)
    evidence_keys: dict[str, int] = field(default_factory=dict)  # name -> 1-based index
    owners: list[tuple[str, str]] = field(default_factory=list)  # per evidence key: (level, key or type part)

    def add(self, verdict_index: int, marker: str, evidence_key: str, owner: tuple[str, str], verdict: Verdict) -> None:
        if evidence_key not in self.evidence_keys:
            self.evidence_keys[evidence_key] = len(self.evidence_keys) + 1
            self.owners.append(owner)
        self.markers.append((verdict_index, owner[0]))
        self.marker_keys.append(marker)
        self.evidence_index.append(self.evidence_keys[evidence_key])
        self.actions.append(verdict.action)
        self.outcomes.append(OUTCOME_INDEX[verdict.outcome])

    def keys(self) -> list[str]:
        return [*self.marker_keys, *self.evidence_keys]

    def args(self, ttl_ms: int) -> list[Any]:
        args: list[Any] = [ttl_ms, len(self.marker_keys)]
        for j, action, outcome in zip(self.evidence_index, self.actions, self.outcomes):
            args += [j, action, outcome]
        return args


def _record(raw: bytes | None) -> DecisionRecord | None:
    if raw is None:
        return None
    try:
        key, alert_type, action, mode, decided_ms = orjson.loads(raw)
        return DecisionRecord(str(key), str(alert_type), action if action is None else str(action), str(mode), decided_ms / 1000)
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return None
