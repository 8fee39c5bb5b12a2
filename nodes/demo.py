"""``p2c2r demo``: a local mesh on loopback in one command.

Starts N worker nodes as separate processes (real py-libp2p hosts, Noise, yamux) in several
regions (``--regions eu,us``): the first node is the single bootstrap address of all the
others; they discover each other (DHT, heartbeats), and each region elects a coordinator.
One gamer per region joins through that region, gets placement leases from its coordinator
and sends task bytes straight to the leased workers. If the mesh does not form in time, the
demo says so and falls back to direct connections (``--direct`` asks for that path). It runs
a mixed workload of real kernels (upscale, physics, path
finding, flocking, ray tracing, echo) with a progress bar, checks every result (signature
and binding by the SDK, plus each kind's cheap self-consistency check), and prints a
summary table; ``--json`` writes the same figures.

Every child process is terminated (then killed) when the demo ends, and exits by itself
if the demo process dies, so Ctrl-C (or a kill) leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio

from mesh.errors import ConfigError, P2C2RError, UnavailableError
from nodes.gamer import GamerClient, TaskHandle
from tasks.registry import Registry, default_registry

#: The workload mix: kind -> (share of tasks, example size).
MIX: dict[str, tuple[float, str]] = {
    "echo": (0.25, "small"),
    "upscale": (0.20, "medium"),
    "physics_step": (0.15, "small"),
    "pathfind": (0.15, "small"),
    "flocking": (0.15, "small"),
    "raytrace": (0.10, "small"),
}
IN_FLIGHT = 8
STARTUP_TIMEOUT_S = 60.0


@dataclass
class WorkerProcess:
    proc: trio.Process
    addr: str = ""
    lines: list[str] = field(default_factory=list)
    #: Set by ``follow`` when the node says its kernels are warm (started with --warmup).
    warm: trio.Event = field(default_factory=trio.Event)


async def start_worker(
    key_file: Path, home: Path, concurrency: int, extra: list[str] | None = None
) -> WorkerProcess:
    """Start ``p2c2r node run`` on a free loopback port and wait for its address."""
    cmd = [
        sys.executable,
        "-m",
        "nodes.cli",
        "node",
        "run",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--key-file",
        str(key_file),
        "--concurrency",
        str(concurrency),
        *(extra or []),
    ]
    # The node exits by itself if this process dies (even by SIGKILL): see
    # ``nodes.cli._exit_with_parent``. PR_SET_PDEATHSIG is no use here: trio starts the
    # child from a helper thread, and the signal fires when that thread ends.
    env = dict(os.environ, P2C2R_HOME=str(home), PYTHONUNBUFFERED="1", P2C2R_EXIT_WITH_PARENT="1")
    proc = await trio.lowlevel.open_process(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    wp = WorkerProcess(proc)
    assert proc.stdout is not None
    buf = b""
    with trio.move_on_after(STARTUP_TIMEOUT_S):
        while True:
            chunk = await proc.stdout.receive_some(4096)
            if not chunk:
                break
            buf += chunk
            *done, buf = buf.split(b"\n")
            for raw in done:
                line = raw.decode(errors="replace")
                wp.lines.append(line)
                if line.startswith("listening on "):
                    wp.addr = line.removeprefix("listening on ").strip()
                    return wp
    proc.kill()
    await proc.wait()
    raise UnavailableError("a worker did not start:\n" + "\n".join(wp.lines[-20:]))


async def stop_workers(workers: list[WorkerProcess]) -> None:
    with trio.CancelScope(shield=True):
        for w in workers:
            if w.proc.returncode is None:
                w.proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(5):
            for w in workers:
                await w.proc.wait()
        for w in workers:
            if w.proc.returncode is None:
                w.proc.kill()
                await w.proc.wait()


async def _drain(proc: trio.Process) -> None:
    """Keep reading a child's output so it never blocks on a full pipe."""
    if proc.stdout is None:
        return
    while await proc.stdout.receive_some(65536):
        pass


async def follow(wp: WorkerProcess) -> None:
    """``_drain`` that also watches for the node's warm line (``WorkerProcess.warm``)."""
    from nodes.cli import WARM_LINE

    if wp.proc.stdout is None:
        return
    buf = b""
    while not wp.warm.is_set():
        chunk = await wp.proc.stdout.receive_some(65536)
        if not chunk:
            return
        *done, buf = (buf + chunk).split(b"\n")
        if any(line.startswith(WARM_LINE.encode()) for line in done):
            wp.warm.set()
    await _drain(wp.proc)


@dataclass
class TaskOutcome:
    kind: str
    latency_ms: float
    ok: bool
    error: str = ""
    worker: str = ""


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarise(outcomes: list[TaskOutcome], wall_s: float, workers: int) -> dict[str, Any]:
    ok = [o for o in outcomes if o.ok]
    lat = [o.latency_ms for o in ok]
    per_kind: dict[str, Any] = {}
    for kind in sorted({o.kind for o in outcomes}):
        ks = [o for o in outcomes if o.kind == kind]
        kl = [o.latency_ms for o in ks if o.ok]
        per_kind[kind] = {
            "tasks": len(ks),
            "verified": len(kl),
            "failed": len(ks) - len(kl),
            "p50_ms": round(_pct(kl, 50), 2),
            "p95_ms": round(_pct(kl, 95), 2),
            "p99_ms": round(_pct(kl, 99), 2),
        }
    errors: dict[str, int] = {}
    for o in outcomes:
        if not o.ok:
            errors[o.error] = errors.get(o.error, 0) + 1
    by_worker: dict[str, int] = {}
    for o in ok:
        by_worker[o.worker] = by_worker.get(o.worker, 0) + 1
    return {
        "workers": workers,
        "tasks": len(outcomes),
        "verified": len(ok),
        "failed": len(outcomes) - len(ok),
        "p50_ms": round(_pct(lat, 50), 2),
        "p95_ms": round(_pct(lat, 95), 2),
        "p99_ms": round(_pct(lat, 99), 2),
        "tasks_per_s": round(len(ok) / wall_s, 1) if wall_s > 0 else 0.0,
        "wall_s": round(wall_s, 3),
        "per_kind": per_kind,
        "errors": errors,
        "tasks_per_worker": dict(sorted(by_worker.items())),
    }


def build_workload(registry: Registry, n: int, seed: int) -> list[tuple[str, dict[str, Any], bytes]]:
    """``n`` real tasks drawn from ``MIX``; a few distinct inputs per kind, reused."""
    rng = np.random.default_rng(seed)
    kinds = [k for k in MIX if k in registry]
    shares = np.array([MIX[k][0] for k in kinds])
    shares /= shares.sum()
    pool: dict[str, list[tuple[dict[str, Any], bytes]]] = {}
    for k in kinds:
        kind = registry.get(k)
        assert kind.example is not None
        pool[k] = [kind.example(rng, MIX[k][1]) for _ in range(3)]
    picks = rng.choice(len(kinds), size=n, p=shares)
    out = []
    for i, p in enumerate(picks):
        params, data = pool[kinds[p]][i % 3]
        out.append((kinds[p], params, data))
    return out


async def run_workload(
    gamer: GamerClient,
    registry: Registry,
    workload: list[tuple[str, dict[str, Any], bytes]],
    on_done: Callable[[TaskOutcome], None],
    deadline_s: float = 30.0,
) -> list[TaskOutcome]:
    outcomes: list[TaskOutcome] = []
    limit = trio.Semaphore(IN_FLIGHT)

    async def one(kind: str, params: dict[str, Any], data: bytes) -> None:
        async with limit:
            t0 = trio.current_time()
            handle: TaskHandle | None = None
            try:
                handle = await gamer.submit(kind, data, params, deadline=deadline_s)
                out = await handle.result()
                k = registry.get(kind)
                # The SDK verified signature and binding; the kind's cheap check looks at
                # the content itself (off the trio thread: it decodes images).
                checked = await trio.to_thread.run_sync(k.self_check, k.validate_params(params), data, out)
                outcome = TaskOutcome(
                    kind, (trio.current_time() - t0) * 1000, checked, "" if checked else "self_check"
                )
            except P2C2RError as exc:
                outcome = TaskOutcome(kind, (trio.current_time() - t0) * 1000, False, type(exc).__name__)
            if handle is not None and handle.worker:
                outcome.worker = handle.worker.hex()[-8:]
            outcomes.append(outcome)
            on_done(outcome)

    async with trio.open_nursery() as nursery:
        for kind, params, data in workload:
            await limit.acquire()
            limit.release()
            nursery.start_soon(one, kind, params, data)
    return outcomes


MESH_TIMEOUT_S = 45.0
#: How long the demo waits for the workers' kernels to warm up before it starts anyway.
WARM_TIMEOUT_S = 60.0


async def _wait_warm(console: Any, workers: list[WorkerProcess]) -> None:
    """Wait until every worker has run each kernel once (``--warmup``): otherwise the first
    tasks queue behind torch's import on one-slot workers, which set the demo's p95 (about
    4 s for every kind on this 2-core machine)."""
    t0 = trio.current_time()
    with console.status("warming up the workers' kernels (the first calls import torch) ..."):
        with trio.move_on_after(WARM_TIMEOUT_S):
            for w in workers:
                await w.warm.wait()
    cold = sum(not w.warm.is_set() for w in workers)
    if cold:
        console.print(
            f"[yellow]warning: {cold} worker(s) not warm after {WARM_TIMEOUT_S:g} s; starting anyway "
            "(their first tasks wait for the kernels to load)"
        )
    else:
        console.print(f"kernels warm in {trio.current_time() - t0:.1f} s")


VOTERS_PER_REGION = 3


@dataclass
class MeshPlan:
    """Which worker goes to which region, and each region's electorate."""

    regions: tuple[str, ...]
    region_of: list[str]
    peers: list[str]

    def voters(self, region: str) -> list[str]:
        return [p for p, r in zip(self.peers, self.region_of, strict=True) if r == region][:VOTERS_PER_REGION]

    def members(self, region: str) -> int:
        return self.region_of.count(region)


def plan_mesh(key_files: list[Path], regions: tuple[str, ...]) -> MeshPlan:
    """Deal the workers round-robin over the regions (so every region gets one when there
    are at least as many workers as regions); the first three of a region are its voters."""
    from mesh.identity import load_or_create

    peers = [load_or_create(k).peer_id.to_base58() for k in key_files]
    return MeshPlan(regions, [regions[i % len(regions)] for i in range(len(key_files))], peers)


async def _mesh_formed(procs: list[WorkerProcess], plan: MeshPlan) -> dict[str, Any] | None:
    """Ask the first node of each region for its view until every region reports a
    coordinator, all its members and every other region; their state, or ``None`` after
    ``MESH_TIMEOUT_S``."""
    from mesh.identity import Identity
    from mesh.libp2p_host import open_host
    from nodes.mesh_client import fetch_status

    first_of = {r: procs[plan.region_of.index(r)].addr for r in plan.regions}
    # one probe host for every poll: fetch_status without one would start a host per query
    async with open_host(Identity.generate()) as probe:
        with trio.move_on_after(MESH_TIMEOUT_S):
            while True:
                state: dict[str, Any] = {}
                for region, addr in first_of.items():
                    try:
                        snap = await fetch_status(addr, host=probe, timeout=3.0)
                    except P2C2RError:
                        break
                    view = next((v for v in snap.regions if v.region == region), None)
                    if view is None or view.coordinator is None or len(view.members) < plan.members(region):
                        break
                    if sorted(v.region for v in snap.regions) != sorted(plan.regions):
                        break
                    state[region] = {
                        "coordinator": view.coordinator,
                        "epoch": view.epoch,
                        "members": len(view.members),
                        "entry": addr,
                    }
                if len(state) == len(plan.regions):
                    return state
                await trio.sleep(0.5)
    return None


async def _report_elections(console: Any, procs: list[WorkerProcess], plan: MeshPlan) -> None:
    """Each worker's side of its region's election (``p2c2r status``'s election line)."""
    from mesh.identity import Identity
    from mesh.libp2p_host import open_host
    from nodes.cli import election_line
    from nodes.mesh_client import fetch_status

    async with open_host(Identity.generate()) as probe:  # one host for every query
        for i, w in enumerate(procs):
            try:
                snap = await fetch_status(w.addr, host=probe, timeout=3.0)
                line = f"region {snap.region or '-'}: {election_line(snap.election)}"
            except P2C2RError as exc:
                line = f"no status: {exc}"
            console.print(f"  worker {plan.region_of[i]:>4} {w.addr[-8:]}: {line}", soft_wrap=True)


async def _demo(
    workers: int, tasks: int, json_path: str | None, seed: int, regions: tuple[str, ...], direct: bool
) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    console = Console()
    registry = default_registry()
    procs: list[WorkerProcess] = []
    mesh: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="p2c2r-demo-") as tmp:
        home = Path(tmp)
        try:
            concurrency = max(1, (os.cpu_count() or 1) // max(1, workers)) or 1
            keys = [home / f"worker{i}.key" for i in range(workers)]
            for i in range(workers):
                (home / f"w{i}").mkdir()
            plan = plan_mesh(keys, regions)
            where = "" if direct else f" in {len(regions)} regions ({', '.join(regions)})"
            with console.status(f"starting {workers} worker nodes on 127.0.0.1{where} ..."):
                workload = build_workload(registry, tasks, seed)

                def args(i: int, boot: str | None) -> list[str]:
                    if direct:
                        return ["--warmup"]
                    region = plan.region_of[i]
                    out = ["--warmup", "--region", region]
                    for v in plan.voters(region):
                        out += ["--voter", v]
                    return out + (["--bootstrap", boot] if boot else [])

                # the first node is everybody's single bootstrap address
                procs.append(await start_worker(keys[0], home / "w0", concurrency, args(0, None)))
                boot = procs[0].addr
                started: list[WorkerProcess | None] = [None] * workers
                started[0] = procs[0]
                async with trio.open_nursery() as nursery:

                    async def start(i: int) -> None:
                        w = await start_worker(keys[i], home / f"w{i}", concurrency, args(i, boot))
                        started[i] = w
                        procs.append(w)

                    for i in range(1, workers):
                        nursery.start_soon(start, i)
            ordered = [w for w in started if w is not None]
            for i, w in enumerate(ordered):
                tag = "" if direct else f"{plan.region_of[i]:>4}  "
                console.print(f"  worker {tag}[cyan]{w.addr}[/cyan]", soft_wrap=True)
            async with trio.open_nursery() as drains:
                for w in ordered:
                    drains.start_soon(follow, w)
                if not direct:
                    with console.status("forming the mesh: discovery, regions, coordinator election ..."):
                        t_mesh = trio.current_time()
                        mesh = await _mesh_formed(ordered, plan)
                    if mesh is None:
                        console.print(
                            f"[yellow]warning: the mesh did not form within {MESH_TIMEOUT_S:g} s "
                            "(no coordinator agreed in some region); falling back to direct "
                            "connections to every worker. Each worker's election state follows; "
                            "`p2c2r status --peer ADDR` on an address above shows the rest."
                        )
                        await _report_elections(console, ordered, plan)
                    else:
                        console.print(f"mesh formed in {trio.current_time() - t_mesh:.1f} s:")
                        for region, st in mesh.items():
                            console.print(
                                f"  region [bold]{region}[/bold]: coordinator {st['coordinator'][-8:]} "
                                f"(epoch {st['epoch']}), {st['members']} members"
                            )
                await _wait_warm(console, ordered)
                async with contextlib.AsyncExitStack() as stack:
                    # one gamer per region, each joining through its region's entry node and
                    # getting placement leases from its coordinator; or one direct gamer
                    if mesh is not None:
                        gamers = [
                            await stack.enter_async_context(
                                GamerClient.connect(bootstrap=[st["entry"]], region=region)
                            )
                            for region, st in mesh.items()
                        ]
                    else:
                        gamers = [
                            await stack.enter_async_context(GamerClient.connect([w.addr for w in ordered]))
                        ]
                    with Progress(
                        TextColumn("[bold]tasks"),
                        BarColumn(),
                        MofNCompleteColumn(),
                        TextColumn("{task.fields[failed]} failed"),
                        TimeElapsedColumn(),
                        console=console,
                    ) as progress:
                        bar = progress.add_task("tasks", total=len(workload), failed=0)
                        failed = 0

                        def on_done(o: TaskOutcome) -> None:
                            nonlocal failed
                            failed += 0 if o.ok else 1
                            progress.update(bar, advance=1, failed=failed)

                        t0 = trio.current_time()
                        results: list[list[TaskOutcome]] = [[] for _ in gamers]

                        async def drive(j: int) -> None:
                            share = workload[j :: len(gamers)]
                            results[j] = await run_workload(gamers[j], registry, share, on_done)

                        async with trio.open_nursery() as runs:
                            for j in range(len(gamers)):
                                runs.start_soon(drive, j)
                        wall = trio.current_time() - t0
                        outcomes = [o for r in results for o in r]
                        per_region = (
                            {region: _region_figures(results[j]) for j, region in enumerate(mesh)}
                            if mesh is not None
                            else {}
                        )
                drains.cancel_scope.cancel()
        finally:
            await stop_workers(procs)
    summary = summarise(outcomes, wall, workers)
    summary["path"] = "mesh" if mesh is not None else "direct"
    summary["regions"] = {r: {**st, **per_region.get(r, {})} for r, st in (mesh or {}).items()}
    table = Table(title=f"p2c2r demo: {workers} workers, {len(outcomes)} tasks")
    for col in ("kind", "tasks", "verified", "failed", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(col, justify="right" if col != "kind" else "left")
    for kind, s in summary["per_kind"].items():
        table.add_row(
            kind,
            str(s["tasks"]),
            str(s["verified"]),
            str(s["failed"]),
            f"{s['p50_ms']:.1f}",
            f"{s['p95_ms']:.1f}",
            f"{s['p99_ms']:.1f}",
        )
    table.add_row(
        "[bold]all",
        str(summary["tasks"]),
        str(summary["verified"]),
        str(summary["failed"]),
        f"{summary['p50_ms']:.1f}",
        f"{summary['p95_ms']:.1f}",
        f"{summary['p99_ms']:.1f}",
    )
    console.print(table)
    for region, st in summary["regions"].items():
        console.print(
            f"region {region}: {st['verified']}/{st['tasks']} verified, p50 {st['p50_ms']:.1f} ms "
            f"(coordinator {st['coordinator'][-8:]}, epoch {st['epoch']})"
        )
    console.print(
        f"{summary['tasks_per_s']} verified tasks/s over {summary['wall_s']} s; per worker: {summary['tasks_per_worker']}"
    )
    if summary["errors"]:
        console.print(f"[red]errors: {summary['errors']}")
    if json_path:
        Path(json_path).write_text(json.dumps(summary, indent=2) + "\n")
        console.print(f"figures written to {json_path}")
    return summary


def _region_figures(outcomes: list[TaskOutcome]) -> dict[str, Any]:
    lat = [o.latency_ms for o in outcomes if o.ok]
    return {"tasks": len(outcomes), "verified": len(lat), "p50_ms": round(_pct(lat, 50), 2)}


def run_demo(
    workers: int = 4,
    tasks: int = 200,
    json_path: str | None = None,
    seed: int = 1,
    regions: tuple[str, ...] = ("eu", "us"),
    direct: bool = False,
) -> int:
    if workers < 1:
        raise ConfigError("--workers must be at least 1")
    if tasks < 1:
        raise ConfigError("--tasks must be at least 1")
    if not direct:
        if not regions or any(not r or not r.replace("-", "").replace("_", "").isalnum() for r in regions):
            raise ConfigError(
                "--regions takes comma-separated names such as eu,us (letters, digits, - and _)"
            )
        if len(set(regions)) != len(regions):
            raise ConfigError(f"--regions lists a region twice: {','.join(regions)}")
        if workers < len(regions):
            raise ConfigError(
                f"--workers {workers} cannot fill {len(regions)} regions: give at least one worker per region"
            )
    summary = trio.run(_demo, workers, tasks, json_path, seed, tuple(regions), direct)
    return 0 if summary["failed"] == 0 else 1
