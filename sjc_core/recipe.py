"""TOML recipes: pydantic models, ``--set`` overrides, and one-line-per-problem errors.

A recipe names its prior, field and losses; each of those tables is validated by the
plugin's own options model, so a mistake reads ``prior.guidance_scale: Input should be a
valid number`` and every problem in a file is reported at once.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from sjc_core.errors import SjcError, did_you_mean
from sjc_core.plugins import SINGULAR, PluginInfo, Registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class CameraConfig(BaseModel):
    """Training-view sampler and test path; defaults are the reference's."""

    model_config = ConfigDict(extra="forbid")

    radius: float = pydantic.Field(1.5, gt=0, description="distance of training cameras from the origin")
    fov_range: tuple[float, float] = pydantic.Field(
        (40.0, 70.0), description="horizontal field of view drawn uniformly in this range (degrees)"
    )
    azimuth_range: tuple[float, float] = pydantic.Field((0.0, 360.0), description="azimuth range (degrees)")
    polar_range: tuple[float, float] = pydantic.Field(
        (0.0, 100.0), description="range of the polar draw v (degrees); polar angle = arccos(1 - 2v/pi)"
    )
    overhead_below: float = pydantic.Field(30.0, ge=0, description="v below this is labelled 'overhead' (degrees)")
    follow_prior: bool = pydantic.Field(
        True, description="use the prior's own camera radius and field of view when it has posed images"
    )
    resolution: int | None = pydantic.Field(None, gt=0, description="render size; default: the prior's resolution")
    test_path: Literal["spiral", "orbit"] = pydantic.Field("spiral", description="turntable path")
    test_frames: int = pydantic.Field(100, gt=0, description="frames of the turntable video")
    test_fov: float = pydantic.Field(60.0, gt=0, lt=180, description="field of view of test views (degrees)")
    spiral_rounds: int = pydantic.Field(3, gt=0, description="rounds of the spiral test path")
    orbit_elevation: float = pydantic.Field(20.0, ge=-90, le=90, description="elevation of the orbit path (degrees)")
    fps: int = pydantic.Field(20, gt=0, description="frames per second of videos")

    @model_validator(mode="after")
    def _ordered_ranges(self) -> "CameraConfig":
        for name in ("fov_range", "azimuth_range", "polar_range"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name}: low end {low} is above high end {high}")
        if not (0 < self.fov_range[0] and self.fov_range[1] < 180):
            raise ValueError("fov_range: must lie inside (0, 180) degrees")
        return self


class PaasConfig(BaseModel):
    """Perturb-and-average scoring and the sigma schedule."""

    model_config = ConfigDict(extra="forbid")

    schedule: Literal["random", "annealed"] = pydantic.Field(
        "random", description="random: uniform draw from the ladder; annealed: large to small over training"
    )
    sigma_min: float | None = pydantic.Field(None, gt=0, description="lowest sigma; default: the prior's default range")
    sigma_max: float | None = pydantic.Field(None, gt=0, description="highest sigma; default: the prior's default range")
    var_red: bool = pydantic.Field(True, description="Eq. 16 (subtract the clean render) instead of Eq. 15")
    n_noise: int = pydantic.Field(1, gt=0, description="noises averaged per step (batched through the prior)")

    @model_validator(mode="after")
    def _ordered(self) -> "PaasConfig":
        if self.sigma_min is not None and self.sigma_max is not None and self.sigma_min > self.sigma_max:
            raise ValueError(f"sigma_min {self.sigma_min} is above sigma_max {self.sigma_max}")
        return self


class RecipeModel(BaseModel):
    """The top level of a recipe. Plugin tables are checked against their plugin's model."""

    model_config = ConfigDict(extra="forbid")

    name: str = pydantic.Field("sjc", min_length=1, description="run name; the run folder is OUTPUT/NAME-seedSEED")
    seed: int = pydantic.Field(0, ge=0, description="seed of every random draw")
    steps: int = pydantic.Field(10000, gt=0, description="optimisation steps")
    lr: float = pydantic.Field(0.05, gt=0, description="base learning rate (Adamax)")
    output: str = pydantic.Field("runs", min_length=1, description="folder that receives run folders")
    device: Literal["auto", "cpu", "cuda"] = pydantic.Field("auto", description="auto: cuda when available")
    view_every: int = pydantic.Field(500, gt=0, description="write a training view every N steps")
    log_every: int = pydantic.Field(
        10,
        gt=0,
        description="read loss terms back from the device every N steps (progress line, metrics.jsonl: "
        "still one record per step); a NaN is caught at the next such step and no checkpoint keeps it",
    )
    checkpoint_every: int = pydantic.Field(1000, gt=0, description="write a checkpoint every N steps")
    prior: dict[str, Any] = pydantic.Field(description="[prior] table: name + options")
    field: dict[str, Any] = pydantic.Field(default_factory=lambda: {"name": "voxel"}, description="[field] table")
    losses: list[dict[str, Any]] = pydantic.Field(default_factory=list, description="[[losses]] tables")
    camera: CameraConfig = pydantic.Field(default_factory=CameraConfig)
    paas: PaasConfig = pydantic.Field(default_factory=PaasConfig)


@dataclass(frozen=True)
class PluginChoice:
    """A plugin table after validation: which plugin, with its validated options."""

    info: PluginInfo
    options: BaseModel

    def as_table(self) -> dict[str, Any]:
        return {"name": self.info.name, **self.options.model_dump(mode="json")}


@dataclass(frozen=True)
class Recipe:
    """A fully validated recipe."""

    settings: RecipeModel
    prior: PluginChoice
    field: PluginChoice
    losses: list[PluginChoice]
    base_dir: Path

    def resolved(self) -> dict[str, Any]:
        """Every value, defaults included, as plain data (what `sjc validate` prints)."""
        data = self.settings.model_dump(mode="json")
        data["prior"] = self.prior.as_table()
        data["field"] = self.field.as_table()
        data["losses"] = [loss.as_table() for loss in self.losses]
        return data


PLUGIN_TABLES = {"prior": "priors", "field": "fields"}


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a missing file or a syntax error is a one-line SjcError."""
    if not path.exists():
        raise SjcError(f"{path}: no such file")
    if path.is_dir():
        raise SjcError(f"{path}: is a folder, expected a TOML recipe")
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise SjcError(f"{path}: TOML syntax error: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SjcError(f"{path}: cannot read: {exc}") from None


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
    is kept as typed and the model converts it, so ``12`` becomes an int for ``steps`` but
    stays the string "12" for ``name``, and ``abc`` for ``steps`` is a validation error.
    """
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    return value if isinstance(value, (str, list, dict)) else text


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b=value`` to the raw recipe.

    Losses are addressed by position (``losses.0.weight``) or by plugin name
    (``losses.emptiness.weight``); naming a loss the recipe lacks adds it.
    """
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise SjcError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set prior.guidance_scale=50")
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, ".".join(parts[: depth + 1]))
        else:
            child = node.get(part)
            if child is None:
                child = [] if part == "losses" and depth == 0 else {}
                node[part] = child
            if not isinstance(child, (dict, list)):
                raise SjcError(f"--set {key}: '{'.'.join(parts[: depth + 1])}' is a value, not a table")
            node = child
    last = parts[-1]
    if isinstance(node, list):
        raise SjcError(f"--set {key}: name a key inside the loss, e.g. {key}.weight=1")
    node[last] = parse_value(text.strip())


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
    problems: list[str] = []
    settings: RecipeModel | None = None
    try:
        settings = RecipeModel.model_validate(raw)
    except ValidationError as exc:
        problems.extend(format_errors(exc, RecipeModel))

    choices: dict[str, PluginChoice | None] = {}
    for table, kind in PLUGIN_TABLES.items():
        value = raw.get(table, {"name": "voxel"} if table == "field" else None)
        if isinstance(value, dict):
            choices[table] = _validate_plugin(value, kind, table, registry, problems)
    losses: list[PluginChoice] = []
    raw_losses = raw.get("losses", [])
    if isinstance(raw_losses, list):
        for index, table in enumerate(raw_losses):
            if isinstance(table, dict):
                choice = _validate_plugin(table, "losses", f"losses.{index}", registry, problems)
                if choice is not None:
                    losses.append(choice)

    if problems or settings is None:
        raise SjcError(*(f"{source}: {p}" for p in problems))
    prior, field = choices.get("prior"), choices.get("field")
    assert prior is not None and field is not None
    return Recipe(settings=settings, prior=prior, field=field, losses=losses, base_dir=base_dir)


def _validate_plugin(
    table: dict[str, Any], kind: str, where: str, registry: Registry, problems: list[str]
) -> PluginChoice | None:
    name = table.get("name")
    if not isinstance(name, str) or not name:
        known = ", ".join(registry.names(kind)) or "none installed"
        problems.append(f"{where}.name: required: the {SINGULAR[kind]} plugin to use (known: {known})")
        return None
    try:
        info = registry.get(kind, name, where=f"{where}.name")
    except SjcError as exc:
        problems.extend(exc.problems)
        return None
    options = {k: v for k, v in table.items() if k != "name"}
    try:
        return PluginChoice(info=info, options=info.options.model_validate(options))
    except ValidationError as exc:
        problems.extend(format_errors(exc, info.options, prefix=f"{where}."))
        return None


def format_errors(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per pydantic error: dotted path, message, and a hint for unknown keys."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        path = prefix + ".".join(loc) if loc else prefix.rstrip(".") or "recipe"
        kind = error["type"]
        if kind == "extra_forbidden":
            known = _fields_at(model, error["loc"][:-1])
            lines.append(f"{path}: unknown key{did_you_mean(loc[-1], known)}")
        elif kind == "missing":
            lines.append(f"{path}: required key missing")
        else:
            message = error["msg"].removeprefix("Value error, ")
            value = error.get("input")
            got = f" (got {value!r})" if isinstance(value, (str, int, float, bool)) else ""
            lines.append(f"{path}: {message}{got}")
    return lines


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
