"""Typed run plans: each runbook's plan is a frozen dataclass, stored as the same JSON document it always was
(``plan.json`` of the run), plus ``schema_version``.

A plan written before ``schema_version`` existed reads as version 1. A plan of a newer version than this code
knows is refused: a rollback must not act on a plan it cannot read completely.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any, TypeVar

from pgupgrade.errors import UnsafeState

SCHEMA_VERSION = 1

P = TypeVar("P")


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(inner[0], value) if len(inner) == 1 else value
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1]
        return (
            type(value)(_convert(item, v) for v in value) if origin is list else tuple(_convert(item, v) for v in value)
        )
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_json(tp, value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    return value


def from_json(cls: type[P], data: Mapping[str, Any]) -> P:
    """``cls`` (a dataclass) from its JSON object; nested dataclasses and enums by the fields' types. Keys the
    class does not know are refused (a plan from other code), missing keys take the field's default."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    version = int(data.get("schema_version", 1))
    if version > SCHEMA_VERSION:
        raise UnsafeState(f"plan schema_version {version} is newer than this code reads ({SCHEMA_VERSION})")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names - {"schema_version"}
    if unknown:
        raise UnsafeState(f"the recorded {cls.__name__} has keys this code does not know: {sorted(unknown)}")
    hints = _hints(cls)
    kwargs = {k: _convert(hints[k], v) for k, v in data.items() if k in names}
    return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class AlreadyThere:
    """The plan of a run with nothing to do: the cluster already is where the run would take it."""

    running: str
    reason: str
    already_upgraded: bool = True


def recorded(cls: type[P], data: Mapping[str, Any] | None) -> P | AlreadyThere | None:
    """A run's recorded plan as ``cls``; ``AlreadyThere`` for a run with nothing to do; None when none was
    recorded (the run failed before its plan)."""
    if not data:
        return None
    if data.get("already_upgraded"):
        return from_json(AlreadyThere, data)
    return from_json(cls, data)


def planned(cls: type[P], data: Mapping[str, Any] | None) -> P | None:
    """A run's recorded plan when it planned a change: None when it recorded none or had nothing to do."""
    found = recorded(cls, data)
    return None if isinstance(found, AlreadyThere) else found


def to_json(plan: Any) -> dict[str, Any]:
    """The JSON object of a plan: enums as their values, with ``schema_version``."""

    def plain(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    out: dict[str, Any] = plain(plan)
    out["schema_version"] = SCHEMA_VERSION
    return out
