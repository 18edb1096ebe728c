"""`stream-engine demo` completes on a small workload against the real stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.procs import Proc, free_port
from stream_engine.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


@pytest.mark.parametrize("engine", ["aiokafka", "faust"])
def test_the_demo_decides_every_alert_and_writes_a_plot(
    e2e_settings: Settings, propositions: Proc, tmp_path: Path, engine: str
) -> None:
    settings = e2e_settings.with_overrides(api_port=free_port())
    plot = tmp_path / "demo.png"
    result = subprocess.run(
        [sys.executable, "-m", "stream_engine", "demo", "--alerts", "400", "--rate", "0", "--seed", "3", "--plot", str(plot),
         "--engine", engine],
        env={**os.environ, **settings.to_env(), "COLUMNS": "120"},
        capture_output=True,
        text=True,
        timeout=200,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "400 / 400" in out  # published / decided
    assert f"{engine} engine" in out
    for title in ("engine latency by alert type", "hit ratio by alert type and tier", "decisions by mode"):
        assert title in out, out
    for alert_type in ("ci_failure", "scam", "infra"):
        assert alert_type in out
    assert plot.read_bytes().startswith(b"\x89PNG")
