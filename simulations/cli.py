"""``p2c2r simulate SCENARIO.toml --seed N --out DIR``: run every policy, write CSV/JSON/plots.

The world (peers, churn, gamers, coordinates, calibration) is built once; each placement
policy then runs as an independent simulation of that world, in up to ``--jobs`` forked
worker processes (default: one per CPU, at most one per policy). Results are merged in the
scenario's policy order, so the output files do not depend on ``--jobs`` or timing.

``nodes/cli.py`` wires this in with::

    from simulations.cli import add_arguments, run_simulate
    add_arguments(sub.add_parser("simulate", help=...))
    ... run_simulate(args.scenario, args.seed, args.out, progress=not args.no_progress)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mesh.errors import ConfigError
from simulations.scenario import Scenario, load_scenario
from simulations.sim import SimResult, Simulation
from simulations.world import World, build_world

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["add_arguments", "main", "run_policies", "run_simulate"]

# Set in the parent before forking; the children inherit them (no pickling of the world).
_WORLD: World | None = None
_PROGRESS: Any = None


def _child_run(index: int, policy: str) -> SimResult:
    assert _WORLD is not None
    q = _PROGRESS

    def report(t: float) -> None:
        if q is not None:
            q.put((index, t))

    return Simulation(_WORLD, policy, report).run()


def run_policies(world: World, jobs: int | None = None, progress: bool = False) -> list[SimResult]:
    """Run every policy of the world's scenario; results in scenario policy order."""
    global _WORLD, _PROGRESS
    policies = list(world.scenario.policies)
    jobs = max(1, min(jobs or (os.cpu_count() or 1), len(policies)))
    bar = _Bar(world.scenario, policies) if progress else None
    if jobs == 1:
        out = []
        for i, pol in enumerate(policies):

            def cb(t: float, _i: int = i) -> None:
                if bar is not None:
                    bar.update(_i, t)

            out.append(Simulation(world, pol, cb).run())
        if bar is not None:
            bar.close()
        return out
    ctx = mp.get_context("fork")
    _WORLD = world
    _PROGRESS = ctx.Queue() if progress else None
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as ex:
            futs: list[Future[SimResult]] = [ex.submit(_child_run, i, p) for i, p in enumerate(policies)]
            if _PROGRESS is None:
                wait(futs)
            else:
                while not all(f.done() for f in futs):
                    _drain(bar, 0.2)
                _drain(bar, 0.0)
            return [f.result() for f in futs]
    finally:
        if bar is not None:
            bar.close()
        _WORLD = None
        _PROGRESS = None


def _drain(bar: _Bar | None, timeout: float) -> None:
    """Apply queued progress updates, waiting up to ``timeout`` for the first one."""
    assert _PROGRESS is not None
    try:
        item = _PROGRESS.get(timeout=timeout) if timeout > 0 else _PROGRESS.get_nowait()
        while True:
            if bar is not None:
                bar.update(*item)
            item = _PROGRESS.get_nowait()
    except queue.Empty:
        return


class _Bar:
    """A rich progress bar with one line per policy (simulated seconds done)."""

    def __init__(
        self,
        scn: Scenario,
        policies: list[str],
        console: Console | None = None,
        get_time: Callable[[], float] | None = None,
    ) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        # Elapsed and remaining wall time: a 10,000-peer run with the trust cores takes half
        # an hour on two cores, and its user wants to know when to come back.
        self.progress = Progress(
            TextColumn("[bold]{task.description:>12}"),
            BarColumn(),
            TextColumn("{task.completed:>7.1f}/{task.total:.0f} sim s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            get_time=get_time,
        )
        self.tasks = [self.progress.add_task(p, total=scn.duration_s) for p in policies]
        self.progress.start()

    def update(self, i: int, t: float) -> None:
        self.progress.update(self.tasks[i], completed=t)

    def close(self) -> None:
        for t in self.tasks:
            self.progress.update(t, completed=self.progress.tasks[t].total)
        self.progress.stop()


def run_simulate(
    scenario_path: str,
    seed: int,
    out_dir: str,
    progress: bool = True,
    *,
    jobs: int | None = None,
    peers: int | None = None,
    duration_s: float | None = None,
    plots: bool = True,
) -> int:
    """Run a scenario file and write its outputs; returns a process exit code."""
    from rich.console import Console

    console = Console(stderr=True)
    try:
        scn = load_scenario(scenario_path)
    except ConfigError as e:
        console.print(f"[red]error:[/red] {e}")
        return 2
    if peers is not None or duration_s is not None:
        scn = scn.with_peers(peers or scn.peers.count, duration_s)
    t0 = time.perf_counter()
    world = build_world(scn, seed)
    results = run_policies(world, jobs, progress)
    out = Path(out_dir)
    from simulations.plots import write_plots  # matplotlib: imported only when a run needs it
    from simulations.report import write_outputs

    doc = write_outputs(world, results, out)
    if plots:
        write_plots(world, results, out)
    wall = time.perf_counter() - t0
    if progress:
        _print_table(console, doc)
        console.print(f"wrote {out}/ in {wall:.1f} s wall ({sum(r.events_run for r in results)} events)")
    return 0


#: Columns of the summary table: (header, cell from a policy's summary), in order.
_COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("tasks/s", lambda s: f"{s['throughput_tps']:.0f}"),
    ("per 100\npeers", lambda s: f"{s['tasks_per_s_per_100_peers']:.0f}"),
    ("p50\nms", lambda s: _num(s["latency_ms"]["p50"], ".1f")),
    ("simple\np50 ms", lambda s: _num(s["simple_p50_ms"], ".1f")),
    ("p95\nms", lambda s: _num(s["latency_ms"]["p95"], ".0f")),
    ("miss\nrate", lambda s: _num(s["deadline_miss_rate"], ".3f")),
    ("util", lambda s: _num(s["utilisation"], ".3f")),
    ("ctrl\nshare", lambda s: _num(s["control_share"], ".4f")),
    ("wrong", lambda s: str(s["outcomes"]["wrong"])),
    ("banned\nbad/good", lambda s: "{}/{}".format(*_bans(s))),
    ("extra\nwork", lambda s: _num(s.get("verification", {}).get("extra_work_share"), ".2f")),
)
#: Below this console width the table is printed in two halves, so that no cell is cut.
_WIDE = 120


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _bans(s: dict[str, Any]) -> tuple[int, int]:
    v = s.get("verification", {})
    return v.get("malicious_banned", 0), v.get("honest_banned", 0)


def _print_table(console: Any, doc: dict[str, Any]) -> None:
    """The per-policy summary; on a console narrower than ``_WIDE`` columns, as two tables
    (throughput and latency, then resources and trust) instead of one whose cells are cut."""
    from rich.table import Table

    title = f"{doc['scenario']} — {doc['peers']} peers, seed {doc['seed']}"
    split = 6 if console.width < _WIDE else len(_COLUMNS)
    for part in (_COLUMNS[:split], _COLUMNS[split:]):
        if not part:
            continue
        t = Table(title=title)
        title = ""
        t.add_column("policy", no_wrap=True)
        for header, _ in part:
            t.add_column(header, justify="right", no_wrap=True)
        for name, s in doc["policies"].items():
            t.add_row(name, *(cell(s) for _, cell in part))
        console.print(t)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` arguments to a (sub)parser."""
    parser.add_argument("scenario", help="scenario TOML file (see simulations/scenarios/)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed = same output bytes)")
    parser.add_argument("--out", default="sim-out", help="output directory")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: CPUs)")
    parser.add_argument("--peers", type=int, default=None, help="override the scenario's peer count")
    parser.add_argument("--duration", type=float, default=None, help="override duration_s")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or table")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="p2c2r simulate", description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    a = ap.parse_args(argv)
    return run_simulate(
        a.scenario,
        a.seed,
        a.out,
        progress=not a.no_progress,
        jobs=a.jobs,
        peers=a.peers,
        duration_s=a.duration,
        plots=not a.no_plots,
    )


if __name__ == "__main__":
    sys.exit(main())
