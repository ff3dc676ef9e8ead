"""Planning a batch: the command line (recipes, ``--seeds``, ``--set``, ``--sweep``) as
:class:`Job` s, each with a stable run folder ``OUT/<name>-seed<seed>[-<hash of
overrides>]``, so the same batch run again maps to the same folders. Every job's recipe is
validated and preflighted here, before anything runs or is written. Used by
:mod:`sjc_core.batch`, which runs the jobs."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sjc_core.errors import SjcError, shorten
from sjc_core.recipes.preflight import ready_problems
from sjc_core.recipes.recipe import apply_override, parse_value, read_toml, validate_recipe
from sjc_core.recipes.values import MAX_NAME_LENGTH, MAX_SEED

# Keys the batch sets itself; overriding them with --set/--sweep would break the folder map.
RESERVED = {"seed": "use --seeds", "output": "use --out"}


MAX_JOBS = 10_000  # recipes x sweep combinations x seeds


@dataclass(frozen=True)
class Job:
    """One run of the batch: a recipe, a seed and overrides, and where it writes."""

    key: str  # run folder name under OUT, e.g. "burger-seed3-1f0c9a2e"
    recipe: str  # the recipe file as given
    seed: int
    overrides: tuple[str, ...]  # --set then --sweep assignments, as KEY=VALUE
    base_dir: str  # the recipe's folder (relative paths inside it resolve here)
    raw: dict[str, Any] | None = None  # the recipe table with overrides, seed and output applied
    error: str | None = None  # a recipe that cannot be read or validated fails without running

    def record(self) -> dict[str, Any]:
        """The job's fields in batch.json (the raw table stays out: it is in the run folder)."""
        return {"key": self.key, "folder": self.key, "recipe": self.recipe, "seed": self.seed, "overrides": list(self.overrides)}


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` or ``0-7`` or ``0-3,8``: distinct non-negative seeds in the order given."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        match = re.fullmatch(r"(\d{1,30})(?:-(\d{1,30}))?", part)
        if not match:
            raise SjcError(f"--seeds {shorten(text)}: expected numbers and ranges like 0,1,2 or 0-7 or 0-3,8")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if high < low:
            raise SjcError(f"--seeds {shorten(text)}: range {shorten(part)} runs backwards")
        if high > MAX_SEED:
            raise SjcError(f"--seeds {shorten(text)}: seeds must be at most 2**63 - 1 ({MAX_SEED})")
        if high - low + 1 > MAX_JOBS or len(seeds) + high - low + 1 > MAX_JOBS:
            raise SjcError(f"--seeds {shorten(text)}: more than {MAX_JOBS:,} seeds")
        known = set(seeds)
        seeds.extend(s for s in range(low, high + 1) if s not in known)
    return seeds


def split_values(text: str) -> list[str]:
    """Split on commas outside quotes and brackets: ``[30,60],[40,70]`` is two values."""
    values, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    values.append("".join(current).strip())
    return values


def _split_assignment(option: str, assignment: str) -> tuple[str, str]:
    key, sep, value = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SjcError(f"{option} {shorten(assignment)}: expected KEY=VALUE")
    if key in RESERVED:
        raise SjcError(f"{option} {key}: the batch sets '{key}' for every run; {RESERVED[key]}")
    return key, value.strip()


def parse_sweeps(sweeps: Sequence[str]) -> list[list[str]]:
    """``--sweep key=v1,v2`` options -> the cartesian product, each a list of KEY=VALUE."""
    axes: list[list[str]] = []
    seen: set[str] = set()
    for sweep in sweeps:
        key, text = _split_assignment("--sweep", sweep)
        shown = shorten(key) if len(key) > 60 else key
        if key in seen:
            raise SjcError(f"--sweep {shown}: given twice; list all its values in one --sweep {shown}=v1,v2")
        seen.add(key)
        values = split_values(text)
        if any(not v for v in values):
            raise SjcError(f"--sweep {shorten(sweep)}: empty value; expected --sweep {shown}=v1,v2,...")
        axes.append([f"{key}={value}" for value in values])
    if math.prod(len(axis) for axis in axes) > MAX_JOBS:
        raise SjcError(f"--sweep: more than {MAX_JOBS:,} combinations")
    return [list(combo) for combo in itertools.product(*axes)]


def override_hash(overrides: Sequence[str]) -> str:
    """8 hex digits that name a set of overrides (order and spacing do not matter)."""
    final: dict[str, Any] = {}
    for assignment in overrides:
        key, _, value = assignment.partition("=")
        final[key.strip()] = parse_value(value.strip())
    canonical = json.dumps(sorted(final.items()), default=str, sort_keys=True)
    return hashlib.sha1(canonical.encode()).hexdigest()[:8]


def run_key(name: str, seed: int, overrides: Sequence[str]) -> str:
    """The run folder's name: NAME-seedSEED, plus a hash of the overrides when there are any."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name[: 4 * MAX_NAME_LENGTH]).strip("._")[:MAX_NAME_LENGTH] or "run"
    key = f"{safe}-seed{seed}"
    return f"{key}-{override_hash(overrides)}" if overrides else key


def plan(
    recipes: Sequence[str | Path],
    registry: Any,
    out: Path,
    seeds: Sequence[int] | None = None,
    sets: Sequence[str] = (),
    sweeps: Sequence[str] = (),
) -> list[Job]:
    """Expand recipes x sweep combinations x seeds into jobs, refusing colliding folders.

    Without ``seeds`` each recipe runs with its own ``seed``. A recipe that cannot be read
    or validated, or whose run could not start (``check_ready``: missing images, weights,
    extras), becomes a job with ``error`` set: it is reported as failed, the rest run. A
    ``--set`` or ``--sweep`` that makes a valid recipe invalid is refused here, before
    anything starts: the command line is wrong, not the recipe.
    """
    for assignment in sets:
        _split_assignment("--set", assignment)
    combos = parse_sweeps(sweeps)
    jobs: list[Job] = []
    owners: dict[str, str] = {}
    unique: dict[Path, str] = {}
    for given in recipes:  # the same file twice (however spelled) is one recipe
        unique.setdefault(Path(given).resolve(), str(given))
    if len(unique) * len(combos) * (len(seeds) if seeds is not None else 1) > MAX_JOBS:
        raise SjcError(f"batch: more than {MAX_JOBS:,} runs (recipes x sweep combinations x seeds)")
    for recipe in unique.values():
        path = Path(recipe)
        base_dir = str(path.resolve().parent)
        own: dict[int, list[str]] = {}  # seed -> problems of the recipe without overrides
        for combo in combos:
            overrides = (*sets, *combo)
            raw, error = _read_with_overrides(path, overrides)
            if error is not None and overrides and _read_with_overrides(path, ())[1] is None:
                raise SjcError(f"{error} (in {recipe})")  # the override cannot apply to this recipe
            name = raw.get("name") if raw and isinstance(raw.get("name"), str) and raw.get("name") else path.stem
            own_seed = raw.get("seed", 0) if raw else 0
            usable = isinstance(own_seed, int) and not isinstance(own_seed, bool) and 0 <= own_seed <= MAX_SEED
            for seed in seeds if seeds is not None else [own_seed if usable else 0]:
                key = run_key(name, seed, overrides)
                if key in owners:
                    raise SjcError(
                        f"{recipe}: its run folder {out / key} is also {owners[key]}'s; "
                        "give the recipes different `name`s"
                    )
                owners[key] = recipe
                job_raw, job_error = None, error
                if raw is not None:
                    job_raw = copy.deepcopy(raw)
                    job_raw["seed"], job_raw["output"] = seed, str(out)
                    problems = _problems(job_raw, registry, Path(base_dir), recipe)
                    if problems and overrides:
                        if seed not in own:
                            alone, _ = _read_with_overrides(path, ())
                            own[seed] = (
                                _problems({**alone, "seed": seed, "output": str(out)}, registry, Path(base_dir), recipe)
                                if alone is not None
                                else []
                            )
                        caused = [problem for problem in problems if problem not in own[seed]]
                        if caused:
                            flags = " ".join(_flag_of(o, sets) for o in overrides)
                            raise SjcError(*(f"{problem} (with {flags})" for problem in caused))
                    if problems:
                        job_raw, job_error = None, "; ".join(problems)
                jobs.append(Job(key, recipe, seed, tuple(overrides), base_dir, job_raw, job_error))
    return jobs


def _problems(raw: dict[str, Any], registry: Any, base_dir: Path, source: str) -> list[str]:
    """Every problem of one job's recipe: its values (``SOURCE: path: message``), else what
    its run would find when it builds the plugins (``path: message``, as the run says it)."""
    try:
        recipe = validate_recipe(copy.deepcopy(raw), registry, base_dir=base_dir, source=source)
    except SjcError as exc:
        return exc.problems
    return ready_problems(recipe)


def _flag_of(assignment: str, sets: Sequence[str]) -> str:
    option = "--set" if assignment in sets else "--sweep"
    plain = len(assignment) <= 60 and assignment.isprintable()
    return f"{option} {assignment if plain else shorten(assignment)}"


def _read_with_overrides(path: Path, overrides: Sequence[str]) -> tuple[dict[str, Any] | None, str | None]:
    try:
        raw = read_toml(path)
        for assignment in overrides:
            apply_override(raw, assignment)
    except SjcError as exc:
        return None, "; ".join(exc.problems)
    return raw, None
