from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_engine.settings import Settings
from tests.support.procs import Proc, free_port, start_propositions


@pytest.fixture
def e2e_settings(topics: Settings, tmp_path: Path, unique) -> Settings:  # type: ignore[no-untyped-def]
    """Unique topics, group, Redis namespace, data dir and proposition-service port per test."""
    return topics.with_overrides(
        app_id=unique("group"),
        data_dir=tmp_path / "data",
        redis_namespace=unique("se"),
        propositions_url=f"http://127.0.0.1:{free_port()}",
        batch_within_s=0.01,
        api_port=0,  # every worker gets its own API port (logged as "api listening on …")
    )


@pytest.fixture
def propositions(e2e_settings: Settings, tmp_path: Path) -> Iterator[Proc]:
    proc = start_propositions(e2e_settings, tmp_path)
    yield proc
    proc.stop()
