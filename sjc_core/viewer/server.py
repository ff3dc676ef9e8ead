"""Starting viser safely: the extra installed, the asked-for port or one line, the binding said.

viser itself moves to the next port when one is taken; a user who typed ``--port 8080``
would then look at the wrong page (or another program's), so a taken port is an error here.
"""

from __future__ import annotations

import contextlib
import io
import socket
import sys
from typing import Any, TextIO

from sjc_core.errors import SjcError

EXTRA_HINT = 'pip install "sjc[viewer]" (or pip install -e ".[viewer]" in a clone)'
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def require_viewer_extra(flag: str = "--viewer") -> None:
    """Refuse at once, in one line, when viser is not installed."""
    try:
        import viser  # noqa: F401
    except ImportError:
        raise SjcError(f"{flag} needs the viewer extra, which is not installed: {EXTRA_HINT}") from None


def require_tensorboard_extra(flag: str = "--tensorboard") -> None:
    """Refuse at once, in one line, when the tensorboard package is not installed."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise SjcError(f"{flag} needs the viewer extra (tensorboard), which is not installed: {EXTRA_HINT}") from None


def check_port(host: str, port: int) -> None:
    """One line when ``port`` cannot be bound on ``host`` (taken, or not ours to take)."""
    if not 1 <= port <= 65535:
        raise SjcError(f"--port: expected 1..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise SjcError(f"--host {host!r}: not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise SjcError(
                f"--port {port}: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                "the port is in use: pick another with --port"
            ) from None


def start_server(host: str, port: int, label: str, stream: TextIO | None = None) -> Any:
    """A running viser server on exactly ``host:port``; prints the URL and the binding."""
    import viser

    stream = stream or sys.stderr
    check_port(host, port)
    with contextlib.redirect_stdout(io.StringIO()):  # viser's own banner: replaced by our line
        server = viser.ViserServer(host=host, port=port, label=label, verbose=False)
    if server.get_port() != port:  # taken between the check and the bind: viser moved on
        server.stop()
        raise SjcError(f"--port {port}: cannot listen on {host}:{port} (the port is in use): pick another with --port")
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else f"[{host}]" if ":" in host else host
    reach = ("this machine only" if host in LOCAL_HOSTS
             else "other machines too: whoever reaches it sees the page and can pause a live run")
    print(f"viewer: http://{shown}:{port} (listening on {host}:{port}, {reach})", file=stream, flush=True)
    return server


def stop_server(server: Any) -> None:
    """Stop the server without its goodbye lines on stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        server.stop()
