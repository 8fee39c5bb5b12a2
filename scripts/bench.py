#!/usr/bin/env python3
"""P2C2R beside Ray and Dask: the same workloads on the same machine, in one run.

    python scripts/bench.py [--json PATH] [--quick] [--only p2c2r,ray,dask] [--workloads mib,...]

Ray and Dask come from the optional ``bench`` extra (``pip install -e '.[bench]'``); a
system that is not installed is reported as skipped. Workloads:

- ``seq``: sequential tiny-task round trip, p50/p99 (ms);
- ``tiny``: 10,000 tiny tasks, tasks/s (P2C2R: pipelined, frames batched);
- ``mib``: 1 MiB in and 1 MiB out per task, MB/s each way, one task at a time. P2C2R
  also measures its same-host shared-memory path on and off on the same workers, with the
  verification policy off (each task travels once; signatures and digests still checked),
  one and four tasks in flight: ``mib_shm_{on,off}_mb_per_s``, ``mib4_shm_{on,off}_mb_per_s``;
- ``upscale``: 720p->1440p frames as JPEG in and out (the same kernel everywhere), frames/s;
- ``startup``: seconds from launch to ready, and resident memory of the whole system (MiB).

P2C2R runs real py-libp2p nodes (two worker processes, Noise + yamux) with every result
signed and verified; Ray and Dask run two worker processes each on their local clusters.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 3)


def rss_mib(pids: list[int]) -> float:
    import psutil

    total = 0
    seen: set[int] = set()
    for pid in pids:
        try:
            p = psutil.Process(pid)
            for proc in [p, *p.children(recursive=True)]:
                if proc.pid not in seen:
                    seen.add(proc.pid)
                    total += proc.memory_info().rss
        except psutil.Error:
            continue
    return round(total / 2**20, 1)


def upscale_input() -> tuple[dict[str, Any], bytes]:
    from tasks.registry import default_registry

    kind = default_registry().get("upscale")
    assert kind.example is not None
    params, data = kind.example(np.random.default_rng(3), "large")  # 1280x720 JPEG
    params = dict(params, mode="fast", codec="jpeg")
    return params, data


def run_upscale_kernel(params: dict[str, Any], data: bytes) -> bytes:
    """The kernel as Ray and Dask run it: the same function the P2C2R worker runs."""
    from tasks.registry import default_registry

    kind = default_registry().get("upscale")
    return kind.execute(kind.validate_params(params, len(data)), data)


def noop(x: bytes) -> bytes:
    return x


# ---------------------------------------------------------------- P2C2R


WORKLOADS = ("seq", "tiny", "mib", "upscale")


async def p2c2r_mib(g: Any, n: int, in_flight: int = 1) -> float:
    """MB/s each way of 1 MiB echo tasks (distinct inputs), ``in_flight`` at a time."""
    import trio

    payload = os.urandom(2**20)
    await g.run("echo", payload, deadline=60)  # warm-up; also the first big payload: the shm hello
    await g.run("echo", payload[::-1], deadline=60)
    todo = iter(range(n))

    async def lane() -> None:
        for i in todo:  # shared: each lane takes the next task when its last one is back
            out = await g.run("echo", payload[:-8] + i.to_bytes(8, "big"), deadline=60)
            assert len(out) == len(payload)

    t = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(in_flight):
            nursery.start_soon(lane)
    return round(n * 2**20 / (time.perf_counter() - t) / 1e6, 1)


def bench_p2c2r(quick: bool, workloads: tuple[str, ...] = WORKLOADS) -> dict[str, Any]:
    import trio

    from nodes.demo import WorkerProcess, _drain, start_worker, stop_workers
    from nodes.gamer import GamerClient, GamerConfig
    from nodes.verification import VerificationConfig

    n_seq, n_tiny, n_mib, n_up = (300, 3000, 20, 20) if quick else (2000, 10000, 100, 60)
    params, frame = upscale_input()

    async def main() -> dict[str, Any]:
        res: dict[str, Any] = {}
        procs: list[WorkerProcess] = []
        with tempfile.TemporaryDirectory(prefix="p2c2r-bench-") as tmp:
            try:
                t0 = time.perf_counter()
                async with trio.open_nursery() as n:

                    async def start(i: int) -> None:
                        procs.append(await start_worker(Path(tmp) / f"w{i}.key", Path(tmp), 1))

                    for i in range(2):
                        n.start_soon(start, i)
                res["startup_s"] = round(time.perf_counter() - t0, 3)
                res["rss_idle_mib"] = rss_mib([p.proc.pid for p in procs])
                async with trio.open_nursery() as drains:
                    for p in procs:
                        drains.start_soon(_drain, p.proc)
                    addrs = [p.addr for p in procs]
                    # The result cache off: the same frames are sent again, and Ray and
                    # Dask compute them again (bench_tasks.py measures the cache).
                    async with GamerClient.connect(addrs, config=GamerConfig(cache_entries=0)) as g:
                        if "seq" in workloads:
                            for _ in range(100):
                                await g.run("echo", b"x")
                            lat = []
                            for i in range(n_seq):
                                t = time.perf_counter()
                                await g.run("echo", i.to_bytes(8, "big"))
                                lat.append((time.perf_counter() - t) * 1000)
                            res["seq_p50_ms"], res["seq_p99_ms"] = pct(lat, 50), pct(lat, 99)
                        if "tiny" in workloads:
                            t = time.perf_counter()
                            handles = await g.submit_many(
                                [("echo", i.to_bytes(8, "big"), None) for i in range(n_tiny)]
                            )
                            for h in handles:
                                await h.result()
                            res["tiny_tasks_per_s"] = round(n_tiny / (time.perf_counter() - t), 1)
                        if "mib" in workloads:
                            res["mib_mb_per_s"] = await p2c2r_mib(g, n_mib)
                        if "upscale" in workloads:
                            await g.map("upscale", [frame] * 4, params, deadline=60)
                            t = time.perf_counter()
                            await g.map("upscale", [frame] * n_up, params, deadline=120)
                            res["upscale_frames_per_s"] = round(n_up / (time.perf_counter() - t), 2)
                        res["rss_loaded_mib"] = rss_mib([p.proc.pid for p in procs] + [os.getpid()])
                    for shm in ("on", "off") if "mib" in workloads else ():
                        conf = GamerConfig(
                            cache_entries=0, shm=shm == "on", verification=VerificationConfig.off()
                        )
                        async with GamerClient.connect(addrs, config=conf) as g:
                            res[f"mib_shm_{shm}_mb_per_s"] = await p2c2r_mib(g, n_mib)
                            res[f"mib4_shm_{shm}_mb_per_s"] = await p2c2r_mib(g, n_mib, 4)
                            res[f"mib_shm_{shm}_payloads"] = g.stats.shm_out + g.stats.shm_in
                    drains.cancel_scope.cancel()
            finally:
                await stop_workers(procs)
        return res

    return trio.run(main)


# ---------------------------------------------------------------- Ray


def bench_ray(quick: bool) -> dict[str, Any]:
    import ray

    n_seq, n_tiny, n_mib, n_up = (300, 3000, 20, 20) if quick else (2000, 10000, 100, 60)
    params, frame = upscale_input()
    res: dict[str, Any] = {}
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        f = ray.remote(noop)
        ray.get(f.remote(b"x"))
        res["startup_s"] = round(time.perf_counter() - t0, 3)
        res["rss_idle_mib"] = rss_mib([os.getpid()])
        for _ in range(100):
            ray.get(f.remote(b"x"))
        lat = []
        for i in range(n_seq):
            t = time.perf_counter()
            ray.get(f.remote(i.to_bytes(8, "big")))
            lat.append((time.perf_counter() - t) * 1000)
        res["seq_p50_ms"], res["seq_p99_ms"] = pct(lat, 50), pct(lat, 99)
        t = time.perf_counter()
        ray.get([f.remote(i.to_bytes(8, "big")) for i in range(n_tiny)])
        res["tiny_tasks_per_s"] = round(n_tiny / (time.perf_counter() - t), 1)
        payload = os.urandom(2**20)
        t = time.perf_counter()
        for i in range(n_mib):
            ray.get(f.remote(payload[:-8] + i.to_bytes(8, "big")))
        res["mib_mb_per_s"] = round(n_mib * 2**20 / (time.perf_counter() - t) / 1e6, 1)
        up = ray.remote(run_upscale_kernel)
        ray.get([up.remote(params, frame) for _ in range(4)])
        t = time.perf_counter()
        ray.get([up.remote(params, frame) for _ in range(n_up)])
        res["upscale_frames_per_s"] = round(n_up / (time.perf_counter() - t), 2)
        res["rss_loaded_mib"] = rss_mib([os.getpid()])
    finally:
        ray.shutdown()
    return res


# ---------------------------------------------------------------- Dask


def bench_dask(quick: bool) -> dict[str, Any]:
    from dask.distributed import Client, LocalCluster

    n_seq, n_tiny, n_mib, n_up = (300, 3000, 20, 20) if quick else (2000, 10000, 100, 60)
    params, frame = upscale_input()
    res: dict[str, Any] = {}
    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    try:
        client.submit(noop, b"x", pure=False).result()
        res["startup_s"] = round(time.perf_counter() - t0, 3)
        res["rss_idle_mib"] = rss_mib([os.getpid()])
        lat = []
        for i in range(n_seq):
            t = time.perf_counter()
            client.submit(noop, i.to_bytes(8, "big"), pure=False).result()
            lat.append((time.perf_counter() - t) * 1000)
        res["seq_p50_ms"], res["seq_p99_ms"] = pct(lat, 50), pct(lat, 99)
        t = time.perf_counter()
        client.gather(client.map(noop, [i.to_bytes(8, "big") for i in range(n_tiny)], pure=False))
        res["tiny_tasks_per_s"] = round(n_tiny / (time.perf_counter() - t), 1)
        payload = os.urandom(2**20)
        t = time.perf_counter()
        for i in range(n_mib):
            client.submit(noop, payload[:-8] + i.to_bytes(8, "big"), pure=False).result()
        res["mib_mb_per_s"] = round(n_mib * 2**20 / (time.perf_counter() - t) / 1e6, 1)
        client.gather([client.submit(run_upscale_kernel, params, frame, pure=False) for _ in range(4)])
        t = time.perf_counter()
        client.gather([client.submit(run_upscale_kernel, params, frame, pure=False) for _ in range(n_up)])
        res["upscale_frames_per_s"] = round(n_up / (time.perf_counter() - t), 2)
        res["rss_loaded_mib"] = rss_mib([os.getpid()])
    finally:
        client.close()
        cluster.close()
    return res


SYSTEMS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "p2c2r": bench_p2c2r,
    "ray": bench_ray,
    "dask": bench_dask,
}
FIGURES = [
    ("seq_p50_ms", "tiny task p50 ms", "lower"),
    ("seq_p99_ms", "tiny task p99 ms", "lower"),
    ("tiny_tasks_per_s", "tiny tasks/s", "higher"),
    ("mib_mb_per_s", "1 MiB tasks MB/s", "higher"),
    ("mib_shm_on_mb_per_s", "1 MiB MB/s, policy off, shm on", "higher"),
    ("mib_shm_off_mb_per_s", "1 MiB MB/s, policy off, shm off", "higher"),
    ("mib4_shm_on_mb_per_s", "1 MiB MB/s, 4 in flight, policy off, shm on", "higher"),
    ("mib4_shm_off_mb_per_s", "1 MiB MB/s, 4 in flight, policy off, shm off", "higher"),
    ("upscale_frames_per_s", "720p->1440p frames/s", "higher"),
    ("startup_s", "start-up s", "lower"),
    ("rss_idle_mib", "idle RSS MiB", "lower"),
    ("rss_loaded_mib", "loaded RSS MiB", "lower"),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write all figures here")
    ap.add_argument("--quick", action="store_true", help="reduced counts (under two minutes)")
    ap.add_argument("--only", default="p2c2r,ray,dask", help="comma-separated systems to run")
    ap.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help="P2C2R only: comma-separated workloads to run (seq, tiny, mib, upscale)",
    )
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    console = Console()
    results: dict[str, Any] = {}
    for name in args.only.split(","):
        try:
            console.print(f"[bold]{name}[/bold] ...")
            if name == "p2c2r":
                results[name] = bench_p2c2r(args.quick, tuple(args.workloads.split(",")))
            else:
                results[name] = SYSTEMS[name](args.quick)
        except ImportError as exc:
            results[name] = {"skipped": f"not installed ({exc.name}); pip install -e '.[bench]'"}
        console.print(f"  {results[name]}")
    table = Table(title="P2C2R beside Ray and Dask (this machine, loopback)")
    table.add_column("figure")
    for name in results:
        table.add_column(name, justify="right")
    peers = [n for n in results if n != "p2c2r" and "skipped" not in results[n]]
    for peer in peers:
        table.add_column(f"p2c2r/{peer}", justify="right")
    ratios: dict[str, dict[str, float]] = {}
    for key, label, better in FIGURES:
        row = [label] + [str(results[n].get(key, "-")) for n in results]
        for peer in peers:
            a, b = results.get("p2c2r", {}).get(key), results[peer].get(key)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
                r = a / b
                ratios.setdefault(peer, {})[key] = round(r, 3)
                row.append(f"{r:.2f}" + (" (better)" if (r < 1) == (better == "lower") and r != 1 else ""))
            else:
                row.append("-")
        table.add_row(*row)
    console.print(table)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"results": results, "ratios_p2c2r_over_peer": ratios}, indent=2) + "\n"
        )
        console.print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
