"""Built-in sjc plugins, installed under the import name ``sjc_plugins``.

They register through the ``sjc`` entry-point group exactly like third-party packages.
"""
