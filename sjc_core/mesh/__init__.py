"""``sjc export-mesh``: marching cubes on a field's density (:mod:`extract`), clean-up, vertex
colours, UV atlas and baked texture, a small rasteriser that measures them, and the export
of a run folder (:mod:`export`).
"""
