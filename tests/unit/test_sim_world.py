"""The simulator's world: seeded, policy-independent, with Weibull churn and calibrated costs."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from simulations.scenario import WorkloadSpec, load_scenario
from simulations.workload import profile_for
from simulations.world import _sessions, build_world
from tasks.registry import default_registry

SCEN = Path(__file__).resolve().parents[2] / "simulations" / "scenarios" / "small_failover.toml"


def test_same_seed_same_world_other_seed_other_world() -> None:
    scn = load_scenario(SCEN)
    a, b, c = build_world(scn, 7), build_world(scn, 7), build_world(scn, 8)
    assert a.sessions == b.sessions and a.coords == b.coords and a.streams == b.streams
    assert a.sessions != c.sessions or a.coords != c.coords


def test_every_region_has_its_stewards_and_they_do_not_churn() -> None:
    w = build_world(load_scenario(SCEN), 1)
    for r, stewards in enumerate(w.stewards_by_region):
        assert len(stewards) == 3
        for p in stewards:
            assert w.peer_region[p] == r and w.sessions[p] == [(0.0, math.inf)] and not w.malicious[p]


def test_session_lengths_are_weibull_with_the_configured_median() -> None:
    scn = load_scenario(SCEN)
    scn = replace(scn, churn=replace(scn.churn, session_shape=0.5, session_median_s=600.0))
    rng = np.random.default_rng(3)
    lengths = [e - s for _ in range(600) for s, e in _sessions(scn, rng, 5e5)]
    assert abs(float(np.median(lengths)) / 600.0 - 1.0) < 0.1
    # heavy tail: mean well above the median for shape 0.5 (mean/median = 2/ln(2)^2 ~ 4.2)
    assert float(np.mean(lengths)) > 3.0 * float(np.median(lengths))


def test_costs_come_from_the_kinds_cost_function_without_a_bench_file() -> None:
    wl = WorkloadSpec("p", "physics_step", "small")
    prof = profile_for(wl, {})
    kind = default_registry().get("physics_step")
    assert prof.source == "cost()"
    assert (
        prof.cost_ms == kind.cost(kind.validate_params({"steps": 10}), prof.in_bytes - 0) or prof.cost_ms > 0
    )
    bench = profile_for(wl, {("physics_step", "small"): 12.5}, "b.json")
    assert bench.cost_ms == 12.5 and bench.source == "bench:b.json"


def test_the_shipped_kernel_benchmark_calibrates_global_costs() -> None:
    from simulations.workload import load_calibration

    root = Path(__file__).resolve().parents[2]
    cal = load_calibration(str(root / "docs" / "bench_kernels.json"))
    assert cal, "docs/bench_kernels.json no longer parses: costs would silently fall back"
    w = build_world(load_scenario(root / "simulations" / "scenarios" / "global.toml"), 1)
    assert all(p.source == "bench:bench_kernels.json" for p in w.profiles)
    frames = next(p for p, wl in zip(w.profiles, w.scenario.workloads, strict=True) if wl.name == "frames")
    assert frames.cost_ms == cal[("upscale", "medium/fast")]
