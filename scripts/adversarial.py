"""Adversarial end-to-end runs: real worker processes, some of them cheating, the default policy.

For each misbehaviour (``nodes.misbehave``) this starts 10 ``p2c2r node run`` worker
processes on loopback (real py-libp2p: TCP, Noise, yamux), of which 3 run with the hidden
``--misbehave MODE`` flag, connects a fresh gamer with the default ``VerificationConfig``,
runs a workload of small ``physics_step`` and ``flocking`` tasks (kinds whose wrong
answers can pass the self-check), 12 at a time, and compares every resolved output with
the right one computed locally. A baseline run with 10 honest workers gives the throughput
to compare.

Modes (separate runs): ``wrong`` (always wrong), ``sleeper`` (``wrong:after=N``),
``forge`` (bad signatures), ``replay`` (another task's signed result), ``drop`` (never
answers), ``slow`` (answers 5 s late).

Silence is judged over time, not over tasks: a worker is banned as unresponsive after
``strikes_to_ban`` strikes at least ``strike_interval_s`` apart (5 x 0.5 s by default), so
that one stall (a cold start, a GC pause) bans nobody. The ``drop`` and ``slow`` runs
therefore go on with fresh tasks until at least ``SILENCE_RUN_S`` seconds have passed: on
a fast machine 1,000 tasks took 3.5 s, shorter than a ban for silence can take.

Figures per run: tasks, verified, typed errors, wrong accepted, forged/replayed accepted,
cheaters banned, honest workers banned, throughput and its fall against the baseline.
Pass criteria (also asserted by ``tests/e2e/test_adversarial.py``): forged or replayed
accepted = 0; wrong accepted <= 1% in ``wrong``/``sleeper``; every task verified or a
typed error; every cheater banned; throughput falls by at most 30%.

    python scripts/adversarial.py [--quick] [--json PATH] [--modes wrong,forge] [--tasks N]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mesh.errors import P2C2RError  # noqa: E402
from mesh.identity import peer_id_from_str  # noqa: E402
from nodes.demo import WorkerProcess, _drain, start_worker, stop_workers  # noqa: E402
from nodes.gamer import GamerClient  # noqa: E402
from tasks.codecs import encode_array  # noqa: E402
from tasks.kernels.flocking import FLOCKING_DEFAULTS, random_flock  # noqa: E402
from tasks.kernels.physics import random_world  # noqa: E402
from tasks.registry import default_registry  # noqa: E402

MODES: dict[str, str] = {
    "wrong": "wrong",
    "sleeper": "wrong:after={after}",
    "forge": "forge",
    "replay": "replay",
    "drop": "drop",
    "slow": "slow:delay=5",
}
WORKERS = 10
CHEATERS = 3
DEADLINE_S = 20.0
IN_FLIGHT = 12
START_TIMEOUT_S = 90.0
#: Runs whose cheaters are caught by their silence, and how long they last at least.
SILENCE_MODES = ("drop", "slow")
SILENCE_RUN_S = 8.0


@dataclass
class RunResult:
    mode: str
    tasks: int = 0
    verified: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    untyped: int = 0
    wrong_accepted: int = 0
    forged_or_replayed_accepted: int = 0
    cheaters_banned: int = 0
    cheaters: int = 0
    honest_banned: int = 0
    wall_s: float = 0.0
    throughput: float = 0.0
    throughput_fall: float = 0.0
    duplicates: int = 0
    probes: int = 0
    hedges: int = 0
    recomputes: int = 0
    evidence: int = 0
    evidence_shared: int = 0
    unconfirmed: int = 0
    #: One message per error type, to show what went wrong.
    samples: dict[str, str] = field(default_factory=dict)

    @property
    def wrong_rate(self) -> float:
        return self.wrong_accepted / max(1, self.tasks)

    def checks(self) -> dict[str, bool]:
        """The pass criteria for this run (the baseline has only the first two)."""
        out = {
            "every task verified or a typed error": self.untyped == 0
            and self.verified + sum(self.errors.values()) == self.tasks,
            "no honest worker banned": self.honest_banned == 0,
        }
        if self.mode == "baseline":
            return out
        out["forged/replayed accepted = 0"] = self.forged_or_replayed_accepted == 0
        if self.mode in ("wrong", "sleeper"):
            out["wrong accepted <= 1%"] = self.wrong_rate <= 0.01
        else:
            out["wrong accepted = 0"] = self.wrong_accepted == 0
        out["all cheaters banned"] = self.cheaters_banned == self.cheaters
        out["throughput falls <= 30%"] = self.throughput_fall <= 0.30
        return out


# ---------------------------------------------------------------- workload


def workload(n: int, seed: int) -> list[tuple[str, dict[str, Any], bytes, bytes]]:
    """``(kind, params, data, right output)``: small physics and flocking tasks."""
    rng = np.random.default_rng(seed)
    reg = default_registry()
    out = []
    for i in range(n):
        if i % 2 == 0:
            kind = "physics_step"
            params: dict[str, Any] = {"steps": 4, "walls": True, "box": 60.0, "gravity": -9.81}
            data = encode_array(random_world(rng, 150, 60.0, fill=0.1), "raw")
        else:
            kind = "flocking"
            params = {**FLOCKING_DEFAULTS, "steps": 4, "world": 80.0}
            data = encode_array(random_flock(rng, 150, 80.0), "raw")
        spec = reg.get(kind)
        right = spec.execute(spec.validate_params(params, len(data)), data)
        out.append((kind, params, data, right))
    return out


# ---------------------------------------------------------------- worker processes


@dataclass
class Proc:
    """A worker process started by ``nodes.demo.start_worker`` and its peer id."""

    wp: WorkerProcess
    peer: bytes

    @property
    def proc(self) -> trio.Process:
        return self.wp.proc

    @property
    def addr(self) -> str:
        return self.wp.addr


async def _start(home: Path, name: str, misbehave: str | None) -> Proc:
    d = home / name
    d.mkdir(parents=True, exist_ok=True)
    extra = ["--metrics-port", "-1", *(["--misbehave", misbehave] if misbehave else [])]
    wp = await start_worker(d / "node.key", d, 1, extra=extra)
    return Proc(wp, peer_id_from_str(wp.addr.rsplit("/p2p/", 1)[1]))


@asynccontextmanager
async def workers(home: Path, specs: list[tuple[str, str | None]]) -> AsyncIterator[list[Proc]]:
    """Start ``(name, misbehave)`` workers in parallel; always stop and reap them."""
    procs: list[Proc] = []
    try:
        async with trio.open_nursery() as n:

            async def one(name: str, mis: str | None) -> None:
                procs.append(await _start(home, name, mis))

            for name, mis in specs:
                n.start_soon(one, name, mis)
        async with trio.open_nursery() as drains:
            for p in procs:
                drains.start_soon(_drain, p.proc)
            yield procs
            drains.cancel_scope.cancel()
    finally:
        await stop_workers([p.wp for p in procs])


# ---------------------------------------------------------------- one run


async def warm_up(procs: list[Proc], sample: list[tuple[str, dict[str, Any], bytes, bytes]]) -> None:
    """One task of each kind per fresh worker, from a throw-away raw client, so the
    measured runs do not include process cold starts (imports, first allocations).
    Workers that drop or stall just time out here; misbehaviour counters include these."""
    from nodes.verification import VerificationConfig

    async def one(p: Proc) -> None:
        async with GamerClient.connect([p.addr], verification=VerificationConfig.off()) as g:
            for kind, params, data, _ in sample:
                try:
                    await g.run(kind, data, params, deadline=3)
                except P2C2RError:
                    pass

    async with trio.open_nursery() as n:
        for p in procs:
            n.start_soon(one, p)


async def run_one(
    mode: str,
    honest: list[Proc],
    extra: list[Proc],
    cheaters: set[bytes],
    tasks: list[tuple[str, dict[str, Any], bytes, bytes]],
    anchors: list[tuple[str, dict[str, Any], bytes, bytes]],
    seed: int,
    more: Sequence[tuple[str, dict[str, Any], bytes, bytes]] = (),
    min_s: float = 0.0,
) -> RunResult:
    """Run ``tasks``, then tasks from ``more`` for as long as ``min_s`` has not passed."""
    res = RunResult(mode, cheaters=len(cheaters))
    order = honest + extra
    np.random.default_rng(seed).shuffle(order)  # type: ignore[arg-type]
    async with GamerClient.connect() as gamer:
        # The game anchors trust on a few answers it computed itself, before any worker.
        for kind, params, data, right in anchors:
            gamer.add_known_answer(kind, params, data, right)
        for p in order:
            await gamer.add_worker(p.addr)
        limit = trio.Semaphore(IN_FLIGHT)
        t0 = time.perf_counter()

        async def one(kind: str, params: dict[str, Any], data: bytes, right: bytes) -> None:
            try:
                out = await gamer.run(kind, data, params, deadline=DEADLINE_S)
            except P2C2RError as exc:
                name = type(exc).__name__
                res.errors[name] = res.errors.get(name, 0) + 1
                res.samples.setdefault(name, str(exc)[:300])
                return
            except Exception:  # anything untyped breaks the contract: count it
                res.untyped += 1
                return
            finally:
                limit.release()
            res.verified += 1
            if out != right:
                res.wrong_accepted += 1
                if mode in ("forge", "replay"):
                    res.forged_or_replayed_accepted += 1

        async with trio.open_nursery() as n:
            for i, (kind, params, data, right) in enumerate(itertools.chain(tasks, more)):
                if i >= len(tasks) and time.perf_counter() - t0 >= min_s:
                    break
                await limit.acquire()
                res.tasks += 1
                n.start_soon(one, kind, params, data, right)
        res.wall_s = time.perf_counter() - t0
        res.throughput = res.verified / res.wall_s if res.wall_s > 0 else 0.0
        banned = set(gamer.banned())
        res.cheaters_banned = len(banned & cheaters)
        res.honest_banned = len(banned - cheaters)
        vs = gamer.verification_stats
        res.duplicates, res.probes = gamer.stats.duplicates, gamer.stats.probes
        res.hedges, res.recomputes = vs.hedges, vs.recomputes
        res.evidence, res.evidence_shared = len(gamer.evidence()), gamer.stats.evidence_shared
        res.unconfirmed = gamer.stats.unconfirmed
    return res


async def run_all(
    modes: list[str], n_tasks: int, *, seed: int = 1, sleeper_after: int = 20, log: Any = print
) -> list[RunResult]:
    """The baseline, then one run per mode; returns every run's figures."""
    tasks = await trio.to_thread.run_sync(workload, n_tasks, seed)
    anchors = await trio.to_thread.run_sync(workload, 4, seed + 1000)
    # Fresh tasks (the result cache would answer repeats) for the silence runs' floor.
    more = (
        await trio.to_thread.run_sync(workload, 2 * n_tasks, seed + 2000)
        if set(modes) & set(SILENCE_MODES)
        else []
    )
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="p2c2r-adv-") as tmp:
        home = Path(tmp)
        names = [f"honest{i}" for i in range(WORKERS - CHEATERS)]
        async with workers(home, [(n, None) for n in names]) as honest:
            await warm_up(honest, anchors[:2])
            for i, mode in enumerate(["baseline", *modes]):
                mis = None if mode == "baseline" else MODES[mode].format(after=sleeper_after)
                specs = [(f"{mode}{j}", mis) for j in range(CHEATERS)]
                async with workers(home, specs) as extra:
                    await warm_up(extra, anchors[2:4])
                    cheaters = set() if mode == "baseline" else {p.peer for p in extra}
                    floor = SILENCE_RUN_S if mode in SILENCE_MODES else 0.0
                    res = await run_one(mode, honest, extra, cheaters, tasks, anchors, seed + i, more, floor)
                if results and results[0].throughput > 0:
                    res.throughput_fall = max(0.0, 1.0 - res.throughput / results[0].throughput)
                results.append(res)
                log(_line(res))
    return results


def _line(r: RunResult) -> str:
    errs = ", ".join(f"{k} {v}" for k, v in sorted(r.errors.items())) or "none"
    ok = all(r.checks().values())
    return (
        f"{r.mode:9s} {'PASS' if ok else 'FAIL'}  tasks {r.tasks}  verified {r.verified}  errors [{errs}]  "
        f"wrong {r.wrong_accepted} ({100 * r.wrong_rate:.2f}%)  forged/replayed {r.forged_or_replayed_accepted}  "
        f"cheaters banned {r.cheaters_banned}/{r.cheaters}  honest banned {r.honest_banned}  "
        f"{r.throughput:.1f} tasks/s (fall {100 * r.throughput_fall:.0f}%)  "
        f"dups {r.duplicates} probes {r.probes} hedges {r.hedges} re-runs {r.recomputes} "
        f"evidence {r.evidence} shared {r.evidence_shared}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="fewer tasks per run (~2 min in all)")
    ap.add_argument("--tasks", type=int, help="tasks per run (default 2000, quick 1000)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    ap.add_argument("--json", help="write every run's figures here")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        ap.error(f"unknown mode(s): {', '.join(unknown)}")
    n = args.tasks or (1000 if args.quick else 2000)
    t0 = time.perf_counter()
    results = trio.run(functools.partial(run_all, modes, n, seed=args.seed))
    ok = all(all(r.checks().values()) for r in results)
    print(f"{'PASS' if ok else 'FAIL'} in {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                [{**asdict(r), "wrong_rate": r.wrong_rate, "checks": r.checks()} for r in results], indent=2
            )
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
