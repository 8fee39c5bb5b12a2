"""The evidence topic's validator and publisher (``nodes.evidence.EvidenceGossip``) on a
stub port: every receiver re-verifies before acting; unsigned, malformed, stale, forged
evidence is dropped and counted and bans no one."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh import wire
from mesh.gossip import EVIDENCE_TOPIC, AsyncTopicValidator, TopicHandler
from mesh.identity import Identity, peer_id_to_str
from nodes.evidence import EvidenceGossip, EvidenceGossipConfig, EvidenceService
from nodes.reputation import Evidence, SignedResult, make_evidence
from tasks.receipt import receipt_digest
from tests.unit.test_reputation import REG, _right

CHEAT = Identity.from_seed(b"C" * 32)
HONEST = Identity.from_seed(b"H" * 32)
NODE = Identity.from_seed(b"N" * 32)  # the publishing node
ME = Identity.from_seed(b"M" * 32)  # the receiving node
NOW_MS = 1_700_000_000_000


def _signed(ident: Identity, tid: bytes, data: bytes, out: bytes) -> SignedResult:
    od = wire.digest(out)
    d = receipt_digest(tid, "mc", wire.params_digest({}), wire.digest(data), od, ident.peer_id_bytes, 1)
    return SignedResult(tid, ident.peer_id_bytes, od, 1, ident.sign(d), out)


def wrong_evidence(
    *, forged: bool = False, data: bytes = b"input", tid: bytes = b"\x01" * 16
) -> tuple[Evidence, bytes]:
    """Evidence that ``CHEAT`` signed a wrong result; ``forged``: evidence against
    ``HONEST`` whose accused output is in fact right (the 'correct' one is wrong)."""
    if forged:
        bad = _signed(HONEST, tid, data, _right(data))
        ref = _signed(CHEAT, b"\x02" * 16, data, b"ok" + b"\x00" * 32)
        accused = HONEST.peer_id_bytes
    else:
        bad = _signed(CHEAT, tid, data, b"ok" + b"\x00" * 32)
        ref = _signed(HONEST, b"\x02" * 16, data, _right(data))
        accused = CHEAT.peer_id_bytes
    ev = make_evidence(kind="mc", params={}, data=data, bad=bad, reason="mismatch", reference=ref)
    return ev, accused


class StubPort:
    def __init__(self) -> None:
        self.validator: AsyncTopicValidator | None = None
        self.published: list[bytes] = []

    async def subscribe_async(
        self, topic: str, validator: AsyncTopicValidator, handler: TopicHandler, *, max_bytes: int
    ) -> None:
        assert topic == EVIDENCE_TOPIC
        self.validator = validator

    async def publish(self, topic: str, data: bytes) -> None:
        assert self.validator is not None
        assert await self.validator(peer_id_to_str(NODE.peer_id_bytes), data) is None  # local validation
        self.published.append(data)

    def counters(self) -> dict[str, int]:
        return {}


def gossip_for(ident: Identity, **cfg: Any) -> tuple[EvidenceGossip, StubPort]:
    port = StubPort()
    eg = EvidenceGossip(
        port,
        EvidenceService(REG),
        ident.peer_id_bytes,
        ident.sign,
        EvidenceGossipConfig(**cfg),
        wall_ms=lambda: NOW_MS,
    )
    return eg, port


def as_published(ev: Evidence, *, by: Identity = NODE, created_ms: int = NOW_MS) -> bytes:
    return replace(ev, created_ms=created_ms).signed_by(by.peer_id_bytes, by.sign).to_wire()


NODE_S = peer_id_to_str(NODE.peer_id_bytes)


async def test_verified_evidence_bans_once_and_is_forwarded(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as n:
        eg, port = gossip_for(ME)
        await n.start(eg.run)
        ev, accused = wrong_evidence()
        assert port.validator is not None
        assert await port.validator(NODE_S, as_published(ev)) is None
        assert eg.reputation.is_banned(accused, trio.current_time())
        assert (eg.stats.accepted, eg.stats.banned) == (1, 1)
        # the same incident again, even re-signed later by another node: no second check
        other = Identity.from_seed(b"O" * 32)
        again = as_published(ev, by=other, created_ms=NOW_MS - 1000)
        assert await port.validator(peer_id_to_str(other.peer_id_bytes), again) is None
        assert eg.stats.accepted == 1
        n.cancel_scope.cancel()


async def test_bad_messages_are_dropped_counted_and_ban_no_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as n:
        eg, port = gossip_for(ME, max_age_s=600, max_skew_s=60, reporter_strikes=3)
        await n.start(eg.run)
        v = port.validator
        assert v is not None
        ev, _ = wrong_evidence()
        good = replace(ev, created_ms=NOW_MS).signed_by(NODE.peer_id_bytes, NODE.sign)
        cases = {
            "malformed": (NODE_S, b"\x93garbage"),
            "unsigned": (NODE_S, replace(ev, created_ms=NOW_MS).to_wire()),
            "reporter_not_origin": (peer_id_to_str(ME.peer_id_bytes), good.to_wire()),
            "bad_signature": (NODE_S, replace(good, reporter_sig=bytes(64)).to_wire()),
            "stale": (NODE_S, as_published(ev, created_ms=NOW_MS - 601_000)),
            "future": (NODE_S, as_published(ev, created_ms=NOW_MS + 61_000)),
        }
        for why, (origin, data) in cases.items():
            assert await v(origin, data) == why
        forged, _ = wrong_evidence(forged=True)
        assert await v(NODE_S, as_published(forged)) == "invalid_evidence"
        # a reporter whose evidence keeps failing is refused unverified
        for i in range(2):
            f, _ = wrong_evidence(forged=True, tid=bytes([9, i]) * 8)
            assert await v(NODE_S, as_published(f)) == "invalid_evidence"
        assert await v(NODE_S, as_published(ev)) == "blocked_reporter"
        assert len(eg.reputation.banned(trio.current_time())) == 0
        assert eg.stats.dropped == {**dict.fromkeys(cases, 1), "invalid_evidence": 3, "blocked_reporter": 1}
        assert eg.stats.accepted == 0
        n.cancel_scope.cancel()


async def test_publish_resigns_stamps_and_trims_to_fit(autojump_clock: trio.testing.MockClock) -> None:
    mid, _ = wrong_evidence(data=b"y" * 1500, tid=b"\x06" * 16)
    full = len(as_published(mid))
    async with trio.open_nursery() as n:
        eg, port = gossip_for(NODE, max_bytes=full - 20)  # the full form just does not fit
        await n.start(eg.run)
        ev, _ = wrong_evidence()
        assert await eg.publish(ev)
        got = Evidence.from_wire(port.published[-1])
        assert got.reporter == NODE.peer_id_bytes and got.created_ms == NOW_MS
        assert got.bad.output is not None and got.reference is not None  # small: sent whole
        # trimmed (the reference's output left out): a re-run still proves it wrong
        assert await eg.publish(mid)
        trimmed = Evidence.from_wire(port.published[-1])
        assert len(port.published[-1]) <= full - 20 and trimmed.input == mid.input
        assert trimmed.reference is not None and trimmed.reference.output is None
        # an input too large for any form is not gossiped (it still travels by stream)
        huge, _ = wrong_evidence(data=b"x" * 4096, tid=b"\x05" * 16)
        assert not await eg.publish(huge)
        assert eg.stats.too_large == 1 and eg.stats.published == 2
        n.cancel_scope.cancel()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600))
def test_random_bytes_never_raise_and_never_ban(data: bytes) -> None:
    async def main() -> None:
        async with trio.open_nursery() as n:
            eg, port = gossip_for(ME)
            await n.start(eg.run)
            assert port.validator is not None
            why = await port.validator(NODE_S, data)
            assert why is not None and len(eg.reputation) == 0
            n.cancel_scope.cancel()

    trio.run(main)
