"""Run-folder files: atomic writes that keep a plain file's permissions."""

from __future__ import annotations

import os
import stat

from sjc_core.files.atomic import write_text


def test_atomic_writes_get_the_umask_permissions_not_owner_only(tmp_path):
    mask = os.umask(0o027)
    try:
        from sjc_core.files import atomic

        atomic.process_umask.cache_clear()
        path = write_text(tmp_path / "recipe.toml", "a = 1\n")
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        assert path.read_text() == "a = 1\n"
        assert [p.name for p in tmp_path.iterdir()] == ["recipe.toml"]  # no temporary left
    finally:
        os.umask(mask)
        atomic.process_umask.cache_clear()


def test_temporaries_are_recognisable_and_never_left_behind(tmp_path):
    import pytest

    from sjc_core.files import atomic

    target = tmp_path / "checkpoints" / "last.safetensors"
    with atomic.atomic_path(target) as tmp:
        # the target's own name (extension-sniffing writers), in a recognisable private folder
        assert tmp.name == "last.safetensors" and tmp.parent.name.startswith(".sjc-tmp.last.")
        assert tmp.parent.parent == target.parent
        (tmp.parent / ".tmpXYZ123").write_bytes(b"a writer's own temporary file")
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.safetensors"]

    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"new" and sorted(p.name for p in target.parent.iterdir()) == ["last.safetensors"]

    (tmp_path / ".sjc-tmp.recipe.abc.toml").write_bytes(b"x" * 10)  # a file, as older versions left
    killed = target.parent / ".sjc-tmp.last.def"  # what a kill -9 mid-write leaves now
    killed.mkdir()
    (killed / "last.safetensors").write_bytes(b"x" * 5)
    (killed / ".tmpABC123").write_bytes(b"x" * 7)
    (tmp_path / ".hidden-but-mine").write_bytes(b"keep")
    assert atomic.remove_stale_temps(tmp_path) == (2, 22)
    assert sorted(p.name for p in tmp_path.rglob("*")) == [".hidden-but-mine", "checkpoints", "last.safetensors"]


def test_write_errors_are_one_line_naming_the_file(tmp_path):
    import pytest

    from sjc_core.files import atomic

    a_file = tmp_path / "views"
    a_file.write_text("not a folder")
    with pytest.raises(atomic.WriteError) as error:
        write_text(a_file / "step_000002.png", "x")
    assert str(error.value) == f"{a_file / 'step_000002.png'}: cannot write (Not a directory: {a_file} is a file)"

    folder = tmp_path / "status.json"
    folder.mkdir()
    with pytest.raises(atomic.WriteError, match=r"status.json: cannot write \(Is a directory\)"):
        write_text(folder, "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json", "views"]  # no temporary left


def test_append_keeps_whole_lines_when_the_disk_is_full(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "metrics.jsonl"
    script = (  # every file capped at 100 bytes: writing past it fails with EFBIG, like a full disk
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))\n"
        "from sjc_core.files.atomic import WriteError, append_jsonl\n"
        "append_jsonl(sys.argv[1], {'step': 1, 'pad': 'x' * 40})\n"
        "try:\n"
        "    append_jsonl(sys.argv[1], {'step': 2, 'pad': 'y' * 40})\n"
        "except WriteError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: cannot write (File too large)"
    assert path.read_text() == '{"step": 1, "pad": "' + "x" * 40 + '"}\n'  # the cut-off second record is gone


def test_depth_panel_spans_the_object_not_the_background():
    """A view's depth panel is scaled over the object's own depth range (issue 15): the
    object's near and far pixels come out bright and dark, the background darkest."""
    import pytest
    import torch

    from sjc_core.files import pictures
    from sjc_core.runs.turntable import object_depth_range

    depth = torch.full((8, 8), 10.0)  # background
    depth[2:6, 2:6] = torch.linspace(1.4, 1.6, 16).reshape(4, 4)  # the object
    near, far = object_depth_range(depth)
    assert (near, far) == pytest.approx((1.4, 1.6))
    picture = pictures.depth_to_rgb(depth, near, far)[..., 0].astype(int)
    assert picture[2, 2] >= 250 and picture[5, 5] <= 5  # the object's own range spans the grey scale
    assert picture[0, 0] == 0  # background beyond the object: dark
    assert object_depth_range(torch.full((4, 4), 10.0)) == (None, None)  # nothing near: global scaling


def test_depth_panel_recovers_the_surface_depth_of_half_transparent_pixels():
    """With the opacity, a pixel's own surface depth is unmixed from the background's: a
    half-opaque pixel at the object's near end is as bright as an opaque one there."""
    import torch

    from sjc_core.render.composite import BACKGROUND_DEPTH
    from sjc_core.runs.turntable import depth_panel

    surface = torch.full((8, 8), 2.0)
    surface[:, 4:] = 3.0  # right half farther
    opacity = torch.ones(8, 8)
    opacity[0, 0] = 0.5  # a half-transparent pixel of the near half
    opacity[7, 7] = 0.0  # nothing there
    depth = opacity * surface + (1 - opacity) * BACKGROUND_DEPTH
    panel = depth_panel(depth, opacity)[..., 0].astype(int)
    assert panel[3, 1] == 255 and panel[3, 6] == 0  # near bright, far dark: the range is the object's
    assert abs(panel[0, 0] - 128) <= 1  # near surface, faded by its opacity (not pushed to the far end)
    assert panel[7, 7] == 0


def test_the_lock_file_is_there_while_held_and_gone_after(tmp_path):
    from sjc_core.files.locks import LOCK_NAME, folder_lock, lock_holder

    with folder_lock(tmp_path, "sjc test"):
        assert (tmp_path / LOCK_NAME).is_file()
        assert lock_holder(tmp_path) == f"pid {os.getpid()}, sjc test"
    assert not (tmp_path / LOCK_NAME).exists() and lock_holder(tmp_path) is None
    with folder_lock(tmp_path, "again"):  # and it can be taken again
        assert lock_holder(tmp_path) == f"pid {os.getpid()}, again"
    assert list(tmp_path.iterdir()) == []
