"""Task profiles: what one task of a workload costs to compute and to move.

The compute cost comes, in order of preference, from

1. a ``scripts/bench_kernels.py --json`` file named by the scenario's ``calibration`` key
   (the median ``execute (default)`` time of the kind at the workload's example size), or
2. the kind's own ``TaskKind.cost(params, data_len)`` in work units (~1 ms of a reference
   core each), evaluated on the kind's real example input of that size.

Bytes on the wire are the real frame encodings of ``mesh.wire`` (the task frame with the real
parameters, the result frame with a 64-byte signature) plus the payloads: the example input's
length, and an output size estimated per kind from its parameters.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mesh import wire
from simulations.scenario import WorkloadSpec
from tasks.registry import TaskKind, default_registry

__all__ = ["TaskProfile", "load_calibration", "profile_for"]

SIGNATURE_BYTES = 64


@dataclass(frozen=True)
class TaskProfile:
    """One task of a workload: reference cost and bytes in each direction."""

    kind: str
    cost_ms: float
    in_bytes: int
    out_bytes: int
    source: str  # "bench:<file>" or "cost()"
    #: The task parameters as sent (validated by the kind).
    params: dict[str, Any] = field(default_factory=dict, compare=False)


def _output_bytes(kind: str, params: dict[str, Any], data_len: int) -> int:
    if kind == "upscale":
        # Output pixels at the cost model's ~0.3 bytes/pixel for a compressed input.
        in_px = data_len / 0.3
        return int(in_px * float(params.get("scale", 2.0)) ** 2 * 0.3)
    if kind == "raytrace":
        bpp = 3 if params.get("format", "rgb8") == "rgb8" else 12
        return int(params.get("w", 64)) * int(params.get("h", 64)) * bpp
    if kind == "pathfind":
        return 4096
    return data_len  # physics, flocking, echo: the same array shape back


def load_calibration(path: str) -> dict[tuple[str, str], float]:
    """``(kind, size) -> ms`` (and ``(kind, "size/variant")`` for kinds benchmarked per
    variant, e.g. upscale's ``mode``) from a ``scripts/bench_kernels.py --json`` file; empty
    when absent or unreadable.

    Current files carry, per (kind, size, variant), ``execute_ms`` (the whole ``execute``:
    decode, compute, encode, at the kind's default parameters) and ``default_ms`` (the compute
    core a CPU-only node runs, for that variant): a plain size uses ``execute_ms``, a named
    variant ``default_ms``. Older files (``impl == "execute (default)"``, ``ms``) still load.
    """
    if not path or not Path(path).is_file():
        return {}
    try:
        doc = json.loads(Path(path).read_text())
        out: dict[tuple[str, str], float] = {}
        for r in doc.get("results", []):
            kind, size = str(r["kind"]), str(r["size"])
            if "impl" in r:
                if r["impl"] == "execute (default)":
                    out[(kind, size)] = float(r["ms"])
            elif r.get("variant"):
                out[(kind, f"{size}/{r['variant']}")] = float(r["default_ms"])
            else:
                out[(kind, size)] = float(r["execute_ms"])
        return out
    except (OSError, ValueError, KeyError, TypeError):
        return {}


@functools.cache
def _example(kind_name: str, size: str) -> tuple[dict[str, Any], int]:
    kind: TaskKind = default_registry().get(kind_name)
    if kind.example is None:
        return {}, 1024
    params, data = kind.example(np.random.default_rng(0), size)
    return dict(params), len(data)


def profile_for(
    w: WorkloadSpec, calibration: dict[tuple[str, str], float], cal_name: str = ""
) -> TaskProfile:
    """The task profile of workload ``w`` (see the module docstring)."""
    kind = default_registry().get(w.kind)
    ex_params, data_len = _example(w.kind, w.size)
    params = kind.validate_params({**ex_params, **dict(w.params)}, data_len)
    extra = dict(w.params)
    variant = f"{w.size}/{extra.pop('mode')}" if "mode" in extra else w.size
    if (w.kind, variant) in calibration and not extra:
        # Only where the workload runs the benchmarked input (its parameters differ at most
        # in the benchmarked variant); other sizes fall back to the kind's cost model.
        cost, source = calibration[(w.kind, variant)], f"bench:{cal_name}"
    else:
        cost, source = float(kind.cost(params, data_len)), "cost()"
    rec = wire.TaskRecord(b"\0" * wire.TASK_ID_LEN, w.kind, params, b"", wire.ENC_RAW, int(w.deadline_ms))
    task_overhead = len(wire.encode_tasks([rec]))
    res = wire.ResultRecord(b"\0" * wire.TASK_ID_LEN, b"", wire.ENC_RAW, 1 << 40, b"\0" * SIGNATURE_BYTES)
    result_overhead = len(wire.encode_results([res]))
    out = _output_bytes(w.kind, params, data_len)
    return TaskProfile(w.kind, cost, data_len + task_overhead, out + result_overhead, source, dict(params))
