"""Optional compiled helpers: plain C99 sources built at first use with the system C compiler.

Some inner loops (the voxel field's per-ray march, the single-pass Adamax update) are much
faster as a few lines of C than as a chain of torch operations, and a C compiler is on
almost every Linux and macOS machine while a CUDA/C++ extension toolchain is not. Sources
have no Python or torch headers; they are compiled into a per-user cache keyed by source,
compiler, flags and platform, and loaded with ctypes (which releases the GIL during a call).
Every user has a torch fallback, so a missing compiler costs speed only.

Environment: ``SJC_NATIVE=0`` disables all native code; ``SJC_CACHE_DIR`` (default
``$XDG_CACHE_HOME/sjc`` or ``~/.cache/sjc``) holds the built libraries; ``CC`` picks the
compiler.

Trust rules (a library runs code in this process the moment it is loaded, so the cache only
ever loads what this user's sjc built, from folders only this user can write):

- sjc creates the cache folders 0700 whatever the umask. Before any load the cache root and
  ``kernels/`` must be owned by the current user and not writable by group or others (as ssh
  checks ``~/.ssh``); otherwise native code is off, with one line on stderr saying how to fix
  it. Folders above the cache root are trusted, as a user's home is.
- Each library ``<name>_<key>.so`` has a record ``<name>_<key>.so.sha256`` (``sha256sum``
  format) that sjc writes, atomically, when it builds the library. A library is loaded only
  if it is a regular file (not a symlink), owned by the user, not group/other-writable, not
  empty, its record passes the same checks, and the sha256 of its bytes matches the record.
  The record catches files sjc did not write there (planted before the folder was private,
  truncated, corrupted); the folder checks are what keep other users out.
- Anything that fails a check is never loaded: it is removed and rebuilt once into a fresh
  file; a library that does not load or lacks an expected function is treated the same way.
  If the rebuild fails too, that library falls back to torch for this process only (one line
  on stderr): the next process tries again, so no bad file turns native code off for good.
- No check-to-use window: the bytes that were hashed (or just compiled) are the bytes that
  are loaded. They are copied into a private anonymous file (Linux ``memfd_create``) and
  loaded from there, so nothing on disk is opened twice; elsewhere they go to a fresh private
  file in the checked 0700 folder that is loaded and unlinked at once.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sjc_core.native.cache import (
    CREATE,
    NativeUnavailable,
    Rejected,
    discard,
    open_private_folder,
    read_own_file,
    read_verified,
    remove_older_builds,
    store,
    write_all,
)

# No -ffast-math: results must follow IEEE float32 like torch. -fno-trapping-math only lets the
# compiler turn branches on floats into selects (vectorisation); it changes no value.
FLAGS = ("-O3", "-std=c99", "-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off")


def cache_dir() -> Path:
    root = os.environ.get("SJC_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "sjc"


def disabled() -> bool:
    """True when ``SJC_NATIVE`` turns native code off."""
    return os.environ.get("SJC_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")


def compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _file_name(name: str, source: str, cc: str) -> str:
    key = hashlib.sha1("\0".join([source, cc, *FLAGS, sys.platform, os.uname().machine]).encode()).hexdigest()[:16]
    return f"{name}_{key}.so"


def library_path(name: str, source: str) -> Path:
    """Where the library built from ``source`` is cached (with the current compiler)."""
    if sys.platform == "win32":
        raise NativeUnavailable("native code is not built on Windows")
    cc = compiler()
    if cc is None:
        raise NativeUnavailable("no C compiler found (set CC)")
    return cache_dir() / "kernels" / _file_name(name, source, cc)


def build_library(name: str, source: str, signatures: dict[str, tuple[object, Sequence[object]]]) -> ctypes.CDLL:
    """Build ``source`` once per source/compiler/platform, load it and declare ``signatures``
    (function name -> (restype, argtypes)). Raises :class:`NativeUnavailable`."""
    if sys.platform == "win32":
        raise NativeUnavailable("native code is not built on Windows")
    cc = compiler()
    if cc is None:
        raise NativeUnavailable("no C compiler found (set CC)")
    folder = cache_dir() / "kernels"
    filename = _file_name(name, source, cc)
    dir_fd = open_private_folder(folder)
    try:
        bad = ""
        try:
            cached = read_verified(dir_fd, filename)
            if cached is not None:
                return _load(*cached, filename, dir_fd, folder, signatures)
        except Rejected as exc:
            bad = f"{folder / filename} {exc}"
            discard(dir_fd, filename)
        try:
            data = _compile(cc, name, source, folder)
        except NativeUnavailable as exc:
            raise NativeUnavailable(f"{bad}; rebuilding it: {exc}" if bad else str(exc), warn=exc.warn or bool(bad)) from None
        digest = hashlib.sha256(data).hexdigest()
        store(dir_fd, filename, data, digest)
        remove_older_builds(dir_fd, name, keep=filename)
        try:
            return _load(data, digest, filename, dir_fd, folder, signatures)
        except Rejected as exc:  # freshly built and still unusable: this process uses torch
            raise NativeUnavailable(f"{folder / filename} (just built) {exc}", warn=True) from None
    finally:
        os.close(dir_fd)


def _compile(cc: str, name: str, source: str, folder: Path) -> bytes:
    """Compile ``source`` in a private temporary folder and return the library's bytes.
    Relative file names keep the output free of the temporary path, so concurrent builders
    write the same bytes."""
    try:
        with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as tmp:
            Path(tmp, f"{name}.c").write_text(source, encoding="utf-8")
            try:
                proc = subprocess.run(
                    [cc, *FLAGS, f"{name}.c", "-o", f"{name}.so", "-lm"],
                    cwd=tmp, umask=0o077, capture_output=True, text=True, timeout=120, check=False,
                )
            except subprocess.TimeoutExpired:
                raise NativeUnavailable(f"{cc} timed out") from None
            if proc.returncode != 0:
                first = (proc.stderr.strip().splitlines() or ["unknown error"])[0]
                raise NativeUnavailable(f"{cc} failed: {first}")
            try:
                data = read_own_file(str(Path(tmp, f"{name}.so")), None)
            except Rejected as exc:
                raise NativeUnavailable(f"{cc} output {exc}", warn=True) from None
            if not data:
                raise NativeUnavailable(f"{cc} wrote no library", warn=True)
            return data
    except OSError as exc:
        raise NativeUnavailable(f"cannot build in {folder}: {exc.strerror or exc}") from None


# Libraries loaded in this process by content hash: the same bytes are loaded once.
_BY_HASH: dict[str, ctypes.CDLL] = {}


# The memfds libraries were loaded from stay open: glibc's dlopen recognises a path it has
# loaded before, so "/proc/self/fd/N" must never name another library later.
_PINNED: list[int] = []


def _load(data: bytes, digest: str, filename: str, dir_fd: int, folder: Path, signatures) -> ctypes.CDLL:
    """Load these very bytes (never a path that could have changed since they were checked)
    and declare ``signatures``. Raises Rejected."""
    lib = _BY_HASH.get(digest)
    if lib is None:
        lib = _load_bytes(data, filename, dir_fd, folder)
    for function, (restype, argtypes) in signatures.items():
        try:
            symbol = getattr(lib, function)
        except AttributeError:
            raise Rejected(f"lacks the function {function}") from None
        symbol.restype = restype
        symbol.argtypes = list(argtypes)
    _BY_HASH[digest] = lib
    return lib


def _load_bytes(data: bytes, filename: str, dir_fd: int, folder: Path) -> ctypes.CDLL:
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        try:
            fd = os.memfd_create(f"sjc:{filename}", os.MFD_CLOEXEC | getattr(os, "MFD_ALLOW_SEALING", 0))
        except OSError:
            pass
        else:
            try:
                write_all(fd, data)
                _seal(fd)
                lib = ctypes.CDLL(f"/proc/self/fd/{fd}")
            except OSError:  # e.g. memfds not executable here: the private file below
                os.close(fd)
            else:
                _PINNED.append(fd)
                return lib
    # A fresh, unguessable file in the checked folder, loaded and unlinked at once.
    tmp = f".load-{secrets.token_hex(8)}.so"
    try:
        fd = os.open(tmp, CREATE, 0o700, dir_fd=dir_fd)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        return ctypes.CDLL(str(folder / tmp))
    except OSError as exc:
        first = (str(exc).strip().splitlines() or ["unknown error"])[0]
        raise Rejected(f"cannot be loaded ({first})") from None
    finally:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass


def _seal(fd: int) -> None:
    try:
        import fcntl

        seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except (ImportError, AttributeError, OSError):
        pass


# One build attempt per process and (library, source), success or failure.
_LOADED: dict[tuple[str, str], tuple[ctypes.CDLL | None, str]] = {}


_WARNED: set[str] = set()


_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):  # a child forked mid-build must not inherit a held lock
    os.register_at_fork(after_in_child=lambda: globals().update(_LOCK=threading.Lock()))


def library_or_reason(
    name: str, source: str, signatures: dict[str, tuple[object, Sequence[object]]]
) -> tuple[ctypes.CDLL | None, str]:
    """The loaded library, or None and why not (``SJC_NATIVE=0``, no compiler, a failed build,
    an unsafe cache). Reasons that need the user's attention also go to stderr, one line each
    per process."""
    if disabled():
        return None, "disabled by SJC_NATIVE=0"
    key = (name, source)
    with _LOCK:
        if key not in _LOADED:
            try:
                _LOADED[key] = build_library(name, source, signatures), ""
            except NativeUnavailable as exc:
                reason = " ".join(str(exc).split("\n"))
                _LOADED[key] = None, reason
                if exc.warn and reason not in _WARNED:
                    _WARNED.add(reason)
                    print(f"sjc: native code off: {reason}", file=sys.stderr, flush=True)
        return _LOADED[key]


def run_calls(calls: Sequence[Callable[[], object]], workers: int) -> None:
    """Run independent native calls, on up to ``workers`` threads (ctypes releases the GIL
    during each call); in order on this thread when there is one worker or one call.
    An exception in any call is raised here."""
    if workers <= 1 or len(calls) <= 1:
        for call in calls:
            call()
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(calls))) as pool:
        list(pool.map(lambda call: call(), calls))
