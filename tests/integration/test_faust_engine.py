"""The faust worker consumer uses our fetch wait, not faust's hard-coded 1500 ms.

The wait only takes effect inside aiokafka's Fetcher, which exists once the consumer has
started against a broker, so this checks the started consumer on the real broker.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_engine.engines.faust import create_app
from stream_engine.settings import Settings

pytestmark = pytest.mark.integration


async def test_the_worker_consumer_fetches_with_the_configured_wait(stack: Settings, tmp_path: Path) -> None:
    settings = stack.with_overrides(fetch_max_wait_ms=7, data_dir=tmp_path)
    app, _ = create_app(settings)
    thread = app.consumer._thread
    consumer = thread._create_worker_consumer(app.transport)
    await consumer.start()
    try:
        assert consumer._fetcher._fetch_max_wait_ms == 7
    finally:
        await consumer.stop()
