"""Run-folder files: atomic writes that keep a plain file's permissions."""

from __future__ import annotations

import os
import stat

from sjc_core.artifacts import write_text


def test_atomic_writes_get_the_umask_permissions_not_owner_only(tmp_path):
    mask = os.umask(0o027)
    try:
        from sjc_core import artifacts

        artifacts._umask.cache_clear()
        path = write_text(tmp_path / "recipe.toml", "a = 1\n")
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        assert path.read_text() == "a = 1\n"
        assert [p.name for p in tmp_path.iterdir()] == ["recipe.toml"]  # no temporary left
    finally:
        os.umask(mask)
        artifacts._umask.cache_clear()
