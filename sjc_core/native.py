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
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# No -ffast-math: results must follow IEEE float32 like torch. -fno-trapping-math only lets the
# compiler turn branches on floats into selects (vectorisation); it changes no value.
FLAGS = ("-O3", "-std=c99", "-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off")


class NativeUnavailable(RuntimeError):
    """A library could not be built or loaded (the reason is the message)."""


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


def build_library(name: str, source: str, signatures: dict[str, tuple[object, Sequence[object]]]) -> ctypes.CDLL:
    """Build ``source`` once per source/compiler/platform, load it and declare ``signatures``
    (function name -> (restype, argtypes)). Raises :class:`NativeUnavailable`."""
    if sys.platform == "win32":
        raise NativeUnavailable("native code is not built on Windows")
    cc = compiler()
    if cc is None:
        raise NativeUnavailable("no C compiler found (set CC)")
    key = hashlib.sha1("\0".join([source, cc, *FLAGS, sys.platform, os.uname().machine]).encode()).hexdigest()[:16]
    folder = cache_dir() / "kernels"
    library = folder / f"{name}_{key}.so"
    if not library.exists():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                src = Path(tmp) / f"{name}.c"
                src.write_text(source)
                built = Path(tmp) / f"{name}.so"
                proc = subprocess.run(
                    [cc, *FLAGS, str(src), "-o", str(built), "-lm"], capture_output=True, text=True, timeout=120
                )
                if proc.returncode != 0:
                    first = (proc.stderr.strip().splitlines() or ["unknown error"])[0]
                    raise NativeUnavailable(f"{cc} failed: {first}")
                os.replace(built, library)  # atomic: concurrent builders agree
        except OSError as exc:
            raise NativeUnavailable(f"cannot build in {folder}: {exc}") from exc
        _remove_older_builds(folder, name, keep=library)
    try:
        lib = ctypes.CDLL(str(library))
    except OSError as exc:
        raise NativeUnavailable(f"cannot load {library}: {exc}") from exc
    for function, (restype, argtypes) in signatures.items():
        symbol = getattr(lib, function)
        symbol.restype = restype
        symbol.argtypes = list(argtypes)
    return lib


def _remove_older_builds(folder: Path, name: str, keep: Path) -> None:
    """Drop this library's builds from earlier sources (a process that still has one loaded
    keeps its mapping); best effort, a file in use elsewhere or gone already is fine."""
    for stale in folder.glob(f"{name}_*.so"):
        if stale != keep:
            try:
                stale.unlink()
            except OSError:
                pass


# One build attempt per process and (library, source), success or failure.
_LOADED: dict[tuple[str, str], tuple[ctypes.CDLL | None, str]] = {}


def library_or_reason(
    name: str, source: str, signatures: dict[str, tuple[object, Sequence[object]]]
) -> tuple[ctypes.CDLL | None, str]:
    """The loaded library, or None and why not (``SJC_NATIVE=0``, no compiler, a failed build)."""
    if disabled():
        return None, "disabled by SJC_NATIVE=0"
    key = (name, source)
    if key not in _LOADED:
        try:
            _LOADED[key] = build_library(name, source, signatures), ""
        except NativeUnavailable as exc:
            _LOADED[key] = None, str(exc)
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
