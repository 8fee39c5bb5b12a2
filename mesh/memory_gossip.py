"""Gossip on the in-memory backend: a stand-in for GossipSub in tests and in one process.

``MemoryGossipNet(network).port(host)`` gives each ``MemoryHost`` a port with the same
surface as ``mesh.gossip.Libp2pGossip`` (``subscribe``, ``subscribe_async``, ``publish``,
``counters``; start it with ``await nursery.start(port.run)``). A message floods along the
hosts' live connections to peers subscribed to its topic, one ``hop_delay_s`` per hop in
trio time (so it runs under ``MockClock``), and each receiver runs its own validator before
it delivers or forwards, as GossipSub does: a message a validator rejects stops there. The
publisher's own validator applies to its publish, and it gets its own message, as in
py-libp2p. Messages are de-duplicated by (origin, sequence number). Partitions of the
memory network cut gossip as they cut streams.

It models delivery and validation, not GossipSub's mesh degree, scoring or IHAVE repair.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import trio

from mesh.gossip import AsyncTopicValidator, TopicHandler, TopicValidator
from mesh.identity import peer_id_to_str
from mesh.memory import MemoryHost, MemoryNetwork

log = logging.getLogger("p2c2r.mesh.memory_gossip")


@dataclass
class _Sub:
    handler: TopicHandler
    validator: TopicValidator | None = None
    async_validator: AsyncTopicValidator | None = None
    max_bytes: int = 8192


class MemoryGossipNet:
    def __init__(self, network: MemoryNetwork, *, hop_delay_s: float = 0.01, seen: int = 4096) -> None:
        self.network = network
        self.hop_delay_s = hop_delay_s
        self.seen = seen
        self._ports: dict[bytes, MemoryGossip] = {}

    def port(self, host: MemoryHost, *, max_message_bytes: int = 8192) -> MemoryGossip:
        p = MemoryGossip(self, host, max_message_bytes)
        self._ports[host.peer_id] = p
        return p

    def _neighbours(self, host: MemoryHost) -> list[MemoryGossip]:
        out = []
        for peer in host.connected_peers():
            p = self._ports.get(peer)
            if p is not None and p.running and self.network.reachable(host.peer_id, peer):
                out.append(p)
        return out


@dataclass
class MemoryGossip:
    net: MemoryGossipNet
    host: MemoryHost
    max_message_bytes: int = 8192
    running: bool = False
    _subs: dict[str, _Sub] = field(default_factory=dict)
    _seen: OrderedDict[tuple[bytes, int], None] = field(default_factory=OrderedDict)
    _counts: dict[str, int] = field(default_factory=dict)
    _seq: int = 0
    _nursery: trio.Nursery | None = None

    def counters(self) -> dict[str, int]:
        return dict(self._counts)

    def _count(self, key: str) -> None:
        self._counts[key] = self._counts.get(key, 0) + 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.running = True
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self.running = False
                self._nursery = None
                nursery.cancel_scope.cancel()

    async def subscribe(self, topic: str, validator: TopicValidator, handler: TopicHandler) -> None:
        self._subs[topic] = _Sub(handler, validator=validator, max_bytes=self.max_message_bytes)

    async def subscribe_async(
        self, topic: str, validator: AsyncTopicValidator, handler: TopicHandler, *, max_bytes: int
    ) -> None:
        self._subs[topic] = _Sub(handler, async_validator=validator, max_bytes=max_bytes)

    async def publish(self, topic: str, data: bytes) -> None:
        if not self.running:
            return
        self._seq += 1
        self._count("gossip_published")
        await self._receive(self.host.peer_id, self._seq, topic, bytes(data), local=True)

    async def _receive(self, origin: bytes, seq: int, topic: str, data: bytes, *, local: bool) -> None:
        key = (origin, seq)
        if key in self._seen:
            return
        sub = self._subs.get(topic)
        if sub is None:
            return  # not subscribed: GossipSub neither delivers nor relays it
        self._seen[key] = None
        while len(self._seen) > self.net.seen:
            self._seen.popitem(last=False)
        if len(data) > sub.max_bytes:
            self._count("gossip_oversized")
            return
        origin_s = peer_id_to_str(origin)
        if sub.async_validator is not None:
            why = await sub.async_validator(origin_s, data)
        else:
            assert sub.validator is not None
            why = sub.validator(data)
        if why is not None:
            self._count(f"gossip_{why}")
            return
        if not local:
            self._count("gossip_received")
        try:
            sub.handler(origin_s, data)
        except Exception:  # a handler bug must not stop the flood for everyone else
            log.exception("gossip handler for %s failed", topic)
        nursery = self._nursery
        if nursery is None:
            return
        for peer in self.net._neighbours(self.host):
            nursery.start_soon(self._forward, peer, origin, seq, topic, data)

    async def _forward(self, peer: MemoryGossip, origin: bytes, seq: int, topic: str, data: bytes) -> None:
        await trio.sleep(self.net.hop_delay_s)
        target = peer._nursery
        if (
            peer.running
            and target is not None
            and self.net.network.reachable(self.host.peer_id, peer.host.peer_id)
        ):
            target.start_soon(peer._receive_quietly, origin, seq, topic, data)

    async def _receive_quietly(self, origin: bytes, seq: int, topic: str, data: bytes) -> None:
        await self._receive(origin, seq, topic, data, local=False)
