#!/usr/bin/env python
"""Benchmark the built-in kernels on this machine's CPU.

For each kernel and example size: the median wall time of ``execute`` (decode + compute +
encode), and for kernels with more than one implementation the compute core under each
(``numpy`` vs ``torch``). ``upscale`` also times Pillow's resize (bilinear and Lanczos) on
the same frame as a reference. Prints a table and optionally writes JSON.

    python scripts/bench_kernels.py [--json PATH] [--quick] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.codecs import decode_array, decode_image
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
        from tasks.codecs import decode_msgpack_map

        return decode_array(decode_msgpack_map(data)["pairs"]).shape[0], "paths"
    return len(data) / 1e6, "MB"


def bench(quick: bool, repeat: int) -> list[dict[str, Any]]:
    from PIL import Image

    from tasks.kernels import upscale

    reg = default_registry()
    sizes = ["small", "medium"] if quick else ["small", "medium", "large"]
    rows: list[dict[str, Any]] = []
    for kind in reg.kinds():
        if kind.name == "echo" or kind.example is None:
            continue
        for size in sizes:
            params, data = kind.example(np.random.default_rng(0), size)
            params = kind.validate_params(params, len(data))
            units, unit = _work(kind.name, params, data)
            reps = 1 if (size == "large" and kind.name in ("pathfind", "raytrace")) else repeat

            cost_units = round(kind.cost(params, len(data)), 1)

            def add(
                impl: str,
                ms: float,
                *,
                _k: str = kind.name,
                _s: str = size,
                _c: float = cost_units,
                _u: float = units,
                _n: str = unit,
            ) -> None:
                rows.append(
                    {
                        "kind": _k,
                        "size": _s,
                        "impl": impl,
                        "ms": round(ms, 2),
                        "throughput": round(_u / (ms / 1000), 3),
                        "unit": f"{_n}/s",
                        "cost_units": _c,
                    }
                )

            add("execute (default)", _median_ms(lambda k=kind, p=params, d=data: k.execute(p, d), reps))
            if kind.name == "upscale":
                frame = decode_image(data)
                h, w = frame.shape[:2]
                oh, ow = upscale.output_size(h, w, params["scale"])
                for mode in ("fast", "quality"):
                    for backend in ("torch", "numpy"):
                        ms = _median_ms(
                            lambda f=frame, m=mode, b=backend: upscale.upscale_frame(f, 2.0, m, b), reps
                        )
                        add(f"{mode} core, {backend}", ms)
                img = Image.fromarray(frame)
                for name, flt in (
                    ("bilinear", Image.Resampling.BILINEAR),
                    ("lanczos", Image.Resampling.LANCZOS),
                ):
                    add(
                        f"Pillow {name} (reference)",
                        _median_ms(lambda i=img, f=flt, sz=(ow, oh): i.resize(sz, f), reps),
                    )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write the results here as JSON")
    ap.add_argument("--quick", action="store_true", help="small and medium sizes only")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per case (median)")
    args = ap.parse_args(argv)
    import torch

    rows = bench(args.quick, max(1, args.repeat if not args.quick else min(args.repeat, 3)))
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"kernels on CPU ({platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()})"
    )
    for col in ("kind", "size", "impl", "ms", "throughput", "cost units"):
        table.add_column(col, justify="right" if col in ("ms", "throughput", "cost units") else "left")
    for r in rows:
        table.add_row(
            r["kind"],
            r["size"],
            r["impl"],
            f"{r['ms']:.1f}",
            f"{r['throughput']:.3g} {r['unit']}",
            f"{r['cost_units']:.0f}",
        )
    Console().print(table)
    if args.json:
        meta = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
        args.json.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
