"""Small C kernels compiled on first use with the system compiler (:mod:`build`), cached in a
private folder that is checked before anything is loaded (:mod:`cache`); the C sources are
plain ``.c`` files in ``csrc/``.
"""
