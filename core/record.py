"""Typed records that read and write one JSON object each, keeping the keys they do not know.

:class:`Record` is the base of the model card's sections (:mod:`core.card_sections`): a dataclass whose fields are
read from a JSON object by their type hints (``str``, ``int``, ``float``, ``bool``, ``X | None``, ``list[X]``,
``dict[str, X]``, ``Any``, another :class:`Record` or any class with ``from_dict(data, where)`` and
``to_dict()``), with a :class:`RecordError` naming the key on a value of the wrong type, and written back as the
same object. Keys a record does not declare are kept in ``unknown`` and written back unchanged, so a card written
by newer code survives a round trip through older code.

A field whose JSON key is not a valid Python name (``lambda``) is declared with :func:`keyed`; a field declared
with :func:`optional` is left out of the JSON while it is ``None`` (a section that reports it only sometimes, e.g.
the test split's operating points), one declared with :func:`omitted_when_empty` while it is empty.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import cache
from typing import Any, Self

import numpy as np

from core.errors import HiCXRError


class RecordError(HiCXRError, ValueError):
    """A JSON value does not fit its record's type; the message names the key."""


def optional(default: Any = None) -> Any:
    """A field left out of the JSON object while it is ``None``."""
    return dataclasses.field(default=default, metadata={"omit": "none"})


def omitted_when_empty(factory: Any) -> Any:
    """A field (built by ``factory``) left out of the JSON object while it is empty."""
    return dataclasses.field(default_factory=factory, metadata={"omit": "empty"})


def keyed(key: str, default: Any = None) -> Any:
    """A field stored under JSON key ``key`` (e.g. ``lambda``, a Python keyword)."""
    return dataclasses.field(default=default, metadata={"key": key})


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _json_key(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name)


def _join(where: str, key: str) -> str:
    # "v.json:" + "metrics" -> "v.json: metrics"; "v.json: metrics" + "test" -> "v.json: metrics.test"
    return f"{where} {key}" if where.endswith(":") else f"{where}.{key}"


@dataclasses.dataclass
class Record:
    """Base of a typed JSON object (see the module docstring). Subclasses are dataclasses with defaults only."""

    unknown: dict[str, Any] = dataclasses.field(default_factory=dict, kw_only=True, repr=False)

    @classmethod
    def from_dict(cls, data: Any, where: str = "") -> Self:
        """Build the record from a JSON object; ``None`` gives the defaults.

        Raises:
            RecordError: ``data`` is not an object, or a value does not fit its field's type (``where`` + key).
        """
        where = where or cls.__name__
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise RecordError(f"{where} must be an object, got {type(data).__name__}")
        hints = _hints(cls)
        values: dict[str, Any] = {}
        known = set()
        for f in dataclasses.fields(cls):
            if f.name == "unknown":
                continue
            key = _json_key(f)
            known.add(key)
            if key in data:
                values[f.name] = parse(data[key], hints[f.name], _join(where, key))
        return cls(**values, unknown={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: declared fields in order, then the unknown keys."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "unknown":
                continue
            value = getattr(self, f.name)
            omit = f.metadata.get("omit")
            if (omit == "none" and value is None) or (omit == "empty" and not value):
                continue
            out[_json_key(f)] = dump(value)
        out.update(self.unknown)
        return out


def dump(value: Any) -> Any:
    """Plain data of a field value (records become objects, tuples lists)."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, dict):
        return {str(k): dump(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [dump(v) for v in value]
    return value


def parse(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against (and converted to) type ``hint``; :class:`RecordError` names ``where``."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [o for o in typing.get_args(hint) if o is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        errors = []
        for option in options:
            try:
                return parse(value, option, where)
            except RecordError as exc:
                errors.append(exc)
        raise errors[0]
    if isinstance(hint, type) and hasattr(hint, "from_dict"):  # a Record, or a section with its own checks
        return hint.from_dict(value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise RecordError(f"{where} must be a list, got {value!r}")
        item = typing.get_args(hint)[0] if typing.get_args(hint) else Any
        items = [parse(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise RecordError(f"{where} must be an object, got {value!r}")
        item = typing.get_args(hint)[1] if typing.get_args(hint) else Any
        return {str(k): parse(v, item, f"{where}[{k!r}]") for k, v in value.items()}
    return _scalar(value, hint, where)


def _scalar(value: Any, hint: type, where: str) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (str, bool) and isinstance(value, hint):
        return value
    raise RecordError(f"{where} must be {getattr(hint, '__name__', hint)}, got {value!r}")
