"""Reputation scores, bans and evidence (with real Ed25519 receipts)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh import wire
from mesh.errors import ProtocolError
from mesh.identity import Identity
from nodes.reputation import (
    Evidence,
    InvalidEvidenceError,
    Proof,
    Reputation,
    ReputationConfig,
    SignedResult,
    make_evidence,
    verify_evidence,
)
from tasks.receipt import MAX_SEAL_LEN, make_seal, open_seal, receipt_digest, sign_batch
from tasks.registry import ParamSpec, Registry, TaskKind, default_registry

HONEST = Identity.from_seed(b"h" * 32)
CHEAT = Identity.from_seed(b"c" * 32)
GAMER = Identity.from_seed(b"g" * 32)


def _right(data: bytes) -> bytes:
    return b"ok" + hashlib.sha256(data).digest()


#: A deterministic kind whose self-check a plausible wrong answer passes.
MC = TaskKind(
    name="mc",
    description="sha256 of the input",
    params={"tag": ParamSpec(str, default="")},
    execute=lambda params, data: _right(data),
    cost=lambda params, n: 0.01,
    self_check=lambda params, data, out: len(out) == 34 and out[:2] == b"ok",
)
REG = Registry([MC])


def signed(
    ident: Identity, tid: bytes, kind: str, params: dict[str, Any], data: bytes, out: bytes
) -> SignedResult:
    od = wire.digest(out)
    d = receipt_digest(
        tid, kind, wire.params_digest(params), wire.digest(data), od, ident.peer_id_bytes, 1234
    )
    return SignedResult(tid, ident.peer_id_bytes, od, 1234, ident.sign(d), out)


def evidence(
    out: bytes, *, ref: bool = True, data: bytes = b"input", kind: str = "mc", **kw: Any
) -> Evidence:
    params: dict[str, Any] = {}
    bad = signed(CHEAT, b"\x01" * 16, kind, params, data, out)
    reference = signed(HONEST, b"\x02" * 16, kind, params, data, _right(data)) if ref else None
    return make_evidence(
        kind=kind, params=params, data=data, bad=bad, reason="mismatch", reference=reference, **kw
    )


WRONG = b"ok" + b"\x00" * 32


# --------------------------------------------------------------------------- scores and bans


def test_scores_grow_with_verified_work_and_decay_toward_the_prior() -> None:
    rep = Reputation(ReputationConfig(initial=0.0, prior=0.0, half_life_s=100.0, gain=0.1))
    p = b"peer"
    assert rep.trust(p, 0.0) == 0.0
    for _ in range(20):
        rep.record_verified(p, 0.0)
    s = rep.trust(p, 0.0)
    assert s == pytest.approx(1 - 0.9**20)
    assert rep.trust(p, 100.0) == pytest.approx(s / 2)
    assert rep.trust(p, 1000.0) < 0.001
    assert rep.record_verified(p, 0.0, weight=0.0) == pytest.approx(s)  # zero weight: no gain


def test_bans_double_per_offence_and_expire() -> None:
    rep = Reputation(ReputationConfig(ban_base_s=10.0, ban_factor=2.0, ban_max_s=25.0))
    p = b"peer"
    assert rep.ban(p, 0.0) == 10.0 and rep.is_banned(p, 9.9) and rep.trust(p, 5.0) == 0.0
    assert not rep.is_banned(p, 10.0)
    assert rep.ban(p, 20.0) == 40.0
    assert rep.ban(p, 50.0) == 75.0  # capped at 25 s
    assert rep.banned(60.0) == [(p, 75.0)] and rep.next_deadline(60.0) == 75.0
    assert rep.banned(80.0) == [] and rep.trust(p, 80.0) == 0.0


def test_new_keys_start_untrusted_and_cannot_flush_bans() -> None:
    rep = Reputation(ReputationConfig(max_peers=4))
    rep.ban(b"bad", 0.0)
    for i in range(20):
        rep.record_verified(b"new%d" % i, 1.0)
    assert len(rep) == 4 and rep.is_banned(b"bad", 2.0)
    assert rep.trust(b"never-seen", 2.0) == 0.0


# --------------------------------------------------------------------------- evidence


def test_evidence_round_trips_and_signs() -> None:
    ev = evidence(WRONG).signed_by(GAMER.peer_id_bytes, GAMER.sign)
    assert Evidence.from_wire(ev.to_wire()) == ev
    assert verify_evidence(ev, REG, recompute=True) is Proof.RECOMPUTED
    forged = replace(ev, reason="other")
    with pytest.raises(InvalidEvidenceError, match="reporter"):
        verify_evidence(forged, REG, recompute=True)


def test_self_check_proof_needs_no_recompute() -> None:
    reg = default_registry()
    data = b"hello"
    bad = signed(CHEAT, b"\x01" * 16, "echo", {}, data, b"jello")
    ev = make_evidence(kind="echo", params={}, data=data, bad=bad, reason="self_check")
    assert verify_evidence(ev, reg, recompute=False) is Proof.SELF_CHECK


def test_conflict_without_recompute_and_nothing_without_a_reference() -> None:
    assert verify_evidence(evidence(WRONG), REG, recompute=False) is Proof.CONFLICT
    with pytest.raises(InvalidEvidenceError, match="does not show"):
        verify_evidence(evidence(WRONG, ref=False), REG, recompute=False)
    # Big inputs travel as digests: a deterministic kind still shows a conflict.
    big = evidence(WRONG, max_blob=4)
    assert big.input is None and big.bad.output is None
    assert verify_evidence(big, REG, recompute=True) is Proof.CONFLICT


def test_accusing_a_right_output_fails() -> None:
    ev = evidence(_right(b"input"), ref=False)
    with pytest.raises(InvalidEvidenceError, match="it is right"):
        verify_evidence(ev, REG, recompute=True)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda ev: replace(ev, bad=replace(ev.bad, signature=bytes(64))),
        lambda ev: replace(ev, bad=replace(ev.bad, ts_ms=ev.bad.ts_ms + 1)),
        lambda ev: replace(ev, params={"tag": "x"}),
        lambda ev: replace(ev, input=b"other"),
        lambda ev: replace(ev, bad=replace(ev.bad, output=b"swapped")),
        lambda ev: replace(ev, kind="nokind"),
        lambda ev: replace(ev, reference=replace(ev.bad, task_id=b"\x03" * 16)),
        lambda ev: replace(ev, bad=replace(ev.bad, worker=b"\x00\x01garbage")),
    ],
)
def test_tampered_evidence_is_refused(mutate: Any) -> None:
    with pytest.raises(InvalidEvidenceError):
        verify_evidence(mutate(evidence(WRONG)), REG, recompute=True)


def test_gossiped_evidence_bans_once_and_conflicts_need_a_trusted_reference() -> None:
    rep = Reputation()
    ev = evidence(WRONG)
    assert rep.on_evidence(ev, REG, 0.0) is Proof.RECOMPUTED
    assert rep.is_banned(CHEAT.peer_id_bytes, 1.0) and rep.evidence_for(CHEAT.peer_id_bytes) == [ev]
    assert rep.on_evidence(ev, REG, 1.0) is None  # seen: not verified again

    rep2 = Reputation()
    assert rep2.on_evidence(evidence(WRONG), REG, 0.0, recompute=False) is None
    assert not rep2.is_banned(CHEAT.peer_id_bytes, 0.0)
    for _ in range(100):
        rep2.record_verified(HONEST.peer_id_bytes, 0.0)
    ev2 = replace(evidence(WRONG), created_ms=1)
    assert rep2.on_evidence(ev2, REG, 0.0, recompute=False) is Proof.CONFLICT
    assert rep2.is_banned(CHEAT.peer_id_bytes, 0.0)


def test_from_wire_refuses_malformed() -> None:
    good = evidence(WRONG).to_wire()
    for bad in (b"", b"\xc1", good[:-1], good + b"\x00", b"\x91\x01", bytes(10)):
        with pytest.raises(ProtocolError):
            Evidence.from_wire(bad)
    with pytest.raises(ProtocolError):
        Evidence.from_wire(good, max_bytes=10)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.binary(max_size=600))
def test_from_wire_fuzz_only_protocol_errors(data: bytes) -> None:
    try:
        ev = Evidence.from_wire(data)
    except ProtocolError:
        return
    assert Evidence.from_wire(ev.to_wire()) == ev


def test_light_bans_have_their_own_duration_and_are_not_offences() -> None:
    rep = Reputation(ReputationConfig(ban_base_s=100.0))
    p = CHEAT.peer_id_bytes
    assert rep.ban(p, 0.0, duration_s=5.0) == 5.0
    rec = rep.record(p)
    assert rec is not None and rec.offences == 0 and rep.is_banned(p, 4.9)
    assert not rep.is_banned(p, 5.0)
    assert rep.ban(p, 10.0) == 110.0  # a real offence still follows the schedule


def test_evidence_verified_elsewhere_is_applied_once() -> None:
    rep = Reputation()
    ev = evidence(WRONG)
    assert rep.first_sight(ev) and not rep.first_sight(ev)
    proof = verify_evidence(ev, REG, True)  # e.g. in a worker thread
    assert proof is Proof.RECOMPUTED
    assert rep.apply_evidence(ev, proof, 1.0) is Proof.RECOMPUTED
    assert rep.is_banned(CHEAT.peer_id_bytes, 1.0)
    # A bare CONFLICT from an untrusted reference only costs score, no ban.
    rep2 = Reputation()
    assert rep2.apply_evidence(ev, Proof.CONFLICT, 1.0) is None
    assert not rep2.is_banned(CHEAT.peer_id_bytes, 1.0)


# --------------------------------------------------------------------------- batch-signed results


def batch_signed(
    ident: Identity, tid: bytes, kind: str, params: dict[str, Any], data: bytes, out: bytes, *, size: int = 5
) -> SignedResult:
    """``out``'s result as leaf 2 of a batch of ``size`` the worker signed once (a seal, not a signature)."""
    od = wire.digest(out)
    mine = receipt_digest(
        tid, kind, wire.params_digest(params), wire.digest(data), od, ident.peer_id_bytes, 1234
    )
    leaves = [hashlib.sha256(b"other%d" % i).digest() for i in range(size)]
    leaves[2] = mine
    sig, tree = sign_batch(ident, leaves)
    return SignedResult(tid, ident.peer_id_bytes, od, 1234, make_seal(sig, 2, tree.size, tree.path(2)), out)


def batch_evidence(**kw: Any) -> Evidence:
    data = b"input"
    bad = batch_signed(CHEAT, b"\x01" * 16, "mc", {}, data, WRONG)
    ref = batch_signed(HONEST, b"\x02" * 16, "mc", {}, data, _right(data), size=3)
    return make_evidence(kind="mc", params={}, data=data, bad=bad, reason="mismatch", reference=ref, **kw)


def test_evidence_from_batch_signed_results_verifies_elsewhere() -> None:
    ev = batch_evidence().signed_by(GAMER.peer_id_bytes, GAMER.sign)
    assert len(ev.bad.signature) > 64 and len(ev.reference.signature) > 64  # type: ignore[union-attr]
    received = Evidence.from_wire(ev.to_wire())  # as another node decodes it
    assert received == ev
    assert verify_evidence(received, REG, recompute=True) is Proof.RECOMPUTED
    assert verify_evidence(received, REG, recompute=False) is Proof.CONFLICT
    rep = Reputation()
    for _ in range(100):
        rep.record_verified(HONEST.peer_id_bytes, 0.0)
    assert rep.on_evidence(received, REG, 0.0, recompute=False) is Proof.CONFLICT
    assert rep.is_banned(CHEAT.peer_id_bytes, 0.0)


def _reseal(res: SignedResult, change: Any) -> SignedResult:
    sig, index, size, path = open_seal(res.signature)
    sig, index, size, path = change(sig, index, size, path)
    return replace(res, signature=make_seal(sig, index, size, path))


@pytest.mark.parametrize(
    "change",
    [
        lambda s, i, n, p: (s, i + 1, n, p),  # another leaf's position
        lambda s, i, n, p: (s, i, n + 1, p),  # another batch size
        lambda s, i, n, p: (s, i, n, [bytes(32), *p[1:]]),  # a forged sibling
        lambda s, i, n, p: (s, i, n, p[:-1]),  # a path too short
        lambda s, i, n, p: (s, i, n, [*p, bytes(32)]),  # a path too long
        lambda s, i, n, p: (bytes(64), i, n, p),  # a zero signature
        lambda s, i, n, p: (HONEST.sign(bytes(32)), i, n, p),  # someone else's real signature
    ],
)
def test_forged_seals_are_refused(change: Any) -> None:
    ev = batch_evidence()
    forged = replace(ev, bad=_reseal(ev.bad, change))
    with pytest.raises(InvalidEvidenceError, match="accused result"):
        verify_evidence(Evidence.from_wire(forged.to_wire()), REG, recompute=True)
    forged_ref = replace(ev, reference=_reseal(ev.reference, change))  # type: ignore[arg-type]
    with pytest.raises(InvalidEvidenceError, match="reference result"):
        verify_evidence(Evidence.from_wire(forged_ref.to_wire()), REG, recompute=True)


@pytest.mark.parametrize("length", [0, 63, 65, 71, 72 + 31, 72 + 33, MAX_SEAL_LEN + 32])
def test_signatures_of_no_valid_shape_are_protocol_errors(length: int) -> None:
    ev = batch_evidence()
    odd = replace(ev, bad=replace(ev.bad, signature=bytes(length)))
    with pytest.raises(ProtocolError, match="signature"):
        Evidence.from_wire(odd.to_wire())
    # The longest well-formed seal decodes (and is then refused by verification, not decoding).
    longest = replace(ev, bad=replace(ev.bad, signature=bytes(MAX_SEAL_LEN)))
    with pytest.raises(InvalidEvidenceError):
        verify_evidence(Evidence.from_wire(longest.to_wire()), REG, recompute=True)
