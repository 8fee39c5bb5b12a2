"""The simulator's event loop, scenario parsing and network model (fast, pure)."""

from __future__ import annotations

import random
import tomllib
from pathlib import Path

import pytest

from mesh.errors import ConfigError
from simulations.engine import EventLoop
from simulations.network import NetworkModel
from simulations.scenario import ALL_POLICIES, load_scenario, parse_scenario

SCEN = Path(__file__).resolve().parents[2] / "simulations" / "scenarios"


def test_events_run_in_time_then_schedule_order() -> None:
    loop = EventLoop()
    seen: list[str] = []
    loop.schedule(2.0, seen.append, "c")
    loop.schedule(1.0, seen.append, "a")
    loop.schedule(1.0, seen.append, "b")

    def nested() -> None:
        seen.append("n")
        loop.schedule(0.5, seen.append, "past-clamped")  # before now: runs at now, after us

    loop.schedule(1.5, nested)
    loop.run_until(10.0)
    assert seen == ["a", "b", "n", "past-clamped", "c"]
    assert loop.now == 10.0 and loop.events_run == 5


def test_run_until_stops_at_horizon() -> None:
    loop = EventLoop()
    seen: list[float] = []
    for t in (1.0, 2.0, 3.0):
        loop.schedule(t, seen.append, t)
    loop.run_until(2.0)
    assert seen == [1.0, 2.0] and len(loop) == 1


def test_shipped_scenarios_parse_and_name_all_policies() -> None:
    files = sorted(SCEN.glob("*.toml"))
    assert len(files) >= 3
    for f in files:
        scn = load_scenario(f)
        # every comparison scenario runs all policies; the fidelity ones only the default
        assert scn.policies == (("predicted",) if scn.name.startswith("fidelity") else ALL_POLICIES)
        assert len(scn.network.rtt_ms) == len(scn.network.regions)


def test_unknown_key_is_a_config_error() -> None:
    doc = tomllib.loads((SCEN / "small_failover.toml").read_text())
    doc["peers"]["cont"] = 3
    with pytest.raises(ConfigError, match="cont"):
        parse_scenario(doc)
    doc = tomllib.loads((SCEN / "small_failover.toml").read_text())
    doc["network"]["rtt_ms"] = [[0, 70], [80, 0]]
    with pytest.raises(ConfigError, match="symmetric"):
        parse_scenario(doc)


def _net(loss: float = 0.0) -> NetworkModel:
    scn = load_scenario(SCEN / "small_failover.toml")
    from dataclasses import replace

    spec = replace(scn.network, loss=loss, jitter_ms=0.0)
    # endpoints: 0, 1 in region 0 (us-east); 2 in region 1 (eu-west)
    return NetworkModel(spec, [0, 0, 1], [0.004, 0.006, 0.002], [1e6, 1e6, 1e6], random.Random(1))


def test_rtt_is_base_plus_access_and_symmetric() -> None:
    net = _net()
    assert net.rtt(0, 1) == pytest.approx(0.010 + 0.010)
    assert net.rtt(0, 2) == pytest.approx(0.075 + 0.006)
    assert net.rtt(2, 0) == net.rtt(0, 2)
    assert net.one_way(0, 2) == pytest.approx(net.rtt(0, 2) / 2)


def test_uplink_serialises_payloads_fifo() -> None:
    net = _net()
    a = net.data_delay(0, 1, 100_000, 0.0)  # 0.1 s on a 1 MB/s uplink
    b = net.data_delay(0, 1, 100_000, 0.0)  # queued behind the first
    assert a is not None and b is not None
    assert a == pytest.approx(0.1 + 0.010)
    assert b == pytest.approx(0.2 + 0.010)


def test_partition_cuts_both_ways_and_heals() -> None:
    net = _net()
    cut = net.add_cut(frozenset({1}), frozenset())
    assert net.blocked(0, 2) and net.blocked(2, 0) and not net.blocked(0, 1)
    assert net.control_delay(0, 2) is None and net.data_delay(2, 0, 10, 0.0) is None
    net.remove_cut(cut)
    assert not net.blocked(0, 2)
    iso = net.add_cut(frozenset(), frozenset({0}))
    assert net.blocked(0, 1) and not net.blocked(1, 2)
    net.remove_cut(iso)


def test_control_loss_rate_matches_spec() -> None:
    net = _net(loss=0.2)
    dropped = sum(net.control_delay(0, 1) is None for _ in range(5000))
    assert 0.17 < dropped / 5000 < 0.23
