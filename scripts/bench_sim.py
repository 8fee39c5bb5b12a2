#!/usr/bin/env python
"""Measure how the simulator scales with the number of peers; write the figures as JSON.

For each peer count, runs the scale scenario in a fresh interpreter — by default one run of
the default policy (``predicted``; the issue's scale target is for one scenario run), and with
``--all-policies`` up to that many peers also every policy side by side in ``--jobs``
processes — and records wall time, peak RSS (the parent and the largest policy worker; with
``--jobs`` workers running side by side, parent + jobs x worker bounds the total), events
processed, CPU seconds (self + children: the figure to compare on a shared machine), the target
figures of each policy and its trust figures (bans, false bans, extra verification work) from the
run's summary.json. ``--verification core|off|none`` overrides the scenario's verification
policy (``none``: no verification core, the control and data planes alone).

    python scripts/bench_sim.py [--peers 100 1000 10000] [--duration 600] [--all-policies 1000]
                                [--verification none] [--json bench_sim.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TRUST_KEYS = (
    "malicious_workers",
    "malicious_banned",
    "honest_banned",
    "honest_banned_on_proof",
    "gamer_bans",
    "coordinator_bans",
    "verify_sends_duplicate",
    "verify_probes",
    "extra_work_share",
)

_CHILD = r"""
import dataclasses, json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from simulations.cli import run_policies
from simulations.report import write_outputs
from simulations.scenario import load_scenario
from simulations.world import build_world
t0 = time.perf_counter()
scn = load_scenario(sys.argv[2]).with_peers(int(sys.argv[6]), float(sys.argv[7]))
if sys.argv[8]:
    scn = dataclasses.replace(scn, policies=tuple(sys.argv[8].split(",")))
if sys.argv[9]:
    scn = dataclasses.replace(scn, verification=dataclasses.replace(scn.verification, policy=sys.argv[9]))
world = build_world(scn, int(sys.argv[3]))
t1 = time.perf_counter()
results = run_policies(world, int(sys.argv[5]))
write_outputs(world, results, Path(sys.argv[4]))
wall = time.perf_counter() - t0
me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
cpu = sum(resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime
          for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
print(json.dumps({"rc": 0, "wall_s": wall, "cpu_s": cpu, "world_s": t1 - t0, "rss_parent_mib": me,
                  "rss_worker_max_mib": kids, "events": sum(r.events_run for r in results),
                  "policy_wall_s": {r.policy: r.wall_s for r in results}}))
"""


def run_one(
    scenario: Path,
    peers: int,
    duration: float,
    jobs: int,
    seed: int,
    policies: str = "",
    verification: str = "",
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, str(ROOT), str(scenario), str(seed), out, str(jobs), str(peers),
             str(duration), policies, verification],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"simulate failed for {peers} peers:\n{proc.stderr[-3000:]}")
        m = json.loads(proc.stdout.strip().splitlines()[-1])
        doc = json.loads((Path(out) / "summary.json").read_text())
    per_policy = {
        name: {
            "throughput_tps": s["throughput_tps"],
            "tasks_per_s_per_100_peers": s["tasks_per_s_per_100_peers"],
            "utilisation": s["utilisation"],
            "control_share": s["control_share"],
            "control_share_if_heartbeats_flooded": s["control_share_if_heartbeats_flooded"],
            "simple_p50_ms": s["simple_p50_ms"],
            "p50_ms": s["latency_ms"]["p50"],
            "p95_ms": s["latency_ms"]["p95"],
            "deadline_miss_rate": s["deadline_miss_rate"],
            "failovers": s["failovers"],
            "failover_gap_max_s": s["failover_gap_s"]["max"],
            "outcomes": s["outcomes"],
            "verification": {k: s["verification"].get(k) for k in TRUST_KEYS},
        }
        for name, s in doc["policies"].items()
    }
    return {
        "peers": peers,
        "gamers": doc["gamers"],
        "streams": doc["streams"],
        "sim_duration_s": duration,
        "policies": len(per_policy),
        "jobs": jobs,
        "wall_s": round(wall, 2),
        "wall_in_run_s": round(m["wall_s"], 2),
        "cpu_s": round(m["cpu_s"], 2),
        "verification": verification or "scenario",
        "world_build_s": round(m["world_s"], 2),
        "events": m["events"],
        "policy_wall_s": {k: round(v, 2) for k, v in m["policy_wall_s"].items()},
        "rss_parent_mib": round(m["rss_parent_mib"], 1),
        "rss_worker_max_mib": round(m["rss_worker_max_mib"], 1),
        "rss_total_bound_mib": round(
            m["rss_parent_mib"] + min(jobs, len(per_policy)) * m["rss_worker_max_mib"], 1
        ),
        "results": per_policy,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", type=Path, default=ROOT / "simulations" / "scenarios" / "scale.toml")
    ap.add_argument("--peers", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--duration", type=float, default=600.0, help="simulated seconds")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--policy", default="predicted", help="the policy of the single-policy runs")
    ap.add_argument(
        "--all-policies", type=int, default=0, metavar="N", help="also run every policy for peer counts <= N"
    )
    ap.add_argument(
        "--verification",
        choices=["core", "off", "none"],
        default="",
        help="override the scenario's [verification] policy (default: the scenario's)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write results here")
    args = ap.parse_args(argv)
    rows = []
    plans = [(n, args.policy) for n in args.peers]
    plans += [(n, "") for n in args.peers if n <= args.all_policies]
    for n, pol in plans:
        row = run_one(args.scenario, n, args.duration, args.jobs, args.seed, pol, args.verification)
        row["mode"] = pol or "all"
        rows.append(row)
        print(
            f"{n:>6} peers  {row['mode']:>9}  {row['wall_s']:8.1f} s wall  {row['cpu_s']:8.1f} s cpu  "
            f"{row['events']:>10} events  "
            f"parent {row['rss_parent_mib']:.0f} MiB  worker max {row['rss_worker_max_mib']:.0f} MiB",
            flush=True,
        )
    single = [r for r in rows if r["mode"] != "all"]
    for a, b in itertools.pairwise(single):
        growth = b["wall_s"] / a["wall_s"] if a["wall_s"] else float("nan")
        print(f"  {a['peers']} -> {b['peers']} peers: wall x{growth:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"scenario": str(args.scenario), "runs": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
