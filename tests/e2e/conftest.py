from __future__ import annotations

import pytest

from stream_engine.settings import Settings


@pytest.fixture
def e2e_settings(worker_settings: Settings) -> Settings:
    """See ``worker_settings`` in tests/conftest.py (``propositions`` starts its service)."""
    return worker_settings
