"""Structured logs: one JSON object per line, with secrets redacted.

Every line has ``ts`` (UTC, ISO 8601, ms), ``level``, ``logger``, ``msg`` and ``worker``, plus
whatever context the call passed with ``extra=`` (``batch_size``, ``partition``, ``alert_id`` …)
and ``exc`` for exceptions. Context values pass through :func:`stream_engine.validation.redact`:
any key named in ``settings.redact_fields`` (case-insensitive, at any depth) is replaced — so log
alert attributes or payloads as ``extra={"attributes": ...}`` (see :func:`alert_context`). The
message text, exception tracebacks and string context values are masked too, by pattern
(:meth:`stream_engine.masking.Masker.text`: ``"field": value`` in JSON or a Python repr,
``field=value``, passwords in URLs), for what reaches a log line without being asked to: an
exception that quotes an alert, a client error that quotes its URL.

A small formatter on orjson rather than a library: it is ~40 lines and the hot path already
depends on orjson.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

import orjson

from stream_engine.masking import Masker
from stream_engine.validation import redact

if TYPE_CHECKING:
    from stream_engine.models import Alert
    from stream_engine.settings import Settings

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: str, redact_fields: Iterable[str]) -> None:
        super().__init__()
        self.worker = worker
        self.redact_fields = tuple(redact_fields)
        self.masker = Masker(self.redact_fields)

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": self.masker.text(record.getMessage()),
            "worker": self.worker,
        }
        context = {k: v for k, v in record.__dict__.items() if k not in _RECORD_FIELDS}
        if context:
            for key, value in redact(context, self.redact_fields).items():
                # context never overwrites ts/level/logger/msg/worker
                doc.setdefault(key, self.masker.text(value) if isinstance(value, str) else value)
        if record.exc_info:
            doc["exc"] = self.masker.text(self.formatException(record.exc_info))
        elif record.stack_info:
            doc["stack"] = self.masker.text(record.stack_info)
        # default=str: a context value orjson cannot serialise must not lose the log line.
        return orjson.dumps(doc, default=str).decode()


def alert_context(alert: Alert) -> dict[str, Any]:
    """``extra=`` for a log line about one alert (attributes are redacted by the formatter)."""
    return {"alert_id": alert.id, "alert_type": alert.type, "source": alert.source, "attributes": alert.attributes}


def configure_logging(settings: Settings, worker: str | None = None, stream: IO[str] | None = None) -> None:
    """JSON lines on stderr (or ``stream``) for the whole process, replacing earlier handlers."""
    from stream_engine.runtime import default_worker_name

    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(worker or settings.worker_name or default_worker_name(), settings.redact_fields))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # aiokafka is chatty at INFO about routine group membership.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
