"""Options declared as dataclass fields: default, check and documentation in one place, the rest derived.

A class of options (:class:`~delve.tracking.parameters.TrackerConfig`) makes
each field with :func:`option`. From the fields alone come a call signature
(:func:`signature_of`), the numpy-style *Parameters* section of a docstring
(:func:`parameters_section`) and the checked instance (:func:`bind`,
:func:`build`).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import field
from typing import Any, TypeVar

__all__ = ["Check", "option", "signature_of", "parameters_section", "bind", "build"]

T = TypeVar("T")

Check = Callable[[str, Any], Any]


def option(default: Any, doc: str, check: Check | None = None, shown: str = "") -> Any:
    """A tracker parameter: its default, its documentation and its check, as one dataclass field.

    Parameters
    ----------
    default : object
        The value when the argument is not given.
    doc : str
        What it means (reStructuredText, one paragraph per blank line).
    check : callable, optional
        ``check(name, value) -> value``: raises ``ValueError`` naming the
        accepted values, returns the value in its canonical form.
    shown : str
        The type as the documentation shows it (``"int"``).
    """
    return field(default=default, metadata={"doc": doc, "check": check, "shown": shown}, compare=False)


def signature_of(cls: type, required: Sequence[str] = ()) -> inspect.Signature:
    """A signature with one positional-or-keyword parameter per field, defaults included (``required`` have none)."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Signature(
        [
            inspect.Parameter(f.name, kind, default=inspect.Parameter.empty if f.name in required else f.default)
            for f in dataclasses.fields(cls)
        ]
    )


def parameters_section(cls: type, indent: str = "    ", width: int = 100) -> str:
    """The numpy-style *Parameters* section for the fields of ``cls``, indented for a class docstring.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Options:
    ...     size: int = option(3, "How many.", shown="int")
    >>> print(parameters_section(Options, indent=""))
    Parameters
    ----------
    size : int
        How many.
    """
    lines = ["Parameters", "----------"]
    for f in dataclasses.fields(cls):
        lines.append(f"{f.name} : {f.metadata['shown']}")
        lines.extend(f"    {line}" for line in _wrap(f.metadata["doc"], width))
    return "\n".join(indent + line if line else "" for line in lines)


def bind(signature: inspect.Signature, args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments of a call, defaults filled in; ``TypeError`` for an argument the signature lacks."""
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def build(cls: Callable[..., T], arguments: dict[str, Any]) -> T:
    """An instance of ``cls`` from ``arguments``, each checked by its field's check first."""
    checked = dict(arguments)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        check = f.metadata["check"]
        if check is not None:
            checked[f.name] = check(f.name, checked[f.name])
    return cls(**checked)


def _wrap(text: str, width: int) -> list[str]:
    """``text`` as lines of at most ``width`` characters (words are not broken)."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        lines.append(current)
    return lines
