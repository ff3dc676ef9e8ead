"""sjc camera poses -> MVDream's camera embedding (16 numbers per view).

MVDream conditions each view on its flattened 4x4 camera-to-world matrix, as its own
``get_camera`` builds it: a camera on the unit sphere at elevation e and azimuth a,
``(cos e sin a, sin e, cos e cos a)`` in a y-up world, looking at the origin with OpenGL axes
(x right, y up, looking along -z), then carried into Blender's z-up world by left-multiplying
``[[1,0,0],[0,0,-1],[0,1,0]]`` (y -> z, z -> -y). Its translation is unit length (MVDream's
``normalize_camera``, threestudio's ``camera_condition_type = "rotation"``).

sjc's world is y-up too with OpenGL camera axes (``sjc_core.render.cameras``), but its azimuth 0
("front") sits on -x and azimuth 90 on +z, where MVDream's sit on +z and +x. Both turn the same
way about +y, so one rotation by +90 degrees about y, ``R = [[0,0,1],[0,1,0],[-1,0,0]]``, maps sjc's
world onto MVDream's y-up world with azimuths and elevations equal. The embedding of an sjc pose
``[Rc | t]`` is therefore ``F R [Rc | t]`` (F the Blender flip) with ``t`` scaled to unit length,
flattened row by row: for sjc's camera at elevation e, azimuth a (any radius) it is exactly
``get_camera(elevation=e, azimuth=a)`` (tests/test_mvdream.py re-creates that function). The
field of view is not part of MVDream's condition.
"""

from __future__ import annotations

import torch

# sjc's y-up world -> MVDream's y-up world (rotation by +90 degrees about y), then -> Blender's z-up.
SJC_TO_MVDREAM = ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (-1.0, 0.0, 0.0))
OPENGL_TO_BLENDER = ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0))


def world_change(dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
    """The 4x4 matrix that carries an sjc pose into MVDream's (Blender) world."""
    flip = torch.tensor(OPENGL_TO_BLENDER, dtype=dtype, device=device)
    turn = torch.tensor(SJC_TO_MVDREAM, dtype=dtype, device=device)
    change = torch.eye(4, dtype=dtype, device=device)
    change[:3, :3] = flip @ turn
    return change


def camera_embedding(c2w: torch.Tensor) -> torch.Tensor:
    """MVDream's camera condition [N, 16] of sjc camera-to-world poses [N, 4, 4] (or one [4, 4]).

    Computed in float64 on the poses' device; cast it to the UNet's dtype where it is used.
    """
    poses = torch.as_tensor(c2w).to(torch.float64).reshape(-1, 4, 4)
    moved = world_change(device=poses.device) @ poses
    translation = moved[:, :3, 3]
    moved = moved.clone()
    moved[:, :3, 3] = translation / (translation.norm(dim=1, keepdim=True) + 1e-8)
    return moved.reshape(-1, 16)
