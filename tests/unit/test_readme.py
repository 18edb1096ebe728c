"""The README is the first thing a user reads: it must document every setting and the two commands."""

from __future__ import annotations

from stream_engine.settings import PROJECT_ROOT, Settings, settings_table

README = (PROJECT_ROOT / "README.md").read_text()


def test_every_setting_is_in_the_readme_table() -> None:
    missing = [name for name in Settings.model_fields if f"`STREAM_ENGINE_{name.upper()}`" not in README]
    assert not missing, f"add these settings to the README table: {missing}"


def test_the_readme_table_rows_are_the_ones_settings_py_generates() -> None:
    rows = [
        f"| `{var}` (`--{var.removeprefix('STREAM_ENGINE_').lower().replace('_', '-')}`) | `{default}` | {what} |"
        for var, default, what in settings_table()
    ]
    stale = [row for row in rows if row not in README.splitlines()]
    assert not stale, "regenerate the README settings table from settings.settings_table():\n" + "\n".join(stale)


def test_the_readme_names_the_two_commands_and_ci_runs_the_test_one() -> None:
    assert "./run demo" in README and "./run test" in README
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert "./run test" in ci


def test_run_test_lints_before_it_tests() -> None:
    run = (PROJECT_ROOT / "run").read_text()
    test_branch = run[run.index("\ntest)") :]
    assert 0 < test_branch.index("ruff\" check .") < test_branch.index("pytest"), "ruff check runs first"
