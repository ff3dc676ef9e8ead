"""The ``sjc`` command line: core commands plus commands contributed by plugins.

Every :class:`~sjc_core.errors.SjcError` becomes one line per problem on stderr and exit
code 2, never a traceback; so does any OSError a command lets through (a full disk, no
permission, a file where a folder should be): the file it names, then the cause.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer

from sjc_core.errors import SjcError

# One module per command under sjc_core/commands; each defines NAME and `command`.
CORE_COMMANDS = ["run", "render", "fit", "validate", "list_plugins", "sample", "export_mesh", "batch", "view", "prior_info"]


def build_app() -> typer.Typer:
    """The typer app with core commands and the plugins' extra commands."""
    app = typer.Typer(
        name="sjc",
        help="Score Jacobian Chaining: lift pretrained 2D diffusion models to 3D.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    for module_name in CORE_COMMANDS:
        module = importlib.import_module(f"sjc_core.commands.{module_name}")
        app.command(module.NAME, help=module.command.__doc__)(module.command)
    _add_plugin_commands(app)
    return app


def _add_plugin_commands(app: typer.Typer) -> None:
    from sjc_core.commands.common import registry

    manager = registry().manager
    if manager is not None:
        manager.hook.register_commands(cli=app)


def _no_type_on_switches(command: Any) -> None:
    """Show switches (``--resume/--no-resume``, ``--help``) without the ``<bool>`` type that
    typer's help lists beside them: they take no value, so a type there misleads."""
    for param in getattr(command, "params", []):
        if getattr(param, "is_flag", False) and getattr(param, "metavar", "") is None:
            param.metavar = ""
    make_help_option = command.get_help_option

    def help_option(ctx: Any) -> Any:
        option = make_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = help_option
    for sub in getattr(command, "commands", {}).values():
        _no_type_on_switches(sub)


def main() -> None:
    """Console-script entry point."""
    try:
        command = typer.main.get_command(build_app())
        _no_type_on_switches(command)
        command()
    except SjcError as exc:
        for line in exc.problems or [str(exc)]:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        from sjc_core.files.atomic import describe_os_error

        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
