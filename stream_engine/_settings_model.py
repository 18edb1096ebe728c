"""The machinery under :class:`stream_engine.settings.Settings`: typed fields from kwargs or env vars.

A class declares fields as ``name: type = Field(default, description=..., ge=..., gt=..., le=...)``;
an instance takes each value from a keyword argument, else the ``<PREFIX><NAME>`` environment
variable (any case; JSON for dicts and lists), else the default, converts it to the declared type
and checks its bounds. Instances are immutable. The surface the project uses is pydantic's
(``model_fields``, ``model_dump``, ``model_construct``), which it replaces: pydantic and pydantic-settings cost 9 MB of
a worker's RSS (of a 64 MB budget) for the five types and three bounds these settings need.

Types: ``str``, ``int``, ``float``, ``bool``, ``Path``, :class:`SecretStr`, ``Literal[...]``,
``list[str]``, ``dict[str, T]`` with ``T`` one of these. Anything else fails when the class is
defined. Methods decorated ``@model_validator(mode="after")`` check the whole object; a
``ValueError`` they raise becomes a :class:`SettingsError`. Error messages name the setting and
what it must be, never the value given: a rejected value may be (or sit next to) a secret.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args, get_origin

_MISSING: Any = object()
TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
FALSE = frozenset({"0", "false", "f", "no", "n", "off"})


class SettingsError(ValueError):
    """A setting has a value its type or bounds refuse; the message names it and why (not the value)."""


class SecretStr:
    """A string that shows as ``**********`` in reprs, dumps and logs; ``get_secret_value()`` reads it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "SecretStr('**********')" if self._value else "SecretStr('')"

    def __str__(self) -> str:
        return "**********" if self._value else ""


def model_validator(*, mode: Literal["after"]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Marks a method that checks the finished object (pydantic's spelling; only ``mode="after"``)."""

    def mark(method: Callable[..., Any]) -> Callable[..., Any]:
        method.__settings_validator__ = mode  # type: ignore[attr-defined]
        return method

    return mark


@dataclass(frozen=True, slots=True)
class FieldInfo:
    default: Any = _MISSING
    description: str = ""
    default_factory: Callable[[], Any] | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    annotation: Any = None  # the resolved type, set when the class is defined

    def make_default(self) -> Any:
        return self.default_factory() if self.default_factory is not None else self.default


def Field(  # noqa: N802 - pydantic's spelling, so field declarations read the same
    default: Any = _MISSING,
    *,
    description: str = "",
    default_factory: Callable[[], Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
) -> Any:
    return FieldInfo(default, description, default_factory, ge, gt, le)


class TypedSettings:
    """Subclass it; set ``env_prefix``; declare fields (see the module docstring)."""

    env_prefix: ClassVar[str] = ""
    model_fields: ClassVar[dict[str, FieldInfo]] = {}
    _validators: ClassVar[tuple[Callable[..., Any], ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        hints = typing.get_type_hints(cls, include_extras=False)
        fields: dict[str, FieldInfo] = {}
        for name in cls.__dict__.get("__annotations__", {}):
            if hints.get(name) is None or get_origin(hints[name]) is ClassVar or name.startswith("_"):
                continue
            declared = cls.__dict__.get(name, _MISSING)
            info = declared if isinstance(declared, FieldInfo) else FieldInfo(default=declared)
            _check_supported(name, hints[name])
            fields[name] = FieldInfo(info.default, info.description, info.default_factory, info.ge, info.gt, info.le, hints[name])
            if name in cls.__dict__:
                delattr(cls, name)  # the value lives on instances
        cls.model_fields = fields
        cls._validators = tuple(v for v in vars(cls).values() if getattr(v, "__settings_validator__", None) == "after")

    def __init__(self, **values: Any) -> None:
        unknown = set(values) - set(self.model_fields)
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        env = {k.upper(): v for k, v in os.environ.items() if k.upper().startswith(self.env_prefix.upper())}
        for name, info in self.model_fields.items():
            variable = f"{self.env_prefix}{name}".upper()
            if name in values:
                value, where = values[name], name
            elif variable in env:
                value, where = _from_env(env[variable], info.annotation, variable), variable
            elif info.default is not _MISSING or info.default_factory is not None:
                value, where = info.make_default(), name
            else:
                raise SettingsError(f"{name}: required")
            object.__setattr__(self, name, _check_bounds(where, _convert(where, value, info.annotation), info))
        for validator in self._validators:
            try:
                validator(self)
            except ValueError as exc:
                raise SettingsError(str(exc)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise SettingsError(f"settings are immutable: use with_overrides({name}=...)")

    def __delattr__(self, name: str) -> None:
        raise SettingsError("settings are immutable")

    @classmethod
    def model_construct(cls, **values: Any) -> Any:
        """The code's defaults (and ``values``), unchecked and without the environment, as pydantic's."""
        instance = object.__new__(cls)
        for name, info in cls.model_fields.items():
            object.__setattr__(instance, name, values[name] if name in values else info.make_default())
        return instance

    def model_dump(self, mode: Literal["python", "json"] = "python") -> dict[str, Any]:
        """``mode="json"``: only JSON types (paths as strings, secrets as ``**********``), as pydantic's."""
        values = {name: getattr(self, name) for name in self.model_fields}
        return values if mode == "python" else {name: _jsonable(value) for name, value in values.items()}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.model_dump() == other.model_dump()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(tuple((k, repr(v)) for k, v in self.model_dump().items()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.model_dump().items())})"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (Path, SecretStr)):
        return str(value)
    return value


def _check_supported(name: str, kind: Any) -> None:
    origin, args = get_origin(kind), get_args(kind)
    if kind in (str, int, float, bool, Path, SecretStr) or origin is Literal:
        return
    if origin is list and args == (str,):
        return
    if origin is dict and args[0] is str:
        _check_supported(name, args[1])
        return
    raise TypeError(f"setting {name}: type {kind!r} is not supported by stream_engine._settings_model")


def _from_env(text: str, kind: Any, variable: str) -> Any:
    if get_origin(kind) in (dict, list):
        import orjson

        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise SettingsError(f"{variable}: not valid JSON (at character {exc.pos})") from None
    return text


def _convert(where: str, value: Any, kind: Any) -> Any:
    origin = get_origin(kind)
    if origin is Literal:
        if value not in get_args(kind):
            raise SettingsError(f"{where}: must be one of {', '.join(map(repr, get_args(kind)))}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            _fail(where, "a list of strings", value)
        return list(value)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            _fail(where, "an object with string keys", value)
        inner = get_args(kind)[1]
        return {k: _convert(f"{where}.{k}", v, inner) for k, v in value.items()}
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in TRUE or text in FALSE:
            return text in TRUE
        _fail(where, "a boolean (true/false, 1/0, yes/no)", value)
    if kind is int:
        if isinstance(value, bool):
            _fail(where, "an integer", value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(value) if isinstance(value, (int, str)) else _fail(where, "an integer", value)
        except ValueError:
            return _fail(where, "an integer", value)
    if kind is float:
        if isinstance(value, bool):
            return _fail(where, "a number", value)
        try:
            return float(value) if isinstance(value, (int, float, str)) else _fail(where, "a number", value)
        except ValueError:
            return _fail(where, "a number", value)
    if kind is Path:
        return value if isinstance(value, Path) else Path(value) if isinstance(value, str) else _fail(where, "a path", value)
    if kind is str:
        return value if isinstance(value, str) else _fail(where, "a string", value)
    if kind is SecretStr:
        return value if isinstance(value, SecretStr) else SecretStr(value) if isinstance(value, str) else _fail(
            where, "a string", value
        )
    raise TypeError(f"{where}: unsupported type {kind!r}")


def _fail(where: str, what: str, value: Any) -> Any:
    raise SettingsError(f"{where}: must be {what} (got a {type(value).__name__})")


def _check_bounds(where: str, value: Any, info: FieldInfo) -> Any:
    if info.ge is not None and value < info.ge:
        raise SettingsError(f"{where}: must be ≥ {info.ge}")
    if info.gt is not None and value <= info.gt:
        raise SettingsError(f"{where}: must be > {info.gt}")
    if info.le is not None and value > info.le:
        raise SettingsError(f"{where}: must be ≤ {info.le}")
    return value
