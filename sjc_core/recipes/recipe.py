"""TOML recipes: pydantic models, ``--set`` overrides, and one-line-per-problem errors.

A recipe names its prior, field and losses; each of those tables is validated by the
plugin's own options model, so a mistake reads ``prior.guidance_scale: Input should be a
valid number`` and every problem in a file is reported at once.

Every value a recipe can hold is checked to be one a machine can honour before anything
runs: numbers are finite (no NaN or Inf), whole numbers are never ``true``/``false``,
switches are never numbers, sizes and counts have upper limits (stated in each field's
description and in the error), names are one folder name, and paths are paths. The value
types below (:data:`Int`, :data:`Float`, :data:`Flag`, :data:`Text`, :data:`Line`,
:data:`PathText`) carry those rules; the core models and every built-in plugin's options
use them, and :func:`validate_recipe` re-checks any plugin's validated values for NaN,
Inf and bool/number coercions, so a third-party model without them cannot let one through.

:func:`~sjc_core.recipes.preflight.check_ready` runs the checks ``sjc run`` would make when
it builds the plugins (folders that must exist, extras that must be installed, weights that
must be present), through each options model's optional ``preflight(ctx)`` method; ``sjc
validate`` calls it. The value types live in :mod:`sjc_core.recipes.values`, the models in
:mod:`sjc_core.recipes.model`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sjc_core.errors import SjcError, shorten
from sjc_core.plugins import Registry
from sjc_core.recipes.error_lines import (
    coercion_problems,
    dotted_key,
    format_errors,
    shown_key,
    with_suggestion,
)
from sjc_core.recipes.estimator_table import TABLE as ESTIMATOR_TABLE
from sjc_core.recipes.estimator_table import (
    choose_estimator,
    estimator_keys,
    resolve_tables,
    switch_estimator,
    without_table,
)
from sjc_core.recipes.model import CameraConfig, PaasConfig, RecipeModel
from sjc_core.recipes.plugin_choice import PluginChoice, validate_plugin
from sjc_core.inputs import MAX_RECIPE_BYTES, read_regular
from sjc_core.recipes.values import MAX_DEPTH, MAX_LOSSES, SetText, error_line

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib



@dataclass(frozen=True)
class Recipe:
    """A fully validated recipe."""

    settings: RecipeModel
    prior: PluginChoice
    field: PluginChoice
    losses: list[PluginChoice]
    base_dir: Path
    source: str = "recipe"  # the file it came from, for error lines
    estimator: PluginChoice | None = None  # [estimator], or PAAS from [paas] (sjc_core.recipes.estimator_table)

    def resolved(self) -> dict[str, Any]:
        """Every value, defaults included, as plain data (what `sjc validate` prints)."""
        data = self.settings.model_dump(mode="json")
        data["prior"] = self.prior.as_table()
        data["field"] = self.field.as_table()
        data["losses"] = [loss.as_table() for loss in self.losses]
        resolve_tables(data, self.estimator)
        return data


PLUGIN_TABLES = {"prior": "priors", "field": "fields"}
UTF8_BOM = b"\xef\xbb\xbf"


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a missing, special or oversized file, a byte order mark, a syntax
    error or absurd nesting is a one-line SjcError."""
    if Path(path).is_dir():
        raise SjcError(f"{path}: is a folder, expected a TOML recipe")
    data = read_regular(Path(path), MAX_RECIPE_BYTES, "a recipe")
    if data.startswith(UTF8_BOM):
        raise SjcError(
            f"{path}: starts with a UTF-8 byte order mark (BOM, bytes EF BB BF), which TOML does not allow; "
            "save it as UTF-8 without BOM"
        )
    try:
        parsed = tomllib.loads(data.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SjcError(f"{path}: TOML syntax error: {exc}") from None
    except RecursionError:
        raise SjcError(f"{path}: tables or arrays nested too deeply (at most {MAX_DEPTH} levels)") from None
    except (UnicodeDecodeError, ValueError) as exc:  # ValueError: a number past Python's 4300 digits
        raise SjcError(f"{path}: cannot read: {exc}") from None
    check_depth(parsed, str(path))
    return parsed


def check_depth(data: Any, source: str, limit: int = MAX_DEPTH) -> None:
    """Refuse tables and arrays nested deeper than ``limit`` (no recursion: any depth is safe)."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:
        node, where = stack.pop()
        if len(where) > limit:
            parts = list(where)
            while len(parts) > 1 and parts[-1].isdigit():  # an array in an array...: name the key that holds it
                parts.pop()
            dotted = dotted_key(tuple(parts[:8])) + (".…" if len(parts) > 8 else "")
            raise SjcError(f"{source}: {dotted}: tables or arrays nested more than {limit} levels deep")
        if isinstance(node, dict):
            stack.extend((value, (*where, str(key))) for key, value in node.items())
        elif isinstance(node, list):
            stack.extend((value, (*where, str(index))) for index, value in enumerate(node))


def load_recipe(
    path: str | Path, registry: Registry, overrides: list[str] | None = None, base_dir: Path | None = None
) -> Recipe:
    """Read, override and validate a recipe file.

    Relative paths inside it resolve against ``base_dir``: by default the file's folder; a
    run folder's saved copy passes the original recipe's folder instead.
    """
    path = Path(path)
    raw = read_toml(path)
    for assignment in overrides or []:
        apply_override(raw, assignment)
    return validate_recipe(raw, registry, base_dir=base_dir or path.resolve().parent, source=str(path))


def parse_value(text: str) -> Any:
    """The value of ``--set KEY=TEXT``, typed by the recipe's models.

    TOML arrays, inline tables and quoted strings are parsed (``[30, 60]``); any other text
    is kept as typed, marked :class:`~sjc_core.recipes.values.SetText`, and the model
    converts it, so ``12`` becomes an int for ``steps`` but stays the string "12" for
    ``name``, and ``abc`` for ``steps`` is a validation error. A quoted ``"12"`` stays a plain
    string, which no number field accepts (as in a file). Numbers past the parser's limits
    are refused as in a file.
    """
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return SetText(text)
    except RecursionError:
        raise SjcError(f"--set value {shorten(text)}: arrays nested too deeply (at most {MAX_DEPTH} levels)") from None
    except ValueError as exc:  # an integer past Python's 4300-digit limit
        raise SjcError(f"--set value {shorten(text)}: cannot read: {error_line(exc)}") from None
    check_depth(value, f"--set value {shorten(text)}")
    return value if isinstance(value, (str, list, dict)) else SetText(text)


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b=value`` to the raw recipe.

    Losses are addressed by position (``losses.0.weight``) or by plugin name
    (``losses.emptiness.weight``); naming a loss the recipe lacks adds it.
    """
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise SjcError(f"--set {shorten(assignment)}: expected KEY=VALUE, e.g. --set prior.guidance_scale=50")
    parts = key.split(".")
    if len(parts) > MAX_DEPTH:
        raise SjcError(f"--set {shorten(key)}: more than {MAX_DEPTH} levels")
    shown = shown_key(key)
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, shown_key(".".join(parts[: depth + 1])))
        else:
            child = node.get(part)
            if child is None:
                child = [] if part == "losses" and depth == 0 else {}
                node[part] = child
            if not isinstance(child, (dict, list)):
                raise SjcError(f"--set {shown}: '{shown_key('.'.join(parts[: depth + 1]))}' is a value, not a table")
            node = child
    last = parts[-1]
    if isinstance(node, list):
        raise SjcError(f"--set {shown}: name a key inside the loss, e.g. {shown}.weight=1")
    value = parse_value(text.strip())
    if parts == [ESTIMATOR_TABLE, "name"]:  # switching estimator drops the other one's options
        switch_estimator(raw, value)
        node = raw[ESTIMATOR_TABLE]
    node[last] = value


def _list_item(items: list[Any], part: str, where: str) -> dict[str, Any]:
    if part.isdigit():
        index = int(part)
        if index >= len(items):
            raise SjcError(f"--set {where}: the recipe has {len(items)} entries there")
        if not isinstance(items[index], dict):
            raise SjcError(f"--set {where}: is a value, not a table")
        return items[index]
    for item in items:
        if isinstance(item, dict) and item.get("name") == part:
            return item
    items.append({"name": part})
    return items[-1]


def validate_recipe(raw: dict[str, Any], registry: Registry, base_dir: Path, source: str = "recipe") -> Recipe:
    """Validate the top level and every plugin table, collecting all problems."""
    check_depth(raw, source)
    problems: list[str] = []
    settings: RecipeModel | None = None
    try:
        settings = RecipeModel.model_validate(without_table(raw))
    except ValidationError as exc:
        problems.extend(format_errors(exc, RecipeModel))
    else:  # the plugin tables are checked by their own models below
        own = {key: value for key, value in without_table(raw).items() if key not in ("prior", "field", "losses")}
        problems.extend(coercion_problems(own, settings, ""))
    estimator, settings = choose_estimator(raw, settings, registry, problems)

    choices: dict[str, PluginChoice | None] = {}
    for table, kind in PLUGIN_TABLES.items():
        value = raw.get(table, {"name": "voxel"} if table == "field" else None)
        if isinstance(value, dict):
            choices[table] = validate_plugin(value, kind, table, registry, problems)
    losses: list[PluginChoice] = []
    raw_losses = raw.get("losses", [])
    if isinstance(raw_losses, list) and len(raw_losses) <= MAX_LOSSES:
        for index, table in enumerate(raw_losses):
            if isinstance(table, dict):
                choice = validate_plugin(table, "losses", f"losses.{index}", registry, problems)
                if choice is not None:
                    losses.append(choice)

    if problems:
        keys = known_keys(raw, registry, choices)
        problems = [with_suggestion(problem, keys) for problem in problems]
    if problems or settings is None:
        raise SjcError(*(f"{source}: {p}" for p in problems))
    prior, field = choices.get("prior"), choices.get("field")
    assert prior is not None and field is not None
    return Recipe(settings=settings, prior=prior, field=field, losses=losses, base_dir=base_dir, source=source,
                  estimator=estimator)


def known_keys(raw: dict[str, Any], registry: Registry, choices: dict[str, PluginChoice | None] | None = None) -> list[str]:
    """Every dotted key this recipe could set: top level, camera.*, paas.*, and its plugins' options."""
    keys = [name for name in RecipeModel.model_fields if name not in ("camera", "paas")]
    keys += [f"camera.{name}" for name in CameraConfig.model_fields]
    keys += [f"paas.{name}" for name in PaasConfig.model_fields] + estimator_keys(raw, registry)
    tables: list[tuple[str, str, Any]] = [(table, kind, raw.get(table)) for table, kind in PLUGIN_TABLES.items()]
    if not isinstance(raw.get("field"), dict):
        tables[1] = ("field", "fields", {"name": "voxel"})
    raw_losses = raw.get("losses")
    if isinstance(raw_losses, list):
        tables += [(f"losses.{i}", "losses", t) for i, t in enumerate(raw_losses[:MAX_LOSSES])]
    for where, kind, table in tables:
        name = table.get("name") if isinstance(table, dict) else None
        info = registry.entries.get((kind, name)) if isinstance(name, str) else None
        if info is not None:
            keys += [f"{where}.{option}" for option in info.options.model_fields]
    return keys
