"""The coordinator consults reputation: banned workers get no lease, trust weighs placement."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.control_wire import LeaseGrant, LeaseRefused, LeaseRequest
from mesh.errors import UnavailableError
from mesh.identity import Identity, peer_id_to_str
from mesh.vivaldi import Coord
from nodes.coordinator import Coordinator
from nodes.reputation import Reputation, ReputationConfig, ReputationTrust
from nodes.scheduler import (
    LeaseGranted,
    PlacementRefused,
    PlacementRequest,
    Scheduler,
    SchedulerConfig,
    SchedulerEffect,
)

HERE = Coord(0.0, 0.0, 0.001)
IDS = [Identity.from_seed(bytes([i]) * 32) for i in range(1, 7)]
W = [peer_id_to_str(i.peer_id_bytes) for i in IDS]
PID = [i.peer_id_bytes for i in IDS]


def req(rid: str, *, slots: int = 1) -> PlacementRequest:
    return PlacementRequest(rid, "gamer", "echo", slots, 100.0, gamer_coord=HERE)


def grants(effects: list[SchedulerEffect]) -> list[str]:
    return [e.lease.worker for e in effects if isinstance(e, LeaseGranted)]


def scheduler(rep: Reputation, **kw: object) -> Scheduler:
    return Scheduler(random.Random(0), SchedulerConfig(trust=ReputationTrust(rep), **kw))  # type: ignore[arg-type]


def test_banned_worker_gets_no_lease_until_the_ban_expires() -> None:
    rep = Reputation(ReputationConfig(ban_base_s=60.0))
    s = scheduler(rep)
    s.on_worker(W[0], {"echo": 4}, 0.0, coord=HERE)
    s.on_worker(W[1], {"echo": 4}, 0.0, coord=HERE, queue_depth=3)  # busier: worse score
    s.submit(req("a"), 0.0)
    assert grants(s.poll_effects()) == [W[0]]
    rep.ban(PID[0], 1.0)  # the best worker is banned from now on
    for i in range(3):
        s.submit(req(f"b{i}"), 2.0)
    assert grants(s.poll_effects()) == [W[1]] * 3
    s.on_worker(W[1], {"echo": 4}, 62.0, coord=HERE, queue_depth=3)
    s.submit(req("c"), 62.0)  # the ban (60 s from t=1) is over: back to the best
    assert grants(s.poll_effects()) == [W[0]]


def test_every_capable_worker_banned_is_refused_as_unavailable_at_once() -> None:
    rep = Reputation()
    s = scheduler(rep)
    s.on_worker(W[0], {"echo": 4}, 0.0)
    s.on_worker(W[1], {"echo": 4}, 0.0)
    rep.ban(PID[0], 0.0)
    rep.ban(PID[1], 0.0)
    s.submit(req("a"), 0.0)
    (eff,) = s.poll_effects()
    assert isinstance(eff, PlacementRefused) and isinstance(eff.to_error(), UnavailableError)
    assert "banned" in eff.reason


def test_trusted_worker_preferred_new_identity_gets_the_overflow() -> None:
    rep = Reputation()
    for _ in range(200):
        rep.record_verified(PID[0], 0.0)
    s = scheduler(rep)
    s.on_worker(W[1], {"echo": 2}, 0.0, coord=HERE)  # new key, trust 0, sorts first
    s.on_worker(W[0], {"echo": 2}, 0.0, coord=HERE)  # trusted
    for i in range(4):
        s.submit(req(f"r{i}"), 0.0)
    # equal predicted completion: the trusted worker wins while it has room, the newcomer
    # is not starved (it takes what the trusted one cannot)
    assert grants(s.poll_effects()) == [W[0], W[0], W[1], W[1]]


def test_without_a_trust_view_nothing_changes() -> None:
    a = Scheduler(random.Random(0))
    for w in W[:3]:
        a.on_worker(w, {"echo": 2}, 0.0, coord=HERE)
    for i in range(5):
        a.submit(req(f"r{i}"), 0.0)
    assert len(grants(a.poll_effects())) == 5


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("ban"), st.integers(0, 5)),
            st.tuples(st.just("trust"), st.integers(0, 5)),
            st.tuples(st.just("submit"), st.integers(1, 3)),
            st.tuples(st.just("tick"), st.integers(1, 120)),
        ),
        max_size=40,
    )
)
def test_no_lease_ever_goes_to_a_worker_banned_at_grant_time(ops: list[tuple[str, int]]) -> None:
    rep = Reputation(ReputationConfig(ban_base_s=30.0))
    s = scheduler(rep, lease_s=5.0)
    now = 0.0
    for i, w in enumerate(W):
        s.on_worker(w, {"echo": 3}, now, queue_depth=i % 3, coord=HERE)
    n = 0
    for op, x in ops:
        if op == "ban":
            rep.ban(PID[x], now)
        elif op == "trust":
            rep.record_verified(PID[x], now)
        elif op == "tick":
            now += x / 10
            s.on_tick(now)
        else:
            n += 1
            s.submit(req(f"q{n}", slots=x), now)
        for eff in s.poll_effects():
            if isinstance(eff, LeaseGranted):
                assert not rep.is_banned(PID[W.index(eff.lease.worker)], now)
            if isinstance(eff, PlacementRefused) and isinstance(eff.to_error(), UnavailableError):
                assert all(rep.is_banned(p, now) for p in PID)


def test_coordinator_refuses_banned_and_counts_verified_observations() -> None:
    rep = Reputation()
    trust = ReputationTrust(rep, observe_weight=1.0, observe_interval_s=5.0)
    c = Coordinator("eu", "me", 1, random.Random(0), SchedulerConfig(trust=trust))
    hb_caps = {"echo": 4}
    c.scheduler.on_worker(W[0], hb_caps, 0.0)
    c.scheduler.on_worker(W[1], hb_caps, 0.0)
    rep.ban(PID[0], 0.0)
    observed = ((W[1], "echo", 0.01), (W[1], "echo", 0.01), ("not-a-peer-id", "echo", 0.01))
    c.on_lease_request("g", LeaseRequest(1, "echo", 2, 1.0, 1, None, None, observed=observed), 0.0)
    out = [m for _, m in c.poll()]
    assert [m.worker for m in out if isinstance(m, LeaseGrant)] == [W[1]]
    # one observation counted (rate-capped per worker), none for the unparseable name
    assert rep.record(PID[1]) is not None and rep.record(PID[1]).verified == 1  # type: ignore[union-attr]
    c.on_lease_request("g", LeaseRequest(2, "echo", 1, 1.0, 1, None, None, observed=observed[:1]), 6.0)
    assert rep.record(PID[1]).verified == 2  # type: ignore[union-attr]
    rep.ban(PID[1], 7.0)
    c.on_lease_request("g", LeaseRequest(3, "echo", 1, 1.0, 1, None, None), 7.0)
    (refused,) = [m for _, m in c.poll() if isinstance(m, LeaseRefused)]
    assert refused.request_id == 3 and refused.code == UnavailableError.code


def test_trust_view_of_unknown_names() -> None:
    rep = Reputation()
    t = ReputationTrust(rep)
    assert t.trust("garbage", 0.0) == 0.0 and not t.is_banned("garbage", 0.0)
    t.observed("garbage", 0.0)
    assert len(rep) == 0
