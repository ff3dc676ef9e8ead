"""A run folder around a trainer: the run loop (:mod:`engine`), the folder's layout, status and
resume rules (:mod:`folder`), checkpoints, the progress line and the turntable.
"""
