"""Figures of a run (matplotlib, Agg backend, PNG without a timestamp, so files are reproducible).

latency_cdf.png        latency CDF per policy (log time axis)
deadline_miss.png      deadline-miss rate per policy over time, and overall
utilisation.png        peer utilisation over time per policy
failovers.png          coordinator changes per region over time (lost / elected, with gaps)
control_share.png      control traffic as a share of all bytes over time, direct vs flooded
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure

from simulations.report import interval_rows, task_frame
from simulations.sim import SimResult
from simulations.world import World

__all__ = ["write_plots"]

_META = {"Software": None}


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=_META)
    plt.close(fig)


def _col(rows: list[list[str]], i: int) -> npt.NDArray[np.float64]:
    return np.asarray([float(r[i]) if r[i] != "" else np.nan for r in rows], dtype=float)


def write_plots(world: World, results: list[SimResult], out_dir: Path) -> list[str]:
    """Write every figure into ``out_dir``; return the file names."""
    plt.rcParams["svg.hashsalt"] = "p2c2r"
    names: list[str] = []
    rows = {res.policy: interval_rows(world, res) for res in results}

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for res in results:
        tf = task_frame(world, res)
        has = np.isin(tf["outcome"], [0, 1, 4, 5])
        lat = np.sort(tf["latency"][has] * 1000.0)
        if len(lat):
            step = max(1, len(lat) // 2000)
            ys = np.arange(1, len(lat) + 1) / len(lat)
            ax.plot(lat[::step], ys[::step], label=res.policy)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, submit to verified result)")
    ax.set_ylabel("fraction of tasks")
    ax.axvline(100, color="grey", lw=0.8, ls=":")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{world.scenario.name}: latency CDF per policy")
    _save(fig, out_dir / "latency_cdf.png")
    names.append("latency_cdf.png")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1]})
    rates = []
    for res in results:
        r = rows[res.policy]
        t, sub, miss = _col(r, 0), _col(r, 1), _col(r, 3)
        with np.errstate(invalid="ignore", divide="ignore"):
            a1.plot(t, np.where(sub > 0, miss / sub, np.nan), label=res.policy, lw=1)
        rates.append(float(np.nansum(miss) / max(np.nansum(sub), 1)))
    a1.set_xlabel("simulated time (s)")
    a1.set_ylabel("deadline-miss rate")
    a1.legend(fontsize=8)
    a1.grid(alpha=0.3)
    a2.bar([res.policy for res in results], rates)
    a2.tick_params(axis="x", rotation=60, labelsize=8)
    a2.set_title("overall")
    _save(fig, out_dir / "deadline_miss.png")
    names.append("deadline_miss.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    for res in results:
        r = rows[res.policy]
        ax.plot(_col(r, 0), _col(r, 7), label=res.policy, lw=1)
    ax.axhline(0.8, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("peer utilisation (busy / online slot-s)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, out_dir / "utilisation.png")
    names.append("utilisation.png")

    fig, ax = plt.subplots(figsize=(8, 0.6 * len(world.scenario.network.regions) + 2))
    regions = list(world.scenario.network.regions)
    last = results[-1]
    for tf_, region, ev, _peer, _epoch, gap in last.failovers:
        y = regions.index(region)
        if ev == "elected":
            ax.plot(tf_, y, "o", color="tab:green", ms=5)
            if gap > 0 and tf_ > gap + 0.01:
                ax.annotate(f"{gap:.2f}s", (tf_, y), textcoords="offset points", xytext=(3, 5), fontsize=7)
        elif ev == "lost":
            ax.plot(tf_, y, "x", color="tab:red", ms=6)
        else:
            ax.plot(tf_, y, "v", color="black", ms=6)
    ax.set_yticks(range(len(regions)), regions)
    ax.set_xlim(0, world.scenario.duration_s)
    ax.set_xlabel("simulated time (s)")
    ax.set_title(f"coordinator changes ({last.policy}): o elected, x lost, v killed; label = gap")
    ax.grid(alpha=0.3)
    _save(fig, out_dir / "failovers.png")
    names.append("failovers.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    for res in results:
        r = rows[res.policy]
        ax.plot(_col(r, 0), _col(r, 12), label=res.policy, lw=1)
    res0 = results[0]
    flooded = []
    for i in range(len(res0.ctrl_bytes)):
        c = res0.ctrl_bytes[i] - res0.direct_hb_bytes[i] + res0.topic_hb_bytes[i]
        tot = c + res0.task_bytes[i]
        flooded.append(c / tot if tot > 0 else np.nan)
    ax.plot(_col(rows[res0.policy], 0), flooded, "k--", lw=1, label=f"{res0.policy}, heartbeats flooded")
    ax.axhline(0.10, color="grey", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("control bytes / all bytes")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, out_dir / "control_share.png")
    names.append("control_share.png")
    return names
