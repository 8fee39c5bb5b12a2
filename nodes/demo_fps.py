"""``p2c2r demo --fps 30``: a frame stream held to a frame rate by the adaptive-quality SDK.

Starts worker nodes as separate processes (``nodes.demo.start_worker``: real py-libp2p
hosts, Noise, yamux), connects one gamer straight to them, and streams 1280x720 JPEG
frames of a moving scene to be upscaled (to 2560x1440 at the best level) through
the SDK's adaptive quality (``FrameQuality`` with a ``QualityController``, as
``gamer.quality(target_fps=...)`` builds, with the SDK's default ladder ``DEFAULT_LEVELS``). A game cannot wait for a late frame, so the stream is
paced: one frame is due every ``1/fps`` s and at most ``frames_in_flight`` are out at
once; a due frame that finds them all busy is *dropped* (the display repeats the last
one). Each frame's latency budget is ``frames_in_flight / fps`` (the controller's
``budget_s``); a frame answered later than that is a *deadline miss*, and the controller
steps down a rung of ``DEFAULT_LEVELS`` (``quality@2x`` -> ``fast@2x`` -> ``fast@2x`` at output
JPEG quality 70, then 50) when the smoothed latency passes 90 % of it, and back up after a
run of frames with room to spare. A late frame is still shown up to ``LATE_FRAME_S`` (then
it times out), so an overloaded machine shows late frames rather than none. The summary
reports the CPU time the gamer and the workers spent per delivered frame (``/proc``).

Every frame's signature and binding are checked by the SDK (``VerificationConfig.off()``:
no duplicates or probes, which would halve a stream's frame rate); one frame in
``SPOT_CHECK_EVERY`` is also self-checked off the trio thread (the kind's downsample-and-
compare check), skipped while an earlier check is still running.

The per-second rows (achieved fps, on-time fps, misses, drops, level, latency) are shown
in a live table; ``--json`` writes them with the totals. ``stream_frames`` is the paced
loop itself, independent of processes and sockets (tested under trio's MockClock).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio

from mesh.errors import ConfigError, P2C2RError, TaskTimeoutError
from nodes.demo import WorkerProcess, _drain, start_worker, stop_workers
from nodes.gamer import FrameQuality, GamerClient, GamerConfig
from nodes.sdk_cores import DEFAULT_LEVELS, QualityController, QualityLevel
from nodes.verification import VerificationConfig

__all__ = [
    "SPOT_CHECK_EVERY",
    "StreamStats",
    "make_frames",
    "run_fps_demo",
    "stream_frames",
]

#: One delivered frame in this many is self-checked by the demo as well.
SPOT_CHECK_EVERY = 30
#: Distinct frames of the moving scene (cycled); each is a different input.
SCENE_FRAMES = 30
FRAME_W, FRAME_H = 1280, 720
#: Output parameters besides the controller's mode and scale.
BASE_PARAMS: dict[str, Any] = {"codec": "jpeg", "input_codec": "jpeg", "quality": 85}
#: A frame may arrive this late (or twice its budget if longer) and still be shown, late;
#: an overloaded machine then shows late frames rather than none.
LATE_FRAME_S = 1.0
MAX_FPS = 240.0
MAX_SECONDS = 3600.0


def _pct(values: list[float], q: float) -> float:
    """Percentile, 0 for a second with no frames (JSON has no NaN)."""
    return float(np.percentile(values, q)) if values else 0.0


@dataclass
class _Second:
    delivered: int = 0
    on_time: int = 0
    late: int = 0
    timeouts: int = 0
    dropped: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)


@dataclass
class StreamStats:
    """What ``stream_frames`` saw; ``summary()`` is the JSON the demo writes."""

    target_fps: float
    frames_in_flight: int
    budget_s: float
    due: int = 0
    sent: int = 0
    verified: int = 0
    on_time: int = 0
    late: int = 0
    timeouts: int = 0
    dropped: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    frames_per_level: dict[str, int] = field(default_factory=dict)
    changes: list[dict[str, Any]] = field(default_factory=list)
    per_second: list[dict[str, Any]] = field(default_factory=list)
    spot_checked: int = 0
    spot_failed: int = 0
    final_level: str = ""

    def summary(self) -> dict[str, Any]:
        wall = max(self.wall_s, 1e-9)
        return {
            "target_fps": self.target_fps,
            "frames_in_flight": self.frames_in_flight,
            "budget_ms": round(self.budget_s * 1000, 2),
            "frames_due": self.due,
            "frames_sent": self.sent,
            "frames_verified": self.verified,
            "frames_on_time": self.on_time,
            "achieved_fps": round(self.verified / wall, 2),
            "on_time_fps": round(self.on_time / wall, 2),
            "deadline_misses": self.late + self.timeouts,
            "late": self.late,
            "timeouts": self.timeouts,
            "dropped": self.dropped,
            "errors": dict(self.errors),
            "wall_s": round(self.wall_s, 3),
            "p50_ms": round(_pct(self.latencies_ms, 50), 2),
            "p95_ms": round(_pct(self.latencies_ms, 95), 2),
            "mode_changes": len(self.changes),
            "changes": list(self.changes),
            "frames_per_level": dict(self.frames_per_level),
            "final_level": self.final_level,
            "spot_checks": {"checked": self.spot_checked, "failed": self.spot_failed},
            "per_second": list(self.per_second),
        }


async def stream_frames(
    quality: FrameQuality,
    frames: Sequence[bytes],
    *,
    seconds: float,
    base_params: dict[str, Any] | None = None,
    on_second: Callable[[dict[str, Any]], None] | None = None,
    spot_check: Callable[[dict[str, Any], bytes, bytes], bool] | None = None,
    spot_every: int = SPOT_CHECK_EVERY,
    frame_deadline_s: float | None = None,
) -> StreamStats:
    """Stream ``frames`` (cycled) through ``quality`` for ``seconds`` at its target rate.

    Frame ``i`` is due at ``t0 + i / fps``; it is submitted then unless
    ``frames_in_flight`` frames are still out, in which case it is dropped. Waits for the
    frames in flight at the end (each is bounded by the helper's deadline). ``on_second``
    gets one row per second of the stream. ``spot_check(params, frame, output)`` runs on
    one delivered frame in ``spot_every`` in a worker thread, one at a time.
    ``frame_deadline_s`` is how late a frame may still arrive (``FrameQuality.upscale``).
    """
    if not frames:
        raise ConfigError("the frame stream needs at least one frame")
    ctl = quality.controller
    fps = ctl.target_fps
    in_flight_max = ctl.frames_in_flight
    stats = StreamStats(fps, in_flight_max, ctl.budget_s)
    base = dict(base_params or {})
    n_due = max(1, round(seconds * fps))
    cur = _Second()
    in_flight = 0
    checking = False
    t0 = trio.current_time()

    def flush(second: int) -> None:
        nonlocal cur
        row = {
            "second": second,
            "fps": cur.delivered,
            "on_time": cur.on_time,
            "late": cur.late,
            "timeouts": cur.timeouts,
            "dropped": cur.dropped,
            "errors": cur.errors,
            "level": ctl.current.name,
            "p50_ms": round(_pct(cur.latencies_ms, 50), 1),
            "p95_ms": round(_pct(cur.latencies_ms, 95), 1),
        }
        stats.per_second.append(row)
        if on_second is not None:
            on_second(row)
        cur = _Second()

    last_level = ctl.level

    def note_change(i: int) -> None:
        """Record a level change made by the feedback of the frame that just ended."""
        nonlocal last_level
        if ctl.level == last_level:
            return
        before, last_level = last_level, ctl.level
        smoothed = ctl.smoothed_s(before)
        stats.changes.append(
            {
                "t_s": round(trio.current_time() - t0, 3),
                "frame": i,
                "from": ctl.levels[before].name,
                "to": ctl.current.name,
                "direction": "down" if ctl.level > before else "up",
                "smoothed_ms": None if smoothed is None else round(smoothed * 1000, 2),
            }
        )

    async def check(params: dict[str, Any], frame: bytes, out: bytes) -> None:
        nonlocal checking
        assert spot_check is not None
        try:
            ok = await trio.to_thread.run_sync(spot_check, params, frame, out)
        finally:
            checking = False
        stats.spot_checked += 1
        stats.spot_failed += 0 if ok else 1

    async def one(i: int, nursery: trio.Nursery) -> None:
        nonlocal in_flight, checking
        frame = frames[i % len(frames)]
        level = ctl.current
        params = quality.params(base)
        t = trio.current_time()
        try:
            out = await quality.upscale(frame, base, deadline_s=frame_deadline_s)
        except TaskTimeoutError:
            stats.timeouts += 1
            cur.timeouts += 1
        except P2C2RError as exc:
            name = type(exc).__name__
            stats.errors[name] = stats.errors.get(name, 0) + 1
            cur.errors += 1
        else:
            latency = trio.current_time() - t
            ms = latency * 1000
            stats.verified += 1
            stats.latencies_ms.append(ms)
            cur.delivered += 1
            cur.latencies_ms.append(ms)
            name = level.name
            stats.frames_per_level[name] = stats.frames_per_level.get(name, 0) + 1
            if latency <= ctl.budget_s:
                stats.on_time += 1
                cur.on_time += 1
            else:
                stats.late += 1
                cur.late += 1
            if spot_check is not None and stats.verified % spot_every == 1 and not checking:
                checking = True
                nursery.start_soon(check, params, frame, out)
        finally:
            in_flight -= 1
            note_change(i)

    async def reporter() -> None:
        second = 1
        while True:
            await trio.sleep_until(t0 + second)
            flush(second)
            second += 1

    async with trio.open_nursery() as outer:
        outer.start_soon(reporter)
        async with trio.open_nursery() as nursery:
            for i in range(n_due):
                await trio.sleep_until(t0 + i / fps)
                stats.due += 1
                if in_flight >= in_flight_max:
                    stats.dropped += 1
                    cur.dropped += 1
                    continue
                in_flight += 1
                stats.sent += 1
                nursery.start_soon(one, i, nursery)
        stats.wall_s = trio.current_time() - t0
        outer.cancel_scope.cancel()
    if cur.delivered or cur.dropped or cur.late or cur.timeouts or cur.errors:
        flush(len(stats.per_second) + 1)
    stats.final_level = ctl.current.name
    return stats


def make_frames(
    n: int = SCENE_FRAMES, width: int = FRAME_W, height: int = FRAME_H, seed: int = 3
) -> list[bytes]:
    """``n`` JPEG frames of a scene panning sideways (every frame a different input)."""
    from tasks.codecs import encode_image
    from tasks.kernels._common import sample_photo

    scene = sample_photo(np.random.default_rng(seed), width, height)
    step = max(1, width // (4 * n))
    return [
        encode_image(np.ascontiguousarray(np.roll(scene, i * step, axis=1)), "jpeg", 90) for i in range(n)
    ]


def _self_check(params: dict[str, Any], frame: bytes, out: bytes) -> bool:
    from tasks.registry import default_registry

    kind = default_registry().get("upscale")
    return bool(kind.self_check(kind.validate_params(params, len(frame)), frame, out))


def _proc_cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system) a process has used so far, from ``/proc`` (Linux)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _machine_cpu_s() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine so far, from ``/proc/stat`` (Linux)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields) - idle) / tick, sum(fields) / tick


class _CpuMeter:
    """CPU time the gamer (this process, all its threads) and the workers spend on the stream,
    and what the rest of the machine used meanwhile (other people's jobs on a shared box)."""

    def __init__(self, worker_pids: Sequence[int | None]) -> None:
        self.pids = list(worker_pids)
        self.wall0 = time.monotonic()
        self.gamer0 = time.process_time()
        self.workers0 = [_proc_cpu_s(p) for p in self.pids]
        self.machine0 = _machine_cpu_s()

    def per_frame_ms(self, frames: int) -> dict[str, float | None]:
        """CPU ms per delivered frame (gamer, workers together, total), and cores in use
        during the stream: by the whole machine, and by other processes than the demo's."""
        n = max(1, frames)
        wall = max(time.monotonic() - self.wall0, 1e-9)
        gamer_s = time.process_time() - self.gamer0
        now = [_proc_cpu_s(p) for p in self.pids]
        spent = [b - a for a, b in zip(self.workers0, now, strict=True) if a is not None and b is not None]
        workers_s = sum(spent) if len(spent) == len(self.pids) else None
        machine = _machine_cpu_s()
        busy = None
        if machine is not None and self.machine0 is not None:
            busy = (machine[0] - self.machine0[0]) / wall
        others = None if busy is None or workers_s is None else max(0.0, busy - (gamer_s + workers_s) / wall)
        return {
            "gamer": round(gamer_s * 1000 / n, 2),
            "workers": None if workers_s is None else round(workers_s * 1000 / n, 2),
            "total": None if workers_s is None else round((gamer_s + workers_s) * 1000 / n, 2),
            "machine_busy_cores": None if busy is None else round(busy, 2),
            "other_processes_cores": None if others is None else round(others, 2),
        }


@contextlib.contextmanager
def _worker_threads(workers: int) -> Iterator[None]:
    """Worker processes started inside get ``OMP_NUM_THREADS`` = their share of the cores.

    ``p2c2r node run`` sizes torch's thread pool for one node per machine (cores per kernel
    slot); the demo runs ``workers`` nodes on this machine, so each gets ``cores / workers``
    (one on 2 cores). Two torch pools of 2 threads on 2 shared cores measured 3x slower per
    frame at ``quality@2x`` than one thread each. A value the user set is kept.
    """
    if "OMP_NUM_THREADS" in os.environ:
        yield
        return
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, workers)))
    try:
        yield
    finally:
        os.environ.pop("OMP_NUM_THREADS", None)


async def _warm_up(gamer: GamerClient, frame: bytes, quality: FrameQuality, workers: int) -> None:
    """Load each worker's kernels at every level (first calls import torch, build plans)."""
    levels = quality.controller.levels
    for lvl in dict.fromkeys(levels):
        params = lvl.params(BASE_PARAMS)
        await gamer.map("upscale", [frame] * (2 * workers), params, deadline=120.0)


async def _fps_demo(
    fps: float,
    seconds: float,
    workers: int,
    in_flight: int,
    json_path: str | None,
    levels: tuple[QualityLevel, ...] = DEFAULT_LEVELS,
) -> dict[str, Any]:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    console = Console()
    procs: list[WorkerProcess] = []
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()

    def render(q: FrameQuality) -> Table:
        t = Table(
            title=f"{fps:g} fps target, {in_flight} frames in flight, budget "
            f"{q.controller.budget_s * 1000:.0f} ms per frame, {workers} workers"
        )
        for col in ("s", "fps", "on time", "late", "dropped", "level", "p50 ms", "p95 ms"):
            t.add_column(col, justify="left" if col == "level" else "right")
        for r in rows[-20:]:
            t.add_row(
                str(r["second"]),
                str(r["fps"]),
                str(r["on_time"]),
                str(r["late"] + r["timeouts"]),
                str(r["dropped"]),
                r["level"],
                f"{r['p50_ms']:.0f}",
                f"{r['p95_ms']:.0f}",
            )
        return t

    with tempfile.TemporaryDirectory(prefix="p2c2r-demo-fps-") as tmp:
        home = Path(tmp)
        try:
            concurrency = max(1, (os.cpu_count() or 1) // workers)
            with (
                console.status(f"starting {workers} worker nodes on 127.0.0.1 ..."),
                _worker_threads(workers),
            ):
                frames = make_frames()

                async def start(i: int) -> None:
                    (home / f"w{i}").mkdir()
                    procs.append(await start_worker(home / f"worker{i}.key", home / f"w{i}", concurrency))

                async with trio.open_nursery() as nursery:
                    for i in range(workers):
                        nursery.start_soon(start, i)
            async with trio.open_nursery() as drains:
                for w in procs:
                    console.print(f"  worker [cyan]{w.addr}[/cyan]", soft_wrap=True)
                    drains.start_soon(_drain, w.proc)
                async with GamerClient.connect(
                    [w.addr for w in procs], config=GamerConfig(), verification=VerificationConfig.off()
                ) as gamer:
                    q = FrameQuality(gamer, QualityController(fps, frames_in_flight=in_flight, levels=levels))
                    with console.status("warming up the workers' kernels ..."):
                        await _warm_up(gamer, frames[0], q, workers)
                    meter = _CpuMeter([w.proc.pid for w in procs])
                    with Live(render(q), console=console, refresh_per_second=4) as live:

                        def on_second(row: dict[str, Any]) -> None:
                            rows.append(row)
                            live.update(render(q))

                        stats = await stream_frames(
                            q,
                            frames,
                            seconds=seconds,
                            base_params=BASE_PARAMS,
                            on_second=on_second,
                            spot_check=_self_check,
                            frame_deadline_s=max(2 * q.controller.budget_s, LATE_FRAME_S),
                        )
                    cpu_ms = meter.per_frame_ms(stats.verified)
                drains.cancel_scope.cancel()
        finally:
            await stop_workers(procs)
    console.print()
    summary = stats.summary()
    summary.update(
        workers=workers,
        seconds=seconds,
        frame_in=f"{FRAME_W}x{FRAME_H} jpeg",
        cpu_count=os.cpu_count(),
        loadavg_before=[round(x, 2) for x in load_before],
        loadavg_after=[round(x, 2) for x in os.getloadavg()],
        cpu_ms_per_frame=cpu_ms,
    )
    console.print(
        f"[bold]{summary['achieved_fps']} fps achieved[/bold] ({summary['on_time_fps']} on time) for a "
        f"{fps:g} fps target over {summary['wall_s']} s: {summary['frames_verified']} frames verified, "
        f"{summary['deadline_misses']} deadline misses, {summary['dropped']} dropped, "
        f"{summary['mode_changes']} level changes, ended at {summary['final_level']}; "
        f"spot self-checks {summary['spot_checks']['checked']} "
        f"({summary['spot_checks']['failed']} failed); load average {summary['loadavg_before'][0]}"
    )
    console.print(
        f"  CPU per delivered frame: gamer {cpu_ms['gamer']} ms, workers {cpu_ms['workers']} ms "
        f"(budget at {fps:g} fps on {os.cpu_count()} cores: {1000 * (os.cpu_count() or 1) / fps:.0f} ms); "
        f"other processes used {cpu_ms['other_processes_cores']} cores meanwhile"
    )
    for ch in summary["changes"]:
        console.print(f"  {ch['t_s']:6.2f} s  {ch['from']} -> {ch['to']}  (smoothed {ch['smoothed_ms']} ms)")
    if json_path:
        Path(json_path).write_text(json.dumps(summary, indent=2) + "\n")
    if summary["errors"]:
        console.print(f"[red]errors: {summary['errors']}")
    return summary


def run_fps_demo(
    fps: float = 30.0,
    seconds: float = 10.0,
    workers: int | None = None,
    json_path: str | None = None,
    in_flight: int | None = None,
    levels: Sequence[QualityLevel] | None = None,
) -> int:
    """``p2c2r demo --fps``; exit status 0 when frames were verified and no check failed."""
    if not 0 < fps <= MAX_FPS:
        raise ConfigError(f"--fps must be in (0, {MAX_FPS:g}]")
    if not 0 < seconds <= MAX_SECONDS:
        raise ConfigError(f"--seconds must be in (0, {MAX_SECONDS:g}]")
    n = workers if workers is not None else max(2, os.cpu_count() or 1)
    if n < 1:
        raise ConfigError("--workers must be at least 1")
    k = in_flight if in_flight is not None else 2 * n
    summary = trio.run(
        _fps_demo, float(fps), float(seconds), n, k, json_path, tuple(levels or DEFAULT_LEVELS)
    )
    ok = summary["frames_verified"] > 0 and summary["spot_checks"]["failed"] == 0 and not summary["errors"]
    return 0 if ok else 1
