"""Recipes: the TOML a user writes, read, overridden with ``--set``, validated by the core models
and each plugin's options model, checked for what a run needs (preflight), and written back
resolved. A leaf: imports nothing above :mod:`sjc_core.plugins`, and no torch.
"""
