"""Where the proposition service's admin token comes from (stream_engine.propositions.admin)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from stream_engine.propositions.admin import (
    ENV,
    AdminTokenMissing,
    ensure_admin_token,
    find_admin_token,
    require_admin_token,
    token_path,
)
from stream_engine.settings import Settings
from stream_engine.stack import StackLayout
from stream_engine.stack.propositions import PropositionsComponent, settings_flags


def test_ensure_generates_a_0600_file_once_and_then_reads_it(tmp_path: Path) -> None:
    settings = Settings(stack_dir=tmp_path / "stack")
    assert find_admin_token(settings) is None
    token, generated = ensure_admin_token(settings)
    path = token_path(settings)
    assert generated and token.source == str(path) and len(token.value) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, generated_again = ensure_admin_token(settings)
    assert (again.value, generated_again) == (token.value, False)
    assert require_admin_token(settings).value == token.value  # what the CLI reads


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    settings = Settings(stack_dir=tmp_path)
    ensure_admin_token(settings)
    configured = settings.with_overrides(admin_token="from-env")
    token, generated = ensure_admin_token(configured)
    assert (token.value, token.source, generated) == ("from-env", ENV, False)


def test_without_a_token_the_cli_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(AdminTokenMissing) as missing:
        require_admin_token(Settings(stack_dir=tmp_path))
    assert ENV in str(missing.value) and "stack up" in str(missing.value) and str(tmp_path) in str(missing.value)


def test_a_token_never_shows_in_a_repr_a_command_line_or_the_settings_repr(tmp_path: Path) -> None:
    settings = Settings(stack_dir=tmp_path, admin_token="tok-123456", api_token="tok-654321", batch_max=7)
    token, _ = ensure_admin_token(settings)
    assert "tok-123456" not in repr(token) and "tok-" not in repr(settings)
    flags = settings_flags(settings)
    assert "--batch-max" in flags and not any("tok-" in f or f.endswith("-token") for f in flags)
    component = PropositionsComponent(settings, StackLayout(tmp_path))
    assert not any("tok-" in part for part in component.command())
    assert component.env()[ENV] == "tok-123456"  # the child gets it in its environment instead
    assert settings.to_env()["STREAM_ENGINE_API_TOKEN"] == "tok-654321"  # subprocess hand-over keeps the value
