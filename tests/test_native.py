"""sjc_core.native: build, cache and load small C sources."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sjc_core.native import build
from sjc_core.native import cache as native_cache

SIGNATURES = {"answer": (ctypes.c_int, [ctypes.c_int])}


def _source(value: int) -> str:
    return f"int answer(int x) {{ return x + {value}; }}\n"


def _planted(path: Path, marker: Path) -> None:
    """A library that, once loaded, proves it by writing ``marker`` (and answers wrongly)."""
    source = path.parent / "planted.c"
    source.write_text(
        "#include <stdio.h>\n"
        "__attribute__((constructor)) static void planted(void) {\n"
        f"    FILE *f = fopen({json.dumps(str(marker))}, \"w\"); if (f) {{ fputs(\"ran\", f); fclose(f); }}\n"
        "}\n"
        "int answer(int x) { return -1; }\n"
    )
    subprocess.run([build.compiler(), "-shared", "-fPIC", str(source), "-o", str(path)], check=True)
    source.unlink()


def _record(library: Path) -> None:
    """Write the hash record sjc would write for ``library``'s present bytes (a forgery)."""
    digest = hashlib.sha256(library.read_bytes()).hexdigest()
    Path(f"{library}{native_cache.HASH_SUFFIX}").write_text(f"{digest}  {library.name}\n")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache in tmp_path, and a process that has loaded nothing yet."""
    if build.compiler() is None or sys.platform == "win32":
        pytest.skip("no C compiler")
    root = tmp_path / "cache"
    monkeypatch.setenv("SJC_CACHE_DIR", str(root))
    monkeypatch.delenv("SJC_NATIVE", raising=False)
    _next_run(monkeypatch)
    return root


def _next_run(monkeypatch) -> None:
    """Forget what this process loaded and warned about, as a new process would."""
    monkeypatch.setattr(build, "_LOADED", {})
    monkeypatch.setattr(build, "_BY_HASH", {})
    monkeypatch.setattr(build, "_WARNED", set())


def _built() -> Path:
    """Build ``_source(1)`` into the cache (checked) and return the cached library's path."""
    assert build.build_library("probe", _source(1), SIGNATURES).answer(41) == 42
    return build.library_path("probe", _source(1))


def _is_recorded(library: Path) -> bool:
    record = Path(f"{library}{native_cache.HASH_SUFFIX}").read_text().split()[0]
    return record == hashlib.sha256(library.read_bytes()).hexdigest()


def test_builds_once_per_source_and_keeps_only_the_newest(tmp_path, monkeypatch):
    if build.compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("SJC_CACHE_DIR", str(tmp_path))
    signatures = {"answer": (ctypes.c_int, [ctypes.c_int])}
    first = build.build_library("probe", _source(1), signatures)
    assert first.answer(41) == 42
    again = build.build_library("probe", _source(1), signatures)  # cached: no second file
    assert again.answer(1) == 2 and len(list((tmp_path / "kernels").glob("probe_*.so"))) == 1
    newer = build.build_library("probe", _source(2), signatures)
    assert newer.answer(40) == 42
    assert len(list((tmp_path / "kernels").glob("probe_*.so"))) == 1
    assert len(list((tmp_path / "kernels").glob(f"probe_*.so{native_cache.HASH_SUFFIX}"))) == 1
    assert first.answer(0) == 1  # the process keeps its loaded copy


def test_a_compile_error_is_one_line(tmp_path, monkeypatch):
    if build.compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("SJC_CACHE_DIR", str(tmp_path))
    with pytest.raises(build.NativeUnavailable) as info:
        build.build_library("broken", "int f( {\n", {})
    assert "failed" in str(info.value) and "\n" not in str(info.value)


def test_folders_are_created_private_whatever_the_umask(tmp_path, monkeypatch):
    if build.compiler() is None or sys.platform == "win32":
        pytest.skip("no C compiler")
    root = tmp_path / "home" / "cache"
    monkeypatch.setenv("SJC_CACHE_DIR", str(root))
    old = os.umask(0o002)
    try:
        library = _built()
    finally:
        os.umask(old)
    for folder in (tmp_path / "home", root, root / "kernels"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for file in (library, Path(f"{library}{native_cache.HASH_SUFFIX}")):
        assert stat.S_IMODE(file.stat().st_mode) & 0o077 == 0, file
    assert _is_recorded(library)


@pytest.mark.parametrize("record", ["none", "of the genuine build"])
def test_a_planted_library_is_never_loaded_and_is_rebuilt(cache, tmp_path, capfd, record):
    """A library sjc did not build, under the very name sjc would load, without a record or
    with the record of the library it replaced. (A matching record can only come from this
    user, the 0700 folder being checked first: that is the user's word, trusted.)"""
    marker = tmp_path / "marker"
    if record == "none":
        library = build.library_path("probe", _source(1))
        build.build_library("probe", _source(2), SIGNATURES)  # the folders, as sjc makes them
    else:
        library = _built()
    _planted(library, marker)
    if record == "none":
        assert not Path(f"{library}{native_cache.HASH_SUFFIX}").exists()
    lib, reason = build.library_or_reason("probe", _source(1), SIGNATURES)
    assert lib is not None, reason
    assert lib.answer(41) == 42 and not marker.exists()
    assert _is_recorded(library)
    assert capfd.readouterr().err == ""  # a rebuild is silent


@pytest.mark.parametrize("where", ["root", "kernels"])
@pytest.mark.parametrize("mode", [0o770, 0o707])
def test_a_cache_folder_others_can_write_loads_nothing(cache, tmp_path, monkeypatch, capfd, where, mode):
    """Even a library whose record matches is not loaded from a folder others can write: native
    code is off, with one line saying why and how to fix it, for every library."""
    marker = tmp_path / "marker"
    library = _built()
    _planted(library, marker)
    _record(library)
    folder = cache if where == "root" else cache / "kernels"
    folder.chmod(mode)
    first = build.library_or_reason("probe", _source(1), SIGNATURES)
    second = build.library_or_reason("other", _source(3), SIGNATURES)
    assert first[0] is None and second[0] is None and first[1] == second[1]
    assert not marker.exists()
    who = "group" if mode == 0o770 else "others"
    assert first[1] == f"{folder} is writable by {who} (chmod 700 {folder})"
    assert capfd.readouterr().err.splitlines() == [f"sjc: native code off: {first[1]}"]
    folder.chmod(0o700)  # fixed as the line says: the next run rebuilds nothing it cannot trust
    Path(f"{library}{native_cache.HASH_SUFFIX}").unlink()
    _next_run(monkeypatch)
    lib, reason = build.library_or_reason("probe", _source(1), SIGNATURES)
    assert lib is not None and lib.answer(1) == 2 and not marker.exists(), reason


def test_a_cache_folder_of_another_user_loads_nothing(cache, monkeypatch, capfd):
    _built()
    me = os.geteuid()
    monkeypatch.setattr(build.os, "geteuid", lambda: me + 1)
    lib, reason = build.library_or_reason("probe", _source(1), SIGNATURES)
    assert lib is None and f"is owned by uid {me}, not by you" in reason
    assert capfd.readouterr().err.splitlines() == [f"sjc: native code off: {reason}"]


def test_a_symlinked_library_is_not_loaded(cache, tmp_path, capfd):
    marker = tmp_path / "marker"
    library = _built()
    elsewhere = tmp_path / "elsewhere.so"
    _planted(elsewhere, marker)
    library.unlink()
    library.symlink_to(elsewhere)
    _record(library)  # even with the target's hash on record
    lib, reason = build.library_or_reason("probe", _source(1), SIGNATURES)
    assert lib is not None and lib.answer(41) == 42, reason
    assert not marker.exists() and not library.is_symlink() and _is_recorded(library)
    assert elsewhere.exists()  # the link is replaced, its target left alone
    assert capfd.readouterr().err == ""


def test_a_library_without_the_expected_functions_is_rebuilt(cache, capfd):
    library = _built()
    source = library.parent / "empty.c"
    source.write_text("int something_else(void) { return 0; }\n")
    subprocess.run([build.compiler(), "-shared", "-fPIC", str(source), "-o", str(library)], check=True)
    _record(library)  # a library sjc recorded, but not the one it needs
    lib, reason = build.library_or_reason("probe", _source(1), SIGNATURES)
    assert lib is not None and lib.answer(41) == 42, reason
    assert _is_recorded(library) and capfd.readouterr().err == ""


def test_an_unloadable_library_is_rebuilt(cache, capfd):
    library = _built()
    library.write_bytes(b"not a shared library\n" * 100)
    _record(library)
    lib, reason = build.library_or_reason("probe", _source(1), SIGNATURES)
    assert lib is not None and lib.answer(41) == 42, reason
    assert _is_recorded(library) and capfd.readouterr().err == ""


def test_without_memfd_a_private_copy_is_loaded_and_removed(cache, monkeypatch):
    """Where there is no memfd_create (macOS), the checked bytes go to a fresh file in the 0700
    folder, loaded and unlinked at once."""
    monkeypatch.delattr(build.os, "memfd_create", raising=False)
    library = _built()
    _next_run(monkeypatch)
    lib, reason = build.library_or_reason("probe", _source(1), SIGNATURES)
    assert lib is not None and lib.answer(1) == 2 and Path(lib._name).name.startswith(".load-"), reason
    assert sorted(p.name for p in library.parent.iterdir()) == [library.name, f"{library.name}{native_cache.HASH_SUFFIX}"]


def test_functions_missing_from_a_fresh_build_fall_back_in_one_line(cache, monkeypatch, capfd):
    """No traceback: the library that cannot serve falls back to torch for this process, and
    the next run (with what it expects) still uses native code."""
    wanted = {**SIGNATURES, "missing": (ctypes.c_int, [])}
    lib, reason = build.library_or_reason("probe", _source(1), wanted)
    assert lib is None and "lacks the function missing" in reason
    assert capfd.readouterr().err.splitlines() == [f"sjc: native code off: {reason}"]
    _next_run(monkeypatch)
    lib, reason = build.library_or_reason("probe", _source(1), SIGNATURES)
    assert lib is not None and lib.answer(1) == 2, reason


@pytest.mark.parametrize("record", ["stale", "matching"])
def test_an_empty_library_is_rebuilt(cache, record):
    library = _built()
    library.write_bytes(b"")
    if record == "matching":
        _record(library)
    lib, reason = build.library_or_reason("probe", _source(1), SIGNATURES)
    assert lib is not None and lib.answer(41) == 42, reason
    assert library.stat().st_size > 0 and _is_recorded(library)


def test_flipped_bytes_are_rebuilt(cache):
    library = _built()
    good = library.read_bytes()
    with open(library, "r+b") as file:  # in place: same file, owner and mode
        file.seek(len(good) // 2)
        file.write(bytes([good[len(good) // 2] ^ 0xFF]))
    assert not _is_recorded(library)
    lib, reason = build.library_or_reason("probe", _source(1), SIGNATURES)
    assert lib is not None and lib.answer(41) == 42, reason
    assert _is_recorded(library)


def test_a_library_from_before_hash_records_is_rebuilt(cache):
    library = _built()
    Path(f"{library}{native_cache.HASH_SUFFIX}").unlink()
    library.chmod(0o775)  # as an older sjc left it under umask 002
    lib, reason = build.library_or_reason("probe", _source(1), SIGNATURES)
    assert lib is not None and lib.answer(41) == 42, reason
    assert _is_recorded(library) and stat.S_IMODE(library.stat().st_mode) & 0o022 == 0


def test_the_real_callers_fall_back_with_one_line(cache):
    """Adamax and the voxel kernel in a fresh process, cache writable by the group: both take
    their torch paths, one line on stderr, no traceback."""
    (cache / "kernels").mkdir(parents=True)
    cache.chmod(0o775)
    script = (
        "from sjc_core.training import optim\n"
        "from sjc_plugins.fields import _voxel_native\n"
        "print(optim.fused_library() is None, _voxel_native.kernel_or_reason()[0] is None)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split() == ["True", "True"], proc.stderr
    assert proc.stderr.splitlines() == [f"sjc: native code off: {cache} is writable by group (chmod 700 {cache})"]
