"""Checks of the Python API's arguments (:mod:`foveal.api`): a value of the wrong type or out of range is a
:class:`~foveal.errors.FovealError` that names the argument, what was passed and what to pass, before any work starts.

Each check returns the value in the form the code below it takes (a ``Path``, an ``int``, a ``float`` tuple).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from foveal.errors import FovealError


def _shown(value: Any) -> str:
    """``value``'s repr, cut short, with its type when the repr does not say it."""
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    if isinstance(value, (str, int, float, bool, list, tuple, dict, type(None))):
        return text
    return f"{text} (a {type(value).__name__})"


def path(value: Any, name: str, example: str) -> Path:
    """A path given as ``str`` or ``os.PathLike`` (an empty string is refused: it would mean the current folder)."""
    if isinstance(value, str | os.PathLike) and not isinstance(value, bytes):
        text = os.fspath(value)
        if isinstance(text, str) and text.strip():
            return Path(text)
        if isinstance(text, str):
            raise FovealError(f"{name}={value!r} is an empty path: pass a path, e.g. {example}")
    raise FovealError(f"{name}={_shown(value)} is not a path: pass a str or pathlib.Path, e.g. {example}")


def optional_path(value: Any, name: str, example: str) -> Path | None:
    """None, or a path as :func:`path` checks it."""
    return None if value is None else path(value, name, example)


def device(value: Any, name: str = "device") -> Any:
    """A device named by a ``str`` or a ``torch.device`` (None: the caller's default)."""
    import torch

    if value is None or isinstance(value, str | torch.device):
        return value
    hint = " (one device: a model runs on one)" if isinstance(value, list | tuple) else ""
    raise FovealError(
        f"{name}={_shown(value)} is not a device{hint}: pass 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device"
    )


def integer(value: Any, name: str, low: int, example: str) -> int:
    """An ``int`` (numpy integers too; not a bool, a float or a string) of at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise FovealError(f"{name}={_shown(value)} is not an integer: pass a whole number, e.g. {example}")
    if value < low:
        raise FovealError(f"{name}={value} is too small: pass an integer of at least {low}, e.g. {example}")
    return int(value)


def optional_integer(value: Any, name: str, low: int, example: str) -> int | None:
    """None, or an integer as :func:`integer` checks it."""
    return None if value is None else integer(value, name, low, example)


def number(value: Any, name: str, example: str) -> float:
    """A finite real number (``int`` or ``float``, numpy's too; not a bool or a string); its range is checked where
    it is used."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FovealError(f"{name}={_shown(value)} is not a number: pass one, e.g. {example}")
    if not math.isfinite(value):
        raise FovealError(f"{name}={value}: pass a finite number, e.g. {example}")
    return float(value)


def optional_number(value: Any, name: str, example: str) -> float | None:
    """None, or a number as :func:`number` checks it."""
    return None if value is None else number(value, name, example)


def numbers_of(value: Any, name: str, example: str) -> tuple[float, ...] | None:
    """None, one number, or a sequence of numbers (not a string, whose characters would pass for digits)."""
    if value is None:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return (number(value, name, example),)
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise FovealError(f"{name}={_shown(value)} is not a list of numbers: pass one, e.g. {example}")
    return tuple(number(v, name, example) for v in value)


def flag(value: Any, name: str) -> bool:
    """``True`` or ``False`` (numpy's too); a string such as ``"no"`` would count as true, so it is refused."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise FovealError(f"{name}={_shown(value)} is not True or False: pass {name}=True or {name}=False")


def text(value: Any, name: str, choices: Sequence[str] | None = None) -> str:
    """A ``str`` (``choices`` are named when it is not; which values are valid is checked where it is used)."""
    if not isinstance(value, str):
        hint = f"one of {', '.join(repr(c) for c in choices)}" if choices else "a str"
        raise FovealError(f"{name}={_shown(value)} is not text: pass {hint}")
    return value


def optional_text(value: Any, name: str, choices: Sequence[str] | None = None) -> str | None:
    """None, or text as :func:`text` checks it."""
    return None if value is None else text(value, name, choices)
