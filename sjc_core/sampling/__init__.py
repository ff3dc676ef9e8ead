"""2D tools behind ``sjc sample``: noise schedules snapped to a prior's ladder (:mod:`ladders`),
explicit random generators (:mod:`noise`), the Heun sampler and 2D ascent (:mod:`samplers`).
"""
