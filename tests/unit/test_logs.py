"""Structured JSON logs: one object per line, context included, secrets redacted."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from stream_engine.logs import JsonFormatter, alert_context, configure_logging
from stream_engine.models import Alert
from stream_engine.settings import Settings
from stream_engine.validation import REDACTED


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("w-1", ["password", "token", "Api_Key"]))
    logger = logging.getLogger(f"test.logs.{id(stream)}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict]:  # type: ignore[type-arg]
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_each_line_is_one_json_object_with_the_base_fields(logged) -> None:  # type: ignore[no-untyped-def]
    logger, stream = logged
    logger.info("batch of %d done", 3, extra={"batch_size": 3, "partition": 1})
    logger.warning("second")
    [first, second] = lines(stream)
    assert first["msg"] == "batch of 3 done" and first["level"] == "INFO" and first["worker"] == "w-1"
    assert first["logger"] == logger.name and first["batch_size"] == 3 and first["partition"] == 1
    assert first["ts"].endswith("+00:00") and "T" in first["ts"]
    assert second["level"] == "WARNING" and "batch_size" not in second


def test_secret_fields_are_redacted_at_any_depth_case_insensitively(logged) -> None:  # type: ignore[no-untyped-def]
    logger, stream = logged
    alert = Alert(
        "a-1", "ci_failure", 0.0, "high", "ci",
        {"repo": "web", "TOKEN": "t0p", "nested": {"password": "hunter2", "list": [{"api_key": "k"}]}},
    )  # fmt: skip
    logger.info("alert", extra={**alert_context(alert), "token": "top-level-secret"})
    [line] = lines(stream)
    text = stream.getvalue()
    for secret in ("t0p", "hunter2", '"k"', "top-level-secret"):
        assert secret not in text
    assert line["alert_id"] == "a-1" and line["alert_type"] == "ci_failure"
    assert line["attributes"]["repo"] == "web" and line["attributes"]["TOKEN"] == REDACTED
    assert line["attributes"]["nested"] == {"password": REDACTED, "list": [{"api_key": REDACTED}]}
    assert line["token"] == REDACTED
    assert alert.attributes["TOKEN"] == "t0p", "the alert itself is never modified"


def test_exceptions_and_unserialisable_context_keep_the_line(logged) -> None:  # type: ignore[no-untyped-def]
    logger, stream = logged
    try:
        raise ValueError("broken")
    except ValueError:
        logger.exception("failed", extra={"path": Path("/x"), "obj": object()})
    [line] = lines(stream)
    assert line["level"] == "ERROR" and "ValueError: broken" in line["exc"]
    assert line["path"] == "/x" and line["obj"].startswith("<object")


def test_context_cannot_overwrite_the_base_fields(logged) -> None:  # type: ignore[no-untyped-def]
    logger, stream = logged
    logger.info("real", extra={"worker": "spoofed", "ts": "never", "level_hint": 1})
    [line] = lines(stream)
    assert line["worker"] == "w-1" and line["ts"] != "never" and line["level_hint"] == 1


def test_configure_logging_replaces_handlers_with_json_on_the_given_stream() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        configure_logging(Settings(log_level="debug", redact_fields=["secret"]), worker="w-9", stream=stream)
        assert len(root.handlers) == 1 and root.level == logging.DEBUG
        logging.getLogger("stream_engine.x").debug("hi", extra={"attributes": {"secret": "s3"}})
        logging.getLogger("aiokafka.x").info("chatty")
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    [line] = lines(stream)
    assert line["worker"] == "w-9" and line["attributes"] == {"secret": REDACTED}


def test_messages_and_tracebacks_that_quote_secrets_are_masked(logged) -> None:  # type: ignore[no-untyped-def]
    logger, stream = logged
    attributes = {"repo": "web", "password": "hunter2-in-repr"}
    try:
        raise ValueError(f"cannot decide {attributes!r}")  # a bug that formats an alert
    except ValueError as exc:
        logger.exception("batch failed (%r) via http://u:pw-in-url@ch:8123", exc, extra={"error": f"token={'tok-ctx'}"})
    text = stream.getvalue()
    for secret in ("hunter2-in-repr", "pw-in-url", "tok-ctx"):
        assert secret not in text
    [line] = lines(stream)
    assert "'repo': 'web'" in line["msg"] and "ValueError: cannot decide" in line["exc"] and "u:***@ch" in line["msg"]
