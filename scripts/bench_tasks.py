#!/usr/bin/env python3
"""Task-path benchmark over real py-libp2p between separate processes.

    python scripts/bench_tasks.py [--json PATH] [--quick]

Starts worker nodes as separate processes (``p2c2r node run`` on 127.0.0.1, Noise +
yamux), and measures from a gamer in this process:

- ``sequential``: one ``echo`` task at a time to one worker, round-trip p50/p99;
- ``pipelined``: many tasks in flight to two workers, one task per frame;
- ``batched``: the same with tasks packed into frames (the default);
- ``mib``: 1 MiB in and 1 MiB out per task (incompressible), MB/s;
- ``executor``: real kernels (720p->1440p upscale, physics, flocking) on one worker
  started with ``--executor thread`` and then ``--executor process`` (2 kernels at once).

Every result's signature and binding to its task are checked by the SDK, as in production.
The transport figures run with ``VerificationConfig.off()`` (no redundancy or spot
checks, so each task travels once); ``pipelined_default_policy`` repeats the pipelined
run with the default verification policy, whose redundant copies for untrusted (new)
workers cost throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nodes.demo import WorkerProcess, _drain, start_worker, stop_workers
from nodes.gamer import GamerClient, GamerConfig
from nodes.verification import VerificationConfig

OFF = VerificationConfig.off()


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 3)


async def sequential(addr: str, n: int) -> dict[str, Any]:
    async with GamerClient.connect([addr], verification=OFF) as g:
        for _ in range(50):
            await g.run("echo", b"x" * 64)
        lat = []
        for i in range(n):
            t = time.perf_counter()
            await g.run("echo", i.to_bytes(8, "big") * 8)
            lat.append((time.perf_counter() - t) * 1000)
    return {
        "tasks": n,
        "p50_ms": pct(lat, 50),
        "p99_ms": pct(lat, 99),
        "mean_ms": round(float(np.mean(lat)), 3),
    }


async def throughput(addrs: list[str], n: int, config: GamerConfig, in_flight: int) -> dict[str, Any]:
    async with GamerClient.connect(addrs, config=config) as g:
        await g.map("echo", [b"w" * 64] * 200)
        sem = trio.Semaphore(in_flight)
        done = 0

        async def one(i: int) -> None:
            nonlocal done
            try:
                h = await g.submit("echo", i.to_bytes(8, "big") * 8)
                await h.result()
                done += 1
            finally:
                sem.release()

        t = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(n):
                await sem.acquire()
                nursery.start_soon(one, i)
        wall = time.perf_counter() - t
    return {
        "tasks": n,
        "in_flight": in_flight,
        "tasks_per_s": round(done / wall, 1),
        "wall_s": round(wall, 3),
    }


async def batched(addrs: list[str], n: int, batch: int) -> dict[str, Any]:
    async with GamerClient.connect(addrs, verification=OFF) as g:
        await g.map("echo", [b"w" * 64] * 200)
        t = time.perf_counter()
        handles = []
        for start in range(0, n, batch):
            handles += await g.submit_many(
                [("echo", i.to_bytes(8, "big") * 8, None) for i in range(start, min(n, start + batch))]
            )
            if len(handles) >= 4 * batch:  # keep a bounded window in flight
                for h in handles[: 2 * batch]:
                    await h.result()
                handles = handles[2 * batch :]
        for h in handles:
            await h.result()
        wall = time.perf_counter() - t
    return {"tasks": n, "batch": batch, "tasks_per_s": round(n / wall, 1), "wall_s": round(wall, 3)}


async def mib(addr: str, n: int) -> dict[str, Any]:
    payload = os.urandom(1024 * 1024)
    async with GamerClient.connect([addr], verification=OFF) as g:
        await g.run("echo", payload)
        t = time.perf_counter()
        lat = []
        for i in range(n):
            t1 = time.perf_counter()
            out = await g.run("echo", payload[:-8] + i.to_bytes(8, "big"))
            lat.append((time.perf_counter() - t1) * 1000)
            assert len(out) == len(payload)
        wall = time.perf_counter() - t
    return {
        "tasks": n,
        "p50_ms": pct(lat, 50),
        "mb_per_s_each_way": round(n * len(payload) / wall / 1e6, 1),
        "tasks_per_s": round(n / wall, 1),
    }


async def executor_compare(tmp: Path, quick: bool) -> dict[str, Any]:
    from tasks.registry import default_registry

    reg = default_registry()
    rng = np.random.default_rng(7)
    work = {
        "upscale": reg.get("upscale").example(rng, "large"),  # type: ignore[misc]
        "physics_step": reg.get("physics_step").example(rng, "medium"),  # type: ignore[misc]
        "flocking": reg.get("flocking").example(rng, "medium"),  # type: ignore[misc]
    }
    n = 12 if quick else 40
    out: dict[str, Any] = {}
    for executor in ("thread", "process"):
        proc = await start_worker(tmp / f"x-{executor}.key", tmp, 2, extra=["--executor", executor])
        try:
            async with trio.open_nursery() as drains:
                drains.start_soon(_drain, proc.proc)
                async with GamerClient.connect([proc.addr], verification=OFF) as g:
                    res: dict[str, Any] = {}
                    for kind, (params, data) in work.items():
                        await g.map(kind, [data] * 2, params, deadline=120)  # warm up (imports, models)
                        t = time.perf_counter()
                        await g.map(kind, [data] * n, params, deadline=300)
                        res[kind] = round(n / (time.perf_counter() - t), 2)
                    out[executor] = res
                drains.cancel_scope.cancel()
        finally:
            await stop_workers([proc])
        print("executor", executor, out[executor], "tasks/s", flush=True)
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    procs: list[WorkerProcess] = []
    with tempfile.TemporaryDirectory(prefix="p2c2r-bench-") as tmp:
        try:
            for i in range(2):
                procs.append(await start_worker(Path(tmp) / f"w{i}.key", Path(tmp), 1))
            async with trio.open_nursery() as drains:
                for p in procs:
                    drains.start_soon(_drain, p.proc)
                addrs = [p.addr for p in procs]
                res: dict[str, Any] = {
                    "machine": {"cpus": os.cpu_count()},
                    "transport": "py-libp2p TCP+Noise+yamux",
                }
                res["sequential"] = await sequential(addrs[0], 500 if quick else 3000)
                print("sequential", res["sequential"], flush=True)
                n = 3000 if quick else 20000
                res["pipelined"] = await throughput(
                    addrs, n, GamerConfig(max_batch_tasks=1, verification=OFF), 256
                )
                print("pipelined", res["pipelined"], flush=True)
                res["pipelined_batched_frames"] = await throughput(
                    addrs, n, GamerConfig(verification=OFF), 1024
                )
                print("pipelined+batched frames", res["pipelined_batched_frames"], flush=True)
                res["pipelined_default_policy"] = await throughput(addrs, n, GamerConfig(), 1024)
                print("pipelined, default verification policy", res["pipelined_default_policy"], flush=True)
                res["batched"] = await batched(addrs, n, 256)
                print("batched", res["batched"], flush=True)
                res["mib"] = await mib(addrs[0], 30 if quick else 200)
                print("1 MiB", res["mib"], flush=True)
                drains.cancel_scope.cancel()
        finally:
            await stop_workers(procs)
        if not args.skip_kernels:
            res["executor"] = await executor_compare(Path(tmp), quick)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--quick", action="store_true", help="a reduced run")
    ap.add_argument("--skip-kernels", action="store_true", help="skip the thread/process executor comparison")
    a = ap.parse_args()
    out = trio.run(main, a)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"written to {a.json}")
