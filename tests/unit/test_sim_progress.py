"""The simulator's progress bar tells the user how long the run has left (wall time)."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from simulations.cli import _Bar
from simulations.scenario import load_scenario

SCEN = Path(__file__).resolve().parents[2] / "simulations" / "scenarios" / "small_failover.toml"


def _render(bar: _Bar) -> str:
    out = Console(file=io.StringIO(), width=140, record=True)
    out.print(bar.progress.make_tasks_table(bar.progress.tasks))
    return out.export_text()


def test_the_bar_shows_the_remaining_wall_time_from_the_pace_so_far() -> None:
    scn = load_scenario(str(SCEN))
    clock = [0.0]
    bar = _Bar(scn, ["random", "predicted"], Console(file=io.StringIO()), lambda: clock[0])
    try:
        done = scn.duration_s / 5
        for i in (1, 2):  # 10 wall seconds per fifth of the simulated time
            clock[0] = 10.0 * i
            bar.update(0, done * i)
            bar.update(1, done * i / 2)  # the second policy runs at half the pace
        text = _render(bar)
        lines = [ln for ln in text.splitlines() if "sim s" in ln]
        assert len(lines) == 2
        # 3/5 of the run left at 1/5 per 10 s: 30 s; at half that pace, 4/5 left: 80 s.
        assert "eta 0:00:30" in lines[0]
        assert "eta 0:01:20" in lines[1]
        assert "0:00:20" in lines[0]  # elapsed
    finally:
        bar.close()
