"""``flocking``: boids steering (separation, alignment, cohesion) for many 2-D agents.

Input: an ``encode_array`` float64 array ``(N, 4)``: ``x, y, vx, vy`` per agent,
N <= 50,000, positions inside ``[0, world]^2``. Output: the same layout after ``steps``
steps.

Each step: neighbours within ``radius`` come from the shared uniform grid (``_grid``);
per agent, with ``k`` neighbours,

- cohesion  ``= w_cohesion  * (mean neighbour position - x)``
- alignment ``= w_alignment * (mean neighbour velocity - v)``
- separation ``= w_separation * sum((x - x_j) / |x - x_j|^2)`` over neighbours closer than
  ``separation``

``v += (cohesion + alignment + separation) * dt``, speed clamped to ``max_speed``,
``x += v * dt``, and agents bounce off the world's edges. Sums use ``bincount`` over a
fixed pair order, so the result is bit-exact for the same input: equivalence is byte
equality. Self-check: same shape, finite, inside the world, speeds <= ``max_speed``.

Two implementations of the same arithmetic, ``numpy`` and ``torch`` (see ``_torch_ops``),
byte-identical on CPU (tested); ``CPU_BACKEND`` is the one measured faster on CPU.
``backend="auto"`` (what the worker runs) uses torch on CUDA when torch sees a GPU; that
path is built to give the same bytes (``scripts/gpu_check.sh`` checks it), and the
equivalence check also accepts outputs within ``EQUIVALENCE_RTOL`` of the world's scale
should a device differ in the last bits.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from mesh.errors import LimitExceededError, ValidationError
from tasks.codecs import ARRAY_CODECS, decode_array, encode_array
from tasks.kernels import _torch_ops as T
from tasks.kernels._common import require_array, require_finite, torch_module
from tasks.kernels._grid import candidate_pairs
from tasks.registry import Params, ParamSpec, TaskKind

MAX_AGENTS = 50_000
MAX_AGENT_STEPS = 10_000_000
COLUMNS = 4
#: The CPU implementation (the faster one in ``docs/bench_kernels.json``).
CPU_BACKEND = "numpy"
#: Let ``backend="auto"`` use CUDA when torch sees a GPU.
USE_CUDA = True
#: Outputs that are not byte-equal are still equivalent within this relative tolerance.
EQUIVALENCE_RTOL = 1e-9

F64 = npt.NDArray[np.float64]


def _decode(params: Params, data: bytes) -> F64:
    arr = decode_array(data, max_elements=MAX_AGENTS * COLUMNS)
    require_array(arr, "flocking input", dtypes=(np.float64,), ndim=2, last=COLUMNS, max_rows=MAX_AGENTS)
    if arr.shape[0] < 1:
        raise ValidationError("flocking input has no agents")
    if arr.shape[0] * params["steps"] > MAX_AGENT_STEPS:
        raise LimitExceededError(f"flocking: agents x steps exceeds {MAX_AGENT_STEPS}")
    require_finite(arr, "flocking input")
    world = params["world"]
    if float(arr[:, 0:2].min()) < 0 or float(arr[:, 0:2].max()) > world:
        raise ValidationError(f"flocking: positions must lie in [0, {world:g}]")
    if float(np.abs(arr[:, 2:4]).max()) > 1e4:
        raise LimitExceededError("flocking: |velocity| must be <= 1e4")
    return np.array(arr, dtype=np.float64)


def simulate(agents: F64, params: Params, backend: str = "auto", device: str | None = None) -> F64:
    """Advance ``agents`` (N x 4) by ``params["steps"]`` steps; returns a new array.

    ``backend``: "auto" (CUDA when present and ``USE_CUDA``, else ``CPU_BACKEND``),
    "numpy" or "torch" (on ``device``; default CUDA when present).
    """
    if backend == "auto" and not USE_CUDA and device is None:
        device = "cpu"
    impl, dev = T.pick_backend(backend, CPU_BACKEND, device)
    if impl == "torch":
        return simulate_torch(agents, params, dev)
    return simulate_numpy(agents, params)


def simulate_numpy(agents: F64, params: Params) -> F64:
    pos = np.ascontiguousarray(agents[:, 0:2], dtype=np.float64).copy()
    vel = np.ascontiguousarray(agents[:, 2:4], dtype=np.float64).copy()
    n = len(pos)
    radius, sep_d = params["radius"], params["separation"]
    dt, vmax, world = params["dt"], params["max_speed"], params["world"]
    for _ in range(params["steps"]):
        ci, cj = candidate_pairs(pos, radius)
        d = pos[cj] - pos[ci]
        dist2 = d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]
        near = (dist2 < radius * radius) & (dist2 > 0.0)
        i, j, d, dist2 = ci[near], cj[near], d[near], dist2[near]
        both_a = np.concatenate([i, j])
        both_b = np.concatenate([j, i])
        count = np.bincount(both_a, minlength=n).astype(np.float64)
        has = count > 0
        safe = np.where(has, count, 1.0)
        close = dist2 < sep_d * sep_d
        steer = np.zeros((n, 2))
        for a in range(2):
            mean_p = np.bincount(both_a, weights=pos[both_b, a], minlength=n) / safe
            mean_v = np.bincount(both_a, weights=vel[both_b, a], minlength=n) / safe
            push = np.where(close, d[:, a] / np.where(close, dist2, 1.0), 0.0)
            sep = np.bincount(j, weights=push, minlength=n) - np.bincount(i, weights=push, minlength=n)
            steer[:, a] = (
                np.where(
                    has,
                    params["w_cohesion"] * (mean_p - pos[:, a])
                    + params["w_alignment"] * (mean_v - vel[:, a]),
                    0.0,
                )
                + params["w_separation"] * sep
            )
        vel += steer * dt
        speed = np.sqrt(vel[:, 0] * vel[:, 0] + vel[:, 1] * vel[:, 1])
        over = speed > vmax
        vel[over] *= (vmax / speed[over])[:, None]
        pos += vel * dt
        low, high = pos < 0.0, pos > world
        vel[(low & (vel < 0)) | (high & (vel > 0))] *= -1.0
        np.clip(pos, 0.0, world, out=pos)
    return np.column_stack([pos, vel])


def simulate_torch(agents: F64, params: Params, device: str = "cpu", *, ranked: bool | None = None) -> F64:
    """``simulate_numpy`` on torch (``device`` "cpu" or "cuda"); the same bytes on CPU.

    ``ranked`` picks the ordered-sum strategy (default: ranked on CUDA only).
    """
    torch = torch_module()
    rk = device != "cpu" if ranked is None else ranked
    with torch.inference_mode():
        a0 = torch.from_numpy(np.array(agents, dtype=np.float64)).to(device)
        pos = a0[:, 0:2].contiguous()
        vel = a0[:, 2:4].contiguous()
        n = len(pos)
        radius, sep_d = params["radius"], params["separation"]
        dt, vmax, world = params["dt"], params["max_speed"], params["world"]
        wc, wa, ws = params["w_cohesion"], params["w_alignment"], params["w_separation"]
        for _ in range(params["steps"]):
            ci, cj = T.candidate_pairs(pos, radius)
            d = pos[cj] - pos[ci]
            dist2 = d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]
            near = (dist2 < radius * radius) & (dist2 > 0.0)
            i, j, d, dist2 = ci[near], cj[near], d[near], dist2[near]
            both_a = torch.cat([i, j])
            both_b = torch.cat([j, i])
            count = torch.bincount(both_a, minlength=n).to(torch.float64)
            has = count > 0
            safe = torch.where(has, count, 1.0)
            close = dist2 < sep_d * sep_d
            sum_a = T.OrderedSum(both_a, n, ranked=rk)
            sum_i = T.OrderedSum(i, n, ranked=rk)
            sum_j = T.OrderedSum(j, n, ranked=rk)
            cols = []
            for a in range(2):
                mean_p = sum_a(pos[both_b, a]) / safe
                mean_v = sum_a(vel[both_b, a]) / safe
                push = torch.where(close, d[:, a] / torch.where(close, dist2, 1.0), 0.0)
                sep = sum_j(push) - sum_i(push)
                cols.append(
                    torch.where(has, wc * (mean_p - pos[:, a]) + wa * (mean_v - vel[:, a]), 0.0) + ws * sep
                )
            steer = torch.stack(cols, dim=1)
            vel = vel + steer * dt
            speed = T.sqrt(vel[:, 0] * vel[:, 0] + vel[:, 1] * vel[:, 1])
            over = speed > vmax
            vel = torch.where(over[:, None], vel * T.rdiv(vmax, speed)[:, None], vel)
            pos = pos + vel * dt
            low, high = pos < 0.0, pos > world
            vel = torch.where((low & (vel < 0)) | (high & (vel > 0)), -vel, vel)
            pos = pos.clamp(0.0, world)
        return T.to_numpy(torch.cat([pos, vel], dim=1))


def run(params: Params, data: bytes) -> bytes:
    return encode_array(simulate(_decode(params, data), params), params["codec"])


def _cost(params: Params, data_len: int) -> float:
    # ~2.6 us per agent-step at ~10 neighbours each on one core (bench_kernels).
    agents = max(1, (data_len - 16) // (COLUMNS * 8))
    return float(0.5 + 0.0026 * agents * params["steps"])


def _equivalent(params: Params, a: bytes, b: bytes) -> bool:
    """Byte equality, else (a device differing in the last bits) the same shape and every
    value within ``EQUIVALENCE_RTOL`` of the largest of them."""
    if a == b:
        return True
    try:
        fa = decode_array(a, max_elements=MAX_AGENTS * COLUMNS)
        fb = decode_array(b, max_elements=MAX_AGENTS * COLUMNS)
    except ValidationError:
        return False
    if fa.shape != fb.shape or fa.dtype != np.float64 or fb.dtype != np.float64:
        return False
    if not (np.isfinite(fa).all() and np.isfinite(fb).all()):
        return False
    scale = max(1.0, float(np.abs(fa).max(initial=0.0)))
    return float(np.abs(fa - fb).max(initial=0.0)) <= EQUIVALENCE_RTOL * scale


def _self_check(params: Params, data: bytes, output: bytes) -> bool:
    try:
        agents = _decode(params, data)
        out = decode_array(output, max_elements=MAX_AGENTS * COLUMNS)
    except ValidationError:
        return False
    if out.shape != agents.shape or out.dtype != np.float64 or not bool(np.isfinite(out).all()):
        return False
    if bool((out[:, 0:2] < 0).any()) or bool((out[:, 0:2] > params["world"]).any()):
        return False
    speed = np.sqrt((out[:, 2:4] ** 2).sum(axis=1))
    start = np.sqrt((agents[:, 2:4] ** 2).sum(axis=1))
    return bool((speed <= np.maximum(params["max_speed"], start) * (1 + 1e-9)).all())


def random_flock(rng: np.random.Generator, n: int, world: float, speed: float = 5.0) -> F64:
    pos = rng.uniform(0, world, (n, 2))
    ang = rng.uniform(0, 2 * np.pi, n)
    vel = np.column_stack([np.cos(ang), np.sin(ang)]) * speed
    return np.column_stack([pos, vel]).astype(np.float64)


_EXAMPLE_SIZES = {"small": (500, 10), "medium": (5_000, 10), "large": (50_000, 5)}


def _example(rng: np.random.Generator, size: str) -> tuple[Params, bytes]:
    n, steps = _EXAMPLE_SIZES[size]
    world = float(np.sqrt(n) * 6.0)  # ~10 neighbours within radius 10
    params: Params = {**FLOCKING_DEFAULTS, "steps": steps, "world": world}
    return params, encode_array(random_flock(rng, n, world), "raw")


FLOCKING_PARAMS = {
    "steps": ParamSpec(int, default=10, minimum=1, maximum=500, doc="fixed steps"),
    "dt": ParamSpec(float, default=0.1, minimum=1e-4, maximum=1.0, doc="step length"),
    "radius": ParamSpec(float, default=10.0, minimum=0.01, maximum=1e4, doc="perception radius"),
    "separation": ParamSpec(float, default=3.0, minimum=0.0, maximum=1e4, doc="separation distance"),
    "w_cohesion": ParamSpec(float, default=0.05, minimum=0.0, maximum=100.0, doc="cohesion weight"),
    "w_alignment": ParamSpec(float, default=0.3, minimum=0.0, maximum=100.0, doc="alignment weight"),
    "w_separation": ParamSpec(float, default=2.0, minimum=0.0, maximum=1000.0, doc="separation weight"),
    "max_speed": ParamSpec(float, default=8.0, minimum=0.01, maximum=1e4, doc="speed limit"),
    "world": ParamSpec(float, default=500.0, minimum=1.0, maximum=1e6, doc="square world side"),
    "codec": ParamSpec(str, default="raw", choices=ARRAY_CODECS, doc="output array codec"),
}
FLOCKING_DEFAULTS: Params = {k: v.default for k, v in FLOCKING_PARAMS.items()}

FLOCKING = TaskKind(
    name="flocking",
    description="boids steering (separation, alignment, cohesion) for up to 50,000 2-D agents",
    params=FLOCKING_PARAMS,
    execute=run,
    cost=_cost,
    deterministic=True,
    equivalent=_equivalent,
    self_check=_self_check,
    example=_example,
    max_input_bytes=MAX_AGENTS * COLUMNS * 8 + 64,
    tolerance=(
        "bit-exact on CPU (numpy and torch give the same bytes; CUDA is built to); equivalent "
        f"also within {EQUIVALENCE_RTOL:g} of the largest |value|; self-check: finite, inside "
        "the world, speeds <= max_speed"
    ),
    extra={"max_agents": MAX_AGENTS, "columns": "x y vx vy"},
)
