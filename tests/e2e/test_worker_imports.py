"""A default worker (HTTP ClickHouse) imports only what its engine and backend need.

Measured in a real worker process with Python's own import log (``PYTHONPROFILEIMPORTTIME``), after
it decided alerts and inserted their rows (some libraries import lazily, on the first insert).
Each module named here cost the worker megabytes of RSS before (benchmarks/results/memory_http*.json).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.drills import Publisher, Tail, clickhouse_rows
from harness.procs import Proc, start_worker, wait_until
from stream_engine.settings import Settings
from stream_engine.workload import Workload

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

NOT_IN_A_WORKER = {
    "pydantic": "settings validation (9 MB)",
    "pydantic_settings": "settings validation",
    "rich": "httpx's command-line client (4 MB with click and pygments)",
    "click": "httpx's command-line client",
    "pygments": "httpx's command-line client",
    "numpy": "clickhouse-connect's insert probe (12 MB)",
    "pandas": "clickhouse-connect's DataFrame probe (85 MB with pyarrow)",
    "pyarrow": "clickhouse-connect's DataFrame probe",
    "chdb": "the embedded engine (270 MB): only for chdb:// URLs",
    "matplotlib": "the demo's plot",
}
IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)$", re.MULTILINE)


@pytest.mark.parametrize("engine", ["aiokafka", "faust"])
async def test_a_default_worker_does_not_import_what_it_does_not_use(
    e2e_settings: Settings, propositions: Proc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    s = e2e_settings.with_overrides(engine=engine)
    assert s.effective_clickhouse_url.startswith("http://")
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")  # the worker logs every import to stderr
    worker = start_worker(s, tmp_path, f"worker-{engine}")
    try:
        alerts = Workload("typical", seed=5).alerts(50)
        async with Tail(s.kafka_bootstrap, s.topic_decisions) as tail, Publisher(s.kafka_bootstrap, s.topic_alerts) as pub:
            await pub.send(alerts)
            await tail.wait_ids([a["id"] for a in alerts], 60, "decisions")
        wait_until(lambda: clickhouse_rows(s).rows == len(alerts), 60, "rows inserted", worker)
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    modules = {name.split(".")[0] for name in IMPORTED.findall(worker.log())}
    assert {"aiokafka", "clickhouse_connect", "redis"} <= modules  # the log is complete
    loaded = {name: why for name, why in NOT_IN_A_WORKER.items() if name in modules}
    assert not loaded, loaded
    if engine == "aiokafka":  # (faust itself imports PyYAML for its codecs)
        assert not {"faust", "mode", "yaml"} & modules, "the aiokafka engine loads neither faust nor topic administration"
