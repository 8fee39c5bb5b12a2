"""What keeps the verification core cheap with many connected workers, and the shell hooks
that came with it: the cached eligible set (bans as events, ends as times), sampled
partners, latency-aware partners, the probe index, memoised parameters, ``idle_workers``
and ``lease_placer``; and the reputation's ban index behind them."""

from __future__ import annotations

import random
from dataclasses import replace

from nodes.reputation import PeerState, Reputation, ReputationConfig
from nodes.verification import (
    Probe,
    Reject,
    Role,
    SendTo,
    Task,
    VerificationConfig,
    VerificationCore,
    drain_inline,
)
from tests.unit.test_verification import ALWAYS_DUP, NO_CHECKS, right, sends, sim, task

MANY = [b"m%02d" % i for i in range(40)]


def core_with(config: VerificationConfig, workers: list[bytes], seed: int = 3) -> VerificationCore:
    core = VerificationCore(sim.mc_registry(), Reputation(), random.Random(seed), config)
    for w in workers:
        core.on_worker_up(w, 0.0)
    core.poll_effects()
    return core


def primaries(core: VerificationCore, n: int, now: float, first: int = 1) -> list[bytes]:
    out = []
    for i in range(first, first + n):
        core.on_submit(task(i, deadline=now + 10.0), now)
        out += [s.worker for s in sends(core.poll_effects()) if s.role is Role.PRIMARY]
    return out


def test_eligible_set_follows_bans_and_their_expiry_under_a_fake_clock() -> None:
    core = core_with(NO_CHECKS, MANY[:3])
    rep = core.reputation
    # A ban the core is not told about (the shell applied gossiped evidence to the shared
    # reputation) still takes effect at once: the cache follows ``ban_version``.
    rep.ban(MANY[0], 1.0, duration_s=5.0)
    assert MANY[0] not in primaries(core, 60, 1.0)
    core.ban(MANY[1], 2.0, "evidence:self_check")  # an hour: the doubling schedule
    assert set(primaries(core, 60, 2.0, first=100)) == {MANY[2]}
    # The local ban ends at 6.0: from then on the worker gets work again, the other not.
    assert MANY[0] not in primaries(core, 30, 5.999, first=200)
    assert set(primaries(core, 60, 6.0, first=300)) == {MANY[0], MANY[2]}
    # A worker that leaves and comes back is eligible again (the connected set changed).
    core.on_worker_down(MANY[2], 6.5)
    core.poll_effects()
    assert set(primaries(core, 30, 6.5, first=400)) == {MANY[0]}


def test_sampled_partners_are_never_banned_nor_a_worker_holding_a_copy() -> None:
    cfg = replace(ALWAYS_DUP, placement_sample=8)
    core = core_with(cfg, MANY)
    banned = set(MANY[::3])
    for w in sorted(banned):
        core.reputation.ban(w, 0.0, duration_s=100.0)
    partners: set[bytes] = set()
    for i in range(1, 301):
        core.on_submit(task(i), 1.0)
        effs = sends(core.poll_effects())
        (prim,) = [s for s in effs if s.role is Role.PRIMARY]
        (dup,) = [s for s in effs if s.role is Role.DUPLICATE]
        assert dup.worker != prim.worker and dup.worker not in banned and prim.worker not in banned
        partners.add(dup.worker)
        # Replacements too: fail the primary; the new copy avoids both holders and the banned.
        core.on_worker_down(prim.worker, 1.0)
        (rep,) = sends(core.poll_effects())
        assert rep.worker not in {prim.worker, dup.worker} and rep.worker not in banned
        core.on_worker_up(prim.worker, 1.0)
        core.on_cancel(task(i).task_id, 1.0)  # one task at a time: its copies are all above
        core.poll_effects()
    # The sample moves: partners come from the whole eligible pool, not one window.
    assert len(partners) >= len(MANY) - len(banned) - 2


def test_with_fewer_workers_than_the_sample_the_choice_is_unchanged() -> None:
    a = core_with(replace(ALWAYS_DUP, placement_sample=8), MANY[:5], seed=11)
    b = core_with(replace(ALWAYS_DUP, placement_sample=0), MANY[:5], seed=11)
    for core in (a, b):
        for i in range(1, 50):
            core.on_submit(task(i), 1.0)
    assert [(s.worker, s.role) for s in sends(a.poll_effects())] == [
        (s.worker, s.role) for s in sends(b.poll_effects())
    ]


def test_duplicates_go_to_workers_that_can_answer_in_time() -> None:
    core = core_with(ALWAYS_DUP, MANY[:10])
    far = set(MANY[:5])
    core.rtt_estimate = lambda w: 0.3 if w in far else 0.02
    for i in range(1, 101):
        core.on_submit(task(i, deadline=1.15), 1.0)  # 150 ms left: a 300 ms round trip is too long
        (dup,) = [s for s in sends(core.poll_effects()) if s.role is Role.DUPLICATE]
        assert dup.worker not in far
    # When only far workers are left, a duplicate is still sent (late beats unconfirmed).
    only_far = core_with(ALWAYS_DUP, MANY[:5])
    only_far.rtt_estimate = lambda w: 0.3
    only_far.on_submit(task(1, deadline=1.15), 1.0)
    assert [s.role for s in sends(only_far.poll_effects())] == [Role.PRIMARY, Role.DUPLICATE]
    # A worker's own measured latency for the kind overrides the shell's estimate.
    fast = core_with(ALWAYS_DUP, MANY[:2])
    fast.rtt_estimate = lambda w: 0.3
    fast.on_submit(task(1, deadline=20.0), 0.0)
    for s in sends(fast.poll_effects()):
        fast.on_result(s.wire_id, s.worker, right(b"input"), 0.01)
    drain_inline(fast, 0.01)
    fast.on_submit(task(2, deadline=1.15), 1.0)
    assert [s.role for s in sends(fast.poll_effects())] == [Role.PRIMARY, Role.DUPLICATE]


def test_idle_workers_are_those_with_nothing_in_flight_for_a_while() -> None:
    core = core_with(NO_CHECKS, MANY[:4])
    core.lease_placer = lambda kind, in_flight: MANY[0]
    core.on_submit(task(1, deadline=100.0), 1.0)
    (s,) = sends(core.poll_effects())
    assert s.worker == MANY[0]
    assert core.idle_workers(5.0, 10.0) == []  # nobody idle for 10 s yet
    assert core.idle_workers(11.0, 10.0) == MANY[1:4]  # MANY[0] has a copy in flight
    assert core.idle_workers(11.0, 10.0, keep={MANY[1]}) == MANY[2:4]
    core.on_result(s.wire_id, s.worker, right(b"input"), 12.0)
    drain_inline(core, 12.0)
    assert MANY[0] not in core.idle_workers(21.0, 10.0)  # answered at 12: idle from 22
    assert MANY[0] in core.idle_workers(22.0, 10.0)
    core.reputation.ban(MANY[1], 12.0, duration_s=60.0)
    assert core.idle_workers(12.0, 100.0) == [MANY[1]]  # banned, nothing in flight: at once
    for w in core.idle_workers(30.0, 10.0):
        core.on_worker_down(w, 30.0)
    assert core.workers() == [] and core.poll_effects() == []


def test_lease_placer_sees_only_eligible_workers_and_takes_precedence() -> None:
    core = core_with(NO_CHECKS, MANY[:3])
    core.reputation.ban(MANY[1], 0.0, duration_s=60.0)
    seen: list[tuple[int | None, int | None, int | None]] = []

    def lease_placer(kind: str, in_flight: object) -> bytes | None:
        assert callable(in_flight)
        seen.append((in_flight(MANY[0]), in_flight(MANY[1]), in_flight(b"stranger")))
        return MANY[0]

    core.placer = lambda kind, cands: MANY[2]  # ignored while lease_placer is set
    core.lease_placer = lease_placer
    core.on_submit(task(1), 1.0)
    core.on_submit(task(2), 1.0)
    assert [s.worker for s in sends(core.poll_effects())] == [MANY[0], MANY[0]]
    assert seen == [(0, None, None), (1, None, None)]
    # A banned choice is not taken: the core falls back to its own weighted pick.
    core.lease_placer = lambda kind, in_flight: MANY[1]
    core.on_submit(task(3), 1.0)
    (s,) = sends(core.poll_effects())
    assert s.worker != MANY[1]


def test_probes_draw_from_the_known_answers_still_held() -> None:
    cfg = replace(NO_CHECKS, probe_floor=1.0, probe_max=1.0, known_answers=40)
    core = core_with(cfg, MANY[:3])
    for i in range(100):
        data = b"k%03d" % i
        core.add_known_answer("mc", {}, data, right(data), 0.0, workers=frozenset({MANY[i % 3]}))
    assert core.known_answers() == 40 and core.known_kinds() == {"mc": 40}
    held = {b"k%03d" % i for i in range(60, 100)}
    probed = []
    for i in range(1, 201):
        core.on_submit(task(i, deadline=50.0), 1.0)
        for e in core.poll_effects():
            if isinstance(e, Probe):
                probed.append(e)
    assert probed and {p.data for p in probed} <= held
    assert len({p.data for p in probed}) > 20  # spread over the store
    # Preferably one the probed worker did not compute (up to a few draws each).
    assert sum(MANY[int(p.data[1:]) % 3] != p.worker for p in probed) > 0.9 * len(probed)


def test_memoised_parameters_keep_types_apart_and_copies_private() -> None:
    core = core_with(NO_CHECKS, MANY[:1])
    core.on_submit(Task(b"a" * 16, "mc", {"tag": "x"}, b"d", 10.0), 0.0)
    core.on_submit(Task(b"b" * 16, "mc", {"tag": 1}, b"d", 10.0), 0.0)  # not a string
    core.on_submit(Task(b"c" * 16, "mc", {"tag": ["x"]}, b"d", 10.0), 0.0)  # unhashable
    effs = core.poll_effects()
    assert [type(e) for e in effs] == [SendTo, Reject, Reject]
    first, _ = core._normalise("mc", {"tag": "x"}, 1)
    first["tag"] = "changed"
    assert core._normalise("mc", {"tag": "x"}, 1)[0] == {"tag": "x"}


def test_reputation_ban_index_and_standing() -> None:
    rep = Reputation(ReputationConfig(max_peers=3))
    v0 = rep.ban_version
    rep.record_verified(b"a", 0.0)
    assert rep.ban_version == v0 and rep.ban_end(b"a") == float("-inf")
    assert rep.standing(b"a", 1.0) == rep.trust(b"a", 1.0) > 0
    assert rep.standing(b"new", 1.0) == rep.trust(b"new", 1.0)
    until = rep.ban(b"a", 1.0, duration_s=10.0)
    assert rep.ban_version == v0 + 1 and rep.ban_end(b"a") == until == 11.0
    assert rep.standing(b"a", 5.0) is None and rep.standing(b"a", 11.0) == rep.trust(b"a", 11.0)
    rep.ban(b"a", 2.0, duration_s=1.0)  # shorter than the ban in force: no change
    assert rep.ban_version == v0 + 1
    rep.ban(b"b", 1.0)
    assert rep.banned(5.0) == [(b"a", 11.0), (b"b", 3601.0)] and rep.next_deadline(5.0) == 11.0
    assert rep.banned(20.0) == [(b"b", 3601.0)]
    v = rep.ban_version
    rep.restore([PeerState(b"c", 0.5, 0.0, ban_left_s=30.0)], 5.0)
    assert rep.ban_version == v + 1 and rep.ban_end(b"c") == 35.0
    # The table is full (3 peers): a fourth evicts the least recently touched unbanned
    # record; once every ban has ended, an evicted ban leaves the index too.
    rep.record_verified(b"d", 4000.0)
    assert b"a" not in {p for p, _ in rep.banned(0.0)} and rep.ban_end(b"a") == float("-inf")
    assert rep.ban_version > v + 1
