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

``--features`` (on by default, ``--skip-features`` to leave out) measures each
optimisation on and off on the same workers, prints a table and adds it to the JSON
under ``features``:

- ``pipelining``: 1 task in flight vs 256 (one task per frame either way);
- ``batched_frames``: 1,024 in flight, one task per frame vs tasks packed into frames;
- ``batch_signature``: ``submit_many`` batches of 256 against a worker signing each
  result vs one signing one Merkle root per frame (``[worker] batch_sign``);
- ``result_cache``: 1 task in flight, 20 distinct inputs repeated, cache off vs on;
- ``adaptive_timeouts``: seconds until a task sent to a worker that never answers
  (``--misbehave drop``) fails: the fixed 30 s default vs the learned deadline;
- ``hedging``: 1 task in flight, every 10th placed on a worker that answers 0.2 s late
  (``--misbehave slow``): p50/p99 without and with hedged requests;
- ``payload_codec``: 720p->1440p upscale output as JPEG vs WebP vs PNG, and a
  physics world as raw vs zstd arrays: bytes per result and tasks/s;
- ``batch_lane``: 30 fps upscale frames with a 100 ms deadline on a 2-slot worker kept
  busy by path-tracing tiles sent as normal work (off) vs as batch work (on: the worker's
  niced background lane): frames missed and answered-frame p50/p95
  (``--only-batch-lane`` runs this alone);
- ``libp2p_tuning``: py-libp2p's per-message overhead cut (``mesh.libp2p_tuning``) off vs
  on in the workers and the gamer alike: two fresh workers per setting, sequential tiny
  p50/p99, pipelined tasks/s (256 in flight, one task per frame) and 1 MiB MB/s (through
  the stream: the same-host shared-memory path off), the
  settings alternated over several rounds (median reported, every round kept);
- ``executor``: thread vs process (the section below).

``sdk_placement`` (``--only-sdk-placement`` runs it alone; no workers needed): the gamer's
CPU per task in its verification core with the mesh client's placement from leases
installed, two leased workers among 4 to 256 connected ones (the core's ``on_submit`` and
``on_cancel``, verification policy off, so placement is what varies).

``--libp2p-tuning on|off`` runs the whole benchmark with the tuning on or off (workers and
gamer; it sets ``P2C2R_LIBP2P_TUNING``, which new hosts read when they open).

Figures are read from the nodes' Prometheus metrics (``nodes.metrics``): each worker
process's ``/metrics`` endpoint is scraped before and after every workload (tasks finished
by outcome, bytes in and out, time waiting for a kernel slot), and the gamer's own
``GamerClient.metrics`` gives the latency quantiles (``p2c2r_task_latency_quantile_seconds``)
and the verified-task count. The ``*_ms`` and ``tasks_per_s`` figures of the sequential and
1 MiB runs are the metrics' quantiles; a wall-clock measurement beside them
(``*_wall_ms``) cross-checks the metrics. Every workload's ``metrics`` block reports what
the workers counted, so a figure the gamer claims can be matched against the other side.

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
import re
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mesh import wire
from mesh.errors import TaskTimeoutError
from mesh.libp2p_tuning import ENV_VAR as TUNING_ENV
from nodes.demo import WorkerProcess, _drain, start_worker, stop_workers
from nodes.gamer import GamerClient, GamerConfig
from nodes.metrics import fetch_metrics, parse_prometheus
from nodes.verification import VerificationConfig

OFF = VerificationConfig.off()
#: (metric name, sorted labels) -> value, summed over the scraped nodes.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
_METRICS_URL = re.compile(r"http://127\.0\.0\.1:(\d+)/metrics")


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 3)


def metrics_port(wp: WorkerProcess) -> int:
    """The port of a worker process's ``/metrics`` endpoint, from its start-up banner."""
    for line in wp.lines:
        m = _METRICS_URL.search(line)
        if m:
            return int(m.group(1))
    raise RuntimeError("the worker printed no metrics endpoint (started with --metrics-port -1?)")


def _samples(texts: list[str]) -> Samples:
    out: Samples = {}
    for text in texts:
        for name, labels, value in parse_prometheus(text):
            key = (name, tuple(sorted(labels.items())))
            out[key] = out.get(key, 0.0) + value
    return out


async def scrape(ports: list[int]) -> Samples:
    """Every worker's metrics, summed."""
    return _samples([await fetch_metrics("127.0.0.1", p) for p in ports])


def _total(s: Samples, name: str, **labels: str) -> float:
    return sum(
        v for (n, lbl), v in s.items() if n == name and all(dict(lbl).get(k) == x for k, x in labels.items())
    )


def worker_delta(before: Samples, after: Samples) -> dict[str, Any]:
    """What the workers counted between two scrapes."""

    def d(name: str, **labels: str) -> float:
        return _total(after, name, **labels) - _total(before, name, **labels)

    ok = d("p2c2r_tasks_total", outcome="ok")
    waits = d("p2c2r_queue_wait_seconds_count")
    return {
        "worker_tasks_ok": int(ok),
        "worker_tasks_failed": int(d("p2c2r_tasks_total") - ok),
        "worker_bytes_in": int(d("p2c2r_payload_bytes_total", direction="in")),
        "worker_bytes_out": int(d("p2c2r_payload_bytes_total", direction="out")),
        "worker_queue_wait_ms_mean": round(d("p2c2r_queue_wait_seconds_sum") / waits * 1000, 3)
        if waits
        else None,
    }


def gamer_figures(g: GamerClient, kind: str = "echo") -> dict[str, Any]:
    """The gamer's own metrics (in this process: read from its ``NodeMetrics``, the values
    its ``/metrics`` page renders): verified tasks and latency quantiles (ms) of ``kind``."""
    quantiles = g.metrics.latency_quantiles().get(kind, {})
    return {
        "gamer_tasks_ok": int(g.metrics.counts().get((kind, "ok"), 0)),
        **{f"p{round(q * 100)}_ms": round(v * 1000, 3) for q, v in sorted(quantiles.items())},
    }


async def measured(ports: list[int], name: str, work: Any) -> dict[str, Any]:
    """Run one workload between two scrapes of the workers' metrics; print and return it."""
    before = await scrape(ports)
    res: dict[str, Any] = await work
    res["metrics"] = worker_delta(before, await scrape(ports))
    print(name, res, flush=True)
    return res


async def sequential(addr: str, n: int) -> dict[str, Any]:
    async with GamerClient.connect([addr], verification=OFF) as warm:
        for _ in range(50):  # the worker's first tasks (imports, caches) stay out of the figures
            await warm.run("echo", b"x" * 64)
    async with GamerClient.connect([addr], verification=OFF) as g:
        lat = []
        for i in range(n):
            t = time.perf_counter()
            await g.run("echo", i.to_bytes(8, "big") * 8)
            lat.append((time.perf_counter() - t) * 1000)
        figures = gamer_figures(g)
    return {
        "tasks": n,
        **figures,
        "p50_wall_ms": pct(lat, 50),
        "p99_wall_ms": pct(lat, 99),
        "mean_wall_ms": round(float(np.mean(lat)), 3),
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

        v0 = gamer_figures(g)["gamer_tasks_ok"]
        t = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(n):
                await sem.acquire()
                nursery.start_soon(one, i)
        wall = time.perf_counter() - t
        verified = gamer_figures(g)["gamer_tasks_ok"] - v0
    return {
        "tasks": n,
        "in_flight": in_flight,
        "gamer_tasks_ok": verified,
        "tasks_per_s": round(verified / wall, 1),
        "tasks_done_wall": done,
        "wall_s": round(wall, 3),
    }


async def batched(addrs: list[str], n: int, batch: int) -> dict[str, Any]:
    async with GamerClient.connect(addrs, verification=OFF) as g:
        await g.map("echo", [b"w" * 64] * 200)
        v0 = gamer_figures(g)["gamer_tasks_ok"]
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
        verified = gamer_figures(g)["gamer_tasks_ok"] - v0
    return {
        "tasks": n,
        "batch": batch,
        "gamer_tasks_ok": verified,
        "tasks_per_s": round(verified / wall, 1),
        "wall_s": round(wall, 3),
    }


async def mib(addr: str, n: int, shm: bool = True) -> dict[str, Any]:
    payload = os.urandom(1024 * 1024)
    async with GamerClient.connect([addr], config=replace(RAW, shm=shm)) as g:
        await g.run("echo", payload)
        t = time.perf_counter()
        lat = []
        for i in range(n):
            t1 = time.perf_counter()
            out = await g.run("echo", payload[:-8] + i.to_bytes(8, "big"))
            lat.append((time.perf_counter() - t1) * 1000)
            assert len(out) == len(payload)
        wall = time.perf_counter() - t
        figures = gamer_figures(g)
    return {
        "tasks": n,
        "p50_ms": figures["p50_ms"],
        "p50_wall_ms": pct(lat, 50),
        "gamer_tasks_ok": figures["gamer_tasks_ok"],
        "mb_per_s_each_way": round(n * len(payload) / wall / 1e6, 1),
        "tasks_per_s": round(n / wall, 1),
    }


RAW = GamerConfig(verification=OFF)
#: For runs that send the same input again and mean to compute it again.
NOCACHE = replace(RAW, cache_entries=0)


async def _latencies(g: GamerClient, inputs: list[bytes], deadline: float | None = None) -> list[float]:
    lat = []
    for data in inputs:
        t = time.perf_counter()
        await g.run("echo", data, deadline=deadline)
        lat.append((time.perf_counter() - t) * 1000)
    return lat


async def cache_onoff(addr: str, n: int) -> dict[str, Any]:
    inputs = [(i % 20).to_bytes(8, "big") * 8 for i in range(n)]
    out: dict[str, Any] = {}
    for label, cfg in (("off", replace(RAW, cache_entries=0)), ("on", RAW)):
        async with GamerClient.connect([addr], config=cfg) as g:
            t = time.perf_counter()
            lat = await _latencies(g, inputs)
            wall = time.perf_counter() - t
            out[label] = {
                "tasks_per_s": round(n / wall, 1),
                "p50_ms": pct(lat, 50),
                "cache_hits": g.stats.cache_hits,
            }
    return out


async def timeouts_onoff(good: str, dead: str, dead_peer: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, cfg in (
        ("off", replace(RAW, adaptive_timeouts=None, hedge=False)),
        ("on", replace(RAW, hedge=False)),
    ):
        async with GamerClient.connect([good, dead], config=cfg) as g:
            to_dead = [False]

            def placer(
                kind: str, cands: list[tuple[bytes, int]], to_dead: list[bool] = to_dead
            ) -> bytes | None:
                return dead_peer if to_dead[0] else next((w for w, _ in cands if w != dead_peer), None)

            g.set_placement(placer)
            await _latencies(g, [i.to_bytes(8, "big") for i in range(50)])  # learn
            to_dead[0] = True
            t = time.perf_counter()
            try:
                await g.run("echo", b"never answered")
            except TaskTimeoutError:
                pass
            out[label] = {"seconds_to_fail": round(time.perf_counter() - t, 3)}
    return out


async def hedging_onoff(fast: str, slow_peer: bytes, slow: str, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, cfg in (("off", replace(RAW, hedge=False)), ("on", RAW)):
        async with GamerClient.connect([fast, slow], config=cfg) as g:
            count = 0

            def placer(kind: str, cands: list[tuple[bytes, int]]) -> bytes | None:
                nonlocal count
                count += 1
                if count % 10 == 0 and any(w == slow_peer for w, _ in cands):
                    return slow_peer
                return next((w for w, _ in cands if w != slow_peer), None)

            await _latencies(g, [b"warm-%d" % i for i in range(20)])  # learn, all on the fast one
            g.set_placement(placer)
            lat = await _latencies(g, [i.to_bytes(8, "big") * 8 for i in range(n)], deadline=5.0)
            out[label] = {
                "p50_ms": pct(lat, 50),
                "p99_ms": pct(lat, 99),
                "mean_ms": round(float(np.mean(lat)), 3),
                "hedges": g.stats.hedges,
                "hedges_denied": g.stats.hedges_denied,
            }
    return out


async def codec_compare(addr: str, n: int) -> dict[str, Any]:
    from tasks.registry import default_registry

    reg = default_registry()
    rng = np.random.default_rng(3)
    params, frame = reg.get("upscale").example(rng, "large")  # type: ignore[misc]
    wparams, world = reg.get("physics_step").example(rng, "medium")  # type: ignore[misc]
    runs = [("upscale", frame, {**params, "codec": c}, f"upscale_{c}") for c in ("jpeg", "webp", "png")]
    runs += [("physics_step", world, {**wparams, "codec": c}, f"physics_{c}") for c in ("raw", "zstd")]
    out: dict[str, Any] = {}
    async with GamerClient.connect([addr], config=NOCACHE) as g:
        for kind, data, p, label in runs:
            outs = await g.map(kind, [data] * 2, p, deadline=120)  # warm up
            t = time.perf_counter()
            await g.map(kind, [data] * n, p, deadline=300)
            out[label] = {
                "bytes_out": len(outs[0]),
                "tasks_per_s": round(n / (time.perf_counter() - t), 2),
            }
    return out


def set_libp2p_tuning(on: bool) -> None:
    """Hosts opened from now on (worker processes started, gamers connected) use this."""
    os.environ[TUNING_ENV] = "1" if on else "0"


async def libp2p_tuning_onoff(tmp: Path, quick: bool) -> dict[str, Any]:
    """The tuning off and on in workers and gamer alike, alternated over several rounds."""
    rounds = 2 if quick else 3
    n_seq, n_piped, n_mib = (300, 2000, 20) if quick else (1000, 6000, 60)
    saved = os.environ.get(TUNING_ENV)
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    try:
        for r in range(rounds):
            for label in ("off", "on") if r % 2 == 0 else ("on", "off"):
                set_libp2p_tuning(label == "on")
                procs = [await start_worker(tmp / f"t{label}{r}{i}.key", tmp, 1) for i in range(2)]
                try:
                    async with trio.open_nursery() as drains:
                        for p in procs:
                            drains.start_soon(_drain, p.proc)
                        addrs = [p.addr for p in procs]
                        seq = await sequential(addrs[0], n_seq)
                        piped = await throughput(addrs, n_piped, replace(RAW, max_batch_tasks=1), 256)
                        big = await mib(addrs[0], n_mib, shm=False)  # through yamux, not shared memory
                        drains.cancel_scope.cancel()
                finally:
                    await stop_workers(procs)
                one = {
                    "round": r,
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                    "seq_p50_ms": seq["p50_ms"],
                    "seq_p99_ms": seq["p99_ms"],
                    "seq_p50_wall_ms": seq["p50_wall_ms"],
                    "pipelined_tasks_per_s": piped["tasks_per_s"],
                    "mib_mb_per_s": big["mb_per_s_each_way"],
                    "mib_p50_ms": big["p50_ms"],
                }
                runs[label].append(one)
                print("libp2p tuning", label, one, flush=True)
    finally:
        if saved is None:
            os.environ.pop(TUNING_ENV, None)
        else:
            os.environ[TUNING_ENV] = saved
    out: dict[str, Any] = {}
    for label, rs in runs.items():
        out[label] = {
            k: round(float(np.median([x[k] for x in rs])), 3)
            for k in rs[0]
            if k not in ("round", "load_avg_1m")
        }
        out[label]["rounds"] = rs
    return out


async def features(addrs: list[str], tmp: Path, quick: bool) -> dict[str, Any]:
    """Each optimisation on and off, on the same machine and workers."""
    n = 1000 if quick else 5000
    f: dict[str, Any] = {}
    seq = await throughput(addrs[:1], 300 if quick else 2000, replace(RAW, max_batch_tasks=1), 1)
    piped = await throughput(addrs, n, replace(RAW, max_batch_tasks=1), 256)
    f["pipelining"] = {"off": seq, "on": piped}
    f["batched_frames"] = {
        "off": await throughput(addrs, n, replace(RAW, max_batch_tasks=1), 1024),
        "on": await throughput(addrs, n, RAW, 1024),
    }
    conf = tmp / "no-batch-sign.toml"
    conf.write_text("[worker]\nbatch_sign = false\n")
    special = [
        await start_worker(tmp / "nb.key", tmp, 1, extra=["--config", str(conf)]),
        await start_worker(tmp / "drop.key", tmp, 1, extra=["--misbehave", "drop"]),
        await start_worker(tmp / "slow.key", tmp, 1, extra=["--misbehave", "slow:delay=0.2"]),
    ]
    try:
        async with trio.open_nursery() as drains:
            for p in special:
                drains.start_soon(_drain, p.proc)
            nb, drop, slow = special
            peers = {}
            async with GamerClient.connect([nb.addr, drop.addr, slow.addr], config=RAW) as probe:
                for p, w in zip(special, probe.workers(), strict=True):
                    peers[p.addr] = w
            f["batch_signature"] = {
                "off": await batched([nb.addr], n, 256),
                "on": await batched(addrs[:1], n, 256),
            }
            f["result_cache"] = await cache_onoff(addrs[0], 500 if quick else 2000)
            f["adaptive_timeouts"] = await timeouts_onoff(addrs[0], drop.addr, peers[drop.addr])
            f["hedging"] = await hedging_onoff(addrs[0], peers[slow.addr], slow.addr, 300 if quick else 1000)
            f["payload_codec"] = await codec_compare(addrs[0], 6 if quick else 20)
            drains.cancel_scope.cancel()
    finally:
        await stop_workers(special)
    f["batch_lane"] = await batch_lane_onoff(tmp, quick)
    f["libp2p_tuning"] = await libp2p_tuning_onoff(tmp, quick)
    return f


def feature_table(f: dict[str, Any]) -> str:
    """One row per optimisation: the figure that it moves, off and on."""
    rows = [("optimisation", "figure", "off", "on")]

    def row(name: str, figure: str, key: str) -> None:
        if name in f:
            rows.append((name, figure, str(f[name]["off"][key]), str(f[name]["on"][key])))

    row("pipelining", "tasks/s", "tasks_per_s")
    row("batched_frames", "tasks/s", "tasks_per_s")
    row("batch_signature", "tasks/s (submit_many)", "tasks_per_s")
    row("result_cache", "tasks/s (20 inputs repeated)", "tasks_per_s")
    row("adaptive_timeouts", "s until a lost task fails", "seconds_to_fail")
    row("hedging", "p99 ms (1 in 10 on a slow worker)", "p99_ms")
    row("hedging", "mean ms", "mean_ms")
    row("batch_lane", "frame miss rate (30 fps, 100 ms, tiles busy)", "miss_rate")
    row("batch_lane", "frame p50 ms (answered)", "p50_ms")
    row("libp2p_tuning", "sequential p50 ms (median of rounds)", "seq_p50_ms")
    row("libp2p_tuning", "sequential p99 ms", "seq_p99_ms")
    row("libp2p_tuning", "pipelined tasks/s (256 in flight)", "pipelined_tasks_per_s")
    row("libp2p_tuning", "1 MiB in+out MB/s each way (shm off)", "mib_mb_per_s")
    if "payload_codec" in f:
        pc = f["payload_codec"]
        for a, b in (
            ("upscale_png", "upscale_jpeg"),
            ("upscale_png", "upscale_webp"),
            ("physics_raw", "physics_zstd"),
        ):
            if a in pc and b in pc:
                rows.append(
                    (
                        f"codec {b.split('_')[1]} vs {a.split('_')[1]}",
                        "bytes out",
                        str(pc[a]["bytes_out"]),
                        str(pc[b]["bytes_out"]),
                    )
                )
                rows.append(("", "tasks/s", str(pc[a]["tasks_per_s"]), str(pc[b]["tasks_per_s"])))
    if "executor" in f:
        for kind, v in f["executor"].get("thread", {}).items():
            rows.append(
                (
                    "executor: thread (off) vs process (on)",
                    f"{kind} tasks/s",
                    str(v),
                    str(f["executor"]["process"][kind]),
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


async def _frames_beside_tiles(
    addr: str, tile_class: int, frame_work: tuple[Any, bytes], tile_work: tuple[Any, bytes], seconds: float
) -> dict[str, Any]:
    """30 fps frames for ``seconds`` while four tiles of class ``tile_class`` stay in flight."""
    (fparams, fdata), (tparams, tdata) = frame_work, tile_work
    lat: list[float] = []
    missed = tiles = 0
    async with GamerClient.connect([addr], config=NOCACHE) as g:
        await g.run("upscale", fdata, fparams, deadline=120)  # warm up (imports)
        await g.run("raytrace", tdata, tparams, deadline=300, priority=tile_class)

        async def tile_lane() -> None:
            nonlocal tiles
            while True:
                await g.run("raytrace", tdata, tparams, deadline=300, priority=tile_class)
                tiles += 1

        async def frame() -> None:
            nonlocal missed
            h = await g.submit("upscale", fdata, fparams, deadline=0.1, priority=wire.PRIORITY_FRAME)
            try:
                await h.result()
            except TaskTimeoutError:
                missed += 1
                return
            assert h.latency_s is not None
            lat.append(h.latency_s * 1000)

        async with trio.open_nursery() as load:
            for _ in range(4):
                load.start_soon(tile_lane)
            await trio.sleep(1.0)  # every slot taken by a tile
            async with trio.open_nursery() as frames:
                t0 = trio.current_time()
                for i in range(int(seconds * 30)):
                    await trio.sleep_until(t0 + i / 30)
                    frames.start_soon(frame)
            load.cancel_scope.cancel()
    n = len(lat) + missed
    return {
        "frames": n,
        "frames_missed": missed,
        "miss_rate": round(missed / max(1, n), 4),
        "p50_ms": round(pct(lat, 0.5), 1) if lat else None,
        "p95_ms": round(pct(lat, 0.95), 1) if lat else None,
        "tiles_done": tiles,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


async def batch_lane_onoff(tmp: Path, quick: bool) -> dict[str, Any]:
    """30 fps 720p->1440p upscale frames (100 ms deadline) on a 2-slot worker kept busy with
    4 path-tracing tiles in flight: the tiles sent as normal work, which shares the frames'
    slots, vs as batch work, which runs in the worker's niced lane. A fresh worker per
    setting (a tile already running cannot be cancelled)."""
    from tasks.registry import default_registry

    reg = default_registry()
    rng = np.random.default_rng(11)
    frame_work = reg.get("upscale").example(rng, "medium")  # type: ignore[misc]
    tile_work = reg.get("raytrace").example(rng, "medium")  # type: ignore[misc]
    out: dict[str, Any] = {}
    for label, tile_class in (("off", wire.PRIORITY_NORMAL), ("on", wire.PRIORITY_BATCH)):
        proc = await start_worker(tmp / f"lane-{label}.key", tmp, 2)
        try:
            async with trio.open_nursery() as drains:
                drains.start_soon(_drain, proc.proc)
                out[label] = await _frames_beside_tiles(
                    proc.addr, tile_class, frame_work, tile_work, 8.0 if quick else 30.0
                )
                drains.cancel_scope.cancel()
        finally:
            await stop_workers([proc])
        print("batch lane", label, out[label], flush=True)
    return out


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
                async with GamerClient.connect([proc.addr], config=NOCACHE) as g:
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


async def sdk_placement(quick: bool) -> dict[str, float]:
    """Microseconds of gamer CPU per task, by connected workers (see the module doc)."""
    from mesh.identity import Identity, peer_id_to_str
    from mesh.libp2p_host import open_host
    from nodes.mesh_client import MeshClient, _Lease
    from nodes.verification import Task

    out: dict[str, float] = {}
    ids = sorted(Identity.generate().peer_id_bytes for _ in range(256))
    async with open_host(Identity.generate()) as host, trio.open_nursery() as nursery:
        for n in (4, 16, 64, 256):
            gamer = GamerClient(host, nursery, GamerConfig(verification=OFF))
            mesh = MeshClient(gamer, host, nursery)  # installs its placement hook
            core, now = gamer._core, trio.current_time()
            for w in ids[:n]:
                core.on_worker_up(w, now)
            for i, w in enumerate((ids[0], ids[n - 1])):
                mesh._leases[i] = _Lease(i, peer_id_to_str(w), "echo", 2, now + 3600, now + 3600)
            k = 500 if quick else 3000
            t = time.process_time()
            for j in range(k):
                tid = j.to_bytes(16, "big")
                core.on_submit(Task(tid, "echo", {}, b"x", now + 10.0), now)
                core.on_cancel(tid, now)
            out[f"{n}_connected_us_per_task"] = round((time.process_time() - t) / k * 1e6, 1)
            assert mesh.stats.placed_leased == k
            print(f"sdk placement: {n:3d} connected workers, {out[f'{n}_connected_us_per_task']} us per task")
        nursery.cancel_scope.cancel()
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    if args.only_sdk_placement:
        return {"machine": {"cpus": os.cpu_count()}, "sdk_placement": await sdk_placement(quick)}
    if args.only_libp2p_tuning or args.only_batch_lane:
        with tempfile.TemporaryDirectory(prefix="p2c2r-bench-") as tmp:
            if args.only_libp2p_tuning:
                f = {"libp2p_tuning": await libp2p_tuning_onoff(Path(tmp), quick)}
            else:
                f = {"batch_lane": await batch_lane_onoff(Path(tmp), quick)}
        print(feature_table(f), flush=True)
        return {"machine": {"cpus": os.cpu_count()}, "features": f}
    if args.libp2p_tuning is not None:
        set_libp2p_tuning(args.libp2p_tuning == "on")
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
                    "machine": {"cpus": os.cpu_count(), "load_avg_1m_at_start": round(os.getloadavg()[0], 2)},
                    "transport": "py-libp2p TCP+Noise+yamux",
                    "libp2p_tuning": os.environ.get(TUNING_ENV, "default (on)"),
                }
                ports = [metrics_port(p) for p in procs]
                res["sequential"] = await measured(
                    ports, "sequential", sequential(addrs[0], 500 if quick else 3000)
                )
                n = 3000 if quick else 20000
                res["pipelined"] = await measured(
                    ports,
                    "pipelined",
                    throughput(addrs, n, GamerConfig(max_batch_tasks=1, verification=OFF), 256),
                )
                res["pipelined_batched_frames"] = await measured(
                    ports,
                    "pipelined+batched frames",
                    throughput(addrs, n, GamerConfig(verification=OFF), 1024),
                )
                res["pipelined_default_policy"] = await measured(
                    ports, "pipelined, default verification policy", throughput(addrs, n, GamerConfig(), 1024)
                )
                res["batched"] = await measured(ports, "batched", batched(addrs, n, 256))
                res["mib"] = await measured(ports, "1 MiB", mib(addrs[0], 30 if quick else 200))
                res["sdk_placement"] = await sdk_placement(quick)
                if not args.skip_features:
                    res["features"] = await features(addrs, Path(tmp), quick)
                drains.cancel_scope.cancel()
        finally:
            await stop_workers(procs)
        if not args.skip_kernels:
            res["executor"] = await executor_compare(Path(tmp), quick)
            if "features" in res:
                res["features"]["executor"] = res["executor"]
        if "features" in res:
            print(feature_table(res["features"]), flush=True)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--quick", action="store_true", help="a reduced run")
    ap.add_argument("--skip-kernels", action="store_true", help="skip the thread/process executor comparison")
    ap.add_argument("--skip-features", action="store_true", help="skip the on/off table of each optimisation")
    ap.add_argument(
        "--libp2p-tuning",
        choices=("on", "off"),
        help="run everything with py-libp2p's per-message tuning on or off (default: P2C2R_LIBP2P_TUNING, else on)",
    )
    ap.add_argument(
        "--only-libp2p-tuning",
        action="store_true",
        help="run only the libp2p_tuning on/off rounds of the features section",
    )
    ap.add_argument(
        "--only-batch-lane",
        action="store_true",
        help="run only the batch_lane on/off comparison of the features",
    )
    ap.add_argument(
        "--only-sdk-placement",
        action="store_true",
        help="run only the gamer's per-task placement CPU by connected workers",
    )
    a = ap.parse_args()
    out = trio.run(main, a)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"written to {a.json}")
