"""Before a run: the checks ``sjc run`` makes when it builds a recipe's plugins, made
without building them (``sjc validate``, ``sjc batch`` planning, ``sjc sample``).

Each options model may define ``preflight(ctx)``; its ``ctx.device`` is the recipe's
device setting ('auto', 'cpu', 'cuda', 'cuda:N'), resolved by the check only if it needs a device
(``sjc_core.devices.as_device``), so validating imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from sjc_core.errors import SjcError
from sjc_core.recipes.values import error_line, one_line

if TYPE_CHECKING:
    from sjc_core.recipes.recipe import Recipe


def check_ready(recipe: Recipe) -> list[str]:
    """Run the checks ``sjc run`` makes when it builds the plugins, without building them.

    Every problem of :func:`ready_problems` becomes one line ``SOURCE: path: message`` of an
    :class:`SjcError`; the notes (what this machine lacks but the recipe does not, such as
    weights not downloaded yet) come back in the same form. Nothing is built or written.
    """
    notes: list[str] = []
    problems = ready_problems(recipe, notes)
    if problems:
        raise SjcError(*(f"{recipe.source}: {problem}" for problem in problems))
    return [f"{recipe.source}: {note}" for note in notes]


def ready_problems(recipe: Recipe, notes: list[str] | None = None) -> list[str]:
    """What would stop this recipe's run when it builds its plugins, one ``path: message`` each.

    The device must exist, and each plugin's options model may define ``preflight(ctx)``:
    cheap checks, the same ones its factory makes first, that raise :class:`SjcError` for
    problems (a folder that does not exist or holds no images, an extra not installed) and
    may return notes (lines about this machine rather than the recipe, e.g. weights that
    are not in the local cache yet), which are added to ``notes``.
    """
    places = [("prior", recipe.prior), ("field", recipe.field)]
    places += [(f"losses.{index}", choice) for index, choice in enumerate(recipe.losses)]
    places = [(where, choice) for where, choice in places if callable(getattr(choice.options, "preflight", None))]
    if not places and not recipe.settings.device.startswith("cuda"):
        return []  # nothing to ask
    from sjc_core.contracts import BuildContext

    problems: list[str] = []
    device = recipe.settings.device  # the setting: preflights resolve it only if they need to
    if device.startswith("cuda"):  # a card that is not there stops the run: say so now
        from sjc_core.devices import resolve_device

        try:
            resolve_device(device)
        except SjcError as exc:
            problems.extend(exc.problems)
            device = "cpu"
    ctx = BuildContext(device=device, base_dir=recipe.base_dir, seed=recipe.settings.seed)
    for where, choice in places:
        problems.extend(preflight_problems(choice.options, ctx, where, notes))
    return problems


def preflight_problems(options: BaseModel, ctx: Any, where: str, notes: list[str] | None = None) -> list[str]:
    """The problems an options model's ``preflight(ctx)`` reports (none when it has none);
    the notes it returns go to ``notes``."""
    check = getattr(options, "preflight", None)
    if not callable(check):
        return []
    try:
        said = check(ctx)
    except SjcError as exc:
        return [one_line(problem) for problem in exc.problems]
    except Exception as exc:  # a plugin's check that crashed: still one line, naming the table
        return [f"{where}: check failed: {type(exc).__name__}: {error_line(exc)}"]
    if notes is not None and isinstance(said, (list, tuple)):
        notes.extend(one_line(str(note)) for note in said)
    return []
