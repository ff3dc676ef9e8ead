"""Pluggy hook specifications: one hook per plugin kind (priors, fields, losses, estimators),
plus one for CLI commands.

A hook receives a ``register`` callback and calls it once per thing it provides::

    register(name="voxel", factory=VoxelField, description="...", options=VoxelOptions)

``factory(options, ctx)`` builds the object from a validated options model and a
:class:`sjc_core.contracts.BuildContext`.
"""

from __future__ import annotations

import pluggy

PROJECT = "sjc"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_priors(register) -> None:  # type: ignore[no-untyped-def]
    """Register score priors (denoisers in the VE/Karras convention)."""


@hookspec
def register_fields(register) -> None:  # type: ignore[no-untyped-def]
    """Register radiance fields."""


@hookspec
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    """Register regularisers."""


@hookspec
def register_estimators(register) -> None:  # type: ignore[no-untyped-def]
    """Register score estimators: what turns a render into the gradient on it (paas, sds, ism).

    The factory returns an object with ``schedule(prior, steps, rng)`` and
    ``gradient(prior, y, sigma, progress, cond, generator)``
    (:class:`sjc_core.training.estimation.Estimator`).
    """


@hookspec
def register_commands(cli) -> None:  # type: ignore[no-untyped-def]
    """Add commands to the ``sjc`` typer app (``cli`` is the ``typer.Typer``)."""
