"""``physics_step``: advance a world of rigid spheres by N fixed time steps.

Input: an ``encode_array`` float64 array of shape ``(N, 8)``, one row per body:
``x, y, z, vx, vy, vz, radius, mass`` (N <= 100,000). Output: the same layout after
``steps`` steps (``codec`` raw or zstd).

Each step (semi-implicit Euler):

1. ``v.z += gravity * dt``; ``x += v * dt``.
2. Broad phase: uniform grid with cells of twice the largest radius (``_grid``).
3. Narrow phase: overlapping pairs that approach each other exchange an impulse
   ``J = -(1 + e) v_rel.n / (1/m_i + 1/m_j)`` along the contact normal; all contacts of a
   step are resolved simultaneously, and impulses are equal and opposite, so momentum is
   conserved to rounding. Overlap is then removed at 80 % per step, split by inverse mass
   (the centre of mass does not move).
4. Walls (``walls=true``): bodies are kept in ``[r, box - r]`` on each axis and their
   outward velocity is reflected with restitution ``e``.

Deterministic: for the same input the output is bit-identical (a stable sort, fixed pair
order, ``bincount`` accumulation), so equivalence is byte equality.

Two implementations of the same arithmetic: ``numpy`` and ``torch`` (``_torch_ops``: only
correctly rounded float64 operations, in the same order, and ordered sums). On CPU they
give identical bytes (tested); ``CPU_BACKEND`` is the one measured faster on CPU
(``scripts/bench_kernels.py``). ``backend="auto"`` (what the worker runs) uses torch on
CUDA when torch sees a GPU. The CUDA path is built to give the same bytes too
(``scripts/gpu_check.sh`` checks it); should a device ever differ in the last bits, the
equivalence check also accepts outputs within ``EQUIVALENCE_RTOL`` (relative to the
world's scale) with radii and masses unchanged.

Self-check: same shape; radii and masses unchanged; all finite; inside the box when
walled; and with no walls and no gravity, total momentum equal to the input's within
1e-9 relative and kinetic energy not above the input's by more than 1 %.
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

MAX_BODIES = 100_000
MAX_BODY_STEPS = 20_000_000
MAX_COORD = 1e6
MAX_SPEED = 1e4
COLUMNS = 8
POSITION_CORRECTION = 0.8
#: Jacobi passes over each step's contacts (stacks need more than one).
SOLVER_ITERATIONS = 3
MOMENTUM_RTOL = 1e-9
ENERGY_SLACK = 0.01
#: The CPU implementation (the faster one in ``docs/bench_kernels.json``); "auto" on a
#: node without a GPU runs this one.
CPU_BACKEND = "numpy"
#: Let ``backend="auto"`` use CUDA when torch sees a GPU.
USE_CUDA = True
#: Outputs that are not byte-equal are still equivalent within this relative tolerance.
EQUIVALENCE_RTOL = 1e-9

F64 = npt.NDArray[np.float64]


def _decode_world(params: Params, data: bytes) -> F64:
    arr = decode_array(data, max_elements=MAX_BODIES * COLUMNS)
    require_array(arr, "physics_step input", dtypes=(np.float64,), ndim=2, last=COLUMNS, max_rows=MAX_BODIES)
    n = arr.shape[0]
    if n < 1:
        raise ValidationError("physics_step input has no bodies")
    if n * params["steps"] > MAX_BODY_STEPS:
        raise LimitExceededError(
            f"physics_step: {n} bodies x {params['steps']} steps exceeds {MAX_BODY_STEPS} body-steps"
        )
    require_finite(arr, "physics_step input")
    pos, vel, rad, mass = arr[:, 0:3], arr[:, 3:6], arr[:, 6], arr[:, 7]
    if not (rad > 0).all() or not (mass > 0).all():
        raise ValidationError("physics_step: radii and masses must be positive")
    if float(np.abs(pos).max()) > MAX_COORD or float(np.abs(vel).max()) > MAX_SPEED:
        raise LimitExceededError(
            f"physics_step: |position| must be <= {MAX_COORD:g}, |velocity| <= {MAX_SPEED:g}"
        )
    if params["walls"]:
        box = params["box"]
        if float(rad.max()) * 2 > box:
            raise ValidationError("physics_step: a body is wider than the box")
        if float(pos.min()) < 0 or float(pos.max()) > box:
            raise ValidationError(f"physics_step: with walls, positions must lie in [0, {box:g}]")
    return np.array(arr, dtype=np.float64)


def _resolve_contacts(
    pos: F64, vel: F64, rad: F64, inv_m: F64, ci: npt.NDArray[np.int64], cj: npt.NDArray[np.int64], e: float
) -> None:
    """One Jacobi pass over the candidate pairs: impulses, then overlap removal (in place)."""
    n = len(rad)
    d = pos[cj] - pos[ci]
    dist2 = d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2]
    rsum = rad[ci] + rad[cj]
    hit = (dist2 < rsum * rsum) & (dist2 > 0.0)
    if not hit.any():
        return
    i, j, d, rsum = ci[hit], cj[hit], d[hit], rsum[hit]
    dist = np.sqrt(dist2[hit])
    nrm = d / dist[:, None]
    dv = vel[j] - vel[i]
    vn = dv[:, 0] * nrm[:, 0] + dv[:, 1] * nrm[:, 1] + dv[:, 2] * nrm[:, 2]
    wsum = inv_m[i] + inv_m[j]
    jimp = np.where(vn < 0.0, -(1.0 + e) * vn / wsum, 0.0)
    overlap = (rsum - dist) * POSITION_CORRECTION / wsum
    for a in range(3):
        imp = jimp * nrm[:, a]
        acc = np.bincount(j, weights=imp, minlength=n) - np.bincount(i, weights=imp, minlength=n)
        vel[:, a] += acc * inv_m
        sep = overlap * nrm[:, a]
        mv = np.bincount(j, weights=sep, minlength=n) - np.bincount(i, weights=sep, minlength=n)
        pos[:, a] += mv * inv_m


def simulate(
    world: F64,
    steps: int,
    dt: float,
    gravity: float,
    restitution: float,
    walls: bool,
    box: float,
    backend: str = "auto",
    device: str | None = None,
) -> F64:
    """Advance ``world`` (N x 8, see module doc) by ``steps`` steps; returns a new array.

    ``backend``: "auto" (CUDA when present and ``USE_CUDA``, else ``CPU_BACKEND``),
    "numpy" or "torch" (on ``device``; default CUDA when present).
    """
    if backend == "auto" and not USE_CUDA and device is None:
        device = "cpu"
    impl, dev = T.pick_backend(backend, CPU_BACKEND, device)
    if impl == "torch":
        return simulate_torch(world, steps, dt, gravity, restitution, walls, box, dev)
    return simulate_numpy(world, steps, dt, gravity, restitution, walls, box)


def simulate_numpy(
    world: F64, steps: int, dt: float, gravity: float, restitution: float, walls: bool, box: float
) -> F64:
    out = np.array(world, dtype=np.float64)
    pos = np.ascontiguousarray(out[:, 0:3])
    vel = np.ascontiguousarray(out[:, 3:6])
    rad = out[:, 6].copy()
    inv_m = 1.0 / out[:, 7]
    cell = 2.0 * float(rad.max())
    e = restitution
    for _ in range(steps):
        if gravity != 0.0:
            vel[:, 2] += gravity * dt
        pos += vel * dt
        ci, cj = candidate_pairs(pos, cell)
        for _ in range(SOLVER_ITERATIONS if len(ci) else 0):
            _resolve_contacts(pos, vel, rad, inv_m, ci, cj, e)
        if walls:
            lo = rad[:, None]
            hi = box - rad[:, None]
            below = pos < lo
            above = pos > hi
            vel[below & (vel < 0)] *= -e
            vel[above & (vel > 0)] *= -e
            np.clip(pos, lo, hi, out=pos)
    out[:, 0:3] = pos
    out[:, 3:6] = vel
    return out


def _resolve_contacts_torch(
    pos: T.Tensor,
    vel: T.Tensor,
    rad: T.Tensor,
    inv_m: T.Tensor,
    ci: T.Tensor,
    cj: T.Tensor,
    e: float,
    ranked: bool,
) -> None:
    """``_resolve_contacts`` on torch tensors, the same operations in the same order."""
    torch = torch_module()
    n = len(rad)
    d = pos[cj] - pos[ci]
    dist2 = d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2]
    rsum = rad[ci] + rad[cj]
    hit = (dist2 < rsum * rsum) & (dist2 > 0.0)
    if not bool(hit.any()):
        return
    i, j, d, rsum = ci[hit], cj[hit], d[hit], rsum[hit]
    dist = T.sqrt(dist2[hit])
    nrm = d / dist[:, None]
    dv = vel[j] - vel[i]
    vn = dv[:, 0] * nrm[:, 0] + dv[:, 1] * nrm[:, 1] + dv[:, 2] * nrm[:, 2]
    wsum = inv_m[i] + inv_m[j]
    jimp = torch.where(vn < 0.0, -(1.0 + e) * vn / wsum, 0.0)
    overlap = (rsum - dist) * POSITION_CORRECTION / wsum
    sum_j = T.OrderedSum(j, n, ranked=ranked)
    sum_i = T.OrderedSum(i, n, ranked=ranked)
    for a in range(3):
        imp = jimp * nrm[:, a]
        acc = sum_j(imp) - sum_i(imp)
        vel[:, a] += acc * inv_m
        sep = overlap * nrm[:, a]
        mv = sum_j(sep) - sum_i(sep)
        pos[:, a] += mv * inv_m


def simulate_torch(
    world: F64,
    steps: int,
    dt: float,
    gravity: float,
    restitution: float,
    walls: bool,
    box: float,
    device: str = "cpu",
    *,
    ranked: bool | None = None,
) -> F64:
    """``simulate_numpy`` on torch (``device`` "cpu" or "cuda"); the same bytes on CPU.

    ``ranked`` picks the ordered-sum strategy (default: ranked on CUDA only).
    """
    torch = torch_module()
    rk = device != "cpu" if ranked is None else ranked
    with torch.inference_mode():
        w = torch.from_numpy(np.array(world, dtype=np.float64)).to(device)
        pos = w[:, 0:3].contiguous()
        vel = w[:, 3:6].contiguous()
        rad = w[:, 6].contiguous()
        inv_m = T.rdiv(1.0, w[:, 7])
        cell = 2.0 * float(rad.max())
        e = restitution
        lo = rad[:, None]
        hi = box - rad[:, None]
        for _ in range(steps):
            if gravity != 0.0:
                vel[:, 2] += gravity * dt
            pos += vel * dt
            ci, cj = T.candidate_pairs(pos, cell)
            for _ in range(SOLVER_ITERATIONS if len(ci) else 0):
                _resolve_contacts_torch(pos, vel, rad, inv_m, ci, cj, e, rk)
            if walls:
                below = pos < lo
                above = pos > hi
                vel = torch.where(below & (vel < 0), vel * -e, vel)
                vel = torch.where(above & (vel > 0), vel * -e, vel)
                pos = torch.minimum(torch.maximum(pos, lo), hi)
        out = torch.cat([pos, vel, w[:, 6:8]], dim=1)
        return T.to_numpy(out)


def run(params: Params, data: bytes) -> bytes:
    world = _decode_world(params, data)
    out = simulate(
        world,
        params["steps"],
        params["dt"],
        params["gravity"],
        params["restitution"],
        params["walls"],
        params["box"],
    )
    return encode_array(out, params["codec"])


def _cost(params: Params, data_len: int) -> float:
    # ~1.6 us per body-step on one reference core at moderate density (bench_kernels).
    bodies = max(1, (data_len - 16) // (COLUMNS * 8))
    return float(0.5 + 0.0016 * bodies * params["steps"])


def momentum(world: F64) -> F64:
    return np.asarray((world[:, 3:6] * world[:, 7:8]).sum(axis=0), dtype=np.float64)


def kinetic_energy(world: F64) -> float:
    v = world[:, 3:6]
    return float(0.5 * (world[:, 7] * (v * v).sum(axis=1)).sum())


def _equivalent(params: Params, a: bytes, b: bytes) -> bool:
    """Byte equality, else (a device differing in the last bits) the same shape, radii and
    masses, and positions/velocities within ``EQUIVALENCE_RTOL`` of the largest of them."""
    if a == b:
        return True
    try:
        fa = decode_array(a, max_elements=MAX_BODIES * COLUMNS)
        fb = decode_array(b, max_elements=MAX_BODIES * COLUMNS)
    except ValidationError:
        return False
    if fa.shape != fb.shape or fa.dtype != np.float64 or fb.dtype != np.float64 or fa.ndim != 2:
        return False
    if fa.shape[1] != COLUMNS or not (np.isfinite(fa).all() and np.isfinite(fb).all()):
        return False
    if not np.array_equal(fa[:, 6:8], fb[:, 6:8]):
        return False
    scale = max(1.0, float(np.abs(fa[:, 0:6]).max(initial=0.0)))
    return float(np.abs(fa[:, 0:6] - fb[:, 0:6]).max(initial=0.0)) <= EQUIVALENCE_RTOL * scale


def _self_check(params: Params, data: bytes, output: bytes) -> bool:
    try:
        world = _decode_world(params, data)
        out = decode_array(output, max_elements=MAX_BODIES * COLUMNS)
    except ValidationError:
        return False
    if out.shape != world.shape or out.dtype != np.float64 or not bool(np.isfinite(out).all()):
        return False
    if not np.array_equal(out[:, 6:8], world[:, 6:8]):
        return False
    if params["walls"]:
        r = out[:, 6:7]
        if bool((out[:, 0:3] < r - 1e-9).any()) or bool((out[:, 0:3] > params["box"] - r + 1e-9).any()):
            return False
    elif params["gravity"] == 0.0:
        p0, p1 = momentum(world), momentum(out)
        scale = float((np.abs(world[:, 3:6]) * world[:, 7:8]).sum()) + 1e-300
        if float(np.abs(p1 - p0).max()) > MOMENTUM_RTOL * scale:
            return False
        if kinetic_energy(out) > kinetic_energy(world) * (1 + ENERGY_SLACK) + 1e-300:
            return False
    return True


def random_world(
    rng: np.random.Generator, n: int, box: float, *, fill: float = 0.05, speed: float = 5.0
) -> F64:
    """``n`` non-overlapping spheres on a jittered lattice filling ``fill`` of the box volume."""
    side = int(np.ceil(n ** (1 / 3)))
    spacing = box / side
    radius = min(spacing * 0.45, (fill * box**3 / n * 3 / (4 * np.pi)) ** (1 / 3))
    grid = np.stack(np.meshgrid(*(np.arange(side),) * 3, indexing="ij"), axis=-1).reshape(-1, 3)[:n]
    jitter = rng.uniform(-1, 1, (n, 3)) * (spacing / 2 - radius) * 0.9
    pos = (grid + 0.5) * spacing + jitter
    vel = rng.normal(0, speed, (n, 3))
    rad = radius * rng.uniform(0.6, 1.0, n)
    mass = rad**3 * 1000.0
    return np.column_stack([pos, vel, rad, mass]).astype(np.float64)


_EXAMPLE_SIZES = {"small": (500, 10), "medium": (10_000, 10), "large": (100_000, 5)}


def _example(rng: np.random.Generator, size: str) -> tuple[Params, bytes]:
    n, steps = _EXAMPLE_SIZES[size]
    box = 100.0
    world = random_world(rng, n, box, fill=0.15)
    params: Params = {
        "steps": steps,
        "dt": 1 / 60,
        "gravity": -9.81,
        "restitution": 0.9,
        "walls": True,
        "box": box,
        "codec": "raw",
    }
    return params, encode_array(world, "raw")


PHYSICS_STEP = TaskKind(
    name="physics_step",
    description="advance up to 100,000 rigid spheres N steps with sphere and wall collisions",
    params={
        "steps": ParamSpec(int, default=10, minimum=1, maximum=1000, doc="fixed steps to take"),
        "dt": ParamSpec(float, default=1 / 60, minimum=1e-6, maximum=0.1, doc="step length (s)"),
        "gravity": ParamSpec(float, default=-9.81, minimum=-1000.0, maximum=1000.0, doc="z acceleration"),
        "restitution": ParamSpec(float, default=0.9, minimum=0.0, maximum=1.0, doc="1 = elastic"),
        "walls": ParamSpec(bool, default=True, doc="keep bodies inside [0, box]^3"),
        "box": ParamSpec(float, default=100.0, minimum=1.0, maximum=1e5, doc="box side when walled"),
        "codec": ParamSpec(str, default="raw", choices=ARRAY_CODECS, doc="output array codec"),
    },
    execute=run,
    cost=_cost,
    deterministic=True,
    equivalent=_equivalent,
    self_check=_self_check,
    example=_example,
    max_input_bytes=MAX_BODIES * COLUMNS * 8 + 64,
    tolerance=(
        "bit-exact on CPU (numpy and torch give the same bytes; CUDA is built to); equivalent "
        f"also within {EQUIVALENCE_RTOL:g} of the largest |position|/|velocity|; self-check: radii/masses unchanged, finite, inside the box when walled, and "
        f"without walls or gravity momentum within {MOMENTUM_RTOL:g} relative and kinetic energy "
        f"within +{ENERGY_SLACK:.0%}"
    ),
    extra={"max_bodies": MAX_BODIES, "max_body_steps": MAX_BODY_STEPS, "columns": "x y z vx vy vz r m"},
)
