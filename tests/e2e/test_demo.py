"""``p2c2r demo`` as a user runs it: real worker processes, every kind, JSON figures, clean Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DEMO = [sys.executable, "-m", "nodes.cli", "demo"]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def test_demo_runs_every_kind_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    proc = subprocess.run(
        [*DEMO, "--workers", "2", "--tasks", "40", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        env=dict(os.environ, P2C2R_HOME=str(tmp_path)),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    # the workers warmed their kernels up (--warmup) and the demo waited for them
    assert "kernels warm in" in proc.stdout and "not warm" not in proc.stdout, proc.stdout[-2000:]
    figures = json.loads(out.read_text())
    for key in ("tasks", "verified", "failed", "p50_ms", "p95_ms", "p99_ms", "tasks_per_s"):
        assert key in figures
    assert figures["tasks"] == 40
    assert figures["verified"] == 40 and figures["failed"] == 0
    assert set(figures["per_kind"]) >= {"echo", "upscale", "physics_step", "pathfind", "flocking", "raytrace"}
    assert 0 < figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"]
    # the tasks took the mesh path: two regions, each with an elected coordinator whose
    # gamer's tasks all verified
    assert figures["path"] == "mesh", proc.stdout[-2000:]
    assert set(figures["regions"]) == {"eu", "us"}
    for region in figures["regions"].values():
        assert region["coordinator"] and region["epoch"] >= 1 and region["members"] == 1
        assert region["tasks"] == region["verified"] == 20


def test_demo_rejects_impossible_region_plans(tmp_path: Path) -> None:
    env = dict(os.environ, P2C2R_HOME=str(tmp_path))
    for args, hint in (
        (["--workers", "1", "--regions", "eu,us"], "at least one worker per region"),
        (["--regions", "eu,eu"], "lists a region twice"),
        (["--regions", "eu,/x"], "comma-separated names"),
    ):
        proc = subprocess.run([*DEMO, *args], capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert hint in proc.stdout + proc.stderr


def test_ctrl_c_stops_the_demo_and_every_worker(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*DEMO, "--workers", "2", "--tasks", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, P2C2R_HOME=str(tmp_path)),
        # A shell's background job inherits SIGINT ignored; a user's terminal does not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        seen = b""
        # The worker addresses are printed once every worker is up and the gamer starts.
        while seen.count(b"/p2p/") < 2 and time.monotonic() < deadline:
            chunk = proc.stdout.read1(4096)
            if not chunk:
                break
            seen += chunk
        time.sleep(1.0)
        kids = _children(proc.pid)
        assert len(kids) == 2, seen.decode(errors="replace")[-2000:]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        time.sleep(0.5)
        assert [
            k
            for k in kids
            if Path(f"/proc/{k}").exists() and b"zombie" not in Path(f"/proc/{k}/status").read_bytes().lower()
        ] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for k in _children(proc.pid):
            os.kill(k, signal.SIGKILL)
