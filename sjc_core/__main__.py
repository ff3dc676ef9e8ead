"""``python -m sjc_core`` is the ``sjc`` command."""

from sjc_core.cli import main

main()
