"""The simulator's gamers drive the real verification and reputation cores: cheaters are
caught and banned by them, and the figures reach the summary."""

from __future__ import annotations

import gc
from dataclasses import replace

from nodes.reputation import Proof, SignedResult, make_evidence
from nodes.verification import RunCheck
from simulations.report import summarise
from simulations.scenario import parse_scenario
from simulations.sim import Simulation
from simulations.trust import check_verdict, evidence_proof, right_output, self_check_passes, wrong_output
from simulations.world import build_world

ONE_REGION = {
    "name": "trust",
    "duration_s": 40.0,
    "gamers_per_100_peers": 15,
    "policies": ["predicted"],
    "network": {"regions": ["eu"], "rtt_ms": [[0]], "intra_rtt_ms": [10], "loss": 0.0},
    "peers": {"count": 40, "malicious_fraction": 0.3, "stewards_per_region": 3},
    "churn": {"enabled": False},
    "output": {"interval_s": 5.0, "warmup_s": 2.0},
    "verification": {"self_check_detect": 0.5},
    "workloads": [
        {"name": "physics", "kind": "physics_step", "rate_hz": [30], "deadline_ms": 400, "simple": True},
        {"name": "ai", "kind": "pathfind", "rate_hz": [10], "deadline_ms": 400},
    ],
}


def _run(doc: dict[str, object], seed: int = 1) -> tuple[Simulation, dict[str, object]]:
    scn = parse_scenario(doc)
    world = build_world(scn, seed)
    sim = Simulation(world, "predicted")
    res = sim.run()
    return sim, summarise(world, res)


def test_token_checks_follow_what_run_check_would_say() -> None:
    data = b"\0" * 8
    good, bad = right_output(data), wrong_output(data, b"w1", collude=False)
    assert self_check_passes(good, 1.0) and not self_check_passes(bad, 1.0) and self_check_passes(bad, 0.0)
    assert wrong_output(data, b"w1", True) == wrong_output(data, b"w2", True) != bad
    assert check_verdict(RunCheck(1, "echo", {}, data, good, None, recompute=True), 0.0)
    assert not check_verdict(RunCheck(1, "echo", {}, data, bad, None, recompute=True), 0.0)
    assert check_verdict(RunCheck(1, "echo", {}, data, good, good), 0.0)
    assert not check_verdict(RunCheck(1, "echo", {}, data, bad, good), 0.0)


def test_evidence_proof_mirrors_verify_evidence_order() -> None:
    data = b"\1" * 8
    bad_out = wrong_output(data, b"w1", False)
    bad = SignedResult(b"\0" * 16, b"w1", b"\2" * 32, 0, b"", bad_out)
    ref = SignedResult(b"\3" * 16, b"w2", b"\4" * 32, 0, b"", right_output(data))
    ev = make_evidence(kind="echo", params={}, data=data, bad=bad, reason="mismatch", reference=ref)
    assert evidence_proof(ev, cost=1.0, detect=1.0) is Proof.SELF_CHECK
    assert evidence_proof(ev, cost=1.0, detect=0.0) is Proof.RECOMPUTED
    assert evidence_proof(ev, cost=1e9, detect=0.0) is Proof.CONFLICT
    right = replace(bad, output=right_output(data))
    assert evidence_proof(replace(ev, bad=right, reference=None), cost=1.0, detect=0.0) is None


def test_cheaters_are_caught_and_banned_by_the_real_cores() -> None:
    sim, s = _run(ONE_REGION)
    v = s["verification"]
    assert isinstance(v, dict)
    assert v["malicious_workers"] > 0
    # caught by the gamers' VerificationCore, banned in their Reputation
    assert v["malicious_banned"] >= 1 and v["verify_bans"] >= 1
    assert sum(g.core.stats.bans for g in sim.gamers) == v["verify_bans"]
    banned = {p for g in sim.gamers for p, _ in g.rep.banned(sim.loop.now)}
    assert any(sim.w.malicious[sim.wb_index[p]] for p in banned)
    assert v["honest_banned_on_proof"] == 0
    # nobody honest is banned with evidence (only cheaters sign wrong results)
    assert all(
        sim.w.malicious[sim.wb_index[ev.accused]]
        for g in sim.gamers
        for p, _ in g.rep.banned(sim.loop.now)
        for ev in g.rep.evidence_for(p)
    )
    # the extra verification work is measured: duplicates and probes ran on workers
    assert v["verify_sends_duplicate"] > 0 and v["verify_probes"] > 0
    assert v["busy_s_duplicate"] > 0 and v["extra_work_share"] > 0
    # non-colluding cheaters never get a wrong result accepted when every result is duplicated
    outcomes = s["outcomes"]
    assert isinstance(outcomes, dict) and outcomes["ok"] > 500


def test_verification_off_still_places_through_the_core_and_lets_forgeries_through() -> None:
    doc = dict(ONE_REGION, verification={"policy": "off"})
    _, s = _run(doc)
    v = s["verification"]
    outcomes = s["outcomes"]
    assert isinstance(v, dict) and isinstance(outcomes, dict)
    assert v["verify_sends_primary"] > 0 and v.get("verify_sends_duplicate", 0) == 0
    assert v.get("verify_bans", 0) == 0 and outcomes["wrong"] > 0


def test_without_a_core_every_result_is_accepted_as_is() -> None:
    sim, s = _run(dict(ONE_REGION, verification={"policy": "none"}))
    v = s["verification"]
    outcomes = s["outcomes"]
    assert isinstance(v, dict) and isinstance(outcomes, dict)
    assert all(g.core.stats.submitted == 0 for g in sim.gamers)
    assert v["busy_s_primary"] > 0 and v.get("verify_bans", 0) == 0
    assert outcomes["ok"] > 500 and outcomes["wrong"] > 0


def test_scenario_rejects_unknown_verification_config_keys() -> None:
    import pytest

    from mesh.errors import ConfigError

    with pytest.raises(ConfigError):
        parse_scenario(dict(ONE_REGION, verification={"config": {"no_such_knob": 1}}))
    scn = parse_scenario(dict(ONE_REGION, verification={"config": {"dup_floor": 0.5}}))
    assert dict(scn.verification.config) == {"dup_floor": 0.5}


def test_a_periodic_stream_keeps_the_sdks_lease_shape() -> None:
    """``workers = 2``: two leased workers per stream, each task to the one with the fewest
    copies in flight per leased slot (ties: the first), as ``nodes.mesh_client``'s placer."""
    import random

    import pytest

    from mesh.errors import ConfigError
    from nodes.reputation import Reputation
    from nodes.verification import VerificationCore
    from simulations.sim import _Gamer, _Lane
    from simulations.trust import sim_registry

    physics = dict(ONE_REGION["workloads"][0], workers=2, slots=2)  # type: ignore[index]
    doc = dict(ONE_REGION, workloads=[physics], peers=dict(ONE_REGION["peers"], malicious_fraction=0.0))  # type: ignore[call-overload]
    sim, s = _run(doc)
    outcomes = s["outcomes"]
    assert isinstance(outcomes, dict) and outcomes["ok"] > 500
    for i, st in enumerate(sim.streams):
        assert len(st.lanes) == 2 and all(lane.worker >= 0 for lane in st.lanes)  # two leases held
        # ... and its tasks were spread over them (the coordinator may grant one worker twice,
        # as it may the SDK: nothing excludes a worker the gamer already leases).
        assert len({w for s_, w in zip(sim.t_stream, sim.t_worker, strict=True) if s_ == i}) >= 2

    core = VerificationCore(sim_registry([("physics_step", 1.0)]), Reputation(), random.Random(1))
    g = _Gamer(0, 0, 0, core, Reputation())
    a, b = _Lane(0, 0), _Lane(0, 1)
    g.spread = [(a, b"a", 2), (b, b"b", 2)]
    assert g.place("physics_step", {b"a": 1, b"b": 0}.get) == b"b" and g.spread_pick is b
    assert not g.spread_full
    assert g.place("physics_step", {b"a": 0, b"b": 0}.get) == b"a" and g.spread_pick is a
    assert g.place("physics_step", {b"a": 3, b"b": 4}.get) == b"a"  # over capacity: least over
    assert g.spread_full  # ... and the stream asks for one more lease (up to max_workers)
    assert g.place("physics_step", {b"b": 5}.get) == b"b"  # a is not eligible (banned, gone)
    assert g.place("physics_step", {}.get) is None  # none: the core picks a connected worker

    with pytest.raises(ConfigError, match="periodic"):
        parse_scenario(dict(ONE_REGION, workloads=[dict(physics, lanes=3)]))
    with pytest.raises(ConfigError, match="max_workers"):
        parse_scenario(dict(ONE_REGION, workloads=[dict(physics, max_workers=1)]))


def test_a_copy_cancelled_while_it_waits_for_a_slot_never_runs() -> None:
    """``nodes.worker`` drops a task still waiting for a slot when its gamer cancels it; the
    simulated worker does too: no answer comes back, and the slot is given back."""
    doc = dict(ONE_REGION, duration_s=3.0, peers=dict(ONE_REGION["peers"], malicious_fraction=0.0))  # type: ignore[call-overload]
    sim = Simulation(build_world(parse_scenario(doc), 1), "predicted")
    sim.run()
    now = sim.loop.now
    g, st = sim.gamers[0], sim.streams[0]
    w = next(p for p in range(sim.n_peers) if sim.peers[p].online and p != g.node)
    peer = sim.peers[w]
    peer.slot_free[:] = [now + 5.0] * len(peer.slot_free)  # every slot busy for 5 s
    late = g.core.stats.late  # a copy the core does not know counts as late when it answers
    gone, kept = b"c" * 16, b"k" * 16
    sim._send_copy(g, st, None, sim.wb[w], gone, b"d" * 8, "duplicate")
    sim._send_copy(g, st, None, sim.wb[w], kept, b"e" * 8, "duplicate")
    assert set(sim.waiting) == {gone, kept}
    sim._cancel_sent(g, gone)
    sim.loop.run_until(now + 1.0)  # the cancel arrived long before the slot frees
    assert sim.cancelled == {gone} and sim.counters["cancelled_waiting"] == 1
    assert sorted(peer.slot_free)[:-1] == [now + 5.0] * (len(peer.slot_free) - 1)  # its slot is back
    sim.loop.run_until(now + 30.0)
    assert g.core.stats.late == late + 1  # only the copy still wanted was answered
    assert not sim.waiting and not sim.cancelled
    # A copy that started at once cannot be stopped: nothing waits, nothing is cancelled.
    peer.slot_free[:] = [0.0] * len(peer.slot_free)
    sim._send_copy(g, st, None, sim.wb[w], b"r" * 16, b"f" * 8, "duplicate")
    assert not sim.waiting
    sim._cancel_sent(g, b"r" * 16)
    sim.loop.run_until(now + 60.0)
    assert g.core.stats.late == late + 2


def test_a_lease_grown_under_load_is_let_go_once_lost_unless_still_wanted() -> None:
    """``nodes.mesh_client`` keeps ``workers_per_kind`` leases whatever the demand, adds one
    when every leased worker is full, and does not ask again for a lost one beyond the base
    unless a dispatch found them all full since; the simulated gamer does the same."""
    physics = dict(ONE_REGION["workloads"][0], workers=2, max_workers=4, slots=2)  # type: ignore[index]
    doc = dict(
        ONE_REGION,
        duration_s=3.0,
        workloads=[physics],
        peers=dict(ONE_REGION["peers"], malicious_fraction=0.0),
    )  # type: ignore[call-overload]
    sim = Simulation(build_world(parse_scenario(doc), 1), "predicted")
    sim.run()
    st = sim.streams[0]
    assert st.base == 2 and len(st.lanes) == 4
    shrunk = sim.counters.get("lease_shrunk", 0)
    st.active, st.wanted = 3, False
    grown = st.lanes[2]
    grown.worker, grown.req_id = -1, None  # its lease was lost
    sim._maybe_request(grown)
    assert st.active == 2 and grown.req_id is None and st.lanes.index(grown) >= st.active
    assert sim.counters["lease_shrunk"] == shrunk + 1
    st.active, st.wanted = 3, True  # ... unless every leased worker was full meanwhile
    grown = st.lanes[2]
    grown.worker, grown.req_id = -1, None
    sim._maybe_request(grown)
    assert st.active == 3 and grown.req_id is not None and not st.wanted
    base = st.lanes[0]
    base.worker, base.req_id = -1, None  # a base lease is always asked for again
    sim._maybe_request(base)
    assert base.req_id is not None and st.active == 3


def test_a_run_leaves_no_cyclic_garbage_and_nothing_frozen() -> None:
    """The simulator freezes what is alive for the cyclic collector (``Simulation.run``),
    which is only sound while finished work is freed by reference counting: with the
    collector off, a run with cheaters, bans, ties and probes leaves no cycle behind."""
    gc.collect()
    gc.disable()
    try:
        _sim, s = _run(ONE_REGION)  # held: only garbage counts below
        outcomes = s["outcomes"]
        assert isinstance(outcomes, dict) and outcomes["ok"] > 500
        assert gc.get_freeze_count() == 0  # the run unfroze what it froze
        assert gc.collect() == 0
    finally:
        gc.enable()
