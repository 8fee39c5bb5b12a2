#!/usr/bin/env python
"""Benchmark the built-in kernels on this machine's CPU, numpy against torch.

For each kernel and example size: the median wall time of the compute core under each
implementation (``numpy_ms``, ``torch_ms``, torch forced onto the CPU), which one the kind
runs on a CPU-only node (``default``: the module's ``CPU_BACKEND``; upscale's
``DEFAULT_BACKEND``), whether the two outputs are byte-identical, the default's throughput
and the median of the whole ``execute`` (decode + compute + encode). ``upscale`` also times
Pillow's resize (bilinear, Lanczos) on the same frame; ``pathfind`` (pure-Python A*, no
torch path) is timed against a vectorised numpy wavefront (Bellman-Ford sweeps over the
whole grid, all pairs at once) that shows why A* stays; ``upscale`` adds a ``fast-planar`` row
per size (the fast 2x JPEG -> JPEG path ``execute`` takes, against the RGB path). Prints a
table, optionally JSON (``--only KIND --json FILE`` replaces that kind's rows in FILE).

    python scripts/bench_kernels.py [--json PATH] [--quick] [--repeat N] [--only KIND]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.codecs import decode_array, decode_image, decode_msgpack_map
from tasks.registry import default_registry


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: lazy imports, caches, allocator
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _work(name: str, params: dict[str, Any], data: bytes) -> tuple[float, str]:
    """The kernel's natural unit count for throughput."""
    if name == "upscale":
        h, w = decode_image(data).shape[:2]
        return h * w * params["scale"] ** 2 / 1e6, "out MP"
    if name in ("physics_step", "flocking"):
        return decode_array(data).shape[0] * params["steps"] / 1e6, "M body-steps"
    if name == "raytrace":
        return params["w"] * params["h"] * params["spp"] / 1e6, "M samples"
    if name == "pathfind":
        return decode_array(decode_msgpack_map(data)["pairs"]).shape[0], "paths"
    return len(data) / 1e6, "MB"


def wavefront_lengths(
    grid: np.ndarray, pairs: np.ndarray, max_sweeps: int = 100_000
) -> tuple[np.ndarray, int]:
    """Shortest 8-connected lengths (no corner cutting) for every pair at once, by
    Bellman-Ford sweeps over the whole grid: the data-parallel alternative to A*."""
    h, w = grid.shape
    k = len(pairs)
    free = np.zeros((h + 2, w + 2), dtype=bool)
    free[1:-1, 1:-1] = grid == 0
    dist = np.full((k, h + 2, w + 2), np.inf)
    dist[np.arange(k), pairs[:, 0] + 1, pairs[:, 1] + 1] = 0.0
    moves = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == dx == 0:
                continue
            ok = free[1:-1, 1:-1] & free[1 + dy : h + 1 + dy, 1 + dx : w + 1 + dx]
            if dy and dx:
                ok &= free[1 + dy : h + 1 + dy, 1:-1] & free[1:-1, 1 + dx : w + 1 + dx]
            moves.append((dy, dx, math.sqrt(2.0) if dy and dx else 1.0, ok))
    sweeps = 0
    inner = dist[:, 1:-1, 1:-1]
    while sweeps < max_sweeps:
        sweeps += 1
        before = inner.copy()
        for dy, dx, cost, ok in moves:
            cand = dist[:, 1 + dy : h + 1 + dy, 1 + dx : w + 1 + dx] + cost
            np.minimum(inner, np.where(ok, cand, np.inf), out=inner)
        if np.array_equal(before, inner):
            break
    out = dist[np.arange(k), pairs[:, 2] + 1, pairs[:, 3] + 1]
    return np.where(np.isinf(out), -1.0, out), sweeps


def _cores(kind: str, params: dict[str, Any], data: bytes) -> dict[str, Callable[[], Any]] | None:
    """name -> zero-argument callable of the compute core, per implementation."""
    if kind == "physics_step":
        from tasks.kernels import physics

        world = physics._decode_world(params, data)
        args = [params[k] for k in ("steps", "dt", "gravity", "restitution", "walls", "box")]
        return {
            b: (lambda b=b: physics.simulate(world, *args, backend=b, device="cpu"))  # type: ignore[misc]
            for b in ("numpy", "torch")
        }
    if kind == "flocking":
        from tasks.kernels import flocking

        agents = flocking._decode(params, data)
        return {b: (lambda b=b: flocking.simulate(agents, params, b, "cpu")) for b in ("numpy", "torch")}
    if kind == "raytrace":
        from tasks.kernels import raytrace

        scene = raytrace.decode_scene(params, data)
        keys = ("width", "height", "x0", "y0", "w", "h", "spp", "max_depth", "seed")
        args = [params[k] for k in keys]
        return {
            b: (lambda b=b: raytrace.render_tile(scene, *args, backend=b, device="cpu"))  # type: ignore[misc]
            for b in ("numpy", "torch")
        }
    return None


def _default(kind: str) -> str:
    from tasks.kernels import flocking, physics, raytrace, upscale

    return {
        "physics_step": physics.CPU_BACKEND,
        "flocking": flocking.CPU_BACKEND,
        "raytrace": raytrace.CPU_BACKEND,
        "upscale": upscale.DEFAULT_BACKEND,
        "pathfind": "python",
    }[kind]


def _same(a: Any, b: Any) -> bool:
    return bool(a.shape == b.shape and np.array_equal(a, b))


def bench(quick: bool, repeat: int, only: str | None = None) -> list[dict[str, Any]]:
    from PIL import Image

    from tasks.codecs import psnr
    from tasks.kernels import pathfind, upscale

    reg = default_registry()
    sizes = ["small", "medium"] if quick else ["small", "medium", "large"]
    rows: list[dict[str, Any]] = []
    for kind in reg.kinds():
        if kind.name == "echo" or kind.example is None or (only and kind.name != only):
            continue
        for size in sizes:
            params, data = kind.example(np.random.default_rng(0), size)
            params = kind.validate_params(params, len(data))
            units, unit = _work(kind.name, params, data)
            slow = size == "large" and kind.name in ("pathfind", "raytrace")
            reps = 1 if slow else repeat
            base: dict[str, Any] = {
                "kind": kind.name,
                "size": size,
                "cost_units": round(kind.cost(params, len(data)), 1),
                "unit": f"{unit}/s",
            }
            execute_ms = _median_ms(lambda k=kind, p=params, d=data: k.execute(p, d), reps)
            default = _default(kind.name)
            variants: list[tuple[str, dict[str, Callable[[], Any]], dict[str, Any]]] = []
            cores = _cores(kind.name, params, data)
            if cores is not None:
                variants.append(("", cores, {}))
            elif kind.name == "upscale":
                frame = decode_image(data)
                h, w = frame.shape[:2]
                oh, ow = upscale.output_size(h, w, params["scale"])
                img = Image.fromarray(frame)
                extra = {
                    "pillow_bilinear_ms": round(
                        _median_ms(lambda i=img, sz=(ow, oh): i.resize(sz, Image.Resampling.BILINEAR), reps),
                        2,
                    ),
                    "pillow_lanczos_ms": round(
                        _median_ms(lambda i=img, sz=(ow, oh): i.resize(sz, Image.Resampling.LANCZOS), reps), 2
                    ),
                }
                for mode in ("quality", "fast"):
                    variants.append(
                        (
                            mode,
                            {
                                b: (
                                    lambda f=frame, m=mode, b=b, sc=params["scale"]: upscale.upscale_frame(
                                        f, sc, m, b
                                    )
                                )
                                for b in ("numpy", "torch")
                            },
                            extra,
                        )
                    )
            elif kind.name == "pathfind":
                obj = decode_msgpack_map(data)
                grid = np.asarray(decode_array(obj["grid"]), dtype=np.uint8)
                pairs = np.asarray(decode_array(obj["pairs"]), dtype=np.int64)
                astar_ms = _median_ms(
                    lambda g=grid, q=pairs, p=params: pathfind.solve(
                        g, q, p["connectivity"], p["max_expansions"]
                    ),
                    reps,
                )
                row = {
                    **base,
                    "variant": "",
                    "numpy_ms": None,
                    "torch_ms": None,
                    "python_ms": round(astar_ms, 2),
                }
                if size != "large":  # the wavefront takes minutes on 1024^2
                    t0 = time.perf_counter()
                    wl, sweeps = wavefront_lengths(grid, pairs)
                    row["wavefront_numpy_ms"] = round((time.perf_counter() - t0) * 1000, 1)
                    row["wavefront_sweeps"] = sweeps
                    al, _ = pathfind.solve(grid, pairs, 8, params["max_expansions"])
                    row["wavefront_lengths_bit_identical"] = bool(np.array_equal(np.asarray(al), wl))
                    row["wavefront_lengths_close"] = bool(np.allclose(np.asarray(al), wl, rtol=0, atol=1e-9))
                row.update(
                    default=default,
                    default_ms=row["python_ms"],
                    execute_ms=round(execute_ms, 2),
                    throughput=round(units / (astar_ms / 1000), 3),
                )
                rows.append(row)
                continue
            for variant, fns, extra in variants:
                outs = {b: fn() for b, fn in fns.items()}
                if kind.name == "upscale":
                    agree = f"PSNR {psnr(outs['numpy'], outs['torch']):.1f} dB"
                else:
                    agree = "bit-identical" if _same(outs["numpy"], outs["torch"]) else "DIFFERENT"
                ms = {b: _median_ms(fn, reps) for b, fn in fns.items()}
                rows.append(
                    {
                        **base,
                        "variant": variant,
                        "numpy_ms": round(ms["numpy"], 2),
                        "torch_ms": round(ms["torch"], 2),
                        "faster": min(ms, key=lambda b: ms[b]),
                        "torch_speedup": round(ms["numpy"] / ms["torch"], 2),
                        "agreement": agree,
                        "default": default,
                        "default_ms": round(ms[default], 2),
                        "execute_ms": round(execute_ms, 2),
                        "throughput": round(units / (ms[default] / 1000), 3),
                        **extra,
                    }
                )
            if kind.name == "upscale":
                rows.append(_planar_row(base, params, data, reps))
            print(f"  done {kind.name} {size}", file=sys.stderr, flush=True)
    return rows


def _planar_row(base: dict[str, Any], params: dict[str, Any], data: bytes, reps: int) -> dict[str, Any]:
    """``fast`` 2x JPEG -> JPEG: the planar path (what ``execute`` runs) against the RGB path.

    ``default_ms`` is the planar compute core (luma ``bilinear_2x`` and the two chroma
    planes on decoded planes), ``execute_ms`` the whole planar ``execute`` (decode, compute,
    encode), ``rgb_execute_ms`` the same parameters through the RGB path (decode to RGB,
    torch resample, encode). Agreement: decoded planar output against decoded RGB output.
    """
    from tasks.codecs import decode_jpeg_planes, psnr
    from tasks.kernels import upscale
    from tasks.registry import default_registry

    kind = default_registry().get("upscale")
    fast = kind.validate_params({**params, "mode": "fast", "scale": 2.0, "codec": "jpeg"}, len(data))
    planes = decode_jpeg_planes(data)
    assert planes is not None, "the upscale example is a colour JPEG"
    y, cb, cr = planes

    def core() -> object:
        return (
            upscale.bilinear_2x(y),
            upscale.subsampled_bilinear_2x(cb),
            upscale.subsampled_bilinear_2x(cr),
        )

    core_ms = _median_ms(core, reps)
    planar_ms = _median_ms(lambda: upscale.run(fast, data), reps)
    rgb_ms = _median_ms(lambda: upscale.run(fast, data, planar=False), reps)
    agree = psnr(decode_image(upscale.run(fast, data)), decode_image(upscale.run(fast, data, planar=False)))
    units, _ = _work("upscale", fast, data)
    return {
        **base,
        "cost_units": round(kind.cost(fast, len(data)), 1),
        "variant": "fast-planar",
        "numpy_ms": round(core_ms, 2),
        "torch_ms": None,
        "faster": "numpy",
        "agreement": f"PSNR {agree:.1f} dB vs RGB path",
        "default": "numpy (planar)",
        "default_ms": round(core_ms, 2),
        "execute_ms": round(planar_ms, 2),
        "rgb_execute_ms": round(rgb_ms, 2),
        "throughput": round(units / (planar_ms / 1000), 3),
    }


def _merge_rows(path: Path, rows: list[dict[str, Any]], only: str) -> list[dict[str, Any]]:
    """``--only KIND`` into an existing ``--json`` file: that kind's rows replaced, others kept."""
    try:
        old = json.loads(path.read_text()).get("results", [])
    except (OSError, ValueError):
        return rows
    merged: list[dict[str, Any]] = []
    for r in old:
        if r.get("kind") != only:
            merged.append(r)
        elif rows:  # the new rows go where the kind's old rows were
            merged.extend(rows)
            rows = []
    return merged + rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write the results here as JSON")
    ap.add_argument("--quick", action="store_true", help="small and medium sizes only")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per case (median)")
    ap.add_argument(
        "--only",
        help="one kind only (with --json on an existing file: that kind's rows replaced, others kept)",
    )
    args = ap.parse_args(argv)
    import torch

    load_before = os.getloadavg()
    t0 = time.time()
    rows = bench(args.quick, max(1, args.repeat if not args.quick else min(args.repeat, 3)), args.only)
    load_after = os.getloadavg()
    from rich.console import Console
    from rich.table import Table

    cpu = platform.processor() or platform.machine()
    table = Table(
        title=f"kernels on CPU ({cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"load {load_before[0]:.1f} -> {load_after[0]:.1f})"
    )
    cols = (
        "kind",
        "size",
        "variant",
        "numpy ms",
        "torch ms",
        "agreement",
        "default",
        "throughput",
        "execute ms",
    )
    for col in cols:
        table.add_column(col, justify="right" if "ms" in col or col == "throughput" else "left")

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.1f}"

    for r in rows:
        agreement = r.get("agreement", "")
        if r["kind"] == "pathfind":
            agreement = f"A* {r['python_ms']:.0f} ms vs wavefront {r.get('wavefront_numpy_ms', '-')} ms"
        table.add_row(
            r["kind"],
            r["size"],
            r["variant"],
            f(r["numpy_ms"]),
            f(r["torch_ms"]),
            agreement,
            r["default"],
            f"{r['throughput']:.3g} {r['unit']}",
            f(r["execute_ms"]),
        )
    Console().print(table)
    if args.json:
        meta = {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu": cpu,
            "cpu_count": os.cpu_count(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
            "wall_s": round(time.time() - t0, 1),
            "quick": args.quick,
            "repeat": args.repeat,
            "note": "numpy_ms/torch_ms: compute core only, torch on CPU; default: what a CPU-only node runs",
        }
        if args.only and args.json.is_file():
            previous = json.loads(args.json.read_text()).get("meta", {})
            meta = {**previous, f"{args.only}_rerun": meta}
            rows = _merge_rows(args.json, rows, args.only)
        args.json.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
