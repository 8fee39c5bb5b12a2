"""``raytrace``: render one tile of a Whitted-style ray-traced frame.

Input: a msgpack map describing the scene (lists of numbers; empty lists allowed)::

    camera:    [ex, ey, ez, lx, ly, lz, ux, uy, uz, fov_degrees]   eye, look-at, up
    spheres:   [[cx, cy, cz, r, material], ...]
    planes:    [[nx, ny, nz, d, material], ...]                    points p with n.p = d
    triangles: [[x0, y0, z0, x1, y1, z1, x2, y2, z2, material], ...]
    materials: [[r, g, b, reflectivity], ...]                      colours and reflectivity in [0, 1]
    lights:    [[x, y, z, r, g, b], ...]                           point lights, hard shadows
    ambient:   [r, g, b]
    background:[r, g, b]

Params pick the frame size (``width`` x ``height``), the tile (``x0, y0, w, h``), samples
per pixel, reflection depth and the jitter ``seed``. Output: the tile as an
``encode_array`` array, ``(h, w, 3)`` uint8 (``rgb8``: clamped, gamma 2.2) or float32
(``float32``: linear radiance).

Shading per hit: ``(1 - refl) * albedo * (ambient + sum of unshadowed lights *
max(0, n.l))``, plus ``refl`` times the reflected ray's colour (up to ``max_depth``
bounces; a miss returns the background). Sub-pixel jitter comes from a splitmix64 hash of
(seed, global pixel index, sample), so a tile's pixels do not depend on the tile: tiles
stitched together equal the full frame bit for bit.

Vectorised over all rays of the tile, float64; dot products are written out
component-wise so each ray's arithmetic is independent of how many rays share the array.
Deterministic: equivalence is byte equality.

Two implementations of the same arithmetic: ``numpy`` and ``torch`` (see ``_torch_ops``;
the splitmix64 jitter and the ``rgb8`` gamma curve stay in numpy on the host). On CPU they
give identical bytes (tested); ``CPU_BACKEND`` is the one measured faster on CPU.
``backend="auto"`` (what the worker runs) uses torch on CUDA when torch sees a GPU; that
path is built to give the same bytes (``scripts/gpu_check.sh`` checks it). Should a device
ever differ in the last bits (a grazing ray may then flip between hit and miss), the
equivalence check also accepts outputs that agree within ``EQUIVALENCE_LEVELS`` (rgb8) or
``EQUIVALENCE_ATOL`` (float32) on all but ``EQUIVALENCE_OUTLIERS`` of the pixels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from mesh.errors import LimitExceededError, ValidationError
from tasks.codecs import ARRAY_CODECS, decode_array, decode_msgpack_map, encode_array, encode_msgpack
from tasks.kernels import _torch_ops as T
from tasks.kernels._common import torch_module
from tasks.registry import Params, ParamSpec, TaskKind

MAX_PRIMITIVES = 256
MAX_LIGHTS = 8
MAX_MATERIALS = 64
MAX_TILE_PIXELS = 512 * 512
MAX_FRAME_SIDE = 4096
MAX_SAMPLES = 16
MAX_DEPTH = 4
#: Bound on ray-primitive tests, refused before rendering.
MAX_WORK = 2_000_000_000
EPS = 1e-6
MAX_COORD = 1e6
#: The CPU implementation (the faster one in ``docs/bench_kernels.json``).
CPU_BACKEND = "numpy"
#: Let ``backend="auto"`` use CUDA when torch sees a GPU.
USE_CUDA = True
#: Outputs that are not byte-equal are still equivalent when every channel agrees within
#: these bounds except on at most this fraction of the pixels.
EQUIVALENCE_LEVELS = 1
EQUIVALENCE_ATOL = 1e-5
EQUIVALENCE_OUTLIERS = 1e-3
#: Rays traced at once by the torch path (samples are batched up to this many).
TORCH_BATCH_RAYS = 1 << 19

F64 = npt.NDArray[np.float64]
_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_FIELDS = {
    "camera": (None, 10),
    "spheres": (MAX_PRIMITIVES, 5),
    "planes": (MAX_PRIMITIVES, 5),
    "triangles": (MAX_PRIMITIVES, 10),
    "materials": (MAX_MATERIALS, 4),
    "lights": (MAX_LIGHTS, 6),
    "ambient": (None, 3),
    "background": (None, 3),
}


class Scene:
    """A validated scene: float64 arrays, material indices in range."""

    def __init__(self, obj: dict[str, Any]) -> None:
        if set(obj) != set(_FIELDS):
            raise ValidationError(f"raytrace scene must have exactly the keys {', '.join(sorted(_FIELDS))}")
        arrays: dict[str, F64] = {}
        for key, (rows, cols) in _FIELDS.items():
            value = obj[key]
            if not isinstance(value, list):
                raise ValidationError(f"raytrace scene {key!r} must be a list")
            if rows is not None and len(value) > rows:
                raise LimitExceededError(f"raytrace scene has {len(value)} {key}, the limit is {rows}")
            if rows is not None and not all(isinstance(r, list) and len(r) == cols for r in value):
                raise ValidationError(f"raytrace scene {key!r} rows must be lists of {cols} numbers")
            flat = value if rows is None else [v for r in value for v in r]
            if rows is None and len(value) != cols:
                raise ValidationError(f"raytrace scene {key!r} must have {cols} numbers")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
                raise ValidationError(f"raytrace scene {key!r} must hold only numbers")
            arr = np.asarray(flat, dtype=np.float64).reshape((-1, cols) if rows is not None else (cols,))
            if not np.isfinite(arr).all() or (arr.size and float(np.abs(arr).max()) > MAX_COORD):
                raise ValidationError(f"raytrace scene {key!r} holds NaN, infinite or huge values")
            arrays[key] = arr
        self.camera = arrays["camera"]
        self.spheres = arrays["spheres"]
        self.planes = arrays["planes"]
        self.triangles = arrays["triangles"]
        self.materials = arrays["materials"]
        self.lights = arrays["lights"]
        self.ambient = arrays["ambient"]
        self.background = arrays["background"]
        n_prims = len(self.spheres) + len(self.planes) + len(self.triangles)
        if n_prims > MAX_PRIMITIVES:
            raise LimitExceededError(
                f"raytrace scene has {n_prims} primitives, the limit is {MAX_PRIMITIVES}"
            )
        self.n_prims = n_prims
        if not 1.0 <= self.camera[9] <= 170.0:
            raise ValidationError("raytrace camera fov must be in [1, 170] degrees")
        if len(self.materials) == 0:
            raise ValidationError("raytrace scene needs at least one material")
        if ((self.materials < 0) | (self.materials > 1)).any():
            raise ValidationError("raytrace material colours and reflectivity must be in [0, 1]")
        for key in ("spheres", "planes", "triangles"):
            mats = arrays[key][:, -1]
            if ((mats != np.floor(mats)) | (mats < 0) | (mats >= len(self.materials))).any():
                raise ValidationError(f"raytrace {key} refer to a missing material")
        if (self.spheres[:, 3] <= 0).any():
            raise ValidationError("raytrace sphere radii must be positive")
        if len(self.planes):
            nn = np.sqrt((self.planes[:, :3] ** 2).sum(axis=1))
            if (nn < 1e-9).any():
                raise ValidationError("raytrace plane normals must be non-zero")
            self.planes = self.planes.copy()
            self.planes[:, :4] /= nn[:, None]
        basis = camera_basis([float(v) for v in self.camera])
        if basis is None:
            raise ValidationError("raytrace camera: eye equals look-at, or up is parallel to the view")
        self.basis = basis


def camera_basis(cam: list[float]) -> tuple[list[float], list[float], list[float], list[float], float] | None:
    """(eye, forward, right, up, tan(fov/2)) in Python floats, shared with the reference."""
    eye = cam[0:3]
    f = [cam[3] - eye[0], cam[4] - eye[1], cam[5] - eye[2]]
    fl = math.sqrt(f[0] * f[0] + f[1] * f[1] + f[2] * f[2])
    if fl < 1e-12:
        return None
    f = [f[0] / fl, f[1] / fl, f[2] / fl]
    up = cam[6:9]
    r = [f[1] * up[2] - f[2] * up[1], f[2] * up[0] - f[0] * up[2], f[0] * up[1] - f[1] * up[0]]
    rl = math.sqrt(r[0] * r[0] + r[1] * r[1] + r[2] * r[2])
    if rl < 1e-12:
        return None
    r = [r[0] / rl, r[1] / rl, r[2] / rl]
    u = [r[1] * f[2] - r[2] * f[1], r[2] * f[0] - r[0] * f[2], r[0] * f[1] - r[1] * f[0]]
    return eye, f, r, u, math.tan(math.radians(cam[9]) / 2.0)


def jitter(seed: int, pixel: npt.NDArray[np.uint64], sample: int, axis: int) -> F64:
    """Deterministic uniform [0, 1) per (seed, global pixel index, sample, axis): splitmix64."""
    with np.errstate(over="ignore"):
        z = (pixel + np.uint64((seed * _GOLDEN) & _M64)) * np.uint64(_MIX1) + np.uint64(2 * sample + axis)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def _dot(a: F64, b: F64) -> F64:
    return np.asarray(a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1] + a[:, 2] * b[:, 2], dtype=np.float64)


def _normalize(v: F64) -> F64:
    return np.asarray(v / np.sqrt(_dot(v, v))[:, None], dtype=np.float64)


def _intersect(scene: Scene, o: F64, d: F64, any_hit_before: F64 | None = None) -> tuple[F64, F64, F64]:
    """Nearest hit: (t, normal facing the ray, material index); t = inf on a miss.

    With ``any_hit_before`` (distances), only ``t`` matters: a shadow query.
    """
    n = len(o)
    best = np.full(n, np.inf)
    nrm = np.zeros((n, 3))
    mat = np.zeros(n)
    for s in scene.spheres:
        oc = o - s[0:3]
        b = _dot(oc, d)
        c = _dot(oc, oc) - s[3] * s[3]
        disc = b * b - c
        ok = disc >= 0.0
        sq = np.sqrt(np.where(ok, disc, 0.0))
        t = -b - sq
        t = np.where(t > EPS, t, -b + sq)
        hit = ok & (t > EPS) & (t < best)
        if hit.any():
            best = np.where(hit, t, best)
            if any_hit_before is None:
                p = o + d * t[:, None]
                nrm[hit] = ((p - s[0:3]) / s[3])[hit]
                mat[hit] = s[4]
    for pl in scene.planes:
        pn = pl[0:3]
        denom = d[:, 0] * pn[0] + d[:, 1] * pn[1] + d[:, 2] * pn[2]
        num = pl[3] - (o[:, 0] * pn[0] + o[:, 1] * pn[1] + o[:, 2] * pn[2])
        safe = np.abs(denom) > 1e-12
        t = np.where(safe, num / np.where(safe, denom, 1.0), np.inf)
        hit = safe & (t > EPS) & (t < best)
        if hit.any():
            best = np.where(hit, t, best)
            if any_hit_before is None:
                nrm[hit] = pn
                mat[hit] = pl[4]
    for tri in scene.triangles:
        v0 = tri[0:3]
        e1 = tri[3:6] - v0
        e2 = tri[6:9] - v0
        pv = np.stack(
            [
                d[:, 1] * e2[2] - d[:, 2] * e2[1],
                d[:, 2] * e2[0] - d[:, 0] * e2[2],
                d[:, 0] * e2[1] - d[:, 1] * e2[0],
            ],
            axis=1,
        )
        det = pv[:, 0] * e1[0] + pv[:, 1] * e1[1] + pv[:, 2] * e1[2]
        safe = np.abs(det) > 1e-12
        inv = 1.0 / np.where(safe, det, 1.0)
        tv = o - v0
        uu = (tv[:, 0] * pv[:, 0] + tv[:, 1] * pv[:, 1] + tv[:, 2] * pv[:, 2]) * inv
        qv = np.stack(
            [
                tv[:, 1] * e1[2] - tv[:, 2] * e1[1],
                tv[:, 2] * e1[0] - tv[:, 0] * e1[2],
                tv[:, 0] * e1[1] - tv[:, 1] * e1[0],
            ],
            axis=1,
        )
        vv = (d[:, 0] * qv[:, 0] + d[:, 1] * qv[:, 1] + d[:, 2] * qv[:, 2]) * inv
        t = (e2[0] * qv[:, 0] + e2[1] * qv[:, 1] + e2[2] * qv[:, 2]) * inv
        hit = safe & (uu >= 0.0) & (vv >= 0.0) & (uu + vv <= 1.0) & (t > EPS) & (t < best)
        if hit.any():
            best = np.where(hit, t, best)
            if any_hit_before is None:
                cn = np.array(
                    [
                        e1[1] * e2[2] - e1[2] * e2[1],
                        e1[2] * e2[0] - e1[0] * e2[2],
                        e1[0] * e2[1] - e1[1] * e2[0],
                    ]
                )
                cn = cn / math.sqrt(float(cn[0] * cn[0] + cn[1] * cn[1] + cn[2] * cn[2]))
                nrm[hit] = cn
                mat[hit] = tri[9]
    if any_hit_before is None:
        flip = _dot(nrm, d) > 0.0
        nrm[flip] = -nrm[flip]
    return best, nrm, mat


def _trace(scene: Scene, o: F64, d: F64, max_depth: int) -> F64:
    n = len(o)
    color = np.zeros((n, 3))
    weight = np.ones(n)
    alive = np.arange(n)
    for depth in range(max_depth + 1):
        t, nrm, mat = _intersect(scene, o, d)
        miss = np.isinf(t)
        color[alive[miss]] += weight[miss, None] * scene.background
        h = ~miss
        alive, o, d, t, nrm, w = alive[h], o[h], d[h], t[h], nrm[h], weight[h]
        m = scene.materials[mat[h].astype(np.intp)]
        albedo, refl = m[:, 0:3], m[:, 3]
        p = o + d * t[:, None]
        po = p + nrm * EPS * 10
        light = np.broadcast_to(scene.ambient, (len(p), 3)).copy()
        for lt in scene.lights:
            lv = lt[0:3] - p
            dist = np.sqrt(_dot(lv, lv))
            ldir = lv / dist[:, None]
            cos = _dot(nrm, ldir)
            lit = cos > 0.0
            if lit.any():
                ts, _, _ = _intersect(scene, po[lit], ldir[lit], any_hit_before=dist[lit])
                vis = np.zeros(len(p), dtype=bool)
                vis[lit] = ts >= dist[lit]
                light += np.where(vis, cos, 0.0)[:, None] * lt[3:6]
        color[alive] += (w * (1.0 - refl))[:, None] * (albedo * light)
        go = refl > 0.0
        if depth == max_depth or not go.any():
            break
        dn = _dot(d, nrm)
        d = (d - nrm * (2.0 * dn)[:, None])[go]
        o = po[go]
        weight = (w * refl)[go]
        alive = alive[go]
    return color


def render_tile(
    scene: Scene,
    width: int,
    height: int,
    x0: int,
    y0: int,
    w: int,
    h: int,
    spp: int,
    max_depth: int,
    seed: int,
    backend: str = "auto",
    device: str | None = None,
) -> F64:
    """Linear radiance of the tile, ``(h, w, 3)`` float64, mean over ``spp`` samples.

    ``backend``: "auto" (CUDA when present and ``USE_CUDA``, else ``CPU_BACKEND``),
    "numpy" or "torch" (on ``device``; default CUDA when present).
    """
    if backend == "auto" and not USE_CUDA and device is None:
        device = "cpu"
    impl, dev = T.pick_backend(backend, CPU_BACKEND, device)
    args = (scene, width, height, x0, y0, w, h, spp, max_depth, seed)
    if impl == "torch":
        return render_tile_torch(*args, device=dev)
    return render_tile_numpy(*args)


def render_tile_numpy(
    scene: Scene,
    width: int,
    height: int,
    x0: int,
    y0: int,
    w: int,
    h: int,
    spp: int,
    max_depth: int,
    seed: int,
) -> F64:
    eye, fwd, right, up, tan_half = scene.basis
    aspect = width / height
    ys, xs = np.mgrid[y0 : y0 + h, x0 : x0 + w]
    px = xs.reshape(-1).astype(np.float64)
    py = ys.reshape(-1).astype(np.float64)
    pixel = (ys.reshape(-1).astype(np.uint64) * np.uint64(width)) + xs.reshape(-1).astype(np.uint64)
    acc = np.zeros((h * w, 3))
    for s in range(spp):
        jx = jitter(seed, pixel, s, 0)
        jy = jitter(seed, pixel, s, 1)
        u = (2.0 * (px + jx) / width - 1.0) * tan_half * aspect
        v = (1.0 - 2.0 * (py + jy) / height) * tan_half
        d = np.stack([fwd[k] + u * right[k] + v * up[k] for k in range(3)], axis=1)
        d = _normalize(d)
        o = np.broadcast_to(np.asarray(eye, dtype=np.float64), d.shape).copy()
        acc += _trace(scene, o, d, max_depth)
    return np.asarray((acc / spp).reshape(h, w, 3), dtype=np.float64)


# --------------------------------------------------------------------------- torch


class _TorchScene:
    """A scene's constants for the torch path: Python floats for scalar operands (exact
    in any operation but division), device tensors for divisors, gathers and broadcasts."""

    def __init__(self, scene: Scene, device: str) -> None:
        torch = torch_module()

        def t(a: Any) -> Any:
            return torch.as_tensor(np.asarray(a, dtype=np.float64), device=device)

        self.spheres = [
            ([float(v) for v in s[0:3]], t(s[0:3]), float(s[3]) * float(s[3]), t(s[3]), float(s[4]))
            for s in scene.spheres
        ]
        self.planes = [
            ([float(v) for v in p[0:3]], t(p[0:3]), float(p[3]), float(p[4])) for p in scene.planes
        ]
        self.triangles = []
        for tri in scene.triangles:
            v0 = tri[0:3]
            e1 = tri[3:6] - v0
            e2 = tri[6:9] - v0
            cn = np.array(
                [
                    e1[1] * e2[2] - e1[2] * e2[1],
                    e1[2] * e2[0] - e1[0] * e2[2],
                    e1[0] * e2[1] - e1[1] * e2[0],
                ]
            )
            cn = cn / math.sqrt(float(cn[0] * cn[0] + cn[1] * cn[1] + cn[2] * cn[2]))
            self.triangles.append(
                (t(v0), [float(v) for v in e1], [float(v) for v in e2], t(cn), float(tri[9]))
            )
        self.materials = t(scene.materials)
        self.lights = [(t(lt[0:3]), t(lt[3:6])) for lt in scene.lights]
        self.ambient = t(scene.ambient)
        self.background = t(scene.background)


def _dot_t(a: T.Tensor, b: T.Tensor) -> T.Tensor:
    return a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1] + a[:, 2] * b[:, 2]


def _intersect_torch(
    sc: _TorchScene, o: T.Tensor, d: T.Tensor, shadow: bool = False
) -> tuple[T.Tensor, T.Tensor, T.Tensor]:
    """``_intersect`` on torch tensors: the same operations, selects instead of masks."""
    torch = torch_module()
    n = len(o)
    best = torch.full((n,), math.inf, dtype=torch.float64, device=o.device)
    nrm = torch.zeros((n, 3), dtype=torch.float64, device=o.device)
    mat = torch.zeros(n, dtype=torch.float64, device=o.device)
    for _c, c_t, rr, r_t, m in sc.spheres:
        oc = o - c_t
        b = _dot_t(oc, d)
        c = _dot_t(oc, oc) - rr
        disc = b * b - c
        ok = disc >= 0.0
        sq = T.sqrt(torch.where(ok, disc, 0.0))
        t = -b - sq
        t = torch.where(t > EPS, t, -b + sq)
        hit = ok & (t > EPS) & (t < best)
        best = torch.where(hit, t, best)
        if not shadow:
            p = o + d * t[:, None]
            nrm = torch.where(hit[:, None], (p - c_t) / r_t, nrm)
            mat = torch.where(hit, m, mat)
    for pn, pn_t, pd, m in sc.planes:
        denom = d[:, 0] * pn[0] + d[:, 1] * pn[1] + d[:, 2] * pn[2]
        num = pd - (o[:, 0] * pn[0] + o[:, 1] * pn[1] + o[:, 2] * pn[2])
        safe = torch.abs(denom) > 1e-12
        t = torch.where(safe, num / torch.where(safe, denom, 1.0), math.inf)
        hit = safe & (t > EPS) & (t < best)
        best = torch.where(hit, t, best)
        if not shadow:
            nrm = torch.where(hit[:, None], pn_t, nrm)
            mat = torch.where(hit, m, mat)
    for v0_t, e1, e2, cn_t, m in sc.triangles:
        pv0 = d[:, 1] * e2[2] - d[:, 2] * e2[1]
        pv1 = d[:, 2] * e2[0] - d[:, 0] * e2[2]
        pv2 = d[:, 0] * e2[1] - d[:, 1] * e2[0]
        det = pv0 * e1[0] + pv1 * e1[1] + pv2 * e1[2]
        safe = torch.abs(det) > 1e-12
        inv = T.rdiv(1.0, torch.where(safe, det, 1.0))
        tv = o - v0_t
        uu = (tv[:, 0] * pv0 + tv[:, 1] * pv1 + tv[:, 2] * pv2) * inv
        qv0 = tv[:, 1] * e1[2] - tv[:, 2] * e1[1]
        qv1 = tv[:, 2] * e1[0] - tv[:, 0] * e1[2]
        qv2 = tv[:, 0] * e1[1] - tv[:, 1] * e1[0]
        vv = (d[:, 0] * qv0 + d[:, 1] * qv1 + d[:, 2] * qv2) * inv
        t = (e2[0] * qv0 + e2[1] * qv1 + e2[2] * qv2) * inv
        hit = safe & (uu >= 0.0) & (vv >= 0.0) & (uu + vv <= 1.0) & (t > EPS) & (t < best)
        best = torch.where(hit, t, best)
        if not shadow:
            nrm = torch.where(hit[:, None], cn_t, nrm)
            mat = torch.where(hit, m, mat)
    if not shadow:
        flip = _dot_t(nrm, d) > 0.0
        nrm = torch.where(flip[:, None], -nrm, nrm)
    return best, nrm, mat


def _trace_torch(sc: _TorchScene, o: T.Tensor, d: T.Tensor, max_depth: int) -> T.Tensor:
    torch = torch_module()
    n = len(o)
    color = torch.zeros((n, 3), dtype=torch.float64, device=o.device)
    weight = torch.ones(n, dtype=torch.float64, device=o.device)
    alive = torch.arange(n, device=o.device)
    for depth in range(max_depth + 1):
        t, nrm, mat = _intersect_torch(sc, o, d)
        miss = torch.isinf(t)
        gone = alive[miss]
        color[gone] = color[gone] + weight[miss, None] * sc.background
        h = ~miss
        alive, o, d, t, nrm, w = alive[h], o[h], d[h], t[h], nrm[h], weight[h]
        m = sc.materials[mat[h].long()]
        albedo, refl = m[:, 0:3], m[:, 3]
        p = o + d * t[:, None]
        po = p + nrm * EPS * 10
        light = sc.ambient.expand(len(p), 3).clone()
        for lpos, lcol in sc.lights:
            lv = lpos - p
            dist = T.sqrt(_dot_t(lv, lv))
            ldir = lv / dist[:, None]
            cos = _dot_t(nrm, ldir)
            lit = cos > 0.0
            if bool(lit.any()):
                ts, _, _ = _intersect_torch(sc, po[lit], ldir[lit], shadow=True)
                vis = torch.zeros(len(p), dtype=torch.bool, device=o.device)
                vis[lit] = ts >= dist[lit]
                light = light + torch.where(vis, cos, 0.0)[:, None] * lcol
        color[alive] = color[alive] + (w * (1.0 - refl))[:, None] * (albedo * light)
        go = refl > 0.0
        if depth == max_depth or not bool(go.any()):
            break
        dn = _dot_t(d, nrm)
        d = (d - nrm * (2.0 * dn)[:, None])[go]
        o = po[go]
        weight = (w * refl)[go]
        alive = alive[go]
    return color


def render_tile_torch(
    scene: Scene,
    width: int,
    height: int,
    x0: int,
    y0: int,
    w: int,
    h: int,
    spp: int,
    max_depth: int,
    seed: int,
    device: str = "cpu",
) -> F64:
    """``render_tile_numpy`` on torch (``device`` "cpu" or "cuda"); the same bytes on CPU.

    Samples are traced in batches (rays are independent); their colours are still added
    to the accumulator one sample at a time, in sample order, as the numpy path does.
    """
    torch = torch_module()
    eye, fwd, right, up, tan_half = scene.basis
    aspect = width / height
    ys, xs = np.mgrid[y0 : y0 + h, x0 : x0 + w]
    pixel = (ys.reshape(-1).astype(np.uint64) * np.uint64(width)) + xs.reshape(-1).astype(np.uint64)
    npx = h * w
    per_batch = max(1, TORCH_BATCH_RAYS // npx)
    sc = _TorchScene(scene, device)
    with torch.inference_mode():
        px = torch.as_tensor(xs.reshape(-1).astype(np.float64), device=device)
        py = torch.as_tensor(ys.reshape(-1).astype(np.float64), device=device)
        eye_t = torch.as_tensor(np.asarray(eye, dtype=np.float64), device=device)
        acc = torch.zeros((npx, 3), dtype=torch.float64, device=device)
        for s0 in range(0, spp, per_batch):
            ss = range(s0, min(spp, s0 + per_batch))
            jx = torch.as_tensor(np.concatenate([jitter(seed, pixel, s, 0) for s in ss]), device=device)
            jy = torch.as_tensor(np.concatenate([jitter(seed, pixel, s, 1) for s in ss]), device=device)
            bx, by = px.repeat(len(ss)), py.repeat(len(ss))
            u = (T.div(2.0 * (bx + jx), width) - 1.0) * tan_half * aspect
            v = (1.0 - T.div(2.0 * (by + jy), height)) * tan_half
            d = torch.stack([fwd[k] + u * right[k] + v * up[k] for k in range(3)], dim=1)
            d = d / T.sqrt(_dot_t(d, d))[:, None]
            o = eye_t.expand(d.shape).clone()
            col = _trace_torch(sc, o, d, max_depth)
            for k in range(len(ss)):
                acc = acc + col[k * npx : (k + 1) * npx]
        out = T.div(acc, float(spp))
        return T.to_numpy(out).reshape(h, w, 3)


def to_rgb8(radiance: F64) -> npt.NDArray[np.uint8]:
    return np.rint(np.clip(radiance, 0.0, 1.0) ** (1.0 / 2.2) * 255.0).astype(np.uint8)


def _check_tile(params: Params) -> None:
    if params["x0"] + params["w"] > params["width"] or params["y0"] + params["h"] > params["height"]:
        raise ValidationError("raytrace: the tile must lie inside the frame")
    if params["w"] * params["h"] > MAX_TILE_PIXELS:
        raise LimitExceededError(
            f"raytrace: tile of {params['w']}x{params['h']} exceeds {MAX_TILE_PIXELS} pixels"
        )


def work(params: Params, scene: Scene) -> float:
    """Ray-primitive tests, an upper bound (every ray bounces, every light is in view)."""
    rays = params["w"] * params["h"] * params["spp"] * (params["max_depth"] + 1)
    return float(rays * (1 + len(scene.lights)) * max(1, scene.n_prims))


def decode_scene(params: Params, data: bytes) -> Scene:
    _check_tile(params)
    scene = Scene(decode_msgpack_map(data, max_bytes=4 * 1024 * 1024, what="raytrace scene"))
    if work(params, scene) > MAX_WORK:
        raise LimitExceededError(
            f"raytrace: {work(params, scene):.3g} ray-primitive tests exceed {MAX_WORK:.3g}"
        )
    return scene


def run(params: Params, data: bytes) -> bytes:
    scene = decode_scene(params, data)
    rad = render_tile(
        scene,
        params["width"],
        params["height"],
        params["x0"],
        params["y0"],
        params["w"],
        params["h"],
        params["spp"],
        params["max_depth"],
        params["seed"],
    )
    out = to_rgb8(rad) if params["format"] == "rgb8" else rad.astype(np.float32)
    return encode_array(out, params["codec"])


def _cost(params: Params, data_len: int) -> float:
    # ~60 ns per ray-primitive-light term on one core (bench_kernels); the scene size is bounded
    # by the input length (~25 bytes per number): assume 2 lights.
    prims = min(MAX_PRIMITIVES, max(1, data_len // 120))
    rays = params["w"] * params["h"] * params["spp"] * (1 + 0.5 * params["max_depth"])
    return float(0.5 + rays * 3 * prims * 6e-5)


def _equivalent(params: Params, a: bytes, b: bytes) -> bool:
    """Byte equality, else (a device differing in the last bits) the same shape and dtype,
    and all but ``EQUIVALENCE_OUTLIERS`` of the pixels within ``EQUIVALENCE_LEVELS`` (rgb8)
    or ``EQUIVALENCE_ATOL`` (float32) on every channel."""
    if a == b:
        return True
    try:
        fa = decode_array(a, max_elements=MAX_TILE_PIXELS * 3)
        fb = decode_array(b, max_elements=MAX_TILE_PIXELS * 3)
    except ValidationError:
        return False
    if fa.shape != fb.shape or fa.dtype != fb.dtype or fa.ndim != 3 or fa.shape[2] != 3:
        return False
    if fa.dtype == np.uint8:
        off = np.abs(fa.astype(np.int16) - fb.astype(np.int16)).max(axis=2) > EQUIVALENCE_LEVELS
    elif fa.dtype == np.float32:
        if not (np.isfinite(fa).all() and np.isfinite(fb).all()):
            return False
        off = np.abs(fa.astype(np.float64) - fb.astype(np.float64)).max(axis=2) > EQUIVALENCE_ATOL
    else:
        return False
    return int(off.sum()) <= int(EQUIVALENCE_OUTLIERS * off.size)


def _self_check(params: Params, data: bytes, output: bytes) -> bool:
    try:
        arr = decode_array(output, max_elements=MAX_TILE_PIXELS * 3)
    except ValidationError:
        return False
    want = np.uint8 if params["format"] == "rgb8" else np.float32
    if arr.shape != (params["h"], params["w"], 3) or arr.dtype != want:
        return False
    return bool(np.isfinite(arr).all()) and bool((arr >= 0).all())


def demo_scene(rng: np.random.Generator, n_spheres: int = 12) -> dict[str, Any]:
    """A floor, a back wall, a mirror triangle, random spheres and two lights."""
    spheres = []
    for i in range(n_spheres):
        r = float(rng.uniform(0.3, 0.9))
        spheres.append([float(rng.uniform(-4, 4)), r, float(rng.uniform(-3, 3)), r, float(2 + i % 4)])
    return {
        "camera": [0.0, 2.5, -9.0, 0.0, 0.8, 0.0, 0.0, 1.0, 0.0, 55.0],
        "spheres": spheres,
        "planes": [[0.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, -6.0, 1.0]],
        "triangles": [[-5.0, 0.0, 5.0, 5.0, 0.0, 5.5, 0.0, 4.5, 5.2, 6.0]],
        "materials": [
            [0.8, 0.8, 0.75, 0.1],
            [0.6, 0.65, 0.8, 0.0],
            [0.9, 0.2, 0.2, 0.2],
            [0.2, 0.8, 0.3, 0.0],
            [0.2, 0.3, 0.9, 0.5],
            [0.9, 0.9, 0.9, 0.8],
            [0.95, 0.95, 0.95, 0.9],
        ],
        "lights": [[-4.0, 8.0, -4.0, 0.7, 0.7, 0.65], [5.0, 6.0, -2.0, 0.35, 0.35, 0.45]],
        "ambient": [0.08, 0.08, 0.1],
        "background": [0.5, 0.7, 0.95],
    }


_EXAMPLE_SIZES = {"small": (64, 48, 2, 6), "medium": (320, 240, 4, 12), "large": (640, 480, 4, 24)}


def _example(rng: np.random.Generator, size: str) -> tuple[Params, bytes]:
    w, h, spp, n = _EXAMPLE_SIZES[size]
    tw, th = min(w, 256), min(h, 256)
    params: Params = {
        "width": w,
        "height": h,
        "x0": 0,
        "y0": 0,
        "w": tw,
        "h": th,
        "spp": spp,
        "max_depth": 2,
        "seed": int(rng.integers(1 << 31)),
        "format": "rgb8",
        "codec": "raw",
    }
    return params, encode_msgpack(demo_scene(rng, n))


RAYTRACE = TaskKind(
    name="raytrace",
    description="render a tile of a ray-traced frame (spheres, planes, triangles, reflections, shadows)",
    params={
        "width": ParamSpec(int, default=640, minimum=1, maximum=MAX_FRAME_SIDE, doc="frame width"),
        "height": ParamSpec(int, default=480, minimum=1, maximum=MAX_FRAME_SIDE, doc="frame height"),
        "x0": ParamSpec(int, default=0, minimum=0, maximum=MAX_FRAME_SIDE - 1, doc="tile left"),
        "y0": ParamSpec(int, default=0, minimum=0, maximum=MAX_FRAME_SIDE - 1, doc="tile top"),
        "w": ParamSpec(int, default=64, minimum=1, maximum=512, doc="tile width"),
        "h": ParamSpec(int, default=64, minimum=1, maximum=512, doc="tile height"),
        "spp": ParamSpec(int, default=4, minimum=1, maximum=MAX_SAMPLES, doc="samples per pixel"),
        "max_depth": ParamSpec(int, default=2, minimum=0, maximum=MAX_DEPTH, doc="reflection bounces"),
        "seed": ParamSpec(int, default=0, minimum=0, maximum=2**31 - 1, doc="jitter seed"),
        "format": ParamSpec(str, default="rgb8", choices=("rgb8", "float32"), doc="output pixels"),
        "codec": ParamSpec(str, default="raw", choices=ARRAY_CODECS, doc="output array codec"),
    },
    execute=run,
    cost=_cost,
    deterministic=True,
    equivalent=_equivalent,
    self_check=_self_check,
    example=_example,
    max_input_bytes=4 * 1024 * 1024,
    tolerance=(
        "bit-exact on CPU (seeded per-pixel jitter; tiles stitch to the full frame exactly; numpy "
        "and torch give the same bytes; CUDA is built to); equivalent also when all but "
        f"{EQUIVALENCE_OUTLIERS:.1%} of the pixels agree within {EQUIVALENCE_LEVELS} level (rgb8) "
        f"or {EQUIVALENCE_ATOL:g} (float32)"
    ),
    extra={
        "max_primitives": MAX_PRIMITIVES,
        "max_lights": MAX_LIGHTS,
        "max_tile_pixels": MAX_TILE_PIXELS,
        "max_samples": MAX_SAMPLES,
        "max_depth": MAX_DEPTH,
    },
)
