"""stream_engine: a streaming alert-triage engine."""

from stream_engine.keys import message_key
from stream_engine.models import (
    ENGINE_VERSION,
    Alert,
    CacheTier,
    DeadLetter,
    Decision,
    Envelope,
    Mode,
    Proposition,
)
from stream_engine.settings import Settings

__version__ = ENGINE_VERSION

__all__ = [
    "ENGINE_VERSION",
    "Alert",
    "CacheTier",
    "Decision",
    "DeadLetter",
    "Envelope",
    "Mode",
    "Proposition",
    "Settings",
    "__version__",
    "message_key",
]
