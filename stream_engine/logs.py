"""Logging setup. (Structured JSON logs with redaction come with the operations issue.)"""

from __future__ import annotations

import logging

from stream_engine.settings import Settings


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # aiokafka is chatty at INFO about routine group membership.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
