"""A plugin table of a recipe (``[prior]``, ``[field]``, ``[[losses]]``, ``[estimator]``)
validated by the plugin's own options model: which plugin, with its validated options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from sjc_core.errors import SjcError, shorten
from sjc_core.plugins import SINGULAR, PluginInfo, Registry
from sjc_core.recipes.error_lines import coercion_problems, format_errors
from sjc_core.recipes.values import error_line


@dataclass(frozen=True)
class PluginChoice:
    """A plugin table after validation: which plugin, with its validated options."""

    info: PluginInfo
    options: BaseModel

    def as_table(self) -> dict[str, Any]:
        return {"name": self.info.name, **self.options.model_dump(mode="json")}


def validate_plugin(
    table: dict[str, Any], kind: str, where: str, registry: Registry, problems: list[str]
) -> PluginChoice | None:
    name = table.get("name")
    if not isinstance(name, str) or not name:
        known = ", ".join(registry.names(kind)) or "none installed"
        got = f" (got {shorten(name)})" if name is not None else ""
        problems.append(f"{where}.name: required: the {SINGULAR[kind]} plugin to use (known: {known}){got}")
        return None
    try:
        info = registry.get(kind, name, where=f"{where}.name")
    except SjcError as exc:
        problems.extend(exc.problems)
        return None
    options = {k: v for k, v in table.items() if k != "name"}
    try:
        validated = info.options.model_validate(options)
    except ValidationError as exc:
        problems.extend(format_errors(exc, info.options, prefix=f"{where}."))
        return None
    except (TypeError, ValueError, RecursionError) as exc:  # a plugin validator that raised something else
        problems.append(f"{where}: invalid options: {error_line(exc)}")
        return None
    found = coercion_problems(options, validated, f"{where}.")
    if found:
        problems.extend(found)
        return None
    return PluginChoice(info=info, options=validated)
