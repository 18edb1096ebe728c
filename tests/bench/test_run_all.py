"""``run_all`` runs every worker at the default settings: the engine comparison changes the engine
and nothing else (the published aiokafka runs had used batch_concurrency=4, undisclosed). Pure:
each benchmark's entry point is replaced by a recorder of the settings it is given."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from benchmarks import api, baseline_bare, baseline_naive, e2e_stream, hitratio, memory, profile_worker, run_all, service_shape
from benchmarks.common import BenchResult, settings_record
from stream_engine.settings import Settings


@pytest.fixture
def given(monkeypatch: pytest.MonkeyPatch) -> dict[str, Settings]:
    for name in [n for n in os.environ if n.startswith("STREAM_ENGINE_")]:
        monkeypatch.delenv(name)
    seen: dict[str, Settings] = {}

    def recorder(label: str) -> Any:
        async def record(settings: Settings, *args: Any, **kwargs: Any) -> BenchResult:
            seen[f"{label} {settings.engine} {args[-1] if args and isinstance(args[-1], str) else ''}".strip()] = settings
            return BenchResult(label, "", {}, {})

        return record

    for module, attribute in ((service_shape, "run"), (baseline_bare, "run"), (baseline_naive, "run"), (hitratio, "run"),
                              (memory, "run"), (api, "run"), (e2e_stream, "throughput"), (e2e_stream, "latency"),
                              (profile_worker, "run")):
        monkeypatch.setattr(module, attribute, recorder(f"{module.__name__.split('.')[-1]}.{attribute}"))
    for _, step in run_all.plan(Settings(), run_all.QUICK, runs=1, with_profile=True):
        if "sink" not in _:
            asyncio.run(step(Path(".")))
    return seen


def test_every_worker_runs_at_the_defaults_and_the_engine_comparison_changes_only_the_engine(given: dict[str, Settings]) -> None:
    engines = {label: s for label, s in given.items() if label.startswith("e2e_stream")}
    assert len(engines) == 6 and {s.engine for s in engines.values()} == {"aiokafka", "faust"}
    for label, settings in given.items():
        expected = {} if settings.engine == Settings().engine else {"engine": settings.engine}
        assert settings_record(settings)["non_default"] == expected, label
