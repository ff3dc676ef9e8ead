"""sjc_core.native: build, cache and load small C sources."""

from __future__ import annotations

import ctypes

import pytest

from sjc_core import native


def _source(value: int) -> str:
    return f"int answer(int x) {{ return x + {value}; }}\n"


def test_builds_once_per_source_and_keeps_only_the_newest(tmp_path, monkeypatch):
    if native.compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("SJC_CACHE_DIR", str(tmp_path))
    signatures = {"answer": (ctypes.c_int, [ctypes.c_int])}
    first = native.build_library("probe", _source(1), signatures)
    assert first.answer(41) == 42
    again = native.build_library("probe", _source(1), signatures)  # cached: no second file
    assert again.answer(1) == 2 and len(list((tmp_path / "kernels").glob("probe_*.so"))) == 1
    newer = native.build_library("probe", _source(2), signatures)
    assert newer.answer(40) == 42
    assert len(list((tmp_path / "kernels").glob("probe_*.so"))) == 1
    assert first.answer(0) == 1  # the process keeps its loaded copy


def test_a_compile_error_is_one_line(tmp_path, monkeypatch):
    if native.compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("SJC_CACHE_DIR", str(tmp_path))
    with pytest.raises(native.NativeUnavailable) as info:
        native.build_library("broken", "int f( {\n", {})
    assert "failed" in str(info.value) and "\n" not in str(info.value)
