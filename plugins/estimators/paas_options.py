"""Registration of the ``paas`` estimator, without torch.

PAAS is the engine's default and the legacy ``[paas]`` table is its spelling in older
recipes, so its options model (:class:`sjc_core.recipes.model.PaasConfig`) and implementation
(:class:`sjc_core.training.paas.PaasEstimator`) live in the core; this module lists it beside the
other estimators through the same entry-point group as any plugin.
"""

from __future__ import annotations

from sjc_core.hookspecs import hookimpl
from sjc_core.recipes.estimator_table import PAAS_DESCRIPTION, build_paas_lazily
from sjc_core.recipes.model import PaasConfig


@hookimpl
def register_estimators(register) -> None:  # type: ignore[no-untyped-def]
    register(name="paas", factory=build_paas_lazily, description=PAAS_DESCRIPTION, options=PaasConfig)
