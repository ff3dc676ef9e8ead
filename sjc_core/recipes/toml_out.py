"""Write plain data (dicts, lists, scalars) as TOML, for resolved recipes.

tomllib only reads. ``None`` values are left out: TOML has no null, and leaving a key out
restores its default. Why not tomli-w (measured on the 27 shipped recipes): it writes every
array one item per line and ``[[losses]]`` as inline tables among the top-level keys, so
``sjc validate``'s output and each run's recipe.toml grow from 1735 to 1839 lines and no
longer look like the recipes users write; this emitter keeps that layout and is checked
by round-trip tests (every shipped recipe, awkward keys and strings).
"""

from __future__ import annotations

import json
import math
from typing import Any


def dumps(data: dict[str, Any]) -> str:
    """TOML text for ``data``: scalars first, then tables, then arrays of tables."""
    lines: list[str] = []
    _table(data, [], lines)
    return "\n".join(lines).strip() + "\n"


def _is_table_array(value: Any) -> bool:
    items = [v for v in value if v is not None] if isinstance(value, list) else []
    return bool(items) and all(isinstance(v, dict) for v in items)


def _table(data: dict[str, Any], path: list[str], lines: list[str]) -> None:
    for key, value in data.items():
        if value is None or isinstance(value, dict) or _is_table_array(value):
            continue
        lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in data.items():
        if isinstance(value, dict):
            lines.extend(["", f"[{'.'.join(_key(p) for p in [*path, key])}]"])
            _table(value, [*path, key], lines)
    for key, value in data.items():
        if _is_table_array(value):
            for item in (v for v in value if v is not None):
                lines.extend(["", f"[[{'.'.join(_key(p) for p in [*path, key])}]]"])
                _table(item, [*path, key], lines)


def _key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else _string(key)


def _string(text: str) -> str:
    """A TOML basic string: JSON's escapes are valid TOML; characters outside the BMP stay
    raw (JSON's ASCII form would write surrogate pairs, which TOML rejects); TOML also
    forbids a raw DEL character."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value if v is not None) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
