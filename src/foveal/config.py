"""Frozen dataclass configs loaded from YAML, with type-checked ``key=value`` overrides.

A config is a tree of frozen dataclasses. ``load_config(cls, path, overrides)`` reads the YAML file (if any), applies
dotted overrides such as ``optim.lr=0.1``, checks every value against the field's type and range and returns the
instance. An unknown key is an error that names the closest valid key.

Ranges: a field may carry a :class:`Range` in its annotation (``lr: Annotated[float, POSITIVE] = 0.1``). A number
without one must be finite and ≥ 0 (an integer also ≤ 2³¹ − 1). NaN and infinity are refused everywhere; a tuple's
items are checked one by one. :func:`check_ranges` checks a config built in Python the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from foveal.errors import FovealError

T = TypeVar("T")

_INT_MAX = 2**31 - 1

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
"""The bundled recipes (``classify_cpu.yaml``, ``detect_demo.yaml``, …)."""


@dataclass(frozen=True)
class Range:
    """The values a numeric config field accepts: ``low`` … ``high`` (None: unbounded), each end open or closed."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def describe(self) -> str:
        """The range in words, e.g. "a number > 0" or "a number from 0 to 1 (1 excluded)"."""
        if self.low is not None and self.high is not None:
            ends = [
                e for e, is_open in ((f"{self.low:g}", self.low_open), (f"{self.high:g}", self.high_open)) if is_open
            ]
            return f"from {self.low:g} to {self.high:g}" + (f" ({' and '.join(ends)} excluded)" if ends else "")
        if self.low is not None:
            return f"{'>' if self.low_open else '≥'} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '≤'} {self.high:g}"
        return "(any finite value)"


def at_least(low: float) -> Range:
    return Range(low=low)


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Range:
    return Range(low, high, low_open, high_open)


POSITIVE = Range(low=0, low_open=True)
NON_NEGATIVE = Range(low=0)
FRACTION = Range(0, 1)
ANY_FINITE = Range()
_DEFAULT_INT = Range(0, _INT_MAX)


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
        return _coerce_union(value, get_args(tp), where)
    if origin is typing.Literal:
        allowed = get_args(tp)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise FovealError(
                f"bad value {_shown(value)} for '{where}': choose one of {', '.join(map(str, allowed))}{hint}"
            )
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.strip("[]()").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise FovealError(f"bad value {_shown(value)} for '{where}': expected a list")
        args = get_args(tp)
        item = args[0] if args else Any
        return tuple(_coerce(v.strip() if isinstance(v, str) else v, item, where) for v in value)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise FovealError(f"bad value for '{where}': expected a mapping of {', '.join(_field_names(tp))}")
        return from_dict(tp, value, where=f"{where}.")
    scalar = _SCALARS.get(tp) if isinstance(tp, type) else None
    return value if scalar is None else scalar(value, where)


def _coerce_union(value: Any, args: tuple[Any, ...], where: str) -> Any:
    """``value`` as the first of the union's types that takes it (None where the union allows it)."""
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


def _to_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
        return value.lower() in ("true", "yes", "1", "on")
    raise FovealError(f"bad value {_shown(value)} for '{where}': expected true or false")


def _to_int(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise FovealError(f"bad value {_shown(value)} for '{where}': expected an integer")
    if isinstance(value, int):
        return value
    try:
        return int(str(value))
    except ValueError:
        raise FovealError(f"bad value {_shown(value)} for '{where}': expected an integer") from None


def _to_float(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise FovealError(f"bad value {_shown(value)} for '{where}': expected a number")
    try:
        return float(value) if isinstance(value, (int, float)) else float(str(value))
    except (ValueError, OverflowError):
        raise FovealError(f"bad value {_shown(value)} for '{where}': expected a number") from None


def _to_str(value: Any, where: str) -> str:
    if isinstance(value, (dict, list)):
        raise FovealError(f"bad value {_shown(value)} for '{where}': expected a string")
    return str(value)


_SCALARS: dict[Any, Callable[[Any, str], Any]] = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _range_of(hint: Any, value: Any) -> Range | None:
    """The Range a field's annotation names, else the default for ``value``'s type; None for non-numbers."""
    if get_origin(hint) is Annotated:
        found = [m for m in hint.__metadata__ if isinstance(m, Range)]
        if found:
            return found[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return _DEFAULT_INT if isinstance(value, int) else NON_NEGATIVE


def check_value(hint: Any, value: Any, where: str, default: Any = None) -> None:
    """Refuse a number (or a tuple item) outside the field's range, or NaN / infinity, naming the key and the fix."""
    items = value if isinstance(value, (tuple, list)) else (value,)
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            continue
        allowed = _range_of(hint, item)
        if allowed is None:
            continue
        finite = math.isfinite(item)
        if finite and item in allowed and not (isinstance(item, int) and abs(item) > _INT_MAX):
            continue
        kind = "an integer" if isinstance(item, int) else "a number"
        hint_text = (
            f", e.g. {where}={_plain(default)}" if default is not None and default is not dataclasses.MISSING else ""
        )
        reason = "" if finite else " (NaN and infinity are refused)"
        raise FovealError(f"{where}={_plain(value)}: use {kind} {allowed.describe()}{reason}{hint_text}")


def _shown(value: Any) -> str:
    """A short repr of a value from the user's recipe or overrides (deep or long values are abridged)."""
    return reprlib.repr(value)


def _plain(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(_plain(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _field_default(cls: type, name: str) -> Any:
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name == name:
            return f.default
    return None


def check_ranges(cfg: Any, where: str = "") -> None:
    """Check every number of a config tree (built in Python, or loaded) against its field's range."""
    hints = get_type_hints(type(cfg), include_extras=True)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_ranges(value, f"{where}{f.name}.")
        else:
            check_value(hints[f.name], value, f"{where}{f.name}", f.default)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) dict, checking keys, types and ranges."""
    hints = get_type_hints(cls)
    ranged = get_type_hints(cls, include_extras=True)
    valid = _field_names(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in valid:
            raise _unknown_key(key, valid, where)
        kwargs[key] = _coerce(value, hints[key], f"{where}{key}")
        check_value(ranged[key], kwargs[key], f"{where}{key}", _field_default(cls, key))
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


def check_data_keys(data: Any, bundled: tuple[str, ...], kinds: str) -> None:
    """FovealError naming the key when ``data.train`` or ``data.val`` of a training config is neither a bundled
    dataset (``bundled``) nor an existing path; ``kinds`` says what else the key takes ("a folder of ...")."""
    for key in ("train", "val"):
        value = getattr(data, key, None)
        if value is None or str(value) in bundled or Path(str(value)).expanduser().exists():
            continue
        raise FovealError(f"data.{key}={value} does not exist: set data.{key} to {', '.join(bundled)}, {kinds}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning every failure into a clear FovealError."""
    p = Path(path)
    if not p.is_file():
        raise FovealError(f"config file not found: {p} (pass an existing YAML file, e.g. configs/classify_cpu.yaml)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FovealError(f"cannot read config file {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise FovealError(
            f"config file {p} is not UTF-8 text (byte {exc.start} is not): pass a YAML recipe such as "
            "configs/classify_cpu.yaml"
        ) from None
    except yaml.YAMLError as exc:
        raise FovealError(f"config file {p} is not valid YAML: {exc}".splitlines()[0]) from None
    except RecursionError:
        raise FovealError(
            f"config file {p} nests its lists or mappings too deeply to be a recipe: a recipe is sections of "
            "key: value lines (see configs/classify_cpu.yaml)"
        ) from None
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


def recipe_path(name: str | None, task: str) -> Path | None:
    """A config path as given, or the name of a bundled recipe such as ``classify_cpu`` (None stays None).

    Raises:
        FovealError: neither a file nor a bundled recipe; the message lists the bundled recipes of ``task``.
    """
    if name is None:
        return None
    p = Path(name)
    if p.exists():
        return p
    bundled = CONFIG_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    if bundled.is_file():
        return bundled
    recipes = ", ".join(sorted(f.stem for f in CONFIG_DIR.glob(f"{task}_*.yaml")))
    raise FovealError(f"config file not found: {name} (give a YAML path or a bundled recipe: {recipes})")
