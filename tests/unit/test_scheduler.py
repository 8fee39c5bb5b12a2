"""Placement core: capability/capacity filtering, EDF, learned history, overflow, baselines."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.errors import RejectedError, UnavailableError, ValidationError
from mesh.vivaldi import Coord
from nodes.scheduler import (
    FixedWeighted,
    LeaseExpired,
    LeaseGranted,
    LeastLoaded,
    OverflowToRegion,
    PlacementPolicy,
    PlacementRefused,
    PlacementRequest,
    PowerOfTwo,
    PredictedCompletion,
    RandomPolicy,
    RegionSummary,
    RoundRobin,
    Scheduler,
    SchedulerConfig,
    SchedulerEffect,
    WorkerView,
    policy_by_name,
)

HERE = Coord(0.0, 0.0, 0.001)


def req(
    rid: str, kind: str = "upscale", *, slots: int = 1, deadline: float = 10.0, **kw: object
) -> PlacementRequest:
    return PlacementRequest(rid, "gamer", kind, slots, deadline, gamer_coord=HERE, **kw)  # type: ignore[arg-type]


def granted(effects: list[SchedulerEffect]) -> list[tuple[str, str]]:
    return [(e.lease.request_id, e.lease.worker) for e in effects if isinstance(e, LeaseGranted)]


def test_capability_filter_and_unavailable() -> None:
    s = Scheduler(random.Random(0))
    s.on_worker("w-phys", {"physics": 4}, 0.0, coord=HERE)
    s.on_worker("w-up", {"upscale": 4}, 0.0, coord=HERE)
    s.submit(req("a", "upscale"), 0.0)
    s.submit(req("b", "raytrace"), 0.0)
    effs = s.poll_effects()
    assert granted(effs) == [("a", "w-up")]
    (refused,) = [e for e in effs if isinstance(e, PlacementRefused)]
    assert refused.request_id == "b" and isinstance(refused.to_error(), UnavailableError)


def test_over_capacity_queues_then_rejects_with_typed_error() -> None:
    s = Scheduler(random.Random(0), SchedulerConfig(max_queue_wait_s=0.2))
    s.on_worker("w", {"upscale": 2}, 0.0)
    s.submit(req("a", slots=2), 0.0)
    s.submit(req("b"), 0.0)
    assert granted(s.poll_effects()) == [("a", "w")]
    assert s.queued() == 1 and s.next_deadline() == pytest.approx(0.2)
    s.on_tick(0.2)
    (refused,) = s.poll_effects()
    assert isinstance(refused, PlacementRefused) and refused.error_type is RejectedError


def test_release_and_expiry_free_slots_for_queued_work_in_edf_order() -> None:
    s = Scheduler(random.Random(0), SchedulerConfig(lease_s=1.0, max_queue_wait_s=5.0))
    s.on_worker("w", {"ai": 1}, 0.0)
    s.submit(req("first", "ai", deadline=9.0), 0.0)
    s.submit(req("late", "ai", deadline=8.0, priority=2), 0.0)
    s.submit(req("soon", "ai", deadline=7.0), 0.0)
    s.submit(req("urgent", "ai", deadline=9.5, priority=0), 0.0)
    (lease,) = [e.lease for e in s.poll_effects() if isinstance(e, LeaseGranted)]
    s.release(lease.lease_id, 0.1)
    assert granted(s.poll_effects()) == [("urgent", "w")]  # priority class beats deadline
    assert s.next_deadline() == pytest.approx(1.1)
    s.on_tick(1.1)
    effs = s.poll_effects()
    assert isinstance(effs[0], LeaseExpired)
    assert granted(effs) == [("soon", "w")]  # then EDF inside the class
    s.on_tick(2.1)
    assert granted(s.poll_effects()) == [("late", "w")]


def test_overflow_to_nearest_neighbour_with_room_and_ignores_stale_summaries() -> None:
    s = Scheduler(
        random.Random(0), SchedulerConfig(max_queue_wait_s=0.0, summary_ttl_s=3.0, lease_s=100.0), region="eu"
    )
    s.on_worker("w", {"upscale": 1}, 0.0)
    s.submit(req("a"), 0.0)
    s.on_region_summary(RegionSummary("us", "c-us", (("upscale", 5),), Coord(0.08, 0, 0)), 0.0)
    s.on_region_summary(RegionSummary("uk", "c-uk", (("upscale", 5),), Coord(0.01, 0, 0)), 0.0)
    s.on_region_summary(RegionSummary("asia", "c-as", (("physics", 9),), Coord(0.0, 0, 0)), 0.0)
    s.submit(req("b"), 0.5)
    s.on_tick(0.5)
    effs = s.poll_effects()
    over = [e for e in effs if isinstance(e, OverflowToRegion)]
    assert [(o.request.request_id, o.region, o.coordinator) for o in over] == [("b", "uk", "c-uk")]
    s.submit(req("c"), 10.0)  # every summary is stale now
    s.on_tick(10.0)
    assert [type(e) for e in s.poll_effects()] == [PlacementRefused]
    summary = s.region_summary("me", HERE)
    assert summary.region == "eu" and summary.free_for("upscale") in (0, 1)


def test_a_forwarded_request_is_refused_not_overflowed_again() -> None:
    # Both regions look free to each other by their summaries but have no room this gamer
    # can use (here: the only worker is taken): a request overflowed once must not bounce
    # back and forth between them until its deadline.
    s = Scheduler(random.Random(0), SchedulerConfig(max_queue_wait_s=0.25, lease_s=100.0), region="us")
    s.on_worker("w", {"upscale": 1}, 0.0)
    s.submit(req("hold", deadline=60.0), 0.0)
    s.on_region_summary(RegionSummary("eu", "c-eu", (("upscale", 5),), Coord(0.01, 0, 0)), 0.0)
    s.poll_effects()
    s.submit(req("fresh", deadline=60.0), 0.0)
    s.submit(req("fwd", deadline=60.0, forwarded=True), 0.0)
    s.on_tick(0.3)
    effs = s.poll_effects()
    assert [type(e).__name__ for e in effs] == ["OverflowToRegion", "PlacementRefused"]
    assert isinstance(effs[1], PlacementRefused) and effs[1].request_id == "fwd"
    assert effs[1].error_type is RejectedError and "already overflowed" in effs[1].reason


def test_learned_history_steers_away_from_slow_worker() -> None:
    s = Scheduler(random.Random(0), SchedulerConfig(lease_s=0.01))
    for w in ("fast", "slow"):
        s.on_worker(w, {"physics": 8}, 0.0, coord=HERE)
    for i in range(20):
        s.on_completion("slow", "physics", 0.050, 0.0 + i * 0.001)
        s.on_completion("fast", "physics", 0.010, 0.0 + i * 0.001)
    assert s.service_estimate("slow", "physics") > 4 * s.service_estimate("fast", "physics")
    for i in range(8):
        s.submit(req(f"r{i}", "physics"), 1.0)
    picks = [w for _, w in granted(s.poll_effects())]
    # The fast worker is preferred until its queue wait outweighs the slow one's service time.
    assert picks[:4] == ["fast"] * 4 and picks.count("fast") > picks.count("slow")
    # An unknown worker starts from the kind-wide EWMA, not from zero.
    s.on_worker("new", {"physics": 1}, 1.0)
    assert 0.01 < s.service_estimate("new", "physics") < 0.05
    s.on_completion("fast", "physics", float("nan"), 2.0)  # ignored
    assert s.service_estimate("fast", "physics") == pytest.approx(0.010)


def test_rtt_and_affinity() -> None:
    s = Scheduler(random.Random(0))
    s.on_worker("far", {"ai": 4}, 0.0, coord=Coord(0.1, 0.0, 0.001))
    s.on_worker("near", {"ai": 4}, 0.0, coord=Coord(0.005, 0.0, 0.001))
    s.submit(req("a", "ai"), 0.0)
    s.submit(req("b", "ai", affinity="far"), 0.0)  # 100 ms away: affinity bonus is not enough
    assert [w for _, w in granted(s.poll_effects())] == ["near", "near"]
    s.on_worker("twin", {"ai": 4}, 0.0, coord=Coord(0.005, 0.0, 0.001))
    s.submit(req("c", "ai", affinity="twin"), 0.0)
    assert granted(s.poll_effects()) == [("c", "twin")]


def test_worker_gone_and_back_keeps_slot_accounting() -> None:
    s = Scheduler(random.Random(0), SchedulerConfig(lease_s=5.0, max_queue_wait_s=0.0))
    s.on_worker("w", {"ai": 1}, 0.0)
    s.submit(req("a", "ai"), 0.0)
    s.on_worker_gone("w", 0.5)
    s.submit(req("b", "ai"), 0.5)
    s.on_worker("w", {"ai": 1}, 1.0)  # back, but its slot is still leased
    s.submit(req("c", "ai"), 1.0)
    effs = s.poll_effects()
    assert granted(effs) == [("a", "w")]
    refusals = [(e.request_id, e.error_type) for e in effs if isinstance(e, PlacementRefused)]
    assert refusals == [("b", UnavailableError), ("c", RejectedError)]


def test_bad_request_is_a_validation_error() -> None:
    s = Scheduler(random.Random(0))
    with pytest.raises(ValidationError):
        s.submit(req("x", slots=0), 0.0)
    with pytest.raises(ValidationError):
        policy_by_name("magic")


def _views(n: int) -> list[WorkerView]:
    return [
        WorkerView(
            f"w{i}",
            capacity=4,
            in_use=i % 4,
            queue_depth=0,
            load=0.0,
            service_s=0.01 * (1 + i % 3),
            rtt_s=0.001 * i,
            affinity=False,
        )
        for i in range(n)
    ]


def test_baseline_policies() -> None:
    rng = random.Random(1)
    r = req("a")
    views = _views(6)
    rr = RoundRobin()
    assert [rr.choose(r, views, rng).worker for _ in range(7)] == ["w0", "w1", "w2", "w3", "w4", "w5", "w0"]
    assert rr.choose(r, views[3:], rng).worker == "w3"  # resumes after the last pick
    assert LeastLoaded().choose(r, views, rng).worker == "w0"
    assert PredictedCompletion().choose(r, views, rng).worker == "w0"
    p2 = [PowerOfTwo().choose(r, views, random.Random(7)).worker for _ in range(3)]
    assert len(set(p2)) == 1  # same seed, same pick
    assert RandomPolicy().choose(r, views, random.Random(3)) in views
    assert FixedWeighted().choose(r, views, rng).worker == "w0"
    aff = [WorkerView(v.worker, 4, 0, 0, 0.0, 0.01, 0.001, v.worker == "w2") for v in views]
    assert FixedWeighted().choose(req("b", affinity="w2"), aff, rng).worker == "w2"
    for name in ("predicted", "random", "round_robin", "least_loaded", "power_of_two", "weighted"):
        assert policy_by_name(name).name == name


def test_large_pool_is_sampled_but_never_misses_room() -> None:
    s = Scheduler(random.Random(5), SchedulerConfig(max_candidates=8, lease_s=100.0))
    for i in range(200):
        s.on_worker(f"w{i:03d}", {"upscale": 1}, 0.0)
    for i in range(200):
        s.submit(req(f"r{i}"), 0.0)
    effs = s.poll_effects()
    assert len(granted(effs)) == 200 and len({w for _, w in granted(effs)}) == 200


POLICIES = ["predicted", "random", "round_robin", "least_loaded", "power_of_two", "weighted"]
KINDS = ["ai", "physics", "upscale"]

_op = st.one_of(
    st.tuples(st.just("worker"), st.integers(0, 7), st.dictionaries(st.sampled_from(KINDS), st.integers(0, 3), max_size=3)),
    st.tuples(st.just("gone"), st.integers(0, 7), st.just({})),
    st.tuples(st.just("submit"), st.integers(0, 3), st.dictionaries(st.sampled_from(KINDS), st.integers(1, 3), min_size=1, max_size=1)),
    st.tuples(st.just("submit"), st.integers(0, 3), st.dictionaries(st.sampled_from(KINDS), st.integers(1, 3), min_size=1, max_size=1)),
    st.tuples(st.just("release"), st.integers(0, 50), st.just({})),
    st.tuples(st.just("tick"), st.integers(1, 40), st.just({})),
    st.tuples(st.just("done"), st.integers(0, 7), st.dictionaries(st.sampled_from(KINDS), st.integers(1, 100), min_size=1, max_size=1)),
)  # fmt: skip


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(st.sampled_from(POLICIES), st.lists(_op, max_size=80), st.integers(0, 3))
def test_never_places_without_capability_or_capacity(
    policy: str, ops: list[tuple[str, int, dict[str, int]]], seed: int
) -> None:
    cfg = SchedulerConfig(lease_s=0.5, max_queue_wait_s=0.3, max_candidates=4)
    s = Scheduler(random.Random(seed), cfg, policy=policy_by_name(policy))
    caps: dict[str, dict[str, int]] = {}  # live workers' advertised capacity
    active: dict[int, tuple[str, str, int]] = {}  # lease id -> (worker, kind, slots)
    outcomes: dict[str, int] = {}
    submitted: list[str] = []
    now = 0.0

    def check(effects: list[SchedulerEffect]) -> None:
        for e in effects:
            if isinstance(e, LeaseGranted):
                L = e.lease
                assert L.worker in caps, "placed on a worker that is gone"
                assert caps[L.worker].get(L.kind, 0) > 0, "placed on a worker without the capability"
                used = sum(sl for (w, k, sl) in active.values() if w == L.worker and k == L.kind)
                assert used + L.slots <= caps[L.worker][L.kind], "placed beyond capacity"
                active[L.lease_id] = (L.worker, L.kind, L.slots)
                outcomes[L.request_id] = outcomes.get(L.request_id, 0) + 1
            elif isinstance(e, LeaseExpired):
                active.pop(e.lease_id)
            elif isinstance(e, PlacementRefused):
                outcomes[e.request_id] = outcomes.get(e.request_id, 0) + 1
            elif isinstance(e, OverflowToRegion):
                outcomes[e.request.request_id] = outcomes.get(e.request.request_id, 0) + 1

    for n, (op, i, d) in enumerate(ops):
        if op == "worker":
            caps[f"w{i}"] = {k: v for k, v in d.items() if v > 0}
            s.on_worker(f"w{i}", d, now, queue_depth=i % 3, coord=Coord(0.001 * i, 0, 0.001))
        elif op == "gone":
            caps.pop(f"w{i}", None)
            s.on_worker_gone(f"w{i}", now)
        elif op == "submit":
            ((kind, slots),) = d.items()
            rid = f"r{n}"
            submitted.append(rid)
            s.submit(PlacementRequest(rid, "g", kind, slots, now + 1.0, priority=i, gamer_coord=HERE), now)
        elif op == "release" and active:
            lid = sorted(active)[i % len(active)]
            s.release(lid, now)
            active.pop(lid)
        elif op == "tick":
            now += i * 0.01
            s.on_tick(now)
        elif op == "done":
            ((kind, ms),) = d.items()
            s.on_completion(f"w{i}", kind, ms / 1000, now)
        check(s.poll_effects())
    now += 10.0
    s.on_tick(now)
    check(s.poll_effects())
    assert all(outcomes.get(r) == 1 for r in submitted), "each request ends exactly once"
    assert s.queued() == 0 and s.leases() == []


def test_same_seed_same_effects() -> None:
    def run(seed: int) -> list[SchedulerEffect]:
        rng = random.Random(99)
        policy: PlacementPolicy = PowerOfTwo()
        s = Scheduler(random.Random(seed), policy=policy)
        out: list[SchedulerEffect] = []
        for i in range(30):
            s.on_worker(f"w{i}", {"ai": rng.randint(1, 3)}, 0.0, queue_depth=rng.randint(0, 5))
        for i in range(60):
            s.submit(req(f"r{i}", "ai"), i * 0.01)
            out += s.poll_effects()
        return out

    assert run(4) == run(4)


def test_free_slot_index_finds_the_last_free_workers_and_keeps_totals() -> None:
    s = Scheduler(random.Random(1), SchedulerConfig(max_candidates=8, lease_s=100.0))
    for i in range(500):
        s.on_worker(f"w{i:03d}", {"upscale": 2, "ai": 1}, 0.0)
    assert dict(s.region_summary("c", HERE).free_slots) == {"ai": 500, "upscale": 1000}
    for i in range(999):
        s.submit(req(f"r{i}"), 0.0)
    effs = s.poll_effects()
    assert len(granted(effs)) == 999
    assert dict(s.region_summary("c", HERE).free_slots) == {"ai": 500, "upscale": 1}
    # the one worker with room left is found although a sample of 8 almost never contains it
    s.submit(req("last"), 0.0)
    (last,) = granted(s.poll_effects())
    assert s.in_use(last[1], "upscale") == 2
    s.submit(req("none"), 0.0)
    assert not granted(s.poll_effects())
    s.on_worker_gone(last[1], 1.0)
    assert dict(s.region_summary("c", HERE).free_slots) == {"ai": 499}
    s.on_worker(last[1], {"upscale": 3}, 2.0)
    assert dict(s.region_summary("c", HERE).free_slots) == {"ai": 499, "upscale": 1}


def test_a_gamers_excluded_workers_are_never_leased_to_it() -> None:
    """A gamer lists the workers it banned itself; the coordinator must not lease those to
    it, and a request that excludes every capable worker is refused at once instead of
    blocking the queue's head for everybody else."""
    s = Scheduler(random.Random(0))
    for w in ("w1", "w2", "w3"):
        s.on_worker(w, {"upscale": 8}, 0.0, coord=HERE)
    for i in range(8):  # exactly w2's capacity: nothing waits
        s.submit(req(f"r{i}", exclude=("w1", "w3")), 0.0)
    effs = s.poll_effects()
    assert len(granted(effs)) == 8 and {w for _, w in granted(effs)} == {"w2"}
    s.submit(req("all-out", exclude=("w1", "w2", "w3")), 0.1)
    s.submit(req("other-gamer"), 0.1)
    effs = s.poll_effects()
    (refused,) = [e for e in effs if isinstance(e, PlacementRefused)]
    assert refused.request_id == "all-out" and isinstance(refused.to_error(), UnavailableError)
    assert "excluded" in refused.reason
    assert [r for r, _ in granted(effs)] == ["other-gamer"]
