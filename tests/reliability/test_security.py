"""Drill 8: security on real processes (a worker, the reference proposition service).

* Injection through the worker's analytics API and the ``stream-engine query`` CLI is harmless:
  hostile ``type`` / ``ids`` values match nothing (they are bound parameters), never error out
  as SQL, and the table still holds every row afterwards.
* The API binds loopback by default and refuses bodies above ``api_max_body_bytes`` (413).
* A worker asked to listen beyond loopback without ``STREAM_ENGINE_API_TOKEN`` refuses to start
  and says how to set one; with a token, ``/api/v1/*`` answers 401 without it.
* A secret planted in every kind of input (valid alerts on the stream and the API, schema-invalid,
  not JSON, not UTF-8, too deep for the parser and for the decoder, not an object, too large, and
  a processing error whose exception quotes the alert) never appears in clear text in the
  decisions topic, the DLQ (records and decoded originals), the worker's log, the ClickHouse
  rows, the sink's journal, Redis, the API's stats, or the requests the proposition service
  received (recorded by a proxy in front of it). Each channel is also shown to carry the planted
  inputs (masked), so an empty scan means masked, not absent.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
from aiohttp import web

from harness.drills import Publisher, Tail, account, clickhouse_query, clickhouse_rows, record
from harness.faults import fault_env
from harness.procs import Proc, start_propositions, start_worker, wait_until
from stream_engine.models import DeadLetter
from stream_engine.settings import Settings
from stream_engine.validation import REDACTED
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


async def test_injection_is_harmless_and_the_api_is_loopback_and_bounded(
    drill_settings: Settings, propositions: Proc, tmp_path: Path
) -> None:
    s = drill_settings
    assert Settings.model_fields["api_host"].default == "127.0.0.1"
    alerts = Workload("typical", seed=81).alerts(200)
    ids = [a["id"] for a in alerts]

    worker = await asyncio.to_thread(start_worker, s, tmp_path, "worker")
    try:
        url = api_url(worker)
        assert url.startswith("http://127.0.0.1:"), url
        async with Tail(s.kafka_bootstrap, s.topic_decisions) as tail, Publisher(s.kafka_bootstrap, s.topic_alerts) as pub:
            await pub.send(alerts)
            decisions = await tail.wait_ids(ids, 60)

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


# --- the worker refuses to listen beyond loopback without a token --------------------------------


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--api-host", "0.0.0.0", "worker"], {}),
        (["worker", "--engine", "aiokafka"], {"STREAM_ENGINE_API_HOST": "::"}),
        (["worker"], {"STREAM_ENGINE_API_HOST": "192.0.2.10", "STREAM_ENGINE_API_TOKEN": ""}),
    ],
)
def test_a_worker_beyond_loopback_without_a_token_refuses_to_start(tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
    environment = {
        **{k: v for k, v in os.environ.items() if k != "STREAM_ENGINE_API_TOKEN"},
        # Nothing answers here: a worker that went past the check would hang on Kafka, not exit.
        "STREAM_ENGINE_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        "STREAM_ENGINE_DATA_DIR": str(tmp_path),
        **env,
    }
    result = subprocess.run(
        [sys.executable, "-m", "stream_engine", *args], env=environment, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2, result.stdout + result.stderr[-3000:]
    assert "refusing to start" in result.stderr and "STREAM_ENGINE_API_TOKEN" in result.stderr, result.stderr
    assert "openssl rand" in result.stderr  # says how to make one
    assert not (tmp_path / "journal").exists()  # refused before opening anything


# --- a secret planted in every kind of input ------------------------------------------------------

class RecordingProxy:
    """Forwards every request to the proposition service and keeps what the service received."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RecordingProxy:
        self._session = aiohttp.ClientSession()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None and self._session is not None
        await self._runner.cleanup()
        await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()
        self.requests.append((request.method, request.path_qs, dict(request.headers), body))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self._session.request(request.method, self.upstream + request.path_qs, data=body, headers=headers) as answer:
            return web.Response(body=await answer.read(), status=answer.status, content_type=answer.content_type)

    def items(self) -> list[dict[str, Any]]:
        """Every item of every batch request the service received."""
        return [item for method, path, _, body in self.requests if path.endswith("/batch") for item in orjson.loads(body)["items"]]


def planted_inputs(secret: str) -> tuple[list[dict[str, Any]], list[tuple[bytes, str]], dict[str, Any]]:
    """(valid alerts, (bad payload, expected DLQ reason) …, one poison alert), each carrying ``secret``
    under a configured secret field (default redact_fields), in various cases and depths."""
    now = time.time()

    def alert(alert_id: str, **attributes: Any) -> dict[str, Any]:
        base = {"repo": f"acme/{alert_id}", "job": "test", "error_class": "Timeout"}  # a cold key each
        return {"id": alert_id, "type": "ci_failure", "timestamp": now, "severity": "high", "source": "drill",
                "attributes": {**base, **attributes}}  # fmt: skip

    valid = [
        alert("sec-1", password=secret),
        alert("sec-2", TOKEN=secret),
        alert("sec-3", creds={"Api_Key": secret, "note": "kept"}),
        alert("sec-4", headers=[{"authorization": f"Bearer {secret}"}]),
        alert("sec-5", secret=secret),
    ]
    s = secret.encode()
    deep_attributes: Any = {"password": secret}
    for _ in range(100):  # deeper than the decoder's 64 levels, shallow enough to parse and re-encode
        deep_attributes = {"a": deep_attributes}
    bad = [
        (orjson.dumps({"id": "bad-schema", "type": "infra", "attributes": {"token": secret}}), "schema"),
        (orjson.dumps([{"id": "bad-array", "password": secret}]), "not_object"),
        (b'{"id": "bad-json", "attributes": {"api_key": "' + s + b'", oops', "not_json"),
        (b'\xff\xfe{"id": "bad-utf8", "secret": "' + s + b'"}', "not_utf8"),
        (b"[" * 1100 + b'{"password": "' + s + b'"}' + b"]" * 1100, "too_deep"),
        (orjson.dumps({**alert("bad-depth"), "attributes": deep_attributes}), "too_deep"),
        (orjson.dumps({**alert("bad-large"), "attributes": {"password": secret, "blob": "x" * 70_000}}), "too_large"),
    ]
    poison = alert("poison-1", password=secret)
    return valid, bad, poison


def reasons(records: list[bytes]) -> Counter[str]:
    return Counter(orjson.loads(r)["reason"] for r in records)


def leaks(secret: str, haystacks: dict[str, bytes | str]) -> list[str]:
    needle = secret.encode()
    return [name for name, data in haystacks.items() if needle in (data if isinstance(data, bytes) else data.encode())]


async def test_a_secret_planted_in_every_kind_of_input_never_appears_in_clear_text(
    drill_settings: Settings, tmp_path: Path
) -> None:
    secret = f"sk-planted-{uuid.uuid4().hex}"
    api_token = f"api-{uuid.uuid4().hex}"
    s = drill_settings
    assert {"password", "token", "secret", "api_key", "authorization"} <= set(s.redact_fields)
    valid, bad, poison = planted_inputs(secret)
    api_alert = {**valid[0], "id": "sec-api", "attributes": {**valid[0]["attributes"], "repo": "acme/api"}}
    expected = Counter([*(reason for _, reason in bad), "processing_error"])

    service = await asyncio.to_thread(start_propositions, s, tmp_path)
    try:
        async with RecordingProxy(s.propositions_url) as proxy:
            ws = s.with_overrides(propositions_url=proxy.url, api_token=api_token)
            # A "bug" in the decision step that formats the whole alert (and its secret) into its
            # exception, for ids starting with "poison-": the real isolate-and-dead-letter path.
            worker = await asyncio.to_thread(start_worker, ws, tmp_path, "worker", fault_env(tmp_path, poison_prefix="poison-"))
            try:
                url = api_url(worker)
                async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                    # The API's token, on a real worker.
                    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": api_token}):
                        assert (await http.get("/api/v1/stats", headers=headers)).status_code == 401
                        assert (await http.post("/api/v1/alerts/process", json=api_alert, headers=headers)).status_code == 401
                    assert (await http.get("/healthz")).status_code == 200 and (await http.get("/metrics")).status_code == 200
                    authorized = {"Authorization": f"Bearer {api_token}"}
                    answer = await http.post("/api/v1/alerts/process", json=api_alert, headers=authorized)
                    assert answer.status_code == 200, answer.text
                    api_answer = answer.text

                    async with Tail(ws.kafka_bootstrap, ws.topic_decisions, bytes) as decisions, Tail(
                        ws.kafka_bootstrap, ws.topic_dlq, bytes
                    ) as dlq, Publisher(ws.kafka_bootstrap, ws.topic_alerts) as pub:
                        await pub.send([*valid, poison])
                        await pub.send_raw([raw for raw, _ in bad])
                        await decisions.wait_for(
                            lambda r: {orjson.loads(x)["alert_id"] for x in r} >= {a["id"] for a in valid}, 90, "decisions"
                        )
                        # A batch retried before its poison message is isolated re-sends its dead
                        # letters (at least once): wait for every reason, not for a count.
                        await dlq.wait_for(lambda r: reasons(r) >= expected, 90, "every dead letter")
                    stats = (await http.get("/api/v1/stats", headers=authorized)).text
            finally:
                worker.stop()
    finally:
        service.stop()

    dead = [DeadLetter.from_json(raw) for raw in dlq.records]
    rows = clickhouse_query(ws, "SELECT * FROM proposition_log")
    metrics = clickhouse_query(ws, "SELECT * FROM latency_metrics")
    journal = b"".join(p.read_bytes() for p in (ws.data_dir / "journal").rglob("*") if p.is_file())
    redis_dump = await redis_contents(ws)

    haystacks: dict[str, bytes | str] = {
        "decisions topic": b"\n".join(decisions.records),
        "DLQ topic records": b"\n".join(dlq.records),
        **{f"DLQ original #{i} ({d.reason})": d.original for i, d in enumerate(dead)},
        **{f"DLQ error #{i} ({d.reason})": d.error for i, d in enumerate(dead)},
        "worker log": worker.log(),
        "proposition service log": service.log(),
        "service requests": b"\n".join(
            f"{m} {p} {h}".encode() + b" " + body for m, p, h, body in proxy.requests
        ),
        "ClickHouse proposition_log": orjson.dumps(rows, default=str),
        "ClickHouse latency_metrics": orjson.dumps(metrics, default=str),
        "sink journal": journal,
        "Redis": redis_dump,
        "API answer": api_answer,
        "API stats": stats,
    }
    assert not leaks(secret, haystacks), f"the planted secret is in clear text in: {leaks(secret, haystacks)}"
    admin_token = s.admin_token.get_secret_value()
    for name, token in (("API token", api_token), ("admin token", admin_token)):
        assert not leaks(token, haystacks), f"the {name} is in clear text in: {leaks(token, haystacks)}"

    # Every channel carried the planted inputs, masked: an empty scan means masked, not absent.
    by_id = {item["alert"]["id"]: item["alert"] for item in proxy.items()}
    for a in [*valid, api_alert]:
        assert a["id"] in by_id, f"{a['id']} never reached the service"
    assert by_id["sec-1"]["attributes"]["password"] == REDACTED and by_id["sec-2"]["attributes"]["TOKEN"] == REDACTED
    assert by_id["sec-3"]["attributes"]["creds"] == {"Api_Key": REDACTED, "note": "kept"}
    assert by_id["sec-api"]["attributes"]["password"] == REDACTED
    assert set(reasons(dlq.records)) == set(expected) and reasons(dlq.records) >= expected
    assert all(d.redacted for d in dead), [(d.reason, d.redacted) for d in dead]
    (poisoned,) = [d for d in dead if d.reason == "processing_error"]
    assert "a bug that formats the alert" in poisoned.error and REDACTED in poisoned.error, poisoned.error
    assert "a bug that formats the alert" in worker.log()  # the traceback was logged (masked)
    assert {r[0] for r in rows} >= {a["id"] for a in valid} | {"sec-api"}
    assert redis_dump, "the write-back reached Redis"

    # The scan itself finds a clear-text secret where one is (bytes, text, base64-decoded originals).
    assert leaks(secret, {"control": b"x" + secret.encode(), "text": f"'{secret}'"}) == ["control", "text"]


async def redis_contents(settings: Settings) -> bytes:
    """Every key and value of the test's Redis namespace: its keys start with the hash tag of a
    bucket, ``{ns}`` (one Redis) or ``{ns:N}`` (a cluster; stream_engine/cache/redis_tier.py)."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(settings.redis_url)
    try:
        out = []
        async for key in client.scan_iter(match=f"{{{settings.redis_namespace}[}}:]*", count=500):
            kind = (await client.type(key)).decode()
            if kind == "string":
                value = await client.get(key) or b""
            elif kind == "hash":
                value = orjson.dumps({k.decode(): v.decode("latin-1") for k, v in (await client.hgetall(key)).items()})
            else:  # the tier writes strings and hashes only: anything else would go unscanned
                raise AssertionError(f"unexpected Redis type {kind} at {key!r}")
            out.append(key + b"=" + value)
        return b"\n".join(out)
    finally:
        await client.aclose()
