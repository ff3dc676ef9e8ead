"""Files a run writes: pictures, videos, JSON lines, and atomic replacement of anything.

Every write goes to a temporary file in the same folder and is renamed into place, so an
interrupted run never leaves a half-written checkpoint or image behind. Temporary files are
named ``.sjc-tmp.*`` so that those a killed process leaves behind can be recognised and
removed (:func:`remove_stale_temps`, called once a folder's lock is taken).

A write that fails (full disk, no permission, a file where a folder should be) raises
:class:`WriteError`, a one-line :class:`~sjc_core.errors.SjcError` naming the file and the
cause; the file it would have replaced is left as it was.

:func:`folder_lock` is the one lock per output folder (``fcntl.flock`` on ``.sjc.lock``
inside it): the kernel drops it when the process ends, however it ends, so a killed run
never leaves a stale lock.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from sjc_core.errors import SjcError

try:  # POSIX; elsewhere folders are not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

TEMP_PREFIX = ".sjc-tmp."  # every temporary file of an atomic write starts with this
LOCK_NAME = ".sjc.lock"  # the lock file inside a locked folder

# errno values that mean "the disk or the folder refuses": no fallback can help
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


class WriteError(SjcError):
    """Writing ``path`` failed; one line naming the file and the cause."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        self.path = Path(path)
        self.errno = getattr(cause, "errno", None)
        super().__init__(f"{path}: cannot write ({os_cause(cause)})")


def os_cause(exc: BaseException) -> str:
    """The readable cause of an OSError ('No space left on device'), else its text."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def describe_os_error(exc: OSError) -> str:
    """One line for any OSError: the file it names, then the cause."""
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    where = " -> ".join(names)
    return f"{where}: {os_cause(exc)}" if where else os_cause(exc)


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """The process umask (read once: setting it to read it is not thread-safe)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file has ``path``'s own name inside a private folder ``.sjc-tmp.*`` beside
    it, so writers that make temporary files of their own next to their target (safetensors
    does) make them in there too: a process killed mid-write leaves only ``.sjc-tmp.*``
    behind, which :func:`remove_stale_temps` recognises. The result gets the permissions of
    a plainly created file (0666 less the umask), not mkstemp's owner-only 0600, so run
    folders can be shared like any other output.
    """
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError as exc:  # a file where a folder should be
            raise NotADirectoryError(errno.ENOTDIR, f"Not a directory: {exc.filename} is a file") from None
        tmp_dir = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{path.stem}.", dir=path.parent))
    except OSError as exc:
        raise WriteError(path, exc) from None
    tmp = tmp_dir / path.name
    try:
        try:
            yield tmp
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except OSError as exc:
            raise WriteError(path, exc) from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON record (metrics are appended, never rewritten).

    A record that cannot be written whole (full disk) is cut off again, so the file keeps
    only whole lines; the failure is a :class:`WriteError`.
    """
    line = memoryview((json.dumps(record) + "\n").encode("utf-8"))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise WriteError(path, exc) from None
    try:
        size = os.fstat(fd).st_size
        try:
            while line:
                line = line[os.write(fd, line):]
        except OSError as exc:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise WriteError(path, exc) from None
    finally:
        os.close(fd)


def remove_stale_temps(root: Path) -> tuple[int, int]:
    """Remove what atomic writes left under ``root`` when killed: (entries, bytes removed).

    Call it only while holding ``root``'s lock: then no other sjc process is writing there,
    and every ``.sjc-tmp.*`` entry was left by a process that died mid-write.
    """
    count = size = 0
    for folder, dirnames, names in os.walk(root):
        for name in [d for d in dirnames if d.startswith(TEMP_PREFIX)]:
            dirnames.remove(name)  # not walked into: removed whole
            stale = Path(folder) / name
            size += sum(p.stat().st_size for p in stale.rglob("*") if p.is_file() and not p.is_symlink())
            shutil.rmtree(stale, ignore_errors=True)
            count += 1
        for name in names:
            if name.startswith(TEMP_PREFIX):  # a file: older versions wrote those
                stale = Path(folder) / name
                try:
                    size += stale.lstat().st_size
                    stale.unlink()
                    count += 1
                except OSError:
                    pass
    return count, size


class FolderInUse(SjcError):
    """Another process holds the folder's lock."""


def lock_holder(root: Path) -> str | None:
    """Who holds ``root``'s lock ('pid 123, sjc run'), or None when it is free; takes nothing.

    Probes with a shared lock, so two probes never disturb each other.
    """
    if fcntl is None:
        return None
    try:
        fd = os.open(root / LOCK_NAME, os.O_RDONLY)
    except OSError:  # no lock file: never locked
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_text(fd)
        except OSError:  # a filesystem without locks: nobody can hold one there
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _holder_text(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"pid {int(info['pid'])}, {info.get('command', 'sjc')}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


def in_use_error(root: Path, holder: str) -> FolderInUse:
    return FolderInUse(f"{root}: in use by another sjc process ({holder}); wait for it to end, or stop it")


@contextmanager
def folder_lock(root: Path, command: str) -> Iterator[None]:
    """Hold ``root``'s lock (``root/.sjc.lock``) for the block; :class:`FolderInUse` if taken.

    ``root`` must exist. The lock file records the holder's pid and ``command`` for the
    message another process shows. It is released when the block ends or the process dies.
    """
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    path = root / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    except OSError as exc:
        raise WriteError(path, exc) from None
    try:
        deadline = time.monotonic() + 0.5  # another process's probe holds a shared lock for microseconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise in_use_error(root, _holder_text(fd)) from None
                time.sleep(0.02)
            except OSError:  # a filesystem without locks (some network mounts): go on unlocked
                break
    except BaseException:
        os.close(fd)
        raise
    try:
        try:  # who holds it, for the message another process shows (best effort)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command}).encode("utf-8"), 0)
        except OSError:
            pass
        yield
    finally:
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # releases the lock


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """[3|1, H, W] or [H, W, 3] or [H, W] values in [0, 1] -> uint8 [H, W, 3]."""
    array = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    array = array[..., :3]
    return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def depth_to_rgb(depth: torch.Tensor | np.ndarray, near: float | None = None, far: float | None = None) -> np.ndarray:
    """A depth map as a grey picture: near is bright, far (and background) dark."""
    d = depth.detach().float().cpu().numpy() if isinstance(depth, torch.Tensor) else np.asarray(depth, dtype=np.float32)
    near = float(np.nanmin(d)) if near is None else near
    far = float(np.nanmax(d)) if far is None else far
    scaled = 1.0 - (d - near) / max(far - near, 1e-8)
    return to_uint8(np.clip(scaled, 0.0, 1.0))


def side_by_side(*images: np.ndarray) -> np.ndarray:
    """Concatenate uint8 pictures horizontally, resizing each to the first one's height."""
    height = images[0].shape[0]
    resized = [_resize_nearest(img, height) for img in images]
    return np.concatenate(resized, axis=1)


def _resize_nearest(image: np.ndarray, height: int) -> np.ndarray:
    if image.shape[0] == height:
        return image
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    rows = (np.arange(height) * image.shape[0] / height).astype(int)
    cols = (np.arange(width) * image.shape[1] / width).astype(int)
    return image[rows][:, cols]


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement, so 64x64 renders are visible in viewers."""
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1) if factor > 1 else image


def write_image(path: Path, image: np.ndarray) -> Path:
    """Write a uint8 picture (PNG by extension), atomically."""
    import imageio.v3 as iio

    with atomic_path(path) as tmp:
        iio.imwrite(tmp, image, extension=path.suffix)
    return path


def write_video(path: Path, frames: Sequence[np.ndarray], fps: int = 20, warn: Callable[[str], None] | None = None) -> Path:
    """Write an mp4 through imageio-ffmpeg; when ffmpeg cannot run, fall back to a GIF.

    Returns the path actually written (``.gif`` in the fallback case).
    """
    import imageio.v2 as imageio

    frames = [_even(f) for f in frames]
    try:
        with atomic_path(path) as tmp:
            writer = imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", quality=8, macro_block_size=1)
            try:
                for frame in frames:
                    writer.append_data(frame)
            finally:
                writer.close()
        return path
    except WriteError as exc:
        if exc.errno in DISK_ERRNOS:  # a full disk or a refusing folder: a GIF cannot help
            raise
        return _gif_instead(path, frames, fps, warn, exc)
    except Exception as exc:  # ffmpeg missing or broken: keep the run's result anyway
        return _gif_instead(path, frames, fps, warn, exc)


def _gif_instead(
    path: Path, frames: Sequence[np.ndarray], fps: int, warn: Callable[[str], None] | None, exc: Exception
) -> Path:
    import imageio.v2 as imageio

    gif = path.with_suffix(".gif")
    with atomic_path(gif) as tmp:
        imageio.mimsave(tmp, frames, format="GIF", duration=1.0 / fps, loop=0)
    (warn or _stderr)(f"could not write {path.name} with ffmpeg ({type(exc).__name__}); wrote {gif.name} instead")
    return gif


def _even(frame: np.ndarray) -> np.ndarray:
    """libx264 wants even sizes; pad by one pixel where needed."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if (h % 2 or w % 2) else frame


def read_video_frames(path: Path) -> list[np.ndarray]:
    """All frames of a video we wrote (for tests and galleries)."""
    import imageio.v3 as iio

    return list(iio.imiter(path))


def strip(frames: Iterable[np.ndarray], count: int) -> np.ndarray:
    """``count`` evenly spaced frames side by side (for READMEs and galleries)."""
    frames = list(frames)
    picks = np.linspace(0, len(frames) - 1, count).round().astype(int)
    return np.concatenate([frames[i] for i in picks], axis=1)


def _stderr(message: str) -> None:
    print(f"sjc: warning: {message}", file=sys.stderr)
