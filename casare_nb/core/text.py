"""Text that can be stored: Python strings may hold lone surrogates (``json.loads`` makes
one from ``"\\ud800"``), which no UTF-8 store, file or frame can hold. Every edge refuses
them (:func:`unicode_problem`); the stores replace any that slip through
(:func:`storable`), so one bad string can never poison a write."""

from __future__ import annotations

from typing import Any

__all__ = ["storable", "unicode_problem"]


def unicode_problem(value: Any, where: str = "$") -> str | None:
    """The JSON path of the first string (value or key) in ``value`` that is not valid
    Unicode (a lone surrogate), or None. Walks dicts, lists and tuples."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if not _valid(item):
                return path
        elif isinstance(item, dict):
            for key, inner in item.items():
                if isinstance(key, str) and not _valid(key):
                    return f"{path} (a key)"
                stack.append((inner, f"{path}.{key}"))
        elif isinstance(item, list | tuple):
            stack.extend((inner, f"{path}[{i}]") for i, inner in enumerate(item))
    return None


def storable(text: str) -> str:
    """``text`` with any lone surrogate replaced by its backslash escape (``\\ud800``)."""
    if _valid(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _valid(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
