"""Where ``sjc sample`` gets its prior and estimator: a recipe, or a prior named on the command line.

Split from :mod:`sjc_core.commands.sample` (which draws and writes the images). Both ways
take the recipe's ``--set`` keys and end in a fully validated :class:`Setup`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

SAMPLER = "karras"  # the one --method that is not an estimator
STANDALONE_KEYS = ("prior", "paas", "estimator")


@dataclass
class Setup:
    """What to sample from: the prior's table, the estimator, and where relative paths start."""

    prior_table: dict[str, Any]
    info: Any  # PluginInfo
    options: Any  # the prior's validated options model
    estimator: Any  # PluginChoice of the ascent's estimator (None for karras)
    base_dir: Path
    seed: int | None
    device: str
    source: str


def from_recipe(path: Path, sets: list[str], reg: Any, method: str) -> Setup:
    from sjc_core.recipes.recipe import apply_override, read_toml, validate_recipe

    raw = read_toml(path)
    for assignment in sets:
        apply_override(raw, assignment)
    _method_tables(raw, method, sets)
    loaded = validate_recipe(raw, reg, base_dir=path.resolve().parent, source=str(path))
    _check_prior(loaded.prior.options, loaded.base_dir, str(path))
    return Setup(
        prior_table=loaded.prior.as_table(),
        info=loaded.prior.info,
        options=loaded.prior.options,
        estimator=loaded.estimator if method != SAMPLER else None,
        base_dir=loaded.base_dir,
        seed=loaded.settings.seed,
        device=loaded.settings.device,
        source=str(path),
    )


def standalone(name: str, sets: list[str], reg: Any, method: str) -> Setup:
    """A prior named on the command line, with prior.*, estimator.* and paas.* overrides, fully validated."""
    from pydantic import ValidationError

    from sjc_core.errors import SjcError, did_you_mean
    from sjc_core.recipes.error_lines import format_errors
    from sjc_core.recipes.estimator_table import pick_estimator
    from sjc_core.recipes.model import PaasConfig
    from sjc_core.recipes.recipe import apply_override

    raw: dict[str, Any] = {"prior": {"name": name}}
    for assignment in sets:
        apply_override(raw, assignment)
    _method_tables(raw, method, sets)
    problems = []
    for key in raw:
        if key not in STANDALONE_KEYS:
            hint = did_you_mean(key, STANDALONE_KEYS)
            problems.append(
                f"{key}: unknown key{hint} (with --prior, --set takes prior.KEY=VALUE, estimator.KEY=VALUE or paas.KEY=VALUE)"
            )
    table = raw.get("prior")
    info = options = None
    if not isinstance(table, dict):
        problems.append("prior: expected a table; set its keys as prior.KEY=VALUE")
    else:
        try:
            info = reg.get("priors", str(table.get("name")), where="prior.name")
        except SjcError as exc:
            problems.extend(exc.problems)
        if info is not None:
            try:
                options = info.options.model_validate({k: v for k, v in table.items() if k != "name"})
            except ValidationError as exc:
                problems.extend(format_errors(exc, info.options, prefix="prior."))
    paas = None
    paas_table = raw.get("paas", {})
    if not isinstance(paas_table, dict):
        problems.append("paas: expected a table; set its keys as paas.KEY=VALUE")
    else:
        try:
            paas = PaasConfig.model_validate(paas_table)
        except ValidationError as exc:
            problems.extend(format_errors(exc, PaasConfig, prefix="paas."))
    estimator = pick_estimator(raw, paas, reg, problems)
    if problems:
        raise SjcError(*problems)
    assert info is not None and options is not None and estimator is not None
    _check_prior(options, Path.cwd(), None)
    return Setup(
        prior_table={"name": info.name, **options.model_dump(mode="json")},
        info=info,
        options=options,
        estimator=estimator if method != SAMPLER else None,
        base_dir=Path.cwd(),
        seed=None,
        device="auto",
        source=f"--prior {info.name}",
    )


def _method_tables(raw: dict[str, Any], method: str, sets: list[str]) -> None:
    """Point the recipe's estimator tables at --method's estimator.

    The recipe's own options stay when its estimator is the method's ([paas] or [estimator]);
    otherwise its tables give way to the method's defaults and the ``--set estimator.*``
    (or, for paas, ``paas.*``) keys. ``--set estimator.name`` naming another estimator is an error.
    """
    from sjc_core.errors import SjcError, shorten
    from sjc_core.recipes.estimator_table import DEFAULT, LEGACY_TABLE, TABLE
    from sjc_core.recipes.recipe import apply_override

    if method == SAMPLER:
        return
    table = raw.get(TABLE)
    if table is not None and not isinstance(table, dict):
        return  # validation reports it
    given: dict[str, Any] = {}
    for assignment in sets:
        if assignment.partition("=")[0].strip().split(".")[0] in (TABLE, LEGACY_TABLE):
            apply_override(given, assignment)
    asked = given.get(TABLE, {}).get("name", method) if isinstance(given.get(TABLE), dict) else method
    if asked != method:
        raise SjcError(f"--set estimator.name={shorten(asked)}: the estimator is --method's ({method}); use --method instead")
    named = table["name"] if table is not None and "name" in table else DEFAULT  # nameless: only --set keys
    if named == method:
        if table is not None:
            raw[TABLE] = {"name": method, **table}
        return
    raw.pop(LEGACY_TABLE, None)
    raw.pop(TABLE, None)
    if method == DEFAULT and LEGACY_TABLE in given:
        raw[LEGACY_TABLE] = given[LEGACY_TABLE]
    if TABLE in given or method != DEFAULT:
        extra = given.get(TABLE)
        raw[TABLE] = {**(extra if isinstance(extra, dict) else {}), "name": method}


def _check_prior(options: Any, base_dir: Path, source: str | None) -> None:
    """What building the prior checks first (folders, extras, weights), before anything is drawn."""
    from sjc_core.contracts import BuildContext
    from sjc_core.errors import SjcError
    from sjc_core.recipes.preflight import preflight_problems

    problems = preflight_problems(options, BuildContext(base_dir=base_dir), "prior")
    if problems:
        raise SjcError(*(f"{source}: {problem}" if source else problem for problem in problems))


