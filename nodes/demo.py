"""``p2c2r demo``: a local mesh on loopback in one command.

Starts N worker nodes as separate processes (real py-libp2p hosts, Noise, yamux), connects
a gamer to all of them, runs a mixed workload of real kernels (upscale, physics, path
finding, flocking, ray tracing, echo) with a progress bar, checks every result (signature
and binding by the SDK, plus each kind's cheap self-consistency check), and prints a
summary table; ``--json`` writes the same figures.

Every child process is terminated (then killed) when the demo ends, and exits by itself
if the demo process dies, so Ctrl-C (or a kill) leaves nothing behind.
"""

from __future__ import annotations

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


async def _demo(workers: int, tasks: int, json_path: str | None, seed: int) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    console = Console()
    registry = default_registry()
    procs: list[WorkerProcess] = []
    with tempfile.TemporaryDirectory(prefix="p2c2r-demo-") as tmp:
        home = Path(tmp)
        try:
            concurrency = max(1, (os.cpu_count() or 1) // max(1, workers)) or 1
            with console.status(f"starting {workers} worker nodes on 127.0.0.1 ..."):
                async with trio.open_nursery() as nursery:

                    async def start(i: int) -> None:
                        procs.append(await start_worker(home / f"worker{i}.key", home, concurrency))

                    for i in range(workers):
                        nursery.start_soon(start, i)
                workload = build_workload(registry, tasks, seed)
            for w in procs:
                console.print(f"  worker [cyan]{w.addr}[/cyan]", soft_wrap=True)
            async with trio.open_nursery() as drains:
                for w in procs:
                    drains.start_soon(_drain, w.proc)
                async with GamerClient.connect([w.addr for w in procs]) as gamer:
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
                        outcomes = await run_workload(gamer, registry, workload, on_done)
                        wall = trio.current_time() - t0
                drains.cancel_scope.cancel()
        finally:
            await stop_workers(procs)
    summary = summarise(outcomes, wall, workers)
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
    console.print(
        f"{summary['tasks_per_s']} verified tasks/s over {summary['wall_s']} s; per worker: {summary['tasks_per_worker']}"
    )
    if summary["errors"]:
        console.print(f"[red]errors: {summary['errors']}")
    if json_path:
        Path(json_path).write_text(json.dumps(summary, indent=2) + "\n")
        console.print(f"figures written to {json_path}")
    return summary


def run_demo(workers: int = 3, tasks: int = 200, json_path: str | None = None, seed: int = 1) -> int:
    if workers < 1:
        raise ConfigError("--workers must be at least 1")
    if tasks < 1:
        raise ConfigError("--tasks must be at least 1")
    summary = trio.run(_demo, workers, tasks, json_path, seed)
    return 0 if summary["failed"] == 0 else 1
