"""The triage console in Debian's headless Chromium, on a real run: the page loads behind the API
token, lists the worker's review decisions from ClickHouse, and a click on "accept" publishes an
outcome that reaches the ``outcomes`` topic and makes the next alert of that key ``auto``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.chromium import Chromium
from harness.drills import Publisher, Tail, clickhouse_query
from harness.procs import Proc, api_url, start_worker, wait_until
from stream_engine.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TOKEN = "console-test-token"


def oom(alert_id: str) -> dict[str, Any]:
    # The reference rule book: OOMKilled -> increase_memory at 0.72, below ci_failure's 0.75 (review).
    return {"id": alert_id, "type": "ci_failure", "timestamp": "2025-01-01T00:00:00Z", "severity": "low", "source": "ci",
            "attributes": {"repo": "acme/console", "job": "unit", "error_class": "OOMKilled"}}  # fmt: skip


ACCEPT = 'button[data-alert="{}"][data-action="increase_memory"][data-outcome="accepted"]'



async def test_the_console_lists_review_decisions_and_accept_clicks_change_the_next_decision_until_it_is_auto(
    e2e_settings: Settings, propositions: Proc, tmp_path: Path
) -> None:
    s = e2e_settings.with_overrides(api_token=TOKEN)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    worker = start_worker(s, tmp_path)
    try:
        url = api_url(worker)
        async with Tail(s.kafka_bootstrap, s.topic_decisions) as decisions, Publisher(s.kafka_bootstrap, s.topic_alerts) as pub:

            async def next_decision(alert_id: str) -> dict[str, Any]:
                await pub.send([oom(alert_id)])
                return next(d for d in await decisions.wait_ids([alert_id], 60) if d["alert_id"] == alert_id)

            def applied(n: int) -> Any:
                return lambda: httpx.get(f"{url}/api/v1/stats", headers=headers).json()["outcomes"]["listened"] >= n

            await pub.send([oom(f"oom-{i}") for i in range(3)])
            first = await decisions.wait_ids([f"oom-{i}" for i in range(3)], 60)
            assert {(d["mode"], d["action"], d["reason"]) for d in first} == {("review", "increase_memory", "below_threshold")}
            wait_until(lambda: clickhouse_query(s, "SELECT count() FROM proposition_log")[0][0] >= 3, 60, "rows", worker)

            async with Chromium(tmp_path) as browser, Tail(s.kafka_bootstrap, s.topic_outcomes) as outcomes:
                await browser.navigate(f"{url}/console#token={TOKEN}")
                await browser.wait_for("document.querySelectorAll('tr[data-alert^=\"oom-\"]').length === 3", 60, "3 rows")
                assert await browser.evaluate("location.hash") == "", "the token is taken out of the address"
                assert "increase_memory" in await browser.evaluate("document.querySelector('tr[data-alert=\"oom-1\"]').innerText")
                await browser.click(ACCEPT.format("oom-1"))
                (published,) = await outcomes.wait_for(lambda r: len(r) >= 1, 30, "the outcome on the topic")
                assert published == {"alert_id": "oom-1", "outcome": "accepted", "action": "increase_memory", "actor": "console"}
                await browser.wait_for("document.querySelector('tr[data-alert=\"oom-1\"] .sent') !== null", 10, "sent")
                wait_until(applied(1), 60, "the first verdict applied", worker)
                one = await next_decision("oom-next-1")

                await browser.click(ACCEPT.format("oom-2"))
                await outcomes.wait_for(lambda r: len(r) >= 2, 30, "the second outcome on the topic")
                wait_until(applied(2), 60, "the second verdict applied", worker)
                two = await next_decision("oom-next-2")
                await browser.screenshot(tmp_path / "console.png")
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    # One click: the next decision of the key carries the verdict (0.72 -> 0.745), still under 0.75.
    assert (one["mode"], one["action"], one["reason"]) == ("review", "increase_memory", "below_threshold")
    assert one["confidence"] == pytest.approx(8.2 / 11, abs=1e-4) and one["evidence"]["actions"]["increase_memory"]["key"]["accepted"] == 1
    # Two: operators keep accepting it, so it becomes auto and says why.
    assert (two["mode"], two["action"], two["reason"]) == ("auto", "increase_memory", "outcome_promoted")
    assert two["evidence"]["actions"]["increase_memory"]["key"]["accepted"] == 2
    assert (tmp_path / "console.png").stat().st_size > 10_000


async def test_the_console_page_is_open_but_its_data_needs_the_token(e2e_settings: Settings, propositions: Proc, tmp_path: Path) -> None:
    s = e2e_settings.with_overrides(api_token=TOKEN)
    worker = start_worker(s, tmp_path)
    try:
        url = api_url(worker)
        page = httpx.get(f"{url}/console")
        assert page.status_code == 200 and "Triage console" in page.text
        assert "connect-src 'self'" in page.headers["Content-Security-Policy"]
        assert httpx.get(f"{url}/api/v1/analytics/recent").status_code == 401
        async with Chromium(tmp_path) as browser:
            await browser.navigate(f"{url}/console")
            await browser.wait_for("getComputedStyle(document.getElementById('login')).display === 'block'", 30, "token form")
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
