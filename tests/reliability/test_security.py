"""Drill 8: security basics on a real worker.

* Injection through the worker's analytics API and the ``stream-engine query`` CLI is harmless:
  hostile ``type`` / ``ids`` values match nothing (they are bound parameters), never error out
  as SQL, and the table still holds every row afterwards.
* The API binds loopback by default and refuses bodies above ``api_max_body_bytes`` (413).
* Configured secret fields (``redact_fields``) never reach the DLQ or the worker's log.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from harness.drills import Publisher, Tail, account, clickhouse_rows, record
from harness.procs import Proc, start_worker, wait_until
from stream_engine.models import DeadLetter
from stream_engine.settings import Settings
from stream_engine.workload import Workload

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(240)]

HOSTILE = [
    "x' OR '1'='1",
    "'; DROP TABLE proposition_log; --",
    "x\\' UNION SELECT alert_id FROM system.tables --",
    "') OR 1=1 SETTINGS readonly=0 --",
    "{alert_type:String}",
    "ci_failure' AND sleep(3) = 0 --",
]
SECRETS = {"password": "hunter2-never-logged", "api_key": "sk-live-never-logged", "Token": "tok-never-logged"}


def api_url(worker: Proc) -> str:
    found = wait_until(lambda: re.search(r"api listening on (http://[0-9.:\[\]a-z]+)", worker.log()), 30, "api url", worker)
    return found.group(1)


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream_engine", *args],
        env={**os.environ, **settings.to_env()},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_injection_is_harmless_api_is_loopback_and_bounded_secrets_are_redacted(
    drill_settings: Settings, propositions: Proc, tmp_path: Path
) -> None:
    s = drill_settings
    assert Settings.model_fields["api_host"].default == "127.0.0.1"
    alerts = Workload("typical", seed=81).alerts(200)
    alerts[0]["attributes"].update(SECRETS)  # a valid alert carrying secrets
    bad = orjson.dumps({"id": "secret-bad", "type": "infra", "attributes": dict(SECRETS)})  # schema: fields missing
    ids = [a["id"] for a in alerts]

    worker = await asyncio.to_thread(start_worker, s, tmp_path, "worker")
    try:
        url = api_url(worker)
        assert url.startswith("http://127.0.0.1:"), url
        async with Tail(s.kafka_bootstrap, s.topic_decisions) as tail, Tail(
            s.kafka_bootstrap, s.topic_dlq, DeadLetter.from_json
        ) as dlq, Publisher(s.kafka_bootstrap, s.topic_alerts) as pub:
            await pub.send(alerts)
            await pub.send_raw([bad])
            decisions = await tail.wait_ids(ids, 60)
            dead = await dlq.wait_for(lambda r: len(r) >= 1, 30, "the dead letter")

        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            too_big = b'{"id":"' + b"x" * s.api_max_body_bytes + b'"}'
            response = await http.post("/api/v1/alerts/process", content=too_big)
            assert response.status_code == 413, response.text[:200]

            for value in HOSTILE:
                for name, params in (("logs", {"ids": value}), ("latency", {"type": value}), ("modes", {"type": value})):
                    response = await http.get(f"/api/v1/analytics/{name}", params=params)
                    assert response.status_code in (200, 400), (name, value, response.status_code, response.text[:300])
                    if response.status_code == 200:
                        body = response.json()
                        rows = body.get("rows", body) if isinstance(body, dict) else body
                        assert not rows, (name, value, body)

            async def all_logged() -> bool:
                response = await http.get("/api/v1/analytics/logs", params={"ids": ",".join(ids)})
                assert response.status_code == 200, response.text[:300]
                return len(response.json().get("rows", response.json())) == len(ids)

            for _ in range(100):  # the sink flushes every sink_flush_interval_s
                if await all_logged():
                    break
                await asyncio.sleep(0.2)
            assert await all_logged(), "every row is still there after the injection attempts"
    finally:
        worker.stop()

    # The CLI reads the same chDB directory once the worker has let go of it.
    for value in HOSTILE[:2]:
        result = cli(s, "query", "logs", "--ids", value, "--json")
        assert result.returncode == 0, result.stdout + result.stderr[-2000:]
        result = cli(s, "query", "latency", "--type", value, "--json")
        assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    log = clickhouse_rows(s)
    row = record(account("8 security", ids, decisions, log.rows, None, engine=s.engine))
    assert row.missing == 0 and log.ids == set(ids)

    assert len(dead) == 1 and dead[0].reason == "schema"
    original = dead[0].original
    for secret in SECRETS.values():
        assert secret.encode() not in original, "a secret reached the DLQ"
        assert secret not in worker.log(), "a secret reached the worker log"
    assert b"secret-bad" in original, "the rest of the dead letter is kept"
