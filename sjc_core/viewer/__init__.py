"""The live web viewer (viser) and TensorBoard records of a run: optional, through run observers.

Nothing here is imported unless ``--viewer``, ``--tensorboard`` (or ``log.tensorboard``) or
``sjc view`` asks for it; viser and tensorboard come with the ``viewer`` extra.
"""
