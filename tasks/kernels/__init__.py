"""Built-in kernels. Each module defines one or more ``TaskKind`` values.

Kernel modules import torch lazily (inside functions), so importing this package and
building the registry stay cheap.
"""

from __future__ import annotations

from tasks.registry import TaskKind


def all_kinds() -> list[TaskKind]:
    from tasks.kernels.echo import ECHO
    from tasks.kernels.flocking import FLOCKING
    from tasks.kernels.pathfind import PATHFIND
    from tasks.kernels.physics import PHYSICS_STEP
    from tasks.kernels.raytrace import RAYTRACE
    from tasks.kernels.upscale import UPSCALE

    kinds = [ECHO, UPSCALE, PHYSICS_STEP, RAYTRACE, PATHFIND, FLOCKING]
    return kinds
