"""Files every command writes or reads: atomic writes (:mod:`atomic`), the per-folder lock
(:mod:`locks`), pictures and videos (:mod:`pictures`), and the one picture reader
(:mod:`pixels`). A leaf: imports only :mod:`sjc_core.errors`.
"""
