"""``scripts/bench_tasks.py`` reads its figures from the nodes' Prometheus metrics: the
workers' counters between two scrapes, and the gamer's latency quantiles."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

_PATH = Path(__file__).resolve().parents[2] / "scripts" / "bench_tasks.py"
_spec = importlib.util.spec_from_file_location("bench_tasks", _PATH)
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("bench_tasks", bench)
_spec.loader.exec_module(bench)

from nodes.demo import WorkerProcess  # noqa: E402
from nodes.metrics import NodeMetrics  # noqa: E402


def _process(lines: list[str]) -> WorkerProcess:
    return WorkerProcess(proc=cast(Any, None), lines=lines)


def test_metrics_port_comes_from_the_start_up_banner() -> None:
    banner = ["p2c2r node", "  metrics      http://127.0.0.1:40123/metrics", "listening on /ip4/x"]
    assert bench.metrics_port(_process(banner)) == 40123
    with pytest.raises(RuntimeError, match="no metrics endpoint"):
        bench.metrics_port(_process(["listening on /ip4/x"]))


def test_worker_delta_counts_only_what_happened_between_scrapes() -> None:
    a, b = NodeMetrics("worker"), NodeMetrics("worker")
    a.observe_task("echo", "ok", 0.001)
    a.bytes_in.inc(100)
    before = bench._samples([a.render().decode(), b.render().decode()])
    for m in (a, b):
        m.observe_task("echo", "ok", 0.002)
        m.observe_task("echo", "timeout", None)
        m.bytes_in.inc(64)
        m.bytes_out.inc(32)
        m.queue_wait.labels("echo").observe(0.004)
    after = bench._samples([a.render().decode(), b.render().decode()])
    d = bench.worker_delta(before, after)
    assert d["worker_tasks_ok"] == 2 and d["worker_tasks_failed"] == 2
    assert d["worker_bytes_in"] == 128 and d["worker_bytes_out"] == 64
    assert d["worker_queue_wait_ms_mean"] == pytest.approx(4.0)


def test_gamer_figures_are_the_gamers_quantiles_in_ms() -> None:
    m = NodeMetrics("gamer")
    for i in range(1, 101):
        m.observe_task("echo", "ok", i / 1000)
    m.observe_task("physics_step", "ok", 5.0)
    fig = bench.gamer_figures(SimpleNamespace(metrics=m))  # type: ignore[arg-type]
    assert fig["gamer_tasks_ok"] == 100
    assert fig["p50_ms"] == pytest.approx(50.5, abs=0.01)
    assert 98.0 <= fig["p99_ms"] <= 100.0
