"""The verification policy core: paths, deadlines, determinism, and the Monte-Carlo targets."""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import math
import random
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh import wire
from mesh.errors import (
    RejectedError,
    TaskTimeoutError,
    UnavailableError,
    ValidationError,
    VerificationError,
)
from nodes.reputation import Reputation
from nodes.verification import (
    Cancel,
    Effect,
    Penalise,
    Probe,
    Reject,
    Resolve,
    Role,
    RunCheck,
    SendTo,
    Task,
    VerificationConfig,
    VerificationCore,
    VerificationIncompleteError,
    VerificationTimeoutError,
    _Answer,
    _Copy,
    _Task,
    drain_inline,
)
from tasks.registry import Registry

_SIM_PATH = Path(__file__).resolve().parents[2] / "scripts" / "adversarial_sim.py"
_spec = importlib.util.spec_from_file_location("adversarial_sim", _SIM_PATH)
assert _spec is not None and _spec.loader is not None
sim = importlib.util.module_from_spec(_spec)
sys.modules["adversarial_sim"] = sim
_spec.loader.exec_module(sim)

W = [b"w%d" % i for i in range(5)]
#: Self-checks only; no hedging either (its own tests turn it on).
NO_CHECKS = VerificationConfig(
    dup_floor=0.0, dup_max=0.0, dup_until_verified=0, probe_floor=0.0, probe_max=0.0, hedge=False
)
HEDGING = replace(NO_CHECKS, hedge=True)
#: Disputes go to a tie-break vote (no local re-run): the path for kinds too costly to re-run.
ALWAYS_DUP = VerificationConfig(
    dup_floor=1.0, probe_floor=0.0, probe_max=0.0, recompute_max_cost=-1.0, hedge=False
)
RECOMPUTE = VerificationConfig(dup_floor=1.0, probe_floor=0.0, probe_max=0.0)


def right(data: bytes) -> bytes:
    return b"ok" + hashlib.sha256(data).digest()


def wrong(data: bytes) -> bytes:
    return b"ok" + hashlib.sha256(data + b"x").digest()


def make(config: VerificationConfig, workers: int = 3, seed: int = 7) -> VerificationCore:
    core = VerificationCore(sim.mc_registry(), Reputation(), random.Random(seed), config)
    for w in W[:workers]:
        core.on_worker_up(w, 0.0)
    return core


def task(n: int = 1, deadline: float = 10.0, data: bytes = b"input") -> Task:
    return Task(n.to_bytes(16, "big"), "mc", {}, data, deadline)


def sends(effs: list[Effect]) -> list[SendTo]:
    return [e for e in effs if isinstance(e, SendTo)]


def of(effs: list[Effect], cls: type) -> list[Any]:
    return [e for e in effs if isinstance(e, cls)]


def test_single_result_is_self_checked_then_resolved() -> None:
    core = make(NO_CHECKS)
    core.on_submit(task(), 0.0)
    effs = core.poll_effects()
    (send,) = sends(effs)
    assert send.role is Role.PRIMARY and send.data == b"input" and send.deadline == 10.0
    core.on_result(send.wire_id, send.worker, right(b"input"), 0.1)
    (check,) = core.poll_effects()
    assert isinstance(check, RunCheck) and check.reference is None
    core.on_check(check.check_id, True, 0.1)
    (res,) = core.poll_effects()
    assert res == Resolve(task().task_id, right(b"input"), send.worker)
    core.on_result(send.wire_id, send.worker, right(b"input"), 0.2)  # duplicate delivery
    assert core.poll_effects() == [] and core.stats.late == 1 and core.pending() == 0


def test_a_digest_the_shell_already_has_is_not_computed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    core = make(NO_CHECKS)
    core.on_submit(task(), 0.0)
    (send,) = sends(core.poll_effects())
    out = right(b"input")
    hashed: list[bytes] = []
    real = wire.digest

    def counting(b: bytes) -> bytes:
        hashed.append(b)
        return real(b)

    monkeypatch.setattr(wire, "digest", counting)  # the module object nodes.verification uses
    core.on_result(send.wire_id, send.worker, out, 0.1, digest=real(out))
    assert out not in hashed  # the shell's digest was used
    (check,) = of(core.poll_effects(), RunCheck)
    core.on_check(check.check_id, True, 0.1)
    (res,) = core.poll_effects()
    assert res == Resolve(task().task_id, out, send.worker)
    # without one, the core hashes the output itself
    core.on_submit(task(2), 0.2)
    (send,) = sends(core.poll_effects())
    core.on_result(send.wire_id, send.worker, out, 0.3)
    assert out in hashed


def test_failed_self_check_bans_with_evidence_and_retries_elsewhere() -> None:
    core = make(NO_CHECKS)
    core.on_submit(task(), 0.0)
    (send,) = sends(core.poll_effects())
    core.on_result(send.wire_id, send.worker, b"garbage", 0.1, ts_ms=5, signature=b"s" * 64)
    effs = drain_inline(core, 0.1)
    (pen,) = of(effs, Penalise)
    assert pen.worker == send.worker and pen.banned and pen.reason == "self_check"
    assert pen.evidence is not None and pen.evidence.bad.output == b"garbage"
    assert type(pen.evidence).from_wire(pen.evidence.to_wire()) == pen.evidence
    assert core.reputation.is_banned(send.worker, 0.1)
    (retry,) = sends(effs)
    assert retry.worker != send.worker and retry.wire_id != send.wire_id
    core.on_result(retry.wire_id, retry.worker, right(b"input"), 0.2)
    (res,) = drain_inline(core, 0.2)
    assert isinstance(res, Resolve) and res.output == right(b"input")


def test_duplicates_agree_and_become_a_known_answer() -> None:
    core = make(ALWAYS_DUP)
    for w in W[:3]:
        for _ in range(60):
            core.reputation.record_verified(w, 0.0)
    core.on_submit(task(), 0.0)
    a, b = sends(core.poll_effects())
    assert {a.role, b.role} == {Role.PRIMARY, Role.DUPLICATE} and a.worker != b.worker
    assert a.wire_id != b.wire_id  # fresh wire ids: copies cannot be matched by id
    core.on_result(a.wire_id, a.worker, right(b"input"), 0.1)
    assert of(drain_inline(core, 0.1), Resolve) == []  # waits for the second vote
    core.on_result(b.wire_id, b.worker, right(b"input"), 0.2)
    (res,) = drain_inline(core, 0.2)
    assert isinstance(res, Resolve)
    assert core.known_answers() == 1


def test_disagreement_goes_to_a_tiebreak_and_the_minority_is_banned() -> None:
    core = make(ALWAYS_DUP, workers=4)
    for w in W[:4]:
        for _ in range(60):
            core.reputation.record_verified(w, 0.0)
    core.on_submit(task(), 0.0)
    a, b = sends(core.poll_effects())
    core.on_result(a.wire_id, a.worker, wrong(b"input"), 0.1)
    core.on_result(b.wire_id, b.worker, right(b"input"), 0.1)
    effs = drain_inline(core, 0.1)
    (tie,) = sends(effs)
    assert tie.role is Role.TIEBREAK and tie.worker not in (a.worker, b.worker)
    core.on_result(tie.wire_id, tie.worker, right(b"input"), 0.2)
    effs = drain_inline(core, 0.2)
    (res,) = of(effs, Resolve)
    assert res.output == right(b"input")
    (pen,) = of(effs, Penalise)
    assert pen.worker == a.worker and pen.banned and pen.reason == "mismatch"
    assert pen.evidence is not None and pen.evidence.reference is not None
    assert pen.evidence.reference.worker in (b.worker, tie.worker)


def test_untrusted_majority_does_not_ban_the_minority() -> None:
    core = make(ALWAYS_DUP, workers=4)  # everyone at trust 0
    core.on_submit(task(), 0.0)
    a, b = sends(core.poll_effects())
    core.on_result(a.wire_id, a.worker, wrong(b"input"), 0.1)
    core.on_result(b.wire_id, b.worker, right(b"input"), 0.1)
    (tie,) = sends(drain_inline(core, 0.1))
    core.on_result(tie.wire_id, tie.worker, wrong(b"input"), 0.2)
    effs = drain_inline(core, 0.2)
    assert of(effs, Penalise) == [] and core.stats.mismatches_unproven == 1
    assert of(effs, Resolve)[0].output == wrong(b"input")  # the known weakness of voting


def test_deadline_with_unconfirmed_result_is_a_typed_verification_timeout() -> None:
    core = make(ALWAYS_DUP)
    core.on_submit(task(deadline=1.0), 0.0)
    a, b = sends(core.poll_effects())
    core.on_result(a.wire_id, a.worker, right(b"input"), 0.1)
    drain_inline(core, 0.1)
    assert core.next_deadline() == 1.0
    core.on_tick(1.0)
    effs = core.poll_effects()
    (rej,) = of(effs, Reject)
    assert isinstance(rej.error, VerificationTimeoutError) and isinstance(rej.error, TaskTimeoutError)
    assert [c.wire_id for c in of(effs, Cancel)] == [b.wire_id]
    core.on_result(b.wire_id, b.worker, right(b"input"), 1.1)
    assert drain_inline(core, 1.1) == [] and core.stats.late == 1


def test_deadline_without_any_answer_is_a_plain_timeout() -> None:
    core = make(NO_CHECKS)
    core.on_submit(task(deadline=1.0), 0.0)
    core.poll_effects()
    core.on_tick(0.5)
    assert core.poll_effects() == []
    core.on_tick(1.0)
    (rej, _cancel) = core.poll_effects()
    assert isinstance(rej, Reject) and type(rej.error) is TaskTimeoutError
    assert core.next_deadline() is None


def test_failures_are_retried_then_reported() -> None:
    core = make(NO_CHECKS, workers=2)
    core.on_submit(task(), 0.0)
    (a,) = sends(core.poll_effects())
    core.on_failure(a.wire_id, a.worker, RejectedError("busy"), 0.1)
    (b,) = sends(core.poll_effects())
    assert b.worker != a.worker
    core.on_failure(b.wire_id, b.worker, RejectedError("busy"), 0.2)
    (rej,) = core.poll_effects()  # no third worker: the last error is reported
    assert isinstance(rej, Reject) and isinstance(rej.error, RejectedError)


def test_one_worker_claiming_invalid_input_is_not_believed_two_are() -> None:
    core = make(NO_CHECKS, workers=3)
    core.on_submit(task(), 0.0)
    (a,) = sends(core.poll_effects())
    core.on_failure(a.wire_id, a.worker, ValidationError("bad input"), 0.1)
    (b,) = sends(core.poll_effects())
    core.on_failure(b.wire_id, b.worker, ValidationError("bad input"), 0.2)
    effs = core.poll_effects()
    assert sends(effs) == [] and isinstance(of(effs, Reject)[0].error, ValidationError)


def test_duplicate_without_partner_falls_back_and_lost_partner_is_unconfirmed() -> None:
    core = make(ALWAYS_DUP, workers=1)
    core.on_submit(task(), 0.0)
    assert len(sends(core.poll_effects())) == 1 and core.stats.unconfirmed == 1
    # The partner is lost and nobody else is left: resolve on the self-check, counted.
    core = make(ALWAYS_DUP, workers=2)
    core.on_submit(task(), 0.0)
    a, b = sends(core.poll_effects())
    core.on_result(a.wire_id, a.worker, right(b"input"), 0.1)
    drain_inline(core, 0.1)
    core.on_worker_down(b.worker, 0.2)
    (res,) = of(drain_inline(core, 0.2), Resolve)
    assert res.output == right(b"input") and core.stats.unconfirmed == 1
    # With a third worker up, the lost partner is replaced instead.
    core = make(ALWAYS_DUP, workers=3)
    core.on_submit(task(), 0.0)
    a, b = sends(core.poll_effects())
    core.on_worker_down(b.worker, 0.1)
    (c,) = sends(core.poll_effects())
    assert c.role is Role.REPLACEMENT and c.worker not in (a.worker, b.worker)
    # Strict mode: no lower-assurance results at all.
    strict = VerificationConfig(dup_floor=1.0, probe_floor=0.0, probe_max=0.0, allow_unconfirmed=False)
    core = make(strict, workers=2)
    core.on_submit(task(), 0.0)
    a, b = sends(core.poll_effects())
    core.on_result(a.wire_id, a.worker, right(b"input"), 0.1)
    drain_inline(core, 0.1)
    core.on_worker_down(b.worker, 0.2)
    (rej,) = of(drain_inline(core, 0.2), Reject)
    assert isinstance(rej.error, VerificationIncompleteError)


def test_rejects_invalid_params_and_no_workers_up_front() -> None:
    core = make(NO_CHECKS, workers=0)
    core.on_submit(Task(b"\x01" * 16, "mc", {"nope": 1}, b"x", 5.0), 0.0)
    core.on_submit(Task(b"\x02" * 16, "nokind", {}, b"x", 5.0), 0.0)
    core.on_submit(task(), 0.0)
    errs = [e.error for e in core.poll_effects() if isinstance(e, Reject)]
    assert [type(e).__name__ for e in errs] == ["ValidationError", "UnknownKindError", "UnavailableError"]
    assert isinstance(errs[2], UnavailableError)


def test_probe_catches_a_wrong_answer_against_the_known_answer() -> None:
    cfg = VerificationConfig(dup_floor=0.0, dup_max=0.0, dup_until_verified=0, probe_floor=1.0, probe_max=1.0)
    core = make(cfg, workers=1)
    assert core.add_known_answer("mc", {}, b"known", right(b"known"), 0.0)
    core.on_submit(task(), 0.0)
    effs = core.poll_effects()
    (probe,) = of(effs, Probe)
    (send,) = sends(effs)
    assert probe.worker == send.worker and probe.data == b"known" and probe.wire_id != send.wire_id
    core.on_result(probe.wire_id, probe.worker, wrong(b"known"), 0.1)
    effs = drain_inline(core, 0.1)
    pens = of(effs, Penalise)
    assert pens and pens[0].reason == "probe" and pens[0].banned
    # The worker is banned: its in-flight real task fails; no other worker, so it is rejected.
    assert isinstance(of(effs, Reject)[0].error, VerificationError)


def test_probe_passes_raise_trust_and_probes_expire_quietly() -> None:
    cfg = VerificationConfig(dup_floor=0.0, dup_max=0.0, dup_until_verified=0, probe_floor=1.0, probe_max=1.0)
    core = make(cfg, workers=1)
    core.add_known_answer("mc", {}, b"known", right(b"known"), 0.0)
    core.on_submit(task(1), 0.0)
    (probe,) = of(core.poll_effects(), Probe)
    core.on_result(probe.wire_id, probe.worker, right(b"known"), 0.1)
    drain_inline(core, 0.1)
    assert core.reputation.trust(probe.worker, 0.1) > 0 and core.stats.probes_passed == 1
    core.on_submit(task(2, deadline=2.0), 0.2)
    (probe2,) = of(core.poll_effects(), Probe)
    core.on_tick(2.0)
    assert core.stats.probe_timeouts == 1 and core.reputation.trust(probe2.worker, 2.0) > 0


def _transcript(seed: int) -> list[str]:
    core = make(VerificationConfig(), workers=5, seed=seed)
    core.add_known_answer("mc", {}, b"k", right(b"k"), 0.0)
    out: list[str] = []
    for n in range(40):
        now = n * 0.01
        core.on_submit(task(n, data=b"d%d" % n), now)
        effs = drain_inline(core, now)
        while effs:
            eff = effs.pop(0)
            out.append(repr(eff)[:120])
            if isinstance(eff, (SendTo, Probe)):
                bad = eff.worker == W[0]
                core.on_result(eff.wire_id, eff.worker, wrong(eff.data) if bad else right(eff.data), now)
                effs.extend(drain_inline(core, now))
    return out


def test_deterministic_given_the_seed() -> None:
    assert _transcript(3) == _transcript(3)
    assert _transcript(3) != _transcript(4)


@settings(max_examples=60, derandomize=True, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4), st.booleans()), max_size=40))
def test_every_task_ends_exactly_once(script: list[tuple[int, int, bool]]) -> None:
    """Random interleavings of results, failures, checks and ticks never lose or double a task."""
    core = make(VerificationConfig(dup_floor=0.5), workers=4, seed=1)
    outstanding: list[Effect] = []
    ids = [task(n, deadline=1.0 + n % 3).task_id for n in range(4)]
    for n in range(4):
        core.on_submit(task(n, deadline=1.0 + n % 3, data=b"d%d" % n), 0.0)
    outstanding += core.poll_effects()
    ended: list[bytes] = []
    now = 0.0
    for op, pick, good in script:
        now += 0.1
        if op == 3:
            core.on_tick(now)
        else:
            work = [e for e in outstanding if isinstance(e, (SendTo, Probe, RunCheck))]
            if work:
                eff = work[pick % len(work)]
                outstanding.remove(eff)
                if isinstance(eff, RunCheck):
                    core.on_check(eff.check_id, good or op == 2, now)
                elif op == 1:
                    core.on_failure(eff.wire_id, eff.worker, RejectedError("no"), now)
                else:
                    out = right(eff.data) if good else wrong(eff.data)
                    core.on_result(eff.wire_id, eff.worker, out, now)
        for eff in core.poll_effects():
            if isinstance(eff, (Resolve, Reject)):
                ended.append(eff.task_id)
            else:
                outstanding.append(eff)
    core.on_tick(10.0)
    ended += [e.task_id for e in core.poll_effects() if isinstance(e, (Resolve, Reject))]
    assert sorted(ended) == sorted(ids)
    assert core.pending() == 0


@pytest.mark.parametrize(
    ("strategy", "kw"),
    [
        ("always", {}),
        ("always", {"probe_aware": True}),
        ("sleeper", {"honest_for": 50}),
        ("sleeper", {"honest_for": 300}),
    ],
)
def test_monte_carlo_targets(strategy: str, kw: dict[str, Any]) -> None:
    """10 workers, 3 colluding cheaters who rejoin under new keys when banned."""
    r = sim.simulate(strategy=strategy, tasks=4000, seed=11, **kw)
    assert r.wrong_rate <= 0.01, r.row()
    assert r.bans_cheaters >= 3 and r.bans_honest == 0, r.row()
    assert r.honest_extra <= 0.33, r.row()


def test_monte_carlo_honest_only_costs_little() -> None:
    r = sim.simulate(strategy="honest", tasks=6000, seed=5)
    assert r.wrong == 0 and r.rejected == 0 and r.bans_honest == 0
    assert r.honest_extra <= 0.3


# ---------------------------------------------------------------- what the SDK integration added


def test_dispute_rerun_resolves_the_right_side_and_bans_the_wrong_one() -> None:
    core = make(RECOMPUTE, workers=3)
    core.on_submit(task(), 0.0)
    a, b = sends(core.poll_effects())
    core.on_result(a.wire_id, a.worker, wrong(b"input"), 0.1, ts_ms=1, signature=b"s" * 64)
    core.on_result(b.wire_id, b.worker, right(b"input"), 0.1, ts_ms=1, signature=b"t" * 64)
    effs = drain_inline(core, 0.1)
    assert sends(effs) == [] and core.stats.recomputes == 2
    (res,) = of(effs, Resolve)
    assert res.output == right(b"input") and res.worker == b.worker
    (pen,) = of(effs, Penalise)
    assert pen.worker == a.worker and pen.reason == "recomputed" and pen.evidence is not None
    # Anyone can check it by re-running the kernel on the input the evidence carries.
    assert pen.evidence.input == b"input" and pen.evidence.bad.output == wrong(b"input")
    assert core.reputation.trust(b.worker, 0.1) > 0  # confirmed by the re-run itself


def test_bad_signature_bans_locally_without_evidence_and_moves_the_task() -> None:
    core = make(NO_CHECKS, workers=2)
    core.on_submit(task(), 0.0)
    (a,) = sends(core.poll_effects())
    core.on_failure(a.wire_id, a.worker, VerificationError("bad signature"), 0.1)
    effs = core.poll_effects()
    (pen,) = of(effs, Penalise)
    assert pen.banned and pen.evidence is None and pen.reason == "bad_signature"
    assert core.reputation.is_banned(a.worker, 0.1)
    (b,) = sends(effs)
    assert b.worker != a.worker and b.role is Role.REPLACEMENT


def test_answers_from_a_worker_banned_later_are_never_resolved() -> None:
    cfg = VerificationConfig(dup_floor=1.0, probe_floor=0.0, probe_max=0.0, recompute_max_cost=-1.0)
    core = make(cfg, workers=4)
    core.on_submit(task(1), 0.0)
    a, b = sends(core.poll_effects())
    core.on_result(a.wire_id, a.worker, wrong(b"input"), 0.1)
    drain_inline(core, 0.1)  # a's answer waits for its partner
    core.ban(a.worker, 0.2, "evidence")
    effs = drain_inline(core, 0.2)
    assert of(effs, Resolve) == []
    (repl,) = sends(effs)  # a's answer no longer counts: a replacement is sent at once
    assert repl.worker not in (a.worker, b.worker)
    core.on_result(b.wire_id, b.worker, right(b"input"), 0.3)
    effs = drain_inline(core, 0.3)
    assert of(effs, Resolve) == []
    for s in [repl]:  # the replacement partner confirms b
        assert s.worker != a.worker
        core.on_result(s.wire_id, s.worker, right(b"input"), 0.4)
    effs += drain_inline(core, 0.4)
    (res,) = of(effs, Resolve)
    assert res.output == right(b"input")


def test_an_unanswered_copy_is_hedged_and_repeated_strikes_ban() -> None:
    cfg = VerificationConfig(
        dup_floor=0.0, dup_max=0.0, dup_until_verified=0, probe_floor=0.0, probe_max=0.0, strikes_to_ban=2
    )
    core = make(cfg, workers=3)
    core.on_submit(task(1, deadline=10.0), 0.0)
    (a,) = sends(core.poll_effects())
    assert core.next_deadline() == pytest.approx(0.5)  # hedge_min_s, no latency known yet
    core.on_tick(0.5)
    (h,) = sends(core.poll_effects())
    assert h.role is Role.REPLACEMENT and h.worker != a.worker and core.stats.strikes == 1
    core.on_result(h.wire_id, h.worker, right(b"input"), 1.1)
    (res,) = of(drain_inline(core, 1.1), Resolve)
    assert res.worker == h.worker
    # A second strike in a row bans the silent worker locally.
    for n in range(2, 6):
        core.on_submit(task(n, deadline=20.0), 2.0)
        effs = drain_inline(core, 2.0)
        for s in sends(effs):
            if s.worker != a.worker:
                core.on_result(s.wire_id, s.worker, right(b"input"), 2.1)
        drain_inline(core, 2.1)
    core.on_tick(10.0)
    effs = drain_inline(core, 10.0)
    assert core.reputation.is_banned(a.worker, 10.0)
    assert any(isinstance(e, Penalise) and e.reason == "unresponsive" for e in effs)


def test_a_kind_nobody_answered_yet_is_hedged_from_its_cost_model() -> None:
    # A 16 s path-tracing tile was hedged at hedge_min_s, and so was every replacement, so
    # the first tiles struck honest workers in a cascade (the simulator's finding).
    tile = replace(sim.MC_KIND, name="tile", cost=lambda params, n: 16_000.0)  # ~16 s
    core = VerificationCore(Registry([sim.MC_KIND, tile]), Reputation(), random.Random(1), HEDGING)
    for w in W[:3]:
        core.on_worker_up(w, 0.0)
    core.on_submit(Task(b"t" * 16, "tile", {}, b"scene", 200.0), 0.0)
    assert len(sends(core.poll_effects())) == 1
    assert core.next_deadline() == pytest.approx(64.0)  # hedge_factor x the estimate
    core.on_submit(Task(b"u" * 16, "tile", {}, b"scene", 60.0), 0.0)
    core.poll_effects()
    assert core.next_deadline() == pytest.approx(30.0)  # capped at half the budget
    core.on_tick(29.0)
    assert sends(core.poll_effects()) == [] and core.stats.strikes == 0
    # A cheap kind keeps hedge_min_s.
    core.on_submit(task(1, deadline=40.0), 29.0)
    assert len(sends(core.poll_effects())) == 1
    assert core.next_deadline() == pytest.approx(29.5)


def test_a_busy_worker_is_replaced_not_struck() -> None:
    core = make(replace(HEDGING, strikes_to_ban=1), workers=3)
    core.placer = lambda kind, cands: W[0]
    core.on_submit(task(1, deadline=10.0), 0.0)
    core.on_submit(task(2, deadline=10.0), 0.0)
    first, second = sends(core.poll_effects())
    assert first.worker == second.worker == W[0]
    core.on_result(first.wire_id, W[0], right(b"input"), 0.4)  # it answers the first
    drain_inline(core, 0.4)
    at = core.next_deadline()
    assert at is not None and at < 10.0
    core.on_tick(at)  # the second is overdue: replaced elsewhere, but W[0] is busy, not silent
    (repl,) = sends(core.poll_effects())
    assert repl.role is Role.REPLACEMENT and repl.worker != W[0]
    assert core.stats.hedges == 1 and core.stats.strikes == 0
    assert not core.reputation.is_banned(W[0], at)
    # A worker that answers nothing is struck (and with strikes_to_ban=1 banned) as before.
    core.placer = lambda kind, cands: W[1] if any(w == W[1] for w, _ in cands) else None
    core.on_submit(task(3, deadline=20.0), at)
    (c,) = sends(core.poll_effects())
    assert c.worker == W[1]
    core.on_tick(at + 5.0)
    drain_inline(core, at + 5.0)
    assert core.stats.strikes == 1 and core.reputation.is_banned(W[1], at + 5.0)


def test_the_hedge_clock_starts_when_the_copy_leaves_the_gamer() -> None:
    core = make(replace(HEDGING, strikes_to_ban=1), workers=3)
    core.placer = lambda kind, cands: W[0]
    core.on_submit(task(deadline=20.0), 0.0)
    (c,) = sends(core.poll_effects())
    armed = core.next_deadline()
    assert armed is not None and armed < 20.0
    # It waited 0.4 s behind the gamer's own uplink: the clock restarts at departure.
    core.on_sent(c.wire_id, 0.4)
    core.on_tick(armed)  # the old hedge time passes: nothing happens
    assert core.poll_effects() == [] and core.stats.hedges == 0 and core.stats.strikes == 0
    assert core.next_deadline() == 0.4 + armed
    core.on_result(c.wire_id, W[0], right(b"input"), 0.6)
    assert of(drain_inline(core, 0.6), Resolve)
    assert core._latency["mc"] == pytest.approx(0.2)  # measured from departure, not from submit
    # Without the call, the same wait strikes (and here bans) the worker.
    core.on_submit(task(2, deadline=20.0), 10.0)
    (d,) = sends(core.poll_effects())
    assert d.worker == W[0]
    at = core.next_deadline()
    assert at is not None
    core.on_tick(at)
    assert core.stats.strikes == 1 and core.reputation.is_banned(W[0], at)
    core.poll_effects()  # its replacement and the ban
    # A copy whose hedge already fired keeps it: on_sent cannot arm a second replacement.
    core = make(HEDGING, workers=3)
    core.placer = lambda kind, cands: W[0]
    core.on_submit(task(deadline=20.0), 0.0)
    (e,) = sends(core.poll_effects())
    hedge = core.next_deadline()
    assert hedge is not None
    core.on_tick(hedge)
    (repl,) = sends(core.poll_effects())
    assert repl.role is Role.REPLACEMENT and core.stats.hedges == 1
    core.on_sent(e.wire_id, hedge + 0.1)
    assert core._copies[e.wire_id].hedge_at == hedge
    # The shell's next wake-up follows a moved clock (no early tick for the old time).
    core = make(HEDGING, workers=3)
    core.on_submit(task(2, deadline=30.0), 10.0)
    (f,) = sends(core.poll_effects())
    old = core.next_deadline()
    assert old is not None
    core.on_sent(f.wire_id, 10.25)
    assert core.next_deadline() == old + 0.25


def _queued_core(strikes_to_ban: int = 1) -> tuple[VerificationCore, SendTo]:
    """A core whose first task (60 s budget, hedge cap at 30 s) went to W[0]."""
    core = make(replace(HEDGING, strikes_to_ban=strikes_to_ban), workers=3)
    core.placer = lambda kind, cands: W[0] if any(w == W[0] for w, _ in cands) else None
    core.on_submit(task(1, deadline=60.0), 0.0)
    (c,) = sends(core.poll_effects())
    assert c.worker == W[0] and core.next_deadline() == pytest.approx(0.5)  # hedge_min_s
    return core, c


def test_a_copy_queued_behind_other_work_is_hedged_from_its_announced_start() -> None:
    """Finding 12 of the simulator: tiles queued behind other gamers' tiles were hedged at
    half their budget and their honest workers struck. The worker's ``"Q"`` notice moves
    the hedge to its announced start plus the usual delay."""
    core, c = _queued_core()
    core.on_queued(c.wire_id, W[0], 10.0, 0.05)
    assert core.stats.queued == 1
    assert core.next_deadline() == pytest.approx(0.05 + 10.0 + 0.5)
    core.on_tick(5.0)
    assert core.poll_effects() == [] and core.stats.hedges == 0 and core.stats.strikes == 0
    core.on_result(c.wire_id, W[0], right(b"input"), 10.3)
    (res,) = of(drain_inline(core, 10.3), Resolve)
    assert res.worker == W[0] and core.stats.strikes == 0
    assert not core.reputation.is_banned(W[0], 10.3)
    assert "mc" not in core._latency  # a queue of others' work is not anyone's pace
    # Without the notice the same wait strikes (here: bans) the worker at hedge_min_s.
    core, c = _queued_core()
    core.on_tick(0.5)
    drain_inline(core, 0.5)
    assert core.stats.strikes == 1 and core.reputation.is_banned(W[0], 0.5)


def test_a_worker_that_announces_a_wait_and_stays_silent_is_still_struck() -> None:
    core, c = _queued_core()
    core.on_queued(c.wire_id, W[0], 1.0, 0.05)
    at = core.next_deadline()
    assert at == pytest.approx(1.55)
    core.on_tick(at)
    effs = drain_inline(core, at)
    (repl,) = sends(effs)
    assert repl.role is Role.REPLACEMENT and repl.worker != W[0]
    assert core.stats.strikes == 1 and core.reputation.is_banned(W[0], at)


def test_a_copy_that_cannot_be_done_before_its_cap_is_hedged_there_unstruck() -> None:
    core, c = _queued_core()
    core.on_queued(c.wire_id, W[0], 40.0, 0.05)  # starts after the 30 s hedge cap
    assert core.poll_effects() == [] and core.stats.queued_past_cap == 1
    assert core.next_deadline() == pytest.approx(30.0)  # the cap leaves a replacement time
    core.on_tick(30.0)
    (repl,) = sends(core.poll_effects())
    assert repl.role is Role.REPLACEMENT and repl.worker != W[0]
    assert core.stats.hedges == 1 and core.stats.strikes == 0  # it said so: not silent
    core.on_result(repl.wire_id, repl.worker, right(b"input"), 31.0)
    effs = drain_inline(core, 31.0)
    assert of(effs, Resolve) and Cancel(W[0], c.wire_id) in effs  # it gives its slot up
    assert not core.reputation.is_banned(W[0], 31.0)
    # Without the notice, the same copy is struck at its hedge (here: banned).
    core, c = _queued_core()
    core.on_tick(30.0)
    drain_inline(core, 30.0)
    assert core.stats.strikes == 1 and core.reputation.is_banned(W[0], 30.0)


def test_replacements_avoid_a_worker_that_announced_a_queue_of_their_kind() -> None:
    """Replacements of tiles queued past their cap went to workers just as backlogged (the
    simulator: 3.5-5 % of tiles missed, against 0.7-1.0 % once the announced queue counts)."""
    tile = replace(sim.MC_KIND, name="tile", cost=lambda params, n: 16_000.0)

    def replacement_workers(backlog_kind: str) -> list[bytes]:
        core = VerificationCore(Registry([sim.MC_KIND, tile]), Reputation(), random.Random(3), HEDGING)
        for w in W[:3]:
            core.on_worker_up(w, 0.0)
        core.placer = lambda kind, cands: W[1]
        core.on_submit(Task(b"q" * 16, backlog_kind, {}, b"scene", 100.0), 0.0)
        (q,) = sends(core.poll_effects())
        core.on_queued(q.wire_id, W[1], 40.0, 0.0)  # W[1]: busy for 40 s with that kind
        core.placer = lambda kind, cands: W[0]
        for n in range(1, 21):
            core.on_submit(task(n, deadline=10.0), 0.0)
        assert {s.worker for s in sends(core.poll_effects())} == {W[0]}
        core.on_tick(0.5)  # W[0] is silent: every task gets a replacement
        return [s.worker for s in sends(core.poll_effects())]

    assert replacement_workers("mc") == [W[2]] * 20
    # A queue of another kind says nothing about this one (a worker may run kinds apart).
    spread = replacement_workers("tile")
    assert len(spread) == 20 and W[1] in spread and W[2] in spread


@pytest.mark.parametrize(
    ("worker", "wait", "known"),
    [
        (W[1], 10.0, True),
        (W[0], -1.0, True),
        (W[0], math.nan, True),
        (W[0], math.inf, True),
        (W[0], 10.0, False),
    ],
)
def test_notices_for_other_workers_copies_or_with_bad_waits_change_nothing(
    worker: bytes, wait: float, known: bool
) -> None:
    core, c = _queued_core()
    core.on_queued(c.wire_id if known else b"?" * 16, worker, wait, 0.05)
    assert core.stats.queued == 0 and core.poll_effects() == []
    assert core.next_deadline() == pytest.approx(0.5)


def test_only_the_first_notice_counts_and_the_hedge_never_moves_earlier() -> None:
    core, c = _queued_core()
    core.on_queued(c.wire_id, W[0], 10.0, 0.05)
    core.on_queued(c.wire_id, W[0], 0.0, 0.1)  # a second notice cannot pull the hedge in
    core.on_sent(c.wire_id, 0.2)  # nor can a late departure re-arm it
    assert core.stats.queued == 1 and core.next_deadline() == pytest.approx(10.55)
    # A copy behind one of ours on the same worker (ahead=1) has a later hedge than its
    # announced start plus the worker's pace: the hedge stays where it was.
    core, c = _queued_core()
    core.on_result(c.wire_id, W[0], right(b"input"), 0.4)  # W[0]'s pace: 0.4 s
    drain_inline(core, 0.4)
    core.on_submit(task(2, deadline=60.0), 1.0)
    core.on_submit(task(3, deadline=60.0), 1.0)
    _, third = sends(core.poll_effects())
    assert core._copies[third.wire_id].hedge_at == pytest.approx(1.0 + 4.0 * 0.4 * 2)
    core.on_queued(third.wire_id, W[0], 1.0, 1.05)  # 1.05 + 1 + 4 x 0.4 s would be earlier
    assert core._copies[third.wire_id].hedge_at == pytest.approx(4.2)


def test_a_lone_slow_worker_is_never_struck() -> None:
    core = make(HEDGING, workers=1)
    core.on_submit(task(deadline=10.0), 0.0)
    (a,) = sends(core.poll_effects())
    core.on_tick(5.0)
    assert core.poll_effects() == [] and core.stats.strikes == 0
    core.on_result(a.wire_id, a.worker, right(b"input"), 6.0)
    assert of(drain_inline(core, 6.0), Resolve)


def test_short_budgets_are_not_hedged_and_off_resolves_unchecked() -> None:
    core = make(VerificationConfig(), workers=3)
    core.on_submit(task(deadline=0.9), 0.0)  # half the budget is under hedge_min_s
    core.poll_effects()
    assert core.next_deadline() == 0.9
    core = make(VerificationConfig.off(), workers=3)
    assert not VerificationConfig.off().enabled and VerificationConfig().enabled
    core.on_submit(task(), 0.0)
    (a,) = core.poll_effects()
    assert isinstance(a, SendTo)
    core.on_result(a.wire_id, a.worker, b"anything at all", 0.1)
    (res,) = core.poll_effects()  # no RunCheck: resolved as is
    assert isinstance(res, Resolve) and res.output == b"anything at all"


def test_join_probe_and_placer_hook() -> None:
    cfg = VerificationConfig(dup_floor=0.0, dup_max=0.0, dup_until_verified=0, probe_floor=0.0, probe_max=0.0)
    core = make(cfg, workers=0)
    core.add_known_answer("mc", {}, b"known", right(b"known"), 0.0)
    core.on_worker_up(W[0], 0.0)
    (probe,) = core.poll_effects()
    assert isinstance(probe, Probe) and probe.worker == W[0] and probe.deadline == 10.0
    core.on_result(probe.wire_id, W[0], wrong(b"known"), 0.1, ts_ms=1, signature=b"s" * 64)
    (pen,) = of(drain_inline(core, 0.1), Penalise)
    assert pen.reason == "probe" and pen.worker == W[0]
    core.on_worker_up(W[1], 0.2)
    core.on_worker_up(W[2], 0.2)
    core.poll_effects()
    seen: list[list[tuple[bytes, int]]] = []

    def placer(kind: str, cands: list[tuple[bytes, int]]) -> bytes | None:
        seen.append(cands)
        return W[2]

    core.placer = placer
    core.on_submit(task(), 0.3)
    (s,) = sends(core.poll_effects())
    assert s.worker == W[2] and [w for w, _ in seen[0]] == [W[1], W[2]]  # banned W[0] never offered


def test_a_worker_busy_with_our_own_queue_is_not_struck_a_silent_one_is() -> None:
    """Copies waiting behind our earlier copies on the same worker get proportionally
    longer before they count as overdue: a worker answering its queue one by one is busy,
    not silent (the demo banned such an honest worker as unresponsive, under load)."""
    cfg = replace(HEDGING, strikes_to_ban=2, strike_interval_s=0.0)
    core = make(cfg, workers=2)
    # the kind's latency is learned: 0.1 s
    core.on_submit(task(1, deadline=20.0), 0.0)
    for s in sends(core.poll_effects()):
        core.on_result(s.wire_id, s.worker, right(b"input"), 0.1)
    drain_inline(core, 0.1)
    # ten tasks at once: one worker answers at once, the other works through its queue,
    # one answer every 0.3 s (three times the learned latency)
    now = 1.0
    queued: list[SendTo] = []
    for n in range(2, 12):
        core.on_submit(task(n, deadline=20.0, data=b"in%d" % n), now)
    for s in sends(drain_inline(core, now)):
        if s.worker == W[0]:
            queued.append(s)
        else:
            core.on_result(s.wire_id, s.worker, right(s.data), now)
    assert len(queued) >= 3
    for k, s in enumerate(queued, start=1):
        t = now + 0.3 * k
        core.on_tick(t)
        drain_inline(core, t)
        core.on_result(s.wire_id, s.worker, right(s.data), t)
        drain_inline(core, t)
    assert core.stats.strikes == 0 and not core.reputation.is_banned(W[0], 10.0)
    # the same worker falling silent with a queue is still struck and banned in time
    for n in range(12, 20):
        core.on_submit(task(n, deadline=20.0, data=b"in%d" % n), 10.0)
    for s in sends(drain_inline(core, 10.0)):
        if s.worker != W[0]:
            core.on_result(s.wire_id, s.worker, right(s.data), 10.0)
    core.on_tick(20.0)
    drain_inline(core, 20.0)
    assert core.reputation.is_banned(W[0], 20.0)


def _steady_pace_run(cost_units: float, pace: dict[bytes, float]) -> VerificationCore:
    """40 tasks, one every 2 s, of a kind whose cost model says ``cost_units`` (ms of one
    reference core), each worker answering every copy after its own fixed ``pace``."""
    cfg = replace(HEDGING, strikes_to_ban=2, strike_interval_s=0.0)
    kind = replace(sim.MC_KIND, cost=lambda params, n: cost_units)
    core = VerificationCore(Registry([kind]), Reputation(), random.Random(1), cfg)
    for w in W[:5]:
        core.on_worker_up(w, 0.0)
    now = 0.0
    for n in range(1, 41):
        core.on_submit(task(n, deadline=now + 20.0, data=b"t%d" % n), now)
        pending = sends(drain_inline(core, now))
        end = now + 2.0
        while pending:
            s = min(pending, key=lambda s: pace[s.worker])
            pending.remove(s)
            at = now + pace[s.worker]
            core.on_tick(at)
            pending += sends(drain_inline(core, at))  # a hedge may have sent a copy elsewhere
            core.on_result(s.wire_id, s.worker, right(s.data), at)
            drain_inline(core, at)
        now = end
    return core


def test_a_steady_slow_worker_is_judged_by_its_own_pace() -> None:
    """A CPU peer that always answers in 0.8 s beside GPU peers answering in 10 ms, on a
    kind that takes 0.5 s on one reference core, is slow, not silent: after its first
    answers it is hedged against its own pace and never banned."""
    core = _steady_pace_run(500.0, {W[0]: 0.8, **{w: 0.01 for w in W[1:5]}})
    assert core.stats.resolved == 40
    assert not core.reputation.is_banned(W[0], 80.0)
    assert core.stats.strikes <= 2


def test_a_worker_far_slower_than_its_kind_is_struck_and_banned() -> None:
    """The same 0.8 s on a kind that takes 10 us and that the others answer in 10 ms: no
    machine is that slow, the worker holds its tasks (the adversarial run's ``slow``
    mode). Its answers all come after its hedges, which is no sign of life, and its pace
    is believed only up to ``max_slowdown`` x the kind's, so it is struck and banned."""
    core = _steady_pace_run(0.01, {W[0]: 0.8, **{w: 0.01 for w in W[1:5]}})
    assert core.stats.resolved == 40
    assert core.reputation.is_banned(W[0], 80.0)
    assert not any(core.reputation.is_banned(w, 80.0) for w in W[1:5])


@pytest.mark.parametrize("answers_cancelled_copy", [True, False])
def test_a_copy_cancelled_while_it_ran_and_answered_in_time_shows_its_worker_alive(
    answers_cancelled_copy: bool,
) -> None:
    """A worker finishes a copy it was running when its task ended elsewhere: that answer,
    in time for the kind, is a sign of life, as an answer to a live copy is (the simulator,
    1,000 peers: without it, twice the strikes on honest workers)."""
    core = make(replace(HEDGING, strikes_to_ban=0, strike_interval_s=0.0), workers=2)
    core.placer = lambda kind, cands: W[1]
    core.on_submit(task(1, deadline=20.0), 0.0)
    (warm,) = sends(core.poll_effects())
    core.on_result(warm.wire_id, W[1], right(b"input"), 0.1)  # the kind's latency: 0.1 s
    drain_inline(core, 0.1)
    core.placer = lambda kind, cands: W[0] if any(w == W[0] for w, _ in cands) else W[1]
    core.on_submit(task(2, deadline=20.0, data=b"a"), 1.0)
    (a,) = sends(core.poll_effects())
    assert a.worker == W[0]
    core.on_tick(1.5)  # a is overdue: a strike (W[0] answered nothing), a replacement on W[1]
    (repl,) = sends(core.poll_effects())
    assert repl.worker == W[1] and core.stats.strikes == 1
    core.on_result(repl.wire_id, W[1], right(b"a"), 1.6)
    assert of(drain_inline(core, 1.6), Resolve)  # task 2 is done: a is cancelled
    core.on_submit(task(3, deadline=20.0, data=b"b"), 1.7)
    (b,) = sends(core.poll_effects())
    assert b.worker == W[0]
    if answers_cancelled_copy:
        core.on_result(a.wire_id, W[0], right(b"a"), 2.0)  # within 4 x 4 x 0.1 s of its send
        drain_inline(core, 2.0)
    core.on_tick(2.2)  # b is overdue
    drain_inline(core, 2.2)
    assert core.stats.hedges == 2
    assert core.stats.strikes == (1 if answers_cancelled_copy else 2)


def test_finished_tasks_are_freed_without_the_cyclic_collector() -> None:
    """A resolved or rejected task leaves no reference cycle behind (task <-> copy <->
    answer): it is freed when the core drops it, not at the next full collection, which in
    the game's process would be a frame-time spike."""
    gc.collect()
    gc.disable()
    try:
        _transcript(3)  # resolved, mismatched, banned, tie-broken and probed tasks
        core = make(ALWAYS_DUP)
        core.on_submit(task(99, deadline=1.0), 0.0)
        core.poll_effects()
        core.on_tick(2.0)  # nobody answered: rejected at its deadline
        assert of(core.poll_effects(), Reject) and core.pending() == 0
        left = [o for o in gc.get_objects() if type(o) in (_Task, _Copy, _Answer)]
        assert left == []
    finally:
        gc.enable()


def test_an_unanswered_probe_strikes_nobody_its_task_copy_does() -> None:
    """A probe has nobody waiting on it and rides on top of real work; the simulator saw it
    strike honest workers busy with other gamers' tiles. Silence is struck on task copies."""
    cfg = replace(HEDGING, probe_floor=1.0, probe_max=1.0, strike_interval_s=0.0)
    core = make(cfg, workers=3)
    core.add_known_answer("mc", {}, b"known", right(b"known"), 0.0)
    core.on_submit(task(1, deadline=10.0), 0.0)
    effs = core.poll_effects()
    (a,) = sends(effs)
    (probe,) = of(effs, Probe)
    assert probe.worker == a.worker
    core.on_tick(0.5)  # both copies are due; the worker answered nothing
    (h,) = sends(core.poll_effects())
    assert h.role is Role.REPLACEMENT and core.stats.strikes == 1
    core.on_result(h.wire_id, h.worker, right(b"input"), 0.6)
    assert of(drain_inline(core, 0.6), Resolve)
    core.on_tick(10.0)
    assert core.stats.probe_timeouts == 1 and core.stats.strikes == 1
