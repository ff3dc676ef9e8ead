"""One line per problem: pydantic's validation errors as ``dotted.path: message`` lines,
values a model coerced that a recipe must not hold, and the nearest valid key for an
unknown one. Used by :mod:`sjc_core.recipes.recipe`."""

from __future__ import annotations

import difflib
import math
from typing import Any

from pydantic import BaseModel, ValidationError

from sjc_core.errors import ECHO_LIMIT, did_you_mean, shorten
from sjc_core.recipes.values import _control_character, one_line


def coercion_problems(raw: Any, model: BaseModel, prefix: str) -> list[str]:
    """What a lax options model let through that no run can use, one line each.

    The built-in models never get here (their value types refuse these); a plugin whose
    model uses plain ``float``/``int``/``bool`` would otherwise turn ``true`` into 1, 1
    into ``true``, or keep NaN and Inf.
    """
    found: list[str] = []

    def walk(given: Any, kept: Any, where: str) -> None:
        if isinstance(given, dict) and isinstance(kept, dict):
            for key, value in given.items():
                if key in kept:
                    walk(value, kept[key], f"{where}.{key}" if where else str(key))
        elif isinstance(given, (list, tuple)) and isinstance(kept, (list, tuple)) and len(given) == len(kept):
            for index, (value, out) in enumerate(zip(given, kept)):
                walk(value, out, f"{where}.{index}")
        elif isinstance(given, bool) and isinstance(kept, (int, float)) and not isinstance(kept, bool):
            found.append(f"{prefix}{where}: Input should be a valid number, not true or false (got {shorten(given)})")
        elif isinstance(given, (int, float)) and not isinstance(given, bool) and isinstance(kept, bool):
            found.append(f"{prefix}{where}: Input should be a valid boolean: true or false (got {shorten(given)})")
        elif isinstance(kept, float) and not math.isfinite(kept):
            found.append(f"{prefix}{where}: Input should be a finite number (got {shorten(given)})")

    walk(raw, model.model_dump(mode="python"), "")
    return found


def format_errors(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per pydantic error: dotted path, message, and a hint for unknown keys.

    A model validator's message that starts with one of the model's fields (``"sigma_min:
    ..."``) is reported at that field. Echoed values are cut to :data:`ECHO_LIMIT` characters.
    """
    lines = []
    seen: set[str] = set()
    for error in exc.errors(include_url=False):
        loc = [shown_key(str(part)) for part in error["loc"]]
        kind = error["type"]
        if kind == "extra_forbidden":
            known = _fields_at(model, error["loc"][:-1])
            path = _join(prefix, loc)
            line = f"{path}: unknown key{did_you_mean(loc[-1], known)}"
        elif kind == "missing":
            line = f"{_join(prefix, loc)}: required key missing"
        else:
            message = error["msg"].removeprefix("Value error, ")
            head, sep, rest = message.partition(": ")
            if sep and head in _fields_at(model, error["loc"]):
                loc, message = [*loc, head], rest
            value = error.get("input")
            got = f" (got {shorten(value)})" if isinstance(value, (str, int, float, bool)) and value is not None else ""
            line = f"{_join(prefix, loc)}: {one_line(message)}{got}"
        if line not in seen:  # a union reports each member; once is enough
            seen.add(line)
            lines.append(line)
    return lines


def _join(prefix: str, loc: list[str]) -> str:
    if loc:
        return prefix + ".".join(loc)
    return prefix.rstrip(".") or "recipe"


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model at ``loc``, for 'did you mean' hints."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        info = current.model_fields.get(str(part))
        if info is None:
            return []
        current = info.annotation
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def dotted_key(parts: tuple[str, ...]) -> str:
    return ".".join(shown_key(part) for part in parts)


def suggest_key(dotted: str, keys: list[str]) -> str | None:
    """The valid dotted key nearest to ``dotted``: the same last part elsewhere first, then spelling."""
    leaf = dotted.rsplit(".", 1)[-1]
    same_leaf = [key for key in keys if key.rsplit(".", 1)[-1] == leaf and key != dotted]
    if same_leaf:
        return min(same_leaf, key=lambda key: (key.count("."), key))
    close = difflib.get_close_matches(dotted, keys, n=1, cutoff=0.75)
    return close[0] if close and close[0] != dotted else None


def with_suggestion(problem: str, keys: list[str]) -> str:
    """An 'unknown key' line without a hint gets the nearest valid dotted key anywhere."""
    path, sep, message = problem.partition(": ")
    if sep and message == "unknown key":
        suggestion = suggest_key(path, keys)
        if suggestion:
            return f"{path}: unknown key (did you mean '{suggestion}'?)"
    return problem


def shown_key(key: str) -> str:
    """A dotted key as it may appear in an error line: printable and not too long."""
    if len(key) <= ECHO_LIMIT and _control_character(key) is None:
        return key
    return shorten(key)
