"""`stream-engine worker --engine`: aiokafka unless a flag or STREAM_ENGINE_ENGINE says faust."""

from __future__ import annotations

import argparse

import pytest

from stream_engine.cli import build_parser, settings_from_args
from stream_engine.settings import SettingsError


def parse(argv: list[str]) -> tuple[argparse.Namespace, str]:
    args = build_parser().parse_args(argv)
    return args, settings_from_args(args).engine


def test_engine_is_chosen_by_flag_or_setting_and_defaults_to_aiokafka(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAM_ENGINE_ENGINE", raising=False)
    args, engine = parse(["worker"])
    assert args.engine is None and engine == "aiokafka"
    args, _ = parse(["worker", "--engine", "faust"])
    assert args.engine == "faust"
    _, engine = parse(["--engine", "faust", "worker"])
    assert engine == "faust"
    with pytest.raises(SystemExit):
        parse(["worker", "--engine", "spark"])
    with pytest.raises(SettingsError):  # the global flag is validated by Settings (main() reports it)
        parse(["--engine", "spark", "worker"])
