"""``p2c2r demo --fps``: a paced frame stream on real worker processes, adaptive quality, JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_fps_demo_streams_verified_frames_and_adapts(tmp_path: Path) -> None:
    out = tmp_path / "fps.json"
    proc = subprocess.run(
        [sys.executable, "-m", "nodes.cli", "demo", "--fps", "30", "--seconds", "5", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, P2C2R_HOME=str(tmp_path)),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    for key in (
        "achieved_fps",
        "on_time_fps",
        "frames_verified",
        "deadline_misses",
        "dropped",
        "mode_changes",
        "changes",
        "final_level",
        "per_second",
        "budget_ms",
        "loadavg_before",
    ):
        assert key in r, key
    assert r["target_fps"] == 30 and r["frames_due"] == 150
    assert r["frames_sent"] + r["dropped"] == r["frames_due"]
    assert r["frames_verified"] > 0 and r["achieved_fps"] > 0
    assert r["spot_checks"]["checked"] >= 1 and r["spot_checks"]["failed"] == 0
    assert not r["errors"]
    assert len(r["per_second"]) >= 5
    assert sum(row["fps"] for row in r["per_second"]) == r["frames_verified"]
    assert sum(r["frames_per_level"].values()) == r["frames_verified"]
    if r["mode_changes"] == 0:
        # it held the budget at the best level
        assert r["final_level"] == "quality@2x"
        assert r["deadline_misses"] <= 0.1 * r["frames_sent"]
    else:
        # it stepped down because the smoothed latency passed 90 % of the frame budget
        first = r["changes"][0]
        assert first["from"] == "quality@2x" and first["direction"] == "down"
        assert first["smoothed_ms"] > 0.9 * r["budget_ms"]
        for ch in r["changes"]:
            limit = 0.9 if ch["direction"] == "down" else 0.6
            assert (ch["smoothed_ms"] > limit * r["budget_ms"]) == (ch["direction"] == "down")
    assert "fps achieved" in proc.stdout
