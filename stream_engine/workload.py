"""Seeded, realistic alert workloads (demo, benchmarks, tests).

Profiles draw proposition keys with Zipf-like popularity over a key space of a given size:
``ci_failures`` is highly repetitive (few repos/jobs, steep popularity), ``scam`` is varied
(many merchants, flat popularity), ``infra`` sits between, ``typical`` mixes the three.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SEVERITIES = ("critical", "high", "medium", "low", "info")

CI_REPOS = ["web-frontend", "payments-api", "search", "mobile-app", "infra-tools", "data-pipeline", "auth", "billing"]
CI_JOBS = ["unit-tests", "integration-tests", "lint", "build", "e2e", "deploy-staging"]
CI_ERRORS = ["Timeout", "OOMKilled", "FlakyTest", "CompileError", "DependencyResolution", "SegFault"]
SCAM_PATTERNS = ["card_testing", "account_takeover", "velocity", "unusual_location", "refund_abuse", "phishing_link"]
INFRA_SERVICES = ["checkout", "search", "legacy-billing", "auth", "inventory", "gateway", "notifications"]
INFRA_CHECKS = ["disk_full", "cpu_high", "pod_crashloop", "cert_expiry", "latency_slo", "error_rate"]


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    mix: tuple[tuple[str, float], ...]  # (alert type, share)
    zipf_s: float  # popularity skew: higher = more repetitive keys
    scam_merchants: int = 2000


PROFILES: dict[str, Profile] = {
    "ci_failures": Profile("ci_failures", (("ci_failure", 1.0),), zipf_s=1.4),
    "scam": Profile("scam", (("scam", 1.0),), zipf_s=0.85, scam_merchants=3000),
    "infra": Profile("infra", (("infra", 1.0),), zipf_s=1.1),
    "typical": Profile("typical", (("ci_failure", 0.5), ("scam", 0.2), ("infra", 0.3)), zipf_s=1.1),
}


def _zipf_weights(n: int, s: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (rank**s) for rank in range(1, n + 1)))


class Workload:
    """``Workload("typical", seed=1).alerts(1000)`` → alert dicts, deterministic for a seed."""

    def __init__(self, profile: str | Profile = "typical", seed: int = 0) -> None:
        self.profile = PROFILES[profile] if isinstance(profile, str) else profile
        self.rng = random.Random(seed)
        self.spaces: dict[str, list[dict[str, str]]] = {
            "ci_failure": [
                {"repo": r, "job": j, "error_class": e} for r in CI_REPOS for j in CI_JOBS for e in CI_ERRORS
            ],
            "scam": [
                {"pattern": p, "merchant": f"merchant-{m:05d}"}
                for m in range(self.profile.scam_merchants)
                for p in SCAM_PATTERNS
            ]
            + [{"pattern": p, "merchant": "shady-electronics-ltd"} for p in SCAM_PATTERNS],
            "infra": [{"service": s, "check": c} for s in INFRA_SERVICES for c in INFRA_CHECKS],
        }
        for space in self.spaces.values():  # popularity rank must not follow the tidy build order
            self.rng.shuffle(space)
        self.cum = {t: _zipf_weights(len(space), self.profile.zipf_s) for t, space in self.spaces.items()}
        self.types = [t for t, _ in self.profile.mix]
        self.type_cum = list(itertools.accumulate(share for _, share in self.profile.mix))
        self.seq = itertools.count()

    def alert(self) -> dict[str, Any]:
        rng = self.rng
        alert_type = rng.choices(self.types, cum_weights=self.type_cum)[0]
        fields = rng.choices(self.spaces[alert_type], cum_weights=self.cum[alert_type])[0]
        attributes: dict[str, Any] = dict(fields)
        if alert_type == "scam":
            attributes["amount"] = round(rng.uniform(1, 5000), 2)
        elif alert_type == "ci_failure":
            attributes["commit"] = f"{rng.getrandbits(40):010x}"
        else:
            attributes["host"] = f"{fields['service']}-{rng.randrange(20)}"
        return {
            "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "type": alert_type,
            "timestamp": datetime.now(UTC).isoformat(),
            "severity": rng.choices(SEVERITIES, weights=(1, 3, 5, 3, 1))[0],
            "source": {"ci_failure": "ci", "scam": "fraud-detector", "infra": "prometheus"}[alert_type],
            "attributes": attributes,
            "seq": next(self.seq),
        }

    def alerts(self, n: int) -> list[dict[str, Any]]:
        return [self.alert() for _ in range(n)]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            yield self.alert()


def malformed_payloads() -> list[tuple[bytes, str]]:
    """(payload, expected DLQ reason) covering each validation failure."""
    big = b'{"id":"x","type":"t","timestamp":1,"severity":"low","source":"s","attributes":{"blob":"' + b"a" * 70000 + b'"}}'
    return [
        (b"not json at all", "not_json"),
        (b"\xff\xfe\xfa", "not_utf8"),
        (b"[1, 2, 3]", "not_object"),
        (b'{"id": "m1", "type": "ci_failure"}', "schema"),
        (b'{"id": "m2", "type": "ci_failure", "timestamp": 1, "severity": "urgent", "source": "ci"}', "schema"),
        (big, "too_large"),
    ]
