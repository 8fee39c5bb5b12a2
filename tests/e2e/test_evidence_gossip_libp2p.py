"""Evidence on real py-libp2p GossipSub: three hosts in a line (A - B - C), so C hears
A's publish only through B's forwarding, which happens only after B's asynchronous
validator has re-verified the evidence. Forged evidence stops at B. Real time (py-libp2p
timers ignore trio's clock), so this is marked slow."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import trio

from mesh.gossip import EVIDENCE_MAX_BYTES, EVIDENCE_TOPIC, Libp2pGossip
from mesh.identity import Identity
from mesh.libp2p_host import open_host
from nodes.evidence import EvidenceGossip, EvidenceService
from tests.unit.test_evidence_gossip import REG, wrong_evidence

pytestmark = pytest.mark.slow


async def test_evidence_floods_verified_and_forgeries_stop_at_the_first_hop() -> None:
    idents = [Identity.generate() for _ in range(3)]
    async with (
        open_host(idents[0]) as ha,
        open_host(idents[1]) as hb,
        open_host(idents[2]) as hc,
        trio.open_nursery() as nursery,
    ):
        # A is hostile: it validates nothing and publishes raw bytes.
        hostile = Libp2pGossip(ha.raw)
        await nursery.start(hostile.run)

        async def accept_all(origin: str, data: bytes) -> str | None:
            return None

        await hostile.subscribe_async(
            EVIDENCE_TOPIC, accept_all, lambda o, d: None, max_bytes=EVIDENCE_MAX_BYTES
        )
        nodes = []
        for ident, host in zip(idents[1:], (hb, hc), strict=True):
            g = Libp2pGossip(host.raw)
            await nursery.start(g.run)
            svc = EvidenceService(REG)
            eg = EvidenceGossip(g, svc, ident.peer_id_bytes, ident.sign)
            await nursery.start(eg.run)
            nodes.append((svc, eg))
        await hb.connect(ha.listen_addrs()[0])
        await hc.connect(hb.listen_addrs()[0])
        await trio.sleep(2.5)  # GossipSub meshes form on heartbeats (1 s)

        a = idents[0]
        now_ms = int(time.time() * 1000)
        ev, accused = wrong_evidence()
        forged, forged_accused = wrong_evidence(forged=True)
        for e in (forged, ev):
            await hostile.publish(
                EVIDENCE_TOPIC, replace(e, created_ms=now_ms).signed_by(a.peer_id_bytes, a.sign).to_wire()
            )
        with trio.fail_after(20):
            while not all(svc.reputation.is_banned(accused, trio.current_time()) for svc, _ in nodes):  # noqa: ASYNC110
                await trio.sleep(0.1)
        for svc, _ in nodes:
            assert not svc.reputation.is_banned(forged_accused, trio.current_time())
        assert nodes[0][1].stats.dropped == {"invalid_evidence": 1}  # B refused the forgery
        assert not nodes[1][1].stats.dropped  # C never saw it
        nursery.cancel_scope.cancel()
