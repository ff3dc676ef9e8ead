"""Volume rendering with the reference's conventions, one stage a module, each calling only
the stages before it: :mod:`rays` -> :mod:`spans` -> :mod:`samples` -> :mod:`composite`
(which evaluates the field and its :mod:`weights`); :mod:`view` runs them for a camera or a
ray bundle. Beside them: :mod:`cameras` (poses, intrinsics, view labels) and :mod:`hd`
(high-resolution videos of a field).
"""
