"""``raytrace`` against a slow per-pixel pure-Python tracer; tiles stitch; validation."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from mesh.errors import LimitExceededError, ValidationError
from tasks.codecs import decode_array, encode_msgpack
from tasks.kernels.raytrace import EPS, RAYTRACE, camera_basis, demo_scene

M64 = (1 << 64) - 1


def _jitter(seed: int, pixel: int, sample: int, axis: int) -> float:
    z = ((pixel + ((seed * 0x9E3779B97F4A7C15) & M64)) * 0xBF58476D1CE4E5B9 + 2 * sample + axis) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    z ^= z >> 31
    return (z >> 11) * (1.0 / 9007199254740992.0)


def _dot(a: list[float], b: list[float]) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _sub(a: list[float], b: list[float]) -> list[float]:
    return [a[0] - b[0], a[1] - b[1], a[2] - b[2]]


def _cross(a: list[float], b: list[float]) -> list[float]:
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]


class Ref:
    """Whitted tracer, one ray at a time, recursion for reflections."""

    def __init__(self, scene: dict[str, Any]) -> None:
        self.s = scene
        self.planes = []
        for p in scene["planes"]:
            n = math.sqrt(p[0] ** 2 + p[1] ** 2 + p[2] ** 2)
            self.planes.append([p[0] / n, p[1] / n, p[2] / n, p[3] / n, p[4]])

    def hit(self, o: list[float], d: list[float]) -> tuple[float, list[float], int]:
        best, nrm, mat = math.inf, [0.0, 0.0, 0.0], 0
        for s in self.s["spheres"]:
            oc = _sub(o, s[0:3])
            b = _dot(oc, d)
            disc = b * b - (_dot(oc, oc) - s[3] * s[3])
            if disc < 0:
                continue
            sq = math.sqrt(disc)
            t = -b - sq
            if not t > EPS:
                t = -b + sq
            if t > EPS and t < best:
                best, mat = t, int(s[4])
                p = [o[k] + d[k] * t for k in range(3)]
                nrm = [(p[k] - s[k]) / s[3] for k in range(3)]
        for pl in self.planes:
            denom = _dot(d, pl[0:3])
            if abs(denom) <= 1e-12:
                continue
            t = (pl[3] - _dot(o, pl[0:3])) / denom
            if t > EPS and t < best:
                best, nrm, mat = t, pl[0:3], int(pl[4])
        for tri in self.s["triangles"]:
            v0 = tri[0:3]
            e1, e2 = _sub(tri[3:6], v0), _sub(tri[6:9], v0)
            pv = _cross(d, e2)
            det = _dot(pv, e1)
            if abs(det) <= 1e-12:
                continue
            inv = 1.0 / det
            tv = _sub(o, v0)
            u = _dot(tv, pv) * inv
            qv = _cross(tv, e1)
            v = _dot(d, qv) * inv
            t = _dot(e2, qv) * inv
            if u >= 0 and v >= 0 and u + v <= 1 and t > EPS and t < best:
                cn = _cross(e1, e2)
                ln = math.sqrt(_dot(cn, cn))
                best, nrm, mat = t, [c / ln for c in cn], int(tri[9])
        if _dot(nrm, d) > 0:
            nrm = [-c for c in nrm]
        return best, nrm, mat

    def trace(self, o: list[float], d: list[float], depth: int, max_depth: int) -> list[float]:
        t, n, m = self.hit(o, d)
        if math.isinf(t):
            return list(self.s["background"])
        albedo, refl = self.s["materials"][m][0:3], self.s["materials"][m][3]
        p = [o[k] + d[k] * t for k in range(3)]
        po = [p[k] + n[k] * EPS * 10 for k in range(3)]
        light = list(self.s["ambient"])
        for lt in self.s["lights"]:
            lv = _sub(lt[0:3], p)
            dist = math.sqrt(_dot(lv, lv))
            ldir = [c / dist for c in lv]
            cos = _dot(n, ldir)
            if cos > 0 and self.hit(po, ldir)[0] >= dist:
                light = [light[k] + cos * lt[3 + k] for k in range(3)]
        col = [(1 - refl) * albedo[k] * light[k] for k in range(3)]
        if refl > 0 and depth < max_depth:
            dn = _dot(d, n)
            r = [d[k] - n[k] * 2 * dn for k in range(3)]
            sub = self.trace(po, r, depth + 1, max_depth)
            col = [col[k] + refl * sub[k] for k in range(3)]
        return col

    def render(self, width: int, height: int, spp: int, max_depth: int, seed: int) -> np.ndarray:
        cam = camera_basis([float(v) for v in self.s["camera"]])
        assert cam is not None
        eye, f, r, u, th = cam
        out = np.zeros((height, width, 3))
        for py in range(height):
            for px in range(width):
                acc = [0.0, 0.0, 0.0]
                for s in range(spp):
                    jx, jy = _jitter(seed, py * width + px, s, 0), _jitter(seed, py * width + px, s, 1)
                    uu = (2 * (px + jx) / width - 1) * th * (width / height)
                    vv = (1 - 2 * (py + jy) / height) * th
                    d = [f[k] + uu * r[k] + vv * u[k] for k in range(3)]
                    ln = math.sqrt(_dot(d, d))
                    c = self.trace(eye, [x / ln for x in d], 0, max_depth)
                    acc = [acc[k] + c[k] for k in range(3)]
                out[py, px] = [a / spp for a in acc]
        return out


def _render(scene: dict[str, Any], **kw: Any) -> np.ndarray:
    params = RAYTRACE.validate_params(kw)
    data = encode_msgpack(scene)
    out = RAYTRACE.execute(params, data)
    assert RAYTRACE.self_check(params, data, out)
    return decode_array(out)


@pytest.mark.parametrize("seed", [0, 7])
def test_matches_reference_tracer(seed: int) -> None:
    scene = demo_scene(np.random.default_rng(seed), 4)
    w, h = 20, 15
    got = _render(scene, width=w, height=h, w=w, h=h, spp=2, max_depth=2, seed=seed, format="float32")
    ref = Ref(scene).render(w, h, 2, 2, seed)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)
    assert ref.std() > 0.05  # a real picture, not a flat colour


def test_tiles_stitch_to_full_frame() -> None:
    scene = demo_scene(np.random.default_rng(3), 6)
    kw: dict[str, Any] = {"width": 37, "height": 23, "spp": 3, "max_depth": 3, "seed": 11}
    full = _render(scene, x0=0, y0=0, w=37, h=23, **kw)
    stitched = np.zeros_like(full)
    for y0, th in ((0, 10), (10, 13)):
        for x0, tw in ((0, 16), (16, 16), (32, 5)):
            stitched[y0 : y0 + th, x0 : x0 + tw] = _render(scene, x0=x0, y0=y0, w=tw, h=th, **kw)
    assert np.array_equal(stitched, full)
    assert full.dtype == np.uint8


def test_deterministic_and_seed_matters() -> None:
    params, data = RAYTRACE.example(np.random.default_rng(1), "small")
    params = RAYTRACE.validate_params(params, len(data))
    a = RAYTRACE.execute(params, data)
    assert a == RAYTRACE.execute(params, data)
    b = RAYTRACE.execute({**params, "seed": params["seed"] + 1}, data)
    assert a != b
    assert RAYTRACE.cost(params, len(data)) > 0


def _bad(scene: dict[str, Any], **kw: Any) -> None:
    with pytest.raises(ValidationError):
        RAYTRACE.execute(RAYTRACE.validate_params(kw), encode_msgpack(scene))


def test_validation() -> None:
    good = demo_scene(np.random.default_rng(0), 2)
    _bad({**good, "spheres": [[0, 0, 0, float("nan"), 0]]})
    _bad({**good, "spheres": [[0, 0, 0, 1, 99]]})
    _bad({**good, "spheres": [[0, 0, 0, -1, 0]]})
    _bad({**good, "spheres": [[0, 0, 0, 1]]})
    _bad({**good, "materials": [[2, 0, 0, 0]]})
    _bad({**good, "camera": [0, 0, 0, 0, 0, 0, 0, 1, 0, 60]})
    _bad({k: v for k, v in good.items() if k != "lights"})
    _bad({**good, "lights": "many"})
    with pytest.raises(LimitExceededError):
        RAYTRACE.execute(
            RAYTRACE.validate_params({}), encode_msgpack({**good, "spheres": [[0, 0, 0, 1, 0]] * 257})
        )
    _bad(good, width=10, height=10, x0=5, w=6, h=4)
    with pytest.raises(LimitExceededError):
        RAYTRACE.validate_params({"spp": 17})
    with pytest.raises(ValidationError):
        RAYTRACE.execute(RAYTRACE.validate_params({}), b"\xc1")
    with pytest.raises(LimitExceededError):
        many = {**good, "spheres": [[0, 0, 0, 1, 0]] * 200, "lights": [[0, 5, 0, 1, 1, 1]] * 8}
        RAYTRACE.execute(
            RAYTRACE.validate_params(
                {"w": 512, "h": 512, "width": 512, "height": 512, "spp": 16, "max_depth": 4}
            ),
            encode_msgpack(many),
        )


def test_torch_cpu_matches_numpy_bit_for_bit() -> None:
    pytest.importorskip("torch")
    from tasks.kernels.raytrace import Scene, render_tile, render_tile_numpy

    scene = Scene(demo_scene(np.random.default_rng(4), 6))
    args = (41, 29, 3, 2, 30, 20, 3, 3, 9)
    ref = render_tile_numpy(scene, *args)
    assert np.array_equal(render_tile(scene, *args, backend="torch", device="cpu"), ref)


def test_equivalence_tolerance() -> None:
    from tasks.codecs import encode_array

    params = RAYTRACE.validate_params({"w": 40, "h": 30})
    img = np.random.default_rng(0).integers(0, 250, (30, 40, 3)).astype(np.uint8)
    one_level = img.copy()
    one_level[5:9] += 1
    assert RAYTRACE.equivalent(params, encode_array(img), encode_array(one_level))
    outlier = img.copy()
    outlier[0, 0] = 255 - outlier[0, 0]  # 1 pixel of 1200: the 0.1 % allows 1
    assert RAYTRACE.equivalent(params, encode_array(img), encode_array(outlier))
    outlier[0, 1] = 255 - outlier[0, 1]
    assert not RAYTRACE.equivalent(params, encode_array(img), encode_array(outlier))
    assert not RAYTRACE.equivalent(params, encode_array(img), encode_array(img.astype(np.float32)))
    assert not RAYTRACE.equivalent(params, encode_array(img), b"junk")
