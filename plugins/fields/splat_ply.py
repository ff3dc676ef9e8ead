"""The standard 3D Gaussian splatting ``.ply``: what splat viewers and engine plug-ins open.

One ``vertex`` element, binary little endian, every property a float32, in the order of
the original 3DGS code: ``x y z nx ny nz f_dc_0..2 f_rest_0.. opacity scale_0..2 rot_0..3``.
Opacity is stored as a logit, scales as logs (of the standard deviations), rotations as
(w, x, y, z) quaternions, colours as spherical-harmonic coefficients whose DC term gives
``rgb = 0.5 + SH_C0 * f_dc`` in [0, 1]; ``f_rest`` is channel-major (all of red's
coefficients, then green's, then blue's). Normals are zero (viewers ignore them).

:func:`read_splat_ply` parses that layout back with numpy alone (no plyfile dependency).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sjc_core.errors import SjcError
from sjc_core.files.atomic import atomic_path

SH_C0 = 0.28209479177387814  # the degree-0 spherical-harmonic constant, 1 / (2 sqrt(pi))
MAX_HEADER = 1 << 16


def property_names(rest_per_channel: int) -> list[str]:
    """The 3DGS property order for ``rest_per_channel`` higher-order coefficients per colour."""
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * rest_per_channel)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return names


def splat_table(
    means: np.ndarray,
    f_dc: np.ndarray,
    f_rest: np.ndarray,
    opacity_logits: np.ndarray,
    log_scales: np.ndarray,
    quats_wxyz: np.ndarray,
) -> np.ndarray:
    """A structured array in the 3DGS layout; ``f_rest`` is [N, 3, K] (channel-major)."""
    count = means.shape[0]
    rest = f_rest.reshape(count, -1)
    names = property_names(rest.shape[1] // 3)
    columns = [means, np.zeros((count, 3)), f_dc, rest, opacity_logits.reshape(count, 1), log_scales, quats_wxyz]
    flat = np.concatenate([np.asarray(c, dtype=np.float32).reshape(count, -1) for c in columns], axis=1)
    table = np.empty(count, dtype=[(name, "<f4") for name in names])
    for index, name in enumerate(names):
        table[name] = flat[:, index]
    return table


def write_splat_ply(path: Path, table: np.ndarray) -> Path:
    """Write the table (see :func:`splat_table`) atomically."""
    names = table.dtype.names or ()
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {table.shape[0]}"]
    header += [f"property float {name}" for name in names]
    header.append("end_header")
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(("\n".join(header) + "\n").encode("ascii"))
        handle.write(table.astype(table.dtype.newbyteorder("<"), copy=False).tobytes())
    return path


def read_splat_ply(path: Path) -> np.ndarray:
    """A binary little-endian float-only ``vertex`` ply as a structured array (names as in the file)."""
    data = Path(path).read_bytes()
    end = data.find(b"end_header\n", 0, MAX_HEADER)
    if not data.startswith(b"ply\n") or end < 0:
        raise SjcError(f"{path}: not a ply file (no 'ply' ... 'end_header' header)")
    lines = data[:end].decode("ascii", errors="replace").splitlines()
    count, names = None, []
    for line in lines[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format" and words[1:2] != ["binary_little_endian"]:
            raise SjcError(f"{path}: only binary_little_endian ply files are read (got {words[1:2]})")
        if words[0] == "element":
            if words[1] != "vertex" or count is not None:
                raise SjcError(f"{path}: expected a single 'vertex' element (got {words[1]})")
            count = int(words[2])
        if words[0] == "property":
            if words[1] != "float":
                raise SjcError(f"{path}: property {words[-1]} is {words[1]}, only float is read")
            names.append(words[2])
    if count is None:
        raise SjcError(f"{path}: no vertex element")
    dtype = np.dtype([(name, "<f4") for name in names])
    body = data[end + len(b"end_header\n") :]
    if len(body) != count * dtype.itemsize:
        raise SjcError(f"{path}: {len(body)} bytes of data for {count} vertices of {dtype.itemsize} bytes")
    return np.frombuffer(body, dtype=dtype, count=count)
