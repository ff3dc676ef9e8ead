"""One training step and what it needs: the trainer (camera, render, estimator, losses,
optimiser step), the estimator contract and PAAS, the fused Adamax, learning-rate schedules.
Knows nothing of run folders: :mod:`sjc_core.runs` drives it.
"""
