"""A recipe's ``[estimator]`` table, and ``[paas]`` as its legacy spelling.

The rules (the README states them for users):

- ``[estimator]`` names an estimator plugin (``paas``, ``sds``, ``ism`` or a third party's)
  and carries its options, validated by that plugin's model like ``[prior]``.
- ``[paas]`` is the legacy spelling of ``[estimator] name = "paas"``: a recipe with a
  ``[paas]`` table, or with neither table, runs PAAS exactly as before.
- Giving both tables is an error (one line): they would say the same thing twice, or
  contradict each other.
- ``--set estimator.name=NAME`` switches estimator on any recipe (a shipped one's ``[paas]``
  included): the other estimator's options are dropped, NAME starts from its defaults, and
  later ``--set estimator.KEY=VALUE`` apply to it (:func:`switch_estimator`).
- PAAS is the engine's default, so it is known even when ``SJC_PLUGINS`` hides the
  built-in plugins; the resolved recipe (``sjc validate``, a run's ``recipe.toml``) always
  spells it ``[paas]``, and every other estimator ``[estimator]``.

Kept apart from :mod:`sjc_core.recipes.recipe`, which calls in here from ``validate_recipe``,
``known_keys`` and ``Recipe.resolved``.
"""

from __future__ import annotations

from dataclasses import replace
from importlib import metadata
from typing import Any

from sjc_core.plugins import ImportedFactory, PluginInfo, Registry
from sjc_core.recipes.model import PaasConfig, RecipeModel
from sjc_core.recipes.plugin_choice import PluginChoice, validate_plugin

TABLE = "estimator"
LEGACY_TABLE = "paas"
DEFAULT = "paas"
KIND = "estimators"
PAAS_DESCRIPTION = (
    "SJC's perturb-and-average scoring (Eq. 15/16) on a random or annealed sigma schedule (default); "
    "guidance is the prior's own, in its convention (stable-diffusion: uncond + s (cond - uncond))"
)


# The ``paas`` factory: imports the estimator (and torch) on first use; named by module, so the
# recipe layer does not import the training package that sits above it.
build_paas_lazily = ImportedFactory("sjc_core.training.paas", "build_paas")


def paas_info(registry: Registry) -> PluginInfo:
    """The registered ``paas`` estimator, or the core's own entry when plugins are restricted."""
    found = registry.entries.get((KIND, DEFAULT))
    if found is not None:
        return found
    try:
        version = metadata.version("sjc")
    except metadata.PackageNotFoundError:  # a source tree that is not installed
        version = ""
    return PluginInfo(
        kind=KIND, name=DEFAULT, factory=build_paas_lazily, description=PAAS_DESCRIPTION, options=PaasConfig,
        distribution="sjc", version=version, module="sjc_core.training.paas",
    )


def with_paas(registry: Registry) -> Registry:
    """``registry``, with the core's ``paas`` added when the plugins did not register it."""
    if (KIND, DEFAULT) in registry.entries:
        return registry
    return replace(registry, entries={**registry.entries, (KIND, DEFAULT): paas_info(registry)})


def switch_estimator(raw: dict[str, Any], name: Any) -> None:
    """Before ``--set estimator.name=NAME`` is applied: make ``raw`` hold one ``[estimator]``
    table for NAME. The current estimator's options carry over only when it is NAME (for
    ``paas``, from the legacy table); another estimator's would be unknown keys to NAME."""
    legacy = raw.pop(LEGACY_TABLE, None)
    current = raw.get(TABLE) or None  # the empty table that applying the key has just made counts as none
    if isinstance(current, dict) and current.get("name", DEFAULT) == name:
        return
    if name == DEFAULT and isinstance(legacy, dict) and current is None:
        raw[TABLE] = {"name": DEFAULT, **legacy}
        return
    raw[TABLE] = {"name": name}


def without_table(raw: dict[str, Any]) -> dict[str, Any]:
    """The recipe's top level without ``[estimator]`` (checked here, not by RecipeModel)."""
    return {key: value for key, value in raw.items() if key != TABLE}


def pick_estimator(
    raw: dict[str, Any], paas: Any, registry: Registry, problems: list[str]
) -> PluginChoice | None:
    """The estimator a recipe's tables name, its problems appended as lines (None when any).

    ``paas`` is the recipe's validated ``[paas]`` table (its defaults when absent; None
    when it failed to validate): PAAS with those options when there is no ``[estimator]``.
    """
    if TABLE not in raw:
        return None if paas is None else PluginChoice(info=paas_info(registry), options=paas)
    if LEGACY_TABLE in raw:
        problems.append(
            f'{TABLE}: give [{TABLE}] or the legacy [{LEGACY_TABLE}] table, not both ([{LEGACY_TABLE}] means '
            f'[{TABLE}] name = "{DEFAULT}"); move the [{LEGACY_TABLE}] keys into [{TABLE}] or delete it'
        )
        return None
    table = raw[TABLE]
    if not isinstance(table, dict):
        problems.append(f"{TABLE}: expected a table: [{TABLE}] with name = ESTIMATOR and its options")
        return None
    return validate_plugin(table, KIND, TABLE, with_paas(registry), problems)


def choose_estimator(
    raw: dict[str, Any], settings: RecipeModel | None, registry: Registry, problems: list[str]
) -> tuple[PluginChoice | None, RecipeModel | None]:
    """:func:`pick_estimator` for a recipe, and its settings, whose ``paas`` then mirrors a
    PAAS estimator's options (code that reads ``settings.paas`` sees what runs)."""
    choice = pick_estimator(raw, settings.paas if settings is not None else None, registry, problems)
    if choice is not None and settings is not None and choice.info.name == DEFAULT:
        settings = settings.model_copy(update={LEGACY_TABLE: choice.options})
    return choice, settings


def estimator_keys(raw: dict[str, Any], registry: Registry) -> list[str]:
    """``estimator.*`` keys the recipe could set (for "did you mean" hints)."""
    table = raw.get(TABLE)
    name = table.get("name") if isinstance(table, dict) else None
    info = with_paas(registry).entries.get((KIND, name)) if isinstance(name, str) else None
    return [f"{TABLE}.name"] + ([f"{TABLE}.{option}" for option in info.options.model_fields] if info else [])


def resolve_tables(data: dict[str, Any], choice: PluginChoice | None) -> None:
    """Spell the estimator in resolved data: PAAS as ``[paas]`` (as before), others as ``[estimator]``."""
    if choice is None or choice.info.name == DEFAULT:
        return
    data.pop(LEGACY_TABLE, None)
    data[TABLE] = choice.as_table()


def estimator_of(recipe: Any) -> PluginChoice:
    """A recipe's estimator choice (PAAS from ``settings.paas`` for a Recipe built without one)."""
    choice = getattr(recipe, "estimator", None)
    if choice is not None:
        return choice
    return PluginChoice(info=paas_info(Registry()), options=recipe.settings.paas)
