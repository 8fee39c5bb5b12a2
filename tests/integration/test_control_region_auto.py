"""Automatic region choice from network coordinates, on the in-memory backend in virtual time.

Two regions sit 80 ms apart (round trip) and 10 ms across inside. A node started without
``--region`` must land in the region it is near, whichever region its bootstrap peer is in.
"""

from __future__ import annotations

import itertools

import trio
import trio.testing

from mesh.memory import LinkModel, MemoryNetwork
from nodes.control import ControlConfig
from tests.integration.control_cluster import Member, ident, start_member, start_region, wait_for

NEAR = LinkModel(delay_s=0.005, jitter_s=0.001)
FAR = LinkModel(delay_s=0.040, jitter_s=0.001)


def _place(net: MemoryNetwork, peer: bytes, near: list[bytes], far: list[bytes]) -> None:
    for other in near:
        net.set_link(peer, other, NEAR)
    for other in far:
        net.set_link(peer, other, FAR)


async def test_node_without_region_joins_the_nearest_region_by_coordinates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork(seed=7, link=NEAR)
    eu_ids = [ident(f"eu/{i}").peer_id_bytes for i in range(4)]
    us_ids = [ident(f"us/{i}").peer_id_bytes for i in range(4)]
    for a, b in itertools.product(eu_ids, us_ids):
        net.set_link(a, b, FAR)
    # two newcomers: one near eu (bootstrapping through a us node), one near us (through eu)
    near_eu, near_us = Member("new-eu", ident("new/eu")), Member("new-us", ident("new/us"))
    _place(net, near_eu.identity.peer_id_bytes, eu_ids, us_ids)
    _place(net, near_us.identity.peer_id_bytes, us_ids, eu_ids)
    net.set_link(near_eu.identity.peer_id_bytes, near_us.identity.peer_id_bytes, FAR)
    async with trio.open_nursery() as nursery:
        eu = await start_region(net, nursery, "eu", 4)
        us = await start_region(net, nursery, "us", 4, bootstrap=(eu[0].host.listen_addrs()[0],))  # type: ignore[union-attr]
        everyone = eu + us
        # the mesh settles: both regions known everywhere, coordinates learned from pings
        await wait_for(
            lambda: all(
                sorted(r.region for r in m.svc.snapshot().regions if r.centroid is not None) == ["eu", "us"]
                for m in everyone
                if m.svc is not None
            ),
            timeout=30,
        )
        await trio.sleep(20.0)
        via_us = (us[1].host.listen_addrs()[0],)  # type: ignore[union-attr]
        via_eu = (eu[1].host.listen_addrs()[0],)  # type: ignore[union-attr]
        await start_member(net, nursery, near_eu, ControlConfig(bootstrap=via_us, seed=1))
        await start_member(net, nursery, near_us, ControlConfig(bootstrap=via_eu, seed=2))
        assert near_eu.svc is not None and near_us.svc is not None
        await wait_for(lambda: near_eu.svc.joined.is_set() and near_us.svc.joined.is_set(), timeout=20)  # type: ignore[union-attr]
        assert near_eu.svc.region == "eu"
        assert near_us.svc.region == "us"
        # and they become members there: their region's coordinator lists them
        eu_coord = next(m for m in eu if m.svc is not None and m.svc.is_coordinator())
        await wait_for(
            lambda: near_eu.peer in {v.peer for v in eu_coord.svc.snapshot().regions[0].members}, timeout=10
        )  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()
