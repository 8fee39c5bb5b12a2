"""Monte-Carlo of the verification policy against cheating workers (pure, in-process).

Drives ``nodes.verification.VerificationCore`` and ``nodes.reputation.Reputation`` (the
real cores) with a synthetic deterministic task kind and a population of workers, some of
which cheat. Nothing here touches the network or the kernels: it measures the *policy*.

Model
    * One gamer submits ``tasks`` tasks, one per virtual millisecond; every copy is
      answered at once (deadlines never bite; latency is not what is measured).
    * The kind ``mc`` is deterministic: the right output is ``b"ok" + sha256(input)``. Its
      self-check accepts any ``b"ok" + 32 bytes``, so a *plausible* wrong answer passes it
      (the worst case for the policy); a *naive* wrong answer (``b"no" ...``) fails it.
    * Cheaters collude: their wrong answer for an input is identical
      (``b"ok" + sha256(input + b"evil")``), so two cheaters on one task agree.
    * Strategies: ``always`` (wrong on every task), ``sleeper`` (honest for ``honest_for``
      tasks per identity, then wrong on every task). When banned, a cheater rejoins at
      once under a fresh key (whitewashing), which restarts its ``honest_for`` count.
    * ``probe_aware``: cheaters share a memory of every input any of them has seen and
      answer honestly on repeats (probes re-use inputs, so this attack recognises them).

Metrics: ``wrong_rate`` (wrong outputs resolved / tasks), ``reject_rate``, ``bans``,
``honest_extra`` (share of honest workers' executions that were verification work:
duplicates, tie-breaks, replacements, probes), ``overhead`` (all executions / tasks - 1).

Run::

    python scripts/adversarial_sim.py                 # the table of the docs (seeds 1..3)
    python scripts/adversarial_sim.py --tasks 50000 --seeds 5 --strategy sleeper --honest-for 400
"""

from __future__ import annotations

import argparse
import hashlib
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from mesh.errors import ValidationError
from nodes.reputation import Reputation, ReputationConfig
from nodes.verification import (
    Penalise,
    Probe,
    Reject,
    Resolve,
    Role,
    SendTo,
    Task,
    VerificationConfig,
    VerificationCore,
    drain_inline,
)
from tasks.registry import ParamSpec, Registry, TaskKind


def _right(data: bytes) -> bytes:
    return b"ok" + hashlib.sha256(data).digest()


def _evil(data: bytes) -> bytes:
    return b"ok" + hashlib.sha256(data + b"evil").digest()


def _naive(data: bytes) -> bytes:
    return b"no" + hashlib.sha256(data).digest()


def _self_check(params: dict[str, Any], data: bytes, out: bytes) -> bool:
    return len(out) == 34 and out[:2] == b"ok"


def _execute(params: dict[str, Any], data: bytes) -> bytes:
    if not data:
        raise ValidationError("empty input")
    return _right(data)


MC_KIND = TaskKind(
    name="mc",
    description="Monte-Carlo stand-in: sha256 of the input",
    params={"tag": ParamSpec(str, default="")},
    execute=_execute,
    cost=lambda params, n: 0.01,
    deterministic=True,
    self_check=_self_check,
)


def mc_registry() -> Registry:
    return Registry([MC_KIND])


@dataclass
class SimResult:
    tasks: int
    wrong: int
    rejected: int
    bans_cheaters: int
    bans_honest: int
    honest_execs: int
    honest_verify_execs: int
    total_execs: int
    identities: int
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def wrong_rate(self) -> float:
        return self.wrong / self.tasks

    @property
    def reject_rate(self) -> float:
        return self.rejected / self.tasks

    @property
    def honest_extra(self) -> float:
        return self.honest_verify_execs / max(1, self.honest_execs)

    @property
    def overhead(self) -> float:
        return self.total_execs / self.tasks - 1.0

    def row(self) -> dict[str, float | int]:
        return {
            "wrong_rate": round(self.wrong_rate, 5),
            "reject_rate": round(self.reject_rate, 5),
            "cheater_bans": self.bans_cheaters,
            "honest_bans": self.bans_honest,
            "identities": self.identities,
            "honest_extra": round(self.honest_extra, 4),
            "overhead": round(self.overhead, 4),
        }


def simulate(
    *,
    strategy: str = "always",
    workers: int = 10,
    cheaters: int = 3,
    tasks: int = 20_000,
    honest_for: int = 300,
    naive: bool = False,
    probe_aware: bool = False,
    seed: int = 1,
    config: VerificationConfig = VerificationConfig(),
    rep_config: ReputationConfig = ReputationConfig(),
    rejoin: bool = True,
    seed_known: int = 32,
) -> SimResult:
    """Run one Monte-Carlo; see the module docstring for the model."""
    if strategy not in ("always", "sleeper", "honest"):
        raise ValueError(f"unknown strategy {strategy!r}")
    rng = random.Random(seed)
    registry = mc_registry()
    rep = Reputation(rep_config)
    core = VerificationCore(registry, rep, random.Random(rng.getrandbits(64)), config)
    ids = iter(range(10**9))
    cheater_ids: set[bytes] = set()
    live: set[bytes] = set()
    served: dict[bytes, int] = {}
    seen_inputs: set[bytes] = set()
    now = 0.0

    def new_id(cheat: bool) -> bytes:
        w = b"w%08d" % next(ids)
        if cheat:
            cheater_ids.add(w)
        served[w] = 0
        live.add(w)
        core.on_worker_up(w, now)
        return w

    for i in range(workers):
        new_id(strategy != "honest" and i < cheaters)
    identities = workers
    # The gamer computed a few answers itself at start-up: the anchor that trust flows from.
    for _ in range(seed_known):
        d = rng.randbytes(16)
        core.add_known_answer("mc", {}, d, _right(d), now)
    res = SimResult(tasks, 0, 0, 0, 0, 0, 0, 0, 0)

    def answer(worker: bytes, data: bytes) -> bytes:
        if worker not in cheater_ids:
            return _right(data)
        served[worker] += 1
        if probe_aware and data in seen_inputs:
            return _right(data)
        seen_inputs.add(data)
        if strategy == "sleeper" and served[worker] <= honest_for:
            return _right(data)
        return _naive(data) if naive else _evil(data)

    rejoins = 0
    for n in range(tasks):
        now = n * 0.001
        # Whitewashing: a banned cheater is back under a fresh key by the next task (not
        # within the same one, or a join probe that catches it at once would loop).
        for _ in range(rejoins):
            new_id(True)
            identities += 1
        rejoins = 0
        data = rng.randbytes(16)
        tid = n.to_bytes(16, "big")
        core.on_submit(Task(tid, "mc", {}, data, now + 10.0), now)
        queue: deque[Any] = deque(drain_inline(core, now))
        while queue:
            eff = queue.popleft()
            if isinstance(eff, (SendTo, Probe)):
                res.total_execs += 1
                if eff.worker not in cheater_ids:
                    res.honest_execs += 1
                    if isinstance(eff, Probe) or eff.role is not Role.PRIMARY:
                        res.honest_verify_execs += 1
                core.on_result(eff.wire_id, eff.worker, answer(eff.worker, eff.data), now)
            elif isinstance(eff, Resolve):
                if eff.output != _right(data):
                    res.wrong += 1
            elif isinstance(eff, Reject):
                res.rejected += 1
            elif isinstance(eff, Penalise) and eff.banned and eff.worker in live:
                live.discard(eff.worker)
                if eff.worker not in cheater_ids:
                    res.bans_honest += 1
                    continue
                res.bans_cheaters += 1
                if rejoin:  # whitewashing: back under a fresh key
                    core.on_worker_down(eff.worker, now)
                    rejoins += 1
            queue.extend(drain_inline(core, now))
    res.identities = identities
    res.stats = dict(core.stats.__dict__)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--strategy", choices=("always", "sleeper", "honest", "all"), default="all")
    ap.add_argument("--honest-for", type=int, nargs="*", default=[50, 150, 300, 1000])
    args = ap.parse_args()
    strategies = ["honest", "always", "sleeper"] if args.strategy == "all" else [args.strategy]
    for strat in strategies:
        variants: list[tuple[str, dict[str, Any]]] = [("", {})]
        if strat == "sleeper":
            variants = [(f"H={h}", {"honest_for": h}) for h in args.honest_for]
        if strat != "honest":
            variants += [(f"{v} naive".strip(), {**kw, "naive": True}) for v, kw in variants[:1]]
            variants += [(f"{v} probe-aware".strip(), {**kw, "probe_aware": True}) for v, kw in variants[:1]]
        for label, kw in variants:
            rows = [
                simulate(strategy=strat, tasks=args.tasks, seed=s, **kw) for s in range(1, args.seeds + 1)
            ]
            agg = {k: round(sum(float(r.row()[k]) for r in rows) / len(rows), 5) for k in rows[0].row()}
            worst = max(r.wrong_rate for r in rows)
            print(f"{strat:8s} {label:22s} {agg}  worst_wrong={worst:.5f}")


if __name__ == "__main__":
    main()
