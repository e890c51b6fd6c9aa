"""Argument checks shared by every public entry point: early, clear, naming the accepted values.

Each helper raises :class:`ValueError` with the argument's name, what is
accepted and what was given, and returns the value in its canonical type
(numpy integers and floats from configuration code are accepted as numbers).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import torch

__all__ = [
    "check_int",
    "check_optional_int",
    "check_fraction",
    "check_positive",
    "check_number",
    "check_choice",
    "check_device",
]


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(argument: str, value: object, minimum: int | None = None, description: str | None = None) -> int:
    """``value`` as an int, at least ``minimum``; ``description`` words the requirement in the message.

    Examples
    --------
    >>> check_int("log_interval", 3, minimum=1)
    3
    >>> check_int("log_interval", 0, minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: log_interval must be an int >= 1, got 0
    """
    if not _is_int(value) or (minimum is not None and value < minimum):  # type: ignore[operator]
        requirement = description or ("an int" if minimum is None else f"an int >= {minimum}")
        raise ValueError(f"{argument} must be {requirement}, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def check_optional_int(argument: str, value: object, minimum: int | None = None) -> int | None:
    """``None``, or ``value`` as an int of at least ``minimum``.

    Examples
    --------
    >>> check_optional_int("max_samples", None) is None
    True
    >>> check_optional_int("max_samples", -1, minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: max_samples must be an int >= 1 or None, got -1
    """
    if value is None:
        return None
    requirement = ("an int" if minimum is None else f"an int >= {minimum}") + " or None"
    return check_int(argument, value, minimum, requirement)


def check_number(argument: str, value: object, minimum: float | None = None) -> float:
    """``value`` as a float, finite and at least ``minimum``.

    Examples
    --------
    >>> check_number("tau", 0.025, minimum=0)
    0.025
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value) == float(value)
    if not ok or (minimum is not None and float(value) < minimum):  # type: ignore[arg-type]
        floor = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{argument} must be a number{floor}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_fraction(argument: str, value: object) -> float:
    """``value`` as a float in ``(0, 1]``, the range of a share of variance.

    Examples
    --------
    >>> check_fraction("sat_threshold", 0.99)
    0.99
    >>> check_fraction("sat_threshold", 1.5)
    Traceback (most recent call last):
    ...
    ValueError: sat_threshold must lie in (0, 1], got 1.5
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{argument} must lie in (0, 1], got {value!r}")
    return float(value)


def check_positive(argument: str, value: object) -> float:
    """``value`` as a finite float above zero.

    Examples
    --------
    >>> check_positive("max_overhead", 0.05)
    0.05
    >>> check_positive("max_overhead", 0)
    Traceback (most recent call last):
    ...
    ValueError: max_overhead must be a number > 0, got 0
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 < float(value) < float("inf")
    if not ok:
        raise ValueError(f"{argument} must be a number > 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_choice(argument: str, value: object, accepted: Iterable[Any]) -> Any:
    """``value`` when it is one of ``accepted``.

    Examples
    --------
    >>> check_choice("conv_method", "mean", ("channelwise", "mean"))
    'mean'
    >>> check_choice("conv_method", "avg", ("channelwise", "mean"))
    Traceback (most recent call last):
    ...
    ValueError: conv_method must be one of 'channelwise', 'mean'; got 'avg'
    """
    choices = tuple(accepted)
    if value not in choices:
        raise ValueError(f"{argument} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_device(argument: str, value: object) -> torch.device | None:
    """``None``, or ``value`` as a :class:`torch.device`.

    Examples
    --------
    >>> check_device("device", "cpu")
    device(type='cpu')
    """
    if value is None:
        return None
    try:
        return torch.device(value)  # type: ignore[call-overload]
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{argument} {value!r} is not a valid torch device: {error}") from error
