"""Built-in kernels. Each module defines one or more ``TaskKind`` values."""

from __future__ import annotations

from tasks.registry import TaskKind


def all_kinds() -> list[TaskKind]:
    from tasks.kernels.echo import ECHO

    kinds = [ECHO]
    return kinds
