"""Gossip for the control plane: a small port and its py-libp2p GossipSub adapter.

The control service (``nodes.control``) publishes signed heartbeats on one topic per region
(``/p2c2r/region/<name>``) and coordinators publish region summaries on ``/p2c2r/summaries``.
It talks to the ``GossipPort`` protocol below; ``Libp2pGossip`` implements it on GossipSub.
Without a port (the in-memory backend, tests, the simulator) the control service floods the
same signed blobs over its own control streams instead, with the same validation.

GossipSub is configured deliberately, each choice for a measured py-libp2p 0.8.1 behaviour
(see shared/notes/py-libp2p.md):

- **v1.1 only** (``/meshsub/1.1.0``): listing v1.2+ made delivery worse in a 24-node mesh
  (87 % at p50 2.2 s vs 100 % at 169 ms with v1.1 only).
- **explicit 1 s heartbeat, adaptive gossip off**: the default heartbeat is 120 s, and the
  "adaptive" v2.0 logic (``_adapt_heartbeat_parameters``) moves it to 30-120 s when it judges
  the mesh healthy; a slow heartbeat means slow mesh repair after a member dies.
- **max_messages_per_topic_per_second sized for our rates**: the spam protection counts
  every *forwarding* peer (and our own publishes) per topic and drops above the limit
  (default 10/s), penalising honest forwarders. A region topic carries one heartbeat per
  member per second and the summaries topic one summary per region per second, so the
  limit is ``2 x`` the largest region we plan for (``GossipConfig.max_rate``, default 100/s).
  High-rate per-member traffic (load reports) never goes on gossip: it goes to the
  coordinator over an existing stream.
- **strict signing stays on**: js peers silently drop unsigned messages; our payloads are
  signed again by their author (``mesh.control_wire.Signed``), so relayed copies stay
  verifiable on any path.
- **topic validators**: every message is size-checked and signature-checked before it is
  delivered or forwarded (a rejected message reaches no one); rejections are counted.
- **subscriptions are cancelled explicitly** on exit: pubsub subscriptions do not end when
  the service stops (0.8.1), so the reader tasks live in our nursery.

Evidence (``nodes.evidence.EvidenceGossip``) rides on ``/p2c2r/evidence`` with an
*asynchronous* validator (``subscribe_async``): a receiver re-verifies a claim that a worker
cheated (which may mean re-running a kernel off the event loop) before GossipSub delivers or
forwards it, so forged evidence stops at the first hop. Its messages are bounded by
``EVIDENCE_MAX_BYTES`` (24 KiB: one message with its protobuf envelope fits the 32 KiB
inbound RPC cap of ``4 x max_message_bytes``); evidence is rare (one message per caught key).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

log = logging.getLogger("p2c2r.mesh.gossip")

REGION_TOPIC_PREFIX = "/p2c2r/region/"
SUMMARY_TOPIC = "/p2c2r/summaries"
#: Signed evidence that a worker returned a wrong result (``nodes.evidence``).
EVIDENCE_TOPIC = "/p2c2r/evidence"
#: Largest evidence message on gossip (see the module docstring).
EVIDENCE_MAX_BYTES = 24 * 1024

#: A validator returns ``None`` to accept, or a short reason (a counter name) to reject.
TopicValidator = Callable[[bytes], str | None]
#: Called with (origin peer id as base58, data) for each accepted message.
TopicHandler = Callable[[str, bytes], None]
#: ``await validator(origin peer id as base58, data)``: ``None`` accepts, a reason rejects.
AsyncTopicValidator = Callable[[str, bytes], Awaitable[str | None]]


def region_topic(region: str) -> str:
    return REGION_TOPIC_PREFIX + region


class GossipPort(Protocol):
    async def subscribe(self, topic: str, validator: TopicValidator, handler: TopicHandler) -> None:
        """Deliver every message on ``topic`` that ``validator`` accepts to ``handler``."""
        ...

    async def publish(self, topic: str, data: bytes) -> None: ...

    def counters(self) -> dict[str, int]: ...


class AsyncGossipPort(Protocol):
    """A gossip port whose validators may wait (``Libp2pGossip``, ``mesh.memory_gossip``)."""

    async def subscribe_async(
        self, topic: str, validator: AsyncTopicValidator, handler: TopicHandler, *, max_bytes: int
    ) -> None:
        """Deliver and forward only messages of at most ``max_bytes`` that ``validator`` accepts."""
        ...

    async def publish(self, topic: str, data: bytes) -> None: ...

    def counters(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class GossipConfig:
    heartbeat_interval_s: int = 1
    #: Mesh degree (D, D_low, D_high). Every hop costs ~1-8 ms of CPU per node in py-libp2p,
    #: and each member forwards every message to its whole mesh: with D=6 a member of a
    #: 6-node region wrote ~100 pubsub frames/s for 1 Hz heartbeats (measured, cProfile).
    #: D=3 still reaches a region of a dozen in two hops; IHAVE gossip repairs gaps, and
    #: nothing safety-critical rides on gossip (election messages go over streams).
    degree: int = 3
    degree_low: int = 2
    degree_high: int = 5
    #: Per-topic, per-forwarding-peer message budget (see the module docstring).
    max_rate: float = 100.0
    max_message_bytes: int = 8192


@dataclass
class Libp2pGossip:
    """``GossipPort`` on py-libp2p GossipSub; start with ``await nursery.start(g.run)``."""

    raw_host: Any
    config: GossipConfig = field(default_factory=GossipConfig)
    _pubsub: Any = None
    _nursery: trio.Nursery | None = None
    _counts: dict[str, int] = field(default_factory=dict)

    def counters(self) -> dict[str, int]:
        return dict(self._counts)

    def _count(self, key: str) -> None:
        self._counts[key] = self._counts.get(key, 0) + 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
        from libp2p.pubsub.pubsub import Pubsub
        from libp2p.tools.anyio_service import background_trio_service

        cfg = self.config
        router = GossipSub(
            protocols=[PROTOCOL_ID_V11],  # v1.1 only: see module docstring
            degree=cfg.degree,
            degree_low=cfg.degree_low,
            degree_high=cfg.degree_high,
            heartbeat_interval=cfg.heartbeat_interval_s,  # default 120 s: set explicitly
            heartbeat_initial_delay=0.1,
            adaptive_gossip_enabled=False,  # would move the heartbeat to 30-120 s
            max_messages_per_topic_per_second=cfg.max_rate,  # default 10/s drops honest forwarders
        )
        pubsub = Pubsub(
            self.raw_host, router, strict_signing=True, max_inbound_rpc_size=4 * cfg.max_message_bytes
        )
        async with background_trio_service(pubsub), background_trio_service(router):
            await pubsub.wait_until_ready()
            self._pubsub = pubsub
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    # Subscriptions outlive the service in 0.8.1: end our readers ourselves.
                    nursery.cancel_scope.cancel()
                    self._pubsub = None

    async def subscribe(self, topic: str, validator: TopicValidator, handler: TopicHandler) -> None:

        pubsub, nursery = self._pubsub, self._nursery
        if pubsub is None or nursery is None:
            raise RuntimeError("gossip is not running")
        limit = self.config.max_message_bytes

        def validate(_forwarder: Any, msg: Any) -> bool:
            data = bytes(msg.data)
            if len(data) > limit:
                self._count("gossip_oversized")
                return False
            why = validator(data)
            if why is not None:
                self._count(f"gossip_{why}")
                return False
            return True

        pubsub.set_topic_validator(topic, validate, False)
        sub = await pubsub.subscribe(topic)
        nursery.start_soon(self._read, sub, handler)

    async def subscribe_async(
        self, topic: str, validator: AsyncTopicValidator, handler: TopicHandler, *, max_bytes: int
    ) -> None:
        """Like ``subscribe`` with a validator that may wait (GossipSub runs it in its own
        task per message, within its 5 s validation timeout; a message it rejects or that
        times out is neither delivered nor forwarded). ``max_bytes`` replaces
        ``max_message_bytes`` for this topic; keep it under the inbound RPC cap."""

        pubsub, nursery = self._pubsub, self._nursery
        if pubsub is None or nursery is None:
            raise RuntimeError("gossip is not running")

        async def validate(_forwarder: Any, msg: Any) -> bool:
            data = bytes(msg.data)
            if len(data) > max_bytes:
                self._count("gossip_oversized")
                return False
            origin = self._origin(msg)
            if origin is None:
                return False
            why = await validator(origin, data)
            if why is not None:
                self._count(f"gossip_{why}")
                return False
            return True

        pubsub.set_topic_validator(topic, validate, True)
        sub = await pubsub.subscribe(topic)
        nursery.start_soon(self._read, sub, handler)

    async def _read(self, sub: Any, handler: TopicHandler) -> None:
        async for msg in sub:
            origin = self._origin(msg)
            if origin is None:
                continue
            self._count("gossip_received")
            handler(origin, bytes(msg.data))

    def _origin(self, msg: Any) -> str | None:
        """The author's peer id (base58) of a pubsub message; ``None`` (counted) if unusable."""
        from libp2p.peer.id import ID

        try:
            return str(ID(bytes(msg.from_id)).to_base58())
        except (TypeError, ValueError):
            self._count("gossip_bad_origin")
            return None

    async def publish(self, topic: str, data: bytes) -> None:
        pubsub = self._pubsub
        if pubsub is None:
            return
        try:
            await pubsub.publish(topic, data)
            self._count("gossip_published")
        except Exception as exc:  # a publish failure is a lost heartbeat, never a dead node
            self._count("gossip_publish_failed")
            log.debug("publish on %s failed: %r", topic, exc)
