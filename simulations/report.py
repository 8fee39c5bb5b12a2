"""Turn ``SimResult``s into the run's outputs: tasks.csv, intervals.csv, failovers.csv, summary.json.

Everything written here is a pure function of the results (no wall-clock time, fixed float
formatting, policies in scenario order), so the same scenario and seed give byte-identical files.

Definitions used in the summary and the targets table
    * outcomes (the gamer's verification core ends every task with ``Resolve`` or ``Reject``):
      ``ok`` verified in time; ``wrong`` resolved but the output is a forgery (a wrong result
      accepted); ``late`` the deadline passed first (``TaskTimeoutError``, including
      ``VerificationTimeoutError``: an answer came but not its confirmation); ``caught``
      rejected by verification (``VerificationError``: answers that could not be confirmed);
      ``lost`` rejected otherwise (no worker left); ``unplaced`` never sent (no lease in time,
      or the gamer's uplink could not send it before its deadline);
    * throughput: tasks resolved (ok + wrong) per simulated second, after warm-up;
    * latency: submit to verified result at the gamer, over resolved tasks;
    * deadline miss rate: (late + lost + unplaced + caught) / submitted;
    * verification: the gamers' ``VerificationStats`` summed, who got banned, and the busy
      seconds workers spent per copy role; ``extra_work_share`` = busy seconds of duplicates,
      tie-breakers, replacements and probes / busy seconds of primaries;
    * utilisation: busy slot-seconds / online slot-seconds of all workers;
    * control share: control bytes / (control + task bytes), all on-the-wire bytes.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from simulations.sim import OUTCOMES, SimResult
from simulations.world import World

__all__ = ["TARGETS", "summarise", "task_frame", "write_outputs"]

#: The performance guide's targets.
TARGETS = {
    "tasks_per_s_per_100_peers": (">=", 1000.0),
    "utilisation": (">=", 0.80),
    "control_share": ("<=", 0.10),
    "simple_p50_ms": ("<", 100.0),
}

F64 = npt.NDArray[np.float64]


def task_frame(world: World, res: SimResult) -> dict[str, npt.NDArray[Any]]:
    """Per-task columns as numpy arrays, with stream-derived columns joined in."""
    stream = np.frombuffer(res.t_stream, dtype=np.int32) if len(res.t_stream) else np.zeros(0, np.int32)
    wl = np.asarray([s.workload for s in world.streams], dtype=np.int32)
    simple = np.asarray([w.simple for w in world.scenario.workloads], dtype=bool)
    return {
        "stream": stream,
        "workload": wl[stream] if len(stream) else np.zeros(0, np.int32),
        "simple": simple[wl[stream]] if len(stream) else np.zeros(0, bool),
        "worker": np.asarray(res.t_worker, dtype=np.int32),
        "submit": np.asarray(res.t_submit, dtype=np.float64),
        "latency": np.asarray(res.t_latency, dtype=np.float64),
        "service": np.asarray(res.t_service, dtype=np.float64),
        "outcome": np.asarray(res.t_outcome, dtype=np.int8),
    }


def _pct(x: F64, q: float) -> float:
    return float(np.percentile(x, q)) if len(x) else math.nan


def _r(x: float, nd: int = 6) -> float | None:
    return None if not math.isfinite(x) else round(x, nd)


def summarise(world: World, res: SimResult) -> dict[str, Any]:
    """The summary of one policy's run."""
    scn = world.scenario
    tf = task_frame(world, res)
    out = tf["outcome"]
    lat = tf["latency"]
    has_result = np.isin(out, [0, 4])
    n = len(out)
    counts = {name: int((out == i).sum()) for i, name in enumerate(OUTCOMES)}
    span = max(scn.duration_s - scn.output.warmup_s, 1e-9)
    w0 = int(scn.output.warmup_s / res.interval_s)
    busy = float(sum(res.busy[w0:]))
    cap = float(sum(res.capacity[w0:]))
    ctrl = float(sum(res.ctrl_bytes[w0:]))
    task = float(sum(res.task_bytes[w0:]))
    topic = float(sum(res.topic_hb_bytes[w0:]))
    hb_direct_share = ctrl / (ctrl + task) if ctrl + task > 0 else math.nan
    lat_ms = lat[has_result] * 1000.0
    simple_ms = lat[has_result & tf["simple"]] * 1000.0
    per_workload: dict[str, Any] = {}
    for wi, w in enumerate(scn.workloads):
        sel = tf["workload"] == wi
        ws = lat[sel & has_result] * 1000.0
        nw = int(sel.sum())
        per_workload[w.name] = {
            "kind": w.kind,
            "submitted": nw,
            "p50_ms": _r(_pct(ws, 50), 3),
            "p95_ms": _r(_pct(ws, 95), 3),
            "deadline_ms": w.deadline_ms,
            "miss_rate": _r(float(np.isin(out[sel], [1, 2, 3, 5]).sum()) / nw if nw else math.nan),
        }
    elected = [f for f in res.failovers if f[2] == "elected"]
    first: dict[str, bool] = {}
    failover_gaps = []
    for f in elected:
        if f[1] in first:
            failover_gaps.append(f[5])
        first[f[1]] = True
    results = int(has_result.sum())
    thr = results / span
    return {
        "submitted": n,
        "outcomes": counts,
        "throughput_tps": _r(thr, 3),
        "goodput_tps": _r(counts["ok"] / span, 3),
        "tasks_per_s_per_100_peers": _r(thr * 100.0 / scn.peers.count, 3),
        "latency_ms": {q: _r(_pct(lat_ms, float(q[1:])), 3) for q in ("p50", "p95", "p99")},
        "simple_p50_ms": _r(_pct(simple_ms, 50), 3),
        "deadline_miss_rate": _r(
            (counts["late"] + counts["lost"] + counts["unplaced"] + counts["caught"]) / n
        )
        if n
        else None,
        "wrong_accepted_rate": _r(counts["wrong"] / results) if results else None,
        "utilisation": _r(busy / cap) if cap > 0 else None,
        "control_bytes": int(ctrl),
        "task_bytes": int(task),
        "control_share": _r(hb_direct_share),
        "control_share_if_heartbeats_flooded": _r(
            (ctrl - _direct_hb(res, w0) + topic) / (ctrl - _direct_hb(res, w0) + topic + task)
        )
        if scn.control.heartbeat_delivery == "coordinator" and task > 0
        else _r(hb_direct_share),
        "elections": len(elected),
        "failovers": len(failover_gaps),
        "failover_gap_s": {
            "mean": _r(float(np.mean(failover_gaps)), 3) if failover_gaps else None,
            "max": _r(float(np.max(failover_gaps)), 3) if failover_gaps else None,
        },
        "per_workload": per_workload,
        "verification": _verification(res),
        "counters": res.counters,
    }


def _verification(res: SimResult) -> dict[str, Any]:
    v = res.verification
    primary = v.get("busy_s_primary", 0.0)
    extra = sum(b for k, b in v.items() if k.startswith("busy_s_") and k != "busy_s_primary")
    out: dict[str, Any] = {k: (int(x) if float(x).is_integer() else round(x, 3)) for k, x in v.items()}
    out["extra_work_share"] = _r(extra / primary) if primary > 0 else None
    return out


def _direct_hb(res: SimResult, w0: int) -> float:
    """Bytes of heartbeats sent once each (to the coordinator) after warm-up."""
    return float(sum(res.direct_hb_bytes[w0:]))


def targets(summary: dict[str, Any]) -> dict[str, Any]:
    """Pass/fail of each performance-guide target for one policy's summary."""
    out: dict[str, Any] = {}
    for key, (op, goal) in TARGETS.items():
        v = summary.get(key)
        ok = None
        if v is not None:
            ok = v >= goal if op == ">=" else (v <= goal if op == "<=" else v < goal)
        out[key] = {"value": v, "target": f"{op} {goal:g}", "met": ok}
    return out


def _fmt(x: float, nd: int) -> str:
    return "" if not math.isfinite(x) else f"{x:.{nd}f}"


def write_outputs(world: World, results: list[SimResult], out_dir: Path) -> dict[str, Any]:
    """Write every CSV and the JSON summary; return the summary document."""
    scn = world.scenario
    out_dir.mkdir(parents=True, exist_ok=True)
    regions = scn.network.regions
    stride = max(1, round(1.0 / scn.output.task_sample)) if scn.output.task_sample > 0 else 0
    with (out_dir / "tasks.csv").open("w", newline="") as fh:
        wr = csv.writer(fh, lineterminator="\n")
        wr.writerow(
            ["policy", "stream", "workload", "kind", "gamer", "gamer_region", "worker", "worker_region",
             "submit_s", "latency_ms", "service_ms", "outcome"]
        )  # fmt: skip
        if stride:
            for res in results:
                tf = task_frame(world, res)
                for i in range(0, len(tf["outcome"]), stride):
                    s = int(tf["stream"][i])
                    sd = world.streams[s]
                    wl = scn.workloads[sd.workload]
                    wk = int(tf["worker"][i])
                    wr.writerow([
                        res.policy, s, wl.name, wl.kind, world.gamer_ids[sd.gamer - world.n_peers],
                        regions[world.region_of[sd.gamer]], world.peer_ids[wk] if wk >= 0 else "",
                        regions[world.region_of[wk]] if wk >= 0 else "", f"{tf['submit'][i]:.6f}",
                        _fmt(float(tf["latency"][i]) * 1000, 3), _fmt(float(tf["service"][i]) * 1000, 3),
                        OUTCOMES[int(tf["outcome"][i])],
                    ])  # fmt: skip
    with (out_dir / "intervals.csv").open("w", newline="") as fh:
        wr = csv.writer(fh, lineterminator="\n")
        wr.writerow(
            ["policy", "t_start_s", "submitted", "results", "missed", "throughput_tps", "p50_ms", "p95_ms",
             "utilisation", "online_peers", "coordinators", "control_bytes", "task_bytes", "control_share"]
        )  # fmt: skip
        for res in results:
            for row in interval_rows(world, res):
                wr.writerow([res.policy, *row])
    with (out_dir / "failovers.csv").open("w", newline="") as fh:
        wr = csv.writer(fh, lineterminator="\n")
        wr.writerow(["policy", "t_s", "region", "event", "peer", "epoch", "gap_s"])
        for res in results:
            for t, region, ev, peer, epoch, gap in res.failovers:
                wr.writerow([res.policy, f"{t:.6f}", region, ev, peer, epoch, f"{gap:.6f}"])
    summaries = {res.policy: summarise(world, res) for res in results}
    doc: dict[str, Any] = {
        "scenario": scn.name,
        "seed": world.seed,
        "duration_s": scn.duration_s,
        "warmup_s": scn.output.warmup_s,
        "peers": world.n_peers,
        "gamers": len(world.gamer_ids),
        "streams": len(world.streams),
        "regions": list(regions),
        "malicious_peers": int(sum(world.malicious)),
        "workloads": {
            w.name: {
                "kind": p.kind,
                "cost_ms": round(p.cost_ms, 4),
                "in_bytes": p.in_bytes,
                "out_bytes": p.out_bytes,
                "cost_source": p.source,
            }
            for w, p in zip(scn.workloads, world.profiles, strict=True)
        },
        "policies": summaries,
        "targets": {name: targets(s) for name, s in summaries.items()},
    }
    (out_dir / "summary.json").write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return doc


def interval_rows(world: World, res: SimResult) -> list[list[str]]:
    """Per-interval rows (tasks bucketed by submit time)."""
    tf = task_frame(world, res)
    iv = res.interval_s
    n = len(res.busy)
    b = (
        np.minimum((tf["submit"] / iv).astype(np.int64), n - 1)
        if len(tf["submit"])
        else np.zeros(0, np.int64)
    )
    order = np.argsort(b, kind="stable")
    bounds = np.searchsorted(b[order], np.arange(n + 1))
    out = tf["outcome"]
    lat = tf["latency"]
    rows: list[list[str]] = []
    for i in range(n):
        idx = order[bounds[i] : bounds[i + 1]]
        o = out[idx]
        has = np.isin(o, [0, 4])
        lm = lat[idx][has] * 1000.0
        missed = int(np.isin(o, [1, 2, 3, 5]).sum())
        cap = res.capacity[i]
        tot = res.ctrl_bytes[i] + res.task_bytes[i]
        rows.append([
            f"{i * iv:.3f}", str(len(idx)), str(int(has.sum())), str(missed), f"{has.sum() / iv:.3f}",
            _fmt(_pct(lm, 50), 3), _fmt(_pct(lm, 95), 3), _fmt(res.busy[i] / cap, 6) if cap > 0 else "",
            str(res.online[i]), str(res.coordinators[i]), f"{res.ctrl_bytes[i]:.0f}", f"{res.task_bytes[i]:.0f}",
            _fmt(res.ctrl_bytes[i] / tot, 6) if tot > 0 else "",
        ])  # fmt: skip
    return rows
