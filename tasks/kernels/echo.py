"""``echo``: returns its input unchanged. The floor of the task path, for benchmarks."""

from __future__ import annotations

import numpy as np

from tasks.registry import Params, ParamSpec, TaskKind


def _execute(params: Params, data: bytes) -> bytes:
    return bytes(data)


def _cost(params: Params, data_len: int) -> float:
    return 0.001 + data_len / 2e9 * 1000


def _example(rng: np.random.Generator, size: str) -> tuple[Params, bytes]:
    n = {"small": 64, "medium": 64 * 1024, "large": 1024 * 1024}[size]
    return {}, rng.integers(0, 256, n, dtype=np.uint8).tobytes()


ECHO = TaskKind(
    name="echo",
    description="returns the input bytes unchanged (benchmarks, health checks)",
    params={
        "tag": ParamSpec(
            str, default="", doc="free text echoed in nothing; lets callers vary the content key"
        )
    },
    execute=_execute,
    cost=_cost,
    self_check=lambda params, data, output: data == output,
    example=_example,
    inline=True,
)
