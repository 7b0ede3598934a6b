"""Frozen dataclass configs loaded from YAML, with type-checked ``key=value`` overrides.

A config is a tree of frozen dataclasses. ``load_config(cls, path, overrides)`` reads the YAML file (if any), applies
dotted overrides such as ``optim.lr=0.1``, checks every value against the field's type and returns the instance. An
unknown key is an error that names the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from foveal.errors import FovealError

T = TypeVar("T")


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _unknown_key(key: str, valid: list[str], where: str) -> FovealError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
    return FovealError(f"unknown config key '{where}{key}': {hint}")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against type ``tp`` (converting YAML/CLI strings where unambiguous)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except FovealError as exc:
                errors.append(str(exc))
        raise FovealError(errors[0] if errors else f"bad value for '{where}'")
    if origin is typing.Literal:
        allowed = get_args(tp)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise FovealError(f"bad value {value!r} for '{where}': choose one of {', '.join(map(str, allowed))}{hint}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.strip("[]()").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise FovealError(f"bad value {value!r} for '{where}': expected a list")
        args = get_args(tp)
        item = args[0] if args else Any
        return tuple(_coerce(v.strip() if isinstance(v, str) else v, item, where) for v in value)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise FovealError(f"bad value for '{where}': expected a mapping of {', '.join(_field_names(tp))}")
        return from_dict(tp, value, where=f"{where}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise FovealError(f"bad value {value!r} for '{where}': expected true or false")
    if tp is int:
        if isinstance(value, bool):
            raise FovealError(f"bad value {value!r} for '{where}': expected an integer")
        if isinstance(value, int):
            return value
        try:
            return int(str(value))
        except ValueError:
            raise FovealError(f"bad value {value!r} for '{where}': expected an integer") from None
    if tp is float:
        if isinstance(value, bool):
            raise FovealError(f"bad value {value!r} for '{where}': expected a number")
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return float(str(value))
        except ValueError:
            raise FovealError(f"bad value {value!r} for '{where}': expected a number") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise FovealError(f"bad value {value!r} for '{where}': expected a string")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) dict, checking keys and types."""
    hints = get_type_hints(cls)
    valid = _field_names(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in valid:
            raise _unknown_key(key, valid, where)
        kwargs[key] = _coerce(value, hints[key], f"{where}{key}")
        base = _section_default(cls, key)
        if base is not None and isinstance(value, dict):
            # A section given in part keeps the enclosing config's defaults for the rest (a task's recipe may differ
            # from the section class's own defaults, e.g. SGD for U-Net where the optimizer class defaults to RMSProp).
            kwargs[key] = dataclasses.replace(base, **{k: getattr(kwargs[key], k) for k in value})
    return cls(**kwargs)


def _section_default(cls: type, key: str) -> Any:
    """The default value of field ``key`` of ``cls`` when it is a dataclass instance (a config section), else None."""
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name == key and f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            return value if dataclasses.is_dataclass(value) and not isinstance(value, type) else None
    return None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain (YAML/JSON-able) dict of a config tree; tuples become lists."""

    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str], cls: type) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides to a nested dict, checking each key path against ``cls``."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise FovealError(f"bad override '{item}': write overrides as key=value, e.g. optim.lr=0.1")
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        node = data
        node_cls: Any = cls
        for i, part in enumerate(parts):
            valid = _field_names(node_cls)
            where = ".".join(parts[:i]) + ("." if i else "")
            if part not in valid:
                raise _unknown_key(part, valid, where)
            if i == len(parts) - 1:
                node[part] = _parse_scalar(raw)
            else:
                hint = get_type_hints(node_cls)[part]
                if not (dataclasses.is_dataclass(hint) and isinstance(hint, type)):
                    raise FovealError(f"config key '{where}{part}' is a value, not a section: write {where}{part}=...")
                child = node.get(part)
                child = dict(child) if isinstance(child, dict) else {}
                node[part] = child
                node = child
                node_cls = hint
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning every failure into a clear FovealError."""
    p = Path(path)
    if not p.is_file():
        raise FovealError(f"config file not found: {p} (pass an existing YAML file, e.g. configs/classify_cpu.yaml)")
    try:
        data = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise FovealError(f"config file {p} is not valid YAML: {exc}".splitlines()[0]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FovealError(f"config file {p} must hold a mapping of keys to values at the top level")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load config ``cls`` from an optional YAML file plus ``key=value`` overrides."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides or [], cls)
    return from_dict(cls, data)
