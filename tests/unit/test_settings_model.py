"""Settings from keyword arguments and STREAM_ENGINE_* variables: types, bounds, immutability."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from stream_engine._settings_model import Field, SettingsError, TypedSettings
from stream_engine.settings import PROJECT_ROOT, Settings, settings_table


class Demo(TypedSettings):
    env_prefix = "DEMO_"

    path: Path = Field(Path("/tmp/x"), description="a path")
    count: int = Field(3, ge=1, description="a count")
    ratio: float = Field(0.5, gt=0, le=1)
    flag: bool = Field(False)
    mode: Literal["a", "b"] = Field("a")
    names: list[str] = Field(default_factory=lambda: ["n"])
    table: dict[str, list[str]] = Field(default_factory=dict)
    weights: dict[str, float] = Field(default_factory=lambda: {"w": 1.0})
    plain: str = "p"


def test_defaults_kwargs_and_environment_in_increasing_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Demo().count == 3 and Demo().names == ["n"] and Demo().plain == "p"
    monkeypatch.setenv("DEMO_COUNT", "7")
    monkeypatch.setenv("demo_flag", "yes")  # any case, as pydantic-settings read them
    monkeypatch.setenv("DEMO_TABLE", '{"t": ["a", "b"]}')
    monkeypatch.setenv("DEMO_WEIGHTS", '{"w": 2}')
    monkeypatch.setenv("DEMO_PATH", "/var/y")
    s = Demo()
    assert (s.count, s.flag, s.table, s.weights, s.path) == (7, True, {"t": ["a", "b"]}, {"w": 2.0}, Path("/var/y"))
    assert Demo(count="9").count == 9  # a CLI flag's string wins over the environment


def test_values_are_checked_and_the_error_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    cases = {
        "count: must be ≥ 1": {"count": 0},
        "ratio: must be > 0": {"ratio": 0},
        "ratio: must be ≤ 1": {"ratio": "1.5"},
        "count: must be an integer": {"count": "many"},
        "flag: must be a boolean": {"flag": "maybe"},
        "mode: must be one of 'a', 'b'": {"mode": "c"},
        "names: must be a list of strings": {"names": [1]},
        "weights.w: must be a number": {"weights": {"w": "heavy"}},
        "unknown setting(s): nope": {"nope": 1},
    }
    for message, values in cases.items():
        with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
            Demo(**values)
    monkeypatch.setenv("DEMO_TABLE", "{not json")
    with pytest.raises(SettingsError, match="DEMO_TABLE: not valid JSON"):
        Demo()


def test_immutable_comparable_and_described() -> None:
    s = Demo()
    with pytest.raises(SettingsError, match="immutable"):
        s.count = 4  # type: ignore[misc]
    assert s == Demo() and s != Demo(count=4) and hash(s) == hash(Demo())
    assert Demo.model_fields["count"].description == "a count" and Demo.model_fields["names"].make_default() == ["n"]
    assert s.model_dump()["weights"] == {"w": 1.0}


def test_construct_takes_the_code_defaults_and_dump_can_give_json_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_COUNT", "7")
    assert Demo().count == 7 and Demo.model_construct().count == 3 and Demo.model_construct(count=5).count == 5
    dumped = Demo(path=Path("/var/y")).model_dump(mode="json")
    assert dumped["path"] == "/var/y" and dumped["names"] == ["n"] and dumped["weights"] == {"w": 1.0}
    assert Settings(api_token="s3cret").model_dump(mode="json")["api_token"] == "**********"
    assert Settings.model_construct().model_dump(mode="json")["data_dir"] == str(PROJECT_ROOT / ".data")


def test_an_unsupported_type_fails_where_it_is_declared() -> None:
    with pytest.raises(TypeError, match="not supported"):

        class Bad(TypedSettings):  # noqa: F841
            when: set[int] = Field(default_factory=set)


def test_the_project_settings_round_trip_through_overrides_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    changed = s.with_overrides(batch_max=7, key_fields={"x": ["a"]}, engine="aiokafka")
    assert (changed.batch_max, changed.key_fields, changed.engine) == (7, {"x": ["a"]}, "aiokafka")
    for name, value in changed.to_env().items():
        monkeypatch.setenv(name, value)
    assert Settings() == changed  # what a child process rebuilds from to_env()
    assert [row[0] for row in settings_table()][:2] == ["STREAM_ENGINE_DATA_DIR", "STREAM_ENGINE_STACK_DIR"]
