"""The control-plane service run inside every mesh node: the trio shell around the cores.

It drives ``mesh.membership`` (who is alive), ``mesh.vivaldi`` (where everyone is),
``mesh.election`` (who coordinates the region) and, while this node holds the lease,
``nodes.coordinator`` (placement leases over ``nodes.scheduler``). One driver task owns all
of those cores; every other task (stream readers, gossip readers, the joiner) reaches it
through one bounded event channel, and the cores' effects go out through bounded per-link
queues, so a slow peer can never stall the driver (a full queue drops and counts).

Transport choices (figures in docs/CONTROL_PLANE.md, measured by scripts/bench_gossip.py):

- **Persistent control streams** (``/p2c2r/control/1.0.0``, ``mesh.control_wire``) carry
  everything addressed to one peer or that must be fast: election messages (a renew must
  reach every member well inside the 1.5 s lease, and a vote must come back in one round
  trip), load reports to the coordinator (4 Hz per member), lease requests and grants,
  status queries, Vivaldi pings. One stream per peer pair, either side may open it.
- **Gossip** (``mesh.gossip``; GossipSub on py-libp2p) carries what every member must see
  at low rate: signed heartbeats on ``/p2c2r/region/<name>`` (1 Hz per member) and signed
  region summaries on ``/p2c2r/summaries`` (1 Hz per region). Without a gossip port (the
  in-memory backend) the same signed blobs are flooded over the control streams, with
  de-duplication by the membership core's newest-wins order.

Join: connect to the bootstrap addresses, ask each for its status (its region's members,
coordinator, electorate, and the summaries of every region it knows), pick the region
(configured, or the nearest by Vivaldi coordinates: see ``_choose_region``), link to the region's
members and follow the election. A node trusts no record before a live exchange: members
become members by their own signed heartbeats, coordinators by their renews.

Electorate: configured (``voters``), else learned from any member or summary of the region,
else, after ``electorate_wait_s`` with nobody to learn from, the lowest peer id among the
region members this node knows ("founder": a single-voter region, meant for demos and
mDNS-only LANs). Founders that meet later (two groups that found each other by mDNS after
each founded) converge on the lower founder; a configured electorate never changes.

Every inbound message is bounded and validated; unsigned, malformed, forged (an election
message whose author is not the stream's authenticated peer), stale or wrong-region ones
are dropped and counted in ``counters()``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from mesh import control_wire as cw
from mesh.election import (
    BecomeCoordinator,
    Broadcast,
    Claim,
    CoordinatorChanged,
    ElectionConfig,
    ElectionCore,
    ElectionMessage,
    InvariantViolated,
    PersistVote,
    Release,
    Renew,
    RenewAck,
    Send,
    StepDown,
    Vote,
    VoteRecord,
    rank_score,
)
from mesh.errors import P2C2RError, ProtocolError, UnavailableError, VerificationError
from mesh.gossip import SUMMARY_TOPIC, GossipPort, region_topic
from mesh.identity import Identity, peer_id_from_str, peer_id_to_str
from mesh.membership import (
    Heartbeat,
    HeartbeatDue,
    MembershipConfig,
    MembershipCore,
    PeerAlive,
    PeerDead,
    PeerForgotten,
    PeerJoined,
    PeerState,
    PeerSuspected,
)
from mesh.transport import Host, Stream
from mesh.vivaldi import Coord, VivaldiCore, centroid, estimate_rtt
from nodes.coordinator import Coordinator
from nodes.scheduler import RegionSummary, SchedulerConfig

log = logging.getLogger("p2c2r.control")

SOFTWARE_VERSION = "0.1.0"
DEFAULT_REGION = "default"


@dataclass(frozen=True)
class ControlConfig:
    #: The region to join; ``None`` picks the nearest known region (or ``default``).
    region: str | None = None
    #: The region's electorate (base58 peer ids); empty: learn it (see module docstring).
    voters: tuple[str, ...] = ()
    bootstrap: tuple[str, ...] = ()
    eligible: bool = True
    #: Only voters stand as candidates (non-voters still rank nobody and never claim).
    #: Fewer candidates means fewer duelling claims: with every member eligible, 6 busy
    #: processes per region on 2 cores duelled for seconds (50+ epochs) before a winner.
    #: A voter candidate also holds its own vote, so it needs one grant fewer.
    voter_candidates: bool = True
    membership: MembershipConfig = field(
        default_factory=lambda: MembershipConfig(
            heartbeat_interval_s=1.0, suspect_after_s=3.0, dead_after_s=6.0, forget_after_s=60.0
        )
    )
    #: The election defaults (lease 1.5 s, renew 0.5 s, stagger 0.1 s) give failover within
    #: 2 s; the claim timeout is raised from 0.2 s to 0.5 s because a claim's round trip
    #: between loaded processes (12 nodes on 2 cores) often exceeded 0.2 s, so every claim
    #: failed and retried. It only bounds a *failed* claim; a claim wins as soon as a quorum
    #: answers, so it does not lengthen a normal failover. The rank stagger is raised from
    #: 0.1 s to 0.25 s for the same reason: the second-ranked voter must hear the first one's
    #: claim before its own turn, or both claim and split the vote (the 12-node test then
    #: took 3 epochs and 3 s to fail over); it delays only a failover the first rank misses.
    election: ElectionConfig = field(
        default_factory=lambda: ElectionConfig(claim_timeout_s=0.5, rank_stagger_s=0.25)
    )
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    ping_interval_s: float = 1.0
    #: Peers pinged per interval (Vivaldi needs a few samples per second, not all pairs).
    ping_sample: int = 2
    #: Automatic region choice: members pinged per region, and rounds of pings, to place
    #: this node's coordinate before it compares region centroids.
    region_probe_peers: int = 3
    region_probe_rounds: int = 4
    region_replay_passes: int = 50
    #: Every this many ping rounds, also ping one member of another region (0: never).
    wan_ping_every: int = 3
    #: Member -> coordinator load reports (streams); heartbeats carry load too, at 1 Hz.
    load_report_interval_s: float = 0.5
    summary_interval_s: float = 1.0
    electorate_wait_s: float = 2.0
    query_timeout_s: float = 3.0
    #: Members this node keeps control links to (its region; the election needs them all).
    max_links: int = 256
    link_queue: int = 256
    #: After a failed dial, messages to that peer are dropped (not redialled) this long.
    redial_backoff_s: float = 1.0
    event_queue: int = 4096
    seed: int | None = None


@dataclass
class LocalLoad:
    """What this node says about itself in heartbeats and load reports."""

    load: float = 0.0
    queue_depth: int = 0
    capacity: dict[str, int] = field(default_factory=dict)
    #: Cumulative tasks completed per kind, and cumulative seconds spent computing them
    #: (the control service turns deltas into service-time samples for the scheduler).
    completed: dict[str, int] = field(default_factory=dict)
    busy_s: float = 0.0


LoadFn = Callable[[], LocalLoad]


class VoteStore(Protocol):
    def load(self, region: str) -> VoteRecord | None: ...

    def save(self, region: str, record: VoteRecord) -> None: ...


class MemoryVoteStore:
    def __init__(self) -> None:
        self._votes: dict[str, VoteRecord] = {}

    def load(self, region: str) -> VoteRecord | None:
        return self._votes.get(region)

    def save(self, region: str, record: VoteRecord) -> None:
        self._votes[region] = record


class FileVoteStore:
    """Votes persisted next to the key file, written atomically before the vote is sent."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, region: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in region)
        return self.directory / f"vote-{safe}.json"

    def load(self, region: str) -> VoteRecord | None:
        try:
            obj = json.loads(self._path(region).read_text())
            return VoteRecord(int(obj["epoch"]), str(obj["candidate"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, region: str, record: VoteRecord) -> None:
        path = self._path(region)
        tmp = path.with_suffix(".tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump({"epoch": record.epoch, "candidate": record.candidate}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot persist vote to %s: %s", path, exc)


@dataclass(eq=False)
class _Link:
    peer: str
    peer_bytes: bytes
    stream: Stream
    send: trio.MemorySendChannel[bytes]
    recv: trio.MemoryReceiveChannel[bytes]
    outbound: bool
    hello: cw.Hello | None = None
    alive: bool = True


@dataclass(frozen=True)
class _Msg:
    link: _Link
    msg: cw.ControlMessage


@dataclass(frozen=True)
class _LinkDown:
    link: _Link


@dataclass(frozen=True)
class _GossipIn:
    topic: str
    origin: str
    data: bytes


@dataclass(frozen=True)
class _Snap:
    snapshot: cw.Snapshot


@dataclass(frozen=True)
class _SetRegion:
    region: str


_Event = _Msg | _LinkDown | _GossipIn | _Snap | _SetRegion

_ELECTION_AUTHOR: dict[type, str] = {
    Claim: "candidate",
    Vote: "voter",
    Renew: "coordinator",
    RenewAck: "voter",
    Release: "candidate",
}


class ControlService:
    """One node's control plane. Start with ``await nursery.start(service.run)``."""

    def __init__(
        self,
        host: Host,
        identity: Identity,
        config: ControlConfig = ControlConfig(),
        *,
        load_fn: LoadFn | None = None,
        gossip: GossipPort | None = None,
        votes: VoteStore | None = None,
        on_region_record: Callable[[cw.RegionView], None] | None = None,
        addrs_fn: Callable[[], list[str]] | None = None,
    ) -> None:
        self.host = host
        self.identity = identity
        self.config = config
        self.self_id = peer_id_to_str(host.peer_id)
        self._load_fn = load_fn or LocalLoad
        self._gossip = gossip
        self._votes = votes or MemoryVoteStore()
        self._on_region_record = on_region_record
        self._addrs_fn = addrs_fn or host.listen_addrs
        self._last_completed: dict[str, int] = {}
        self._last_busy = 0.0
        seed = config.seed if config.seed is not None else int.from_bytes(os.urandom(8), "big")
        self.rng = random.Random(seed)
        self.region: str | None = config.region
        self.vivaldi = VivaldiCore(self.self_id, random.Random(self.rng.random()))
        self.membership: MembershipCore | None = None
        self.election: ElectionCore | None = None
        self.coordinator: Coordinator | None = None
        self.voters: tuple[str, ...] = tuple(sorted(set(config.voters)))
        self._voters_learned = bool(self.voters)
        self._links: dict[str, list[_Link]] = {}
        self._dialing: dict[str, list[bytes]] = {}
        self._dial_failed: dict[str, float] = {}
        self._addrs: dict[str, tuple[str, ...]] = {}
        self._regions: dict[str, tuple[cw.RegionView, int, float]] = {}
        self._coord_since: float = 0.0
        self._renew_seen_at: float = -math.inf
        self._counts: dict[str, int] = {}
        self._events_send, self._events_recv = trio.open_memory_channel[_Event](config.event_queue)
        self._gossip_send, self._gossip_recv = trio.open_memory_channel[tuple[str, bytes]](64)
        self._waiters: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._next_req = 1
        self._pings: dict[int, tuple[str, float]] = {}
        self._started_at = 0.0
        self._next_ping = 0.0
        self._ping_rounds = 0
        self._published_coord: Coord | None = None
        self._next_load = 0.0
        self._next_summary = 0.0
        self._electorate_at: float | None = None
        self._load_seq = 0
        self._summary_seq = 0
        self._nursery: trio.Nursery | None = None
        self._hb_seen: dict[str, tuple[int, int]] = {}
        self.joined = trio.Event()
        self.coordinator_changed = trio.Event()

    # ================================================================== public

    def counters(self) -> dict[str, int]:
        out = dict(self._counts)
        if self.membership is not None:
            out["heartbeats_stale"] = self.membership.stats.stale
            out["heartbeats_accepted"] = self.membership.stats.accepted
        if self._gossip is not None:
            out.update(self._gossip.counters())
        return out

    @property
    def coordinator_id(self) -> str | None:
        return None if self.election is None else self.election.coordinator

    @property
    def epoch(self) -> int:
        return 0 if self.election is None else self.election.epoch

    def is_coordinator(self) -> bool:
        return self.election is not None and self.election.is_coordinator(trio.current_time())

    def live_coordinator(self, now: float) -> str | None:
        """The coordinator, if it is live as far as we know: we lead, or its last renew
        arrived within one lease. The election core keeps following a coordinator that
        went silent until someone else wins; telling gamers and joiners about it would send
        them to a dead peer during the interregnum (and back to it after each refusal)."""
        election = self.election
        if election is None or election.coordinator is None:
            return None
        if election.coordinator == self.self_id:
            return self.self_id if election.is_coordinator(now) else None
        if now - self._renew_seen_at > self.config.election.lease_s:
            return None
        return election.coordinator

    def add_hint(self, addr: str) -> None:
        """A peer address from mDNS or the DHT: dial it and link, like a bootstrap peer."""
        if self._nursery is not None:
            self._nursery.start_soon(self._hint, addr)

    async def _hint(self, addr: str) -> None:
        try:
            peer = peer_id_to_str(await self.host.connect(addr))
        except P2C2RError as exc:
            log.debug("hinted peer %s unreachable: %s", addr, exc)
            return
        if peer != self.self_id:
            self._addrs.setdefault(peer, (addr,))
            self._send(peer, self._hello())

    def known_addrs(self, peer: str) -> tuple[str, ...]:
        if peer == self.self_id:
            return tuple(self._addrs_fn())
        return self._addrs.get(peer, ())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._started_at = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.host.set_stream_handler(cw.PROTOCOL_ID, self._on_inbound_stream)
                nursery.start_soon(self._driver)
                nursery.start_soon(self._gossip_publisher)
                if self._gossip is not None:
                    await self._gossip.subscribe(
                        SUMMARY_TOPIC, self._validate_summary_blob, self._gossip_handler(SUMMARY_TOPIC)
                    )
                nursery.start_soon(self._join)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    async def query_status(self, peer: str, timeout: float | None = None) -> cw.Snapshot:
        """Ask ``peer`` for its view (it must be connected or its address known)."""
        rid = self._new_request()
        reply = await self._request(peer, cw.StatusQuery(rid), rid, timeout)
        if not isinstance(reply, cw.StatusReply):
            raise ProtocolError(f"peer {peer} answered a status query with {type(reply).__name__}")
        return reply.snapshot

    async def measure_rtt(self, peer: str, timeout: float | None = None) -> float:
        return (await self._ping(peer, timeout))[0]

    async def _ping(self, peer: str, timeout: float | None = None) -> tuple[float, cw.Pong | None]:
        """One RTT sample to ``peer`` (folded into our coordinate), with the peer's answer."""
        nonce = self._new_request()
        t0 = trio.current_time()
        reply = await self._request(peer, cw.Ping(nonce), nonce, timeout)
        rtt = trio.current_time() - t0
        if isinstance(reply, cw.Pong):
            self.vivaldi.on_rtt_sample(peer, reply.coord, reply.error, rtt, trio.current_time())
            return rtt, reply
        return rtt, None

    def snapshot(self) -> cw.Snapshot:
        now = trio.current_time()
        views: list[cw.RegionView] = []
        own = self._own_region_view(now)
        if own is not None:
            views.append(own)
        for name in sorted(self._regions):
            if own is not None and name == own.region:
                continue
            view, _, at = self._regions[name]
            views.append(_with_age(view, now - at))
        role = "coordinator" if self.is_coordinator() else ("candidate" if self._is_candidate() else "member")
        return cw.Snapshot(
            peer=self.self_id,
            region=self.region or "",
            role=role,
            version=SOFTWARE_VERSION,
            addrs=tuple(self._addrs_fn())[: cw.MAX_ADDRS],
            coord=self.vivaldi.coord,
            regions=tuple(views),
            counters=tuple(sorted(self.counters().items()))[: cw.MAX_KINDS * 2],
            election=self._election_view(now),
        )

    def _election_view(self, now: float) -> cw.ElectionView | None:
        e = self.election
        if e is None:
            return None
        others = [v for v in self.voters if v != self.self_id]
        linked = 0
        for v in others:
            link = self._link_for(v)
            linked += link is not None and link.hello is not None
        at = e.next_claim_at
        return cw.ElectionView(
            state=e.role.value,
            term=e.term,
            voted_epoch=e.voted_epoch,
            failed_claims=e.failed_claims,
            next_claim_s=None if at is None or math.isinf(at) else max(0.0, at - now),
            voters=len(others),
            voters_linked=linked,
        )

    # ================================================================== links

    def _count(self, key: str, n: int = 1) -> None:
        self._counts[key] = self._counts.get(key, 0) + n

    async def _on_inbound_stream(self, stream: Stream) -> None:
        await self._serve_link(stream, outbound=False)

    async def _serve_link(self, stream: Stream, *, outbound: bool) -> None:
        peer_bytes = stream.remote_peer
        peer = peer_id_to_str(peer_bytes)
        send, recv = trio.open_memory_channel[bytes](self.config.link_queue)
        link = _Link(peer, peer_bytes, stream, send, recv, outbound)
        self._links.setdefault(peer, []).append(link)
        send.send_nowait(cw.encode(self._hello()))
        for frame in self._dialing.pop(peer, []):
            self._enqueue(link, frame)
        try:
            async with trio.open_nursery() as nursery:

                async def writer() -> None:
                    try:
                        async for frame in recv:
                            await stream.write(frame)
                    except P2C2RError:
                        pass
                    nursery.cancel_scope.cancel()

                async def reader() -> None:
                    try:
                        await self._read_link(link)
                    except P2C2RError as exc:
                        log.debug("control link %s ended: %s", peer[-8:], exc)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(writer)
                nursery.start_soon(reader)
        except Exception:  # per-stream boundary: one bad peer must never stop the node
            log.exception("control link to %s failed", peer)
        finally:
            link.alive = False
            links = self._links.get(peer, [])
            if link in links:
                links.remove(link)
            if not links:
                self._links.pop(peer, None)
            send.close()
            with trio.CancelScope(shield=True):
                with trio.move_on_after(0.5):
                    await stream.reset()
            try:
                self._events_send.send_nowait(_LinkDown(link))
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                pass

    async def _read_link(self, link: _Link) -> None:
        decoder = cw.decoder()
        while True:
            data = await link.stream.read(65536)
            if not data:
                return
            for body in decoder.feed(data):  # FrameTooLargeError ends the link (cannot resync)
                try:
                    msg = cw.decode(body)
                except ProtocolError as exc:
                    self._count("malformed")
                    log.debug("bad control frame from %s: %s", link.peer, exc)
                    continue
                if isinstance(msg, (cw.StatusReply, cw.Pong)):
                    rid = msg.request_id if isinstance(msg, cw.StatusReply) else msg.nonce
                    waiter = self._waiters.get(rid)
                    if waiter is not None:
                        waiter[1].append(msg)
                        waiter[0].set()
                        continue
                    if isinstance(msg, cw.StatusReply):
                        continue
                try:
                    self._events_send.send_nowait(_Msg(link, msg))
                except trio.WouldBlock:
                    self._count("dropped_overload")

    def _hello(self) -> cw.Hello:
        addrs = tuple(self._addrs_fn())[: cw.MAX_ADDRS]
        return cw.Hello(addrs, self.region or "", SOFTWARE_VERSION, "node")

    def _link_for(self, peer: str) -> _Link | None:
        # The newest link first: a peer that opened a new stream abandoned the old one.
        for link in reversed(self._links.get(peer, [])):
            if link.alive:
                return link
        return None

    def _enqueue(self, link: _Link, frame: bytes) -> None:
        try:
            link.send.send_nowait(frame)
        except trio.WouldBlock:
            self._count("dropped_slow_peer")
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._count("dropped_link_closed")

    def _send(self, peer: str, msg: cw.ControlMessage) -> None:
        """Queue ``msg`` to ``peer``, dialling a control link first if there is none."""
        if peer == self.self_id:
            return
        frame = cw.encode(msg)
        link = self._link_for(peer)
        if link is not None:
            self._enqueue(link, frame)
            return
        pending = self._dialing.get(peer)
        if pending is not None:
            if len(pending) < self.config.link_queue:
                pending.append(frame)
            else:
                self._count("dropped_dialing")
            return
        if len(self._links) >= self.config.max_links or self._nursery is None:
            self._count("dropped_no_link")
            return
        failed_at = self._dial_failed.get(peer)
        if failed_at is not None and trio.current_time() - failed_at < self.config.redial_backoff_s:
            self._count("dropped_dial_backoff")  # every heartbeat would redial an unreachable peer
            return
        self._dialing[peer] = [frame]
        self._nursery.start_soon(self._dial, peer)

    async def _dial(self, peer: str) -> None:
        try:
            stream = await self._open_stream(peer)
        except P2C2RError as exc:
            dropped = self._dialing.pop(peer, [])
            self._dial_failed[peer] = trio.current_time()
            self._count("dial_failed")
            log.debug("cannot open a control link to %s: %s (%d messages dropped)", peer, exc, len(dropped))
            return
        await self._serve_link(stream, outbound=True)

    async def _open_stream(self, peer: str) -> Stream:
        pid = peer_id_from_str(peer)
        try:
            return await self.host.open_stream(pid, cw.PROTOCOL_ID)
        except P2C2RError:
            addrs = self._addrs.get(peer, ())
            if not addrs:
                raise
        last: P2C2RError | None = None
        for addr in addrs:
            try:
                await self.host.connect(addr)
                return await self.host.open_stream(pid, cw.PROTOCOL_ID)
            except P2C2RError as exc:
                last = exc
        assert last is not None
        raise last

    def _new_request(self) -> int:
        rid = self._next_req
        self._next_req += 1
        return rid

    async def _request(
        self, peer: str, msg: cw.ControlMessage, rid: int, timeout: float | None
    ) -> cw.ControlMessage:
        event = trio.Event()
        box: list[Any] = []
        self._waiters[rid] = (event, box)
        try:
            self._send(peer, msg)
            with trio.fail_after(timeout or self.config.query_timeout_s):
                await event.wait()
        except trio.TooSlowError as exc:
            raise UnavailableError(f"peer {peer} did not answer a {type(msg).__name__} in time") from exc
        finally:
            self._waiters.pop(rid, None)
        reply: cw.ControlMessage = box[0]
        return reply

    # ================================================================== join

    async def _join(self) -> None:
        snapshots: list[cw.Snapshot] = []
        for addr in self.config.bootstrap:
            try:
                pid = await self.host.connect(addr)
            except P2C2RError as exc:
                log.warning("bootstrap %s unreachable: %s", addr, exc)
                continue
            peer = peer_id_to_str(pid)
            if peer == self.self_id:
                continue
            self._addrs.setdefault(peer, (addr,))
            try:
                snap = await self.query_status(peer)
            except P2C2RError as exc:
                log.warning("bootstrap %s did not answer a status query: %s", addr, exc)
                continue
            snapshots.append(snap)
            await self._events_send.send(_Snap(snap))
        region = self.region
        if region is None:
            region = await self._choose_region(snapshots)
        await self._events_send.send(_SetRegion(region))
        if self._gossip is not None:
            await self._gossip.subscribe(
                region_topic(region),
                self._validate_heartbeat_blob,
                self._gossip_handler(region_topic(region)),
            )
        self.joined.set()

    async def _choose_region(self, snapshots: Sequence[cw.Snapshot]) -> str:
        """The nearest region by network coordinates (``--region`` not given).

        The node pings a few members of every region it heard of (the coordinator first), a
        few rounds each; every sample moves its Vivaldi coordinate. It then joins the region
        whose centroid (as the bootstrap peers report it) is nearest to that coordinate. A
        region without a centroid yet is judged by the median RTT measured to its members
        instead, so a young mesh still gets a sensible answer. ``default`` when nobody answered.
        """
        probes: dict[str, list[str]] = {}
        centroids: dict[str, Coord] = {}
        for snap in snapshots:
            for view in snap.regions:
                if view.centroid is not None:
                    centroids.setdefault(view.region, view.centroid)
                picked = probes.setdefault(view.region, [])
                if view.coordinator is not None and view.coordinator not in picked:
                    picked.insert(0, view.coordinator)
                    if view.coordinator_addrs:
                        self._addrs.setdefault(view.coordinator, view.coordinator_addrs)
                for m in view.members:
                    if len(picked) >= self.config.region_probe_peers:
                        break
                    if m.peer != self.self_id and m.peer not in picked and m.addrs and m.state == "alive":
                        picked.append(m.peer)
                        self._addrs.setdefault(m.peer, m.addrs)
                del picked[self.config.region_probe_peers :]
        probes = {r: ps for r, ps in probes.items() if ps}
        if not probes:
            return DEFAULT_REGION
        samples: dict[str, list[float]] = {r: [] for r in probes}
        answers: list[tuple[str, cw.Pong, float]] = []

        async def ping(region: str, peer: str) -> None:
            with contextlib.suppress(P2C2RError):
                rtt, pong = await self._ping(peer, timeout=1.0)
                samples[region].append(rtt)
                if pong is not None:
                    answers.append((peer, pong, rtt))

        for _ in range(self.config.region_probe_rounds):
            async with trio.open_nursery() as nursery:
                for region, peers in probes.items():
                    for peer in peers:
                        nursery.start_soon(ping, region, peer)
        # A newcomer's coordinate after a dozen samples is still far off (error ~0.9): it
        # started at the origin. Replaying the measured samples lets the Vivaldi update settle
        # on the position that fits them (gradient descent on the same spring model), exactly
        # as re-pinging the same peers would, without the wait or the traffic.
        for _ in range(self.config.region_replay_passes):
            if self.vivaldi.error <= 0.2:
                break
            for peer, pong, rtt in answers:
                self.vivaldi.on_rtt_sample(peer, pong.coord, pong.error, rtt, trio.current_time())
        reachable = {r for r, s in samples.items() if s}
        if not reachable:
            return sorted(probes)[0]
        by_coord = {r: c for r, c in centroids.items() if r in reachable}
        estimates: dict[str, float] = {}
        for region in sorted(reachable):
            if region in by_coord:
                estimates[region] = estimate_rtt(self.vivaldi.coord, by_coord[region])
            else:
                s = sorted(samples[region])
                estimates[region] = s[len(s) // 2]
        chosen = min(sorted(estimates), key=lambda r: estimates[r])
        log.info(
            "region chosen automatically: %s (estimated RTT %s; coordinate error %.2f)",
            chosen,
            ", ".join(f"{r} {1e3 * e:.1f} ms" for r, e in sorted(estimates.items())),
            self.vivaldi.error,
        )
        return chosen

    # ================================================================== driver

    async def _driver(self) -> None:
        while True:
            deadline = self._next_deadline()
            with trio.move_on_at(deadline):
                ev = await self._events_recv.receive()
                now = trio.current_time()
                self._handle(ev, now)
                for _ in range(256):
                    try:
                        ev = self._events_recv.receive_nowait()
                    except trio.WouldBlock:
                        break
                    self._handle(ev, now)
            self._tick(trio.current_time())

    def _next_deadline(self) -> float:
        times = [self._next_ping, self._next_load, self._next_summary]
        if self._electorate_at is not None:
            times.append(self._electorate_at)
        for core in (self.membership, self.election, self.coordinator):
            if core is not None:
                d = core.next_deadline()
                if d is not None:
                    times.append(d)
        return min(times) if self.membership is not None else math.inf

    def _handle(self, ev: _Event, now: float) -> None:
        if isinstance(ev, _Msg):
            self._on_message(ev.link, ev.msg, now)
        elif isinstance(ev, _GossipIn):
            self._on_gossip(ev.topic, ev.data, now, relay_from=None)
        elif isinstance(ev, _LinkDown):
            pass  # liveness is decided by heartbeats and leases, never by one TCP connection
        elif isinstance(ev, _Snap):
            self._merge_snapshot(ev.snapshot, now)
        else:
            self._set_region(ev.region, now)
        self._process_effects(now)

    def _tick(self, now: float) -> None:
        if self.membership is None:
            return
        self.membership.on_tick(now)
        if self.election is not None:
            self.election.on_tick(now)
        if self.coordinator is not None:
            self.coordinator.on_tick(now)
        if self._electorate_at is not None and now >= self._electorate_at:
            self._electorate_at = None
            if not self.voters:
                members = [p.heartbeat.peer for p in self.membership.peers(state=None)]
                self._adopt_voters((min([self.self_id, *members]),), now, why="founder rule")
        if now >= self._next_ping:
            self._next_ping = now + self.config.ping_interval_s
            self._send_pings(now)
            self._link_voters()
        if now >= self._next_load:
            self._next_load = now + self.config.load_report_interval_s
            self._report_load(now)
        if now >= self._next_summary:
            self._next_summary = now + self.config.summary_interval_s
            self._publish_summary(now)
        self._process_effects(now)

    def _set_region(self, region: str, now: float) -> None:
        self.region = region
        self.membership = MembershipCore(
            self.self_id, self.config.membership, now=now, incarnation=self._incarnation()
        )
        hello = cw.encode(self._hello())
        for peer in sorted(self._links):
            link = self._link_for(peer)
            if link is not None:
                self._enqueue(link, hello)  # our first hello went out before we knew our region
        self._next_ping = self._next_load = self._next_summary = now
        view = self._regions.get(region)
        if not self.voters and view is not None and view[0].voters:
            self._adopt_voters(view[0].voters, now, why=f"learned from {region}'s summary")
        if self.voters:
            self._make_election(now)
        else:
            self._electorate_at = now + self.config.electorate_wait_s
        # Link to every member we have heard of, so the election can reach them.
        for name, (v, _, _) in sorted(self._regions.items()):
            if name == region:
                for m in v.members:
                    if m.peer != self.self_id:
                        self._send(m.peer, self._hello())
        log.info("joined region %s (%d known members)", region, len(self._region_peers()))

    def _incarnation(self) -> int:
        # A restarted node must look newer than its old self: random 62-bit incarnation.
        return self.rng.getrandbits(62)

    def _adopt_voters(self, voters: Sequence[str], now: float, *, why: str) -> None:
        voters = tuple(sorted(set(voters)))[: cw.MAX_VOTERS]
        if not voters or voters == self.voters:
            return
        if self.voters:
            # Two founders can meet after the fact: nodes that found each other by mDNS (or
            # across a partition at start-up) each founded a single-voter electorate before
            # they knew of the other. Learned single-voter electorates give way to the lower
            # founder, the rule each founder applied locally, so the region converges on one
            # electorate. A configured electorate (--voter) never changes.
            if self.config.voters or len(voters) != 1 or len(self.voters) != 1:
                self._count("electorate_conflict")
                return
            if voters[0] > self.voters[0]:
                return
            log.warning(
                "region %s: two founders met; following the lower one, %s, instead of %s",
                self.region,
                voters[0][-8:],
                self.voters[0][-8:],
            )
            if self.coordinator is not None:
                self.coordinator = None
            self.election = None
        self.voters = voters
        log.info("region %s electorate: %s (%s)", self.region, ", ".join(v[-8:] for v in voters), why)
        if self.membership is not None and self.election is None:
            self._make_election(now)

    def _link_voters(self) -> None:
        """Keep a control link to every voter: renews, claims and heartbeats reach a member
        through its links, and a member that is not a candidate never broadcasts anything
        that would open them (one that joined through another region's bootstrap peer
        would otherwise never hear its own region). Dial backoff bounds the retries."""
        if self.region is None:
            return
        for v in self.voters:
            if v != self.self_id and self._link_for(v) is None and v not in self._dialing:
                self._send(v, self._hello())

    def _eligible(self) -> bool:
        return self.config.eligible and (not self.config.voter_candidates or self.self_id in self.voters)

    def _make_election(self, now: float) -> None:
        assert self.region is not None
        self.election = ElectionCore(
            self.self_id,
            self.region,
            self.voters,
            random.Random(self.rng.random()),
            now=now,
            config=self.config.election,
            eligible=self._eligible(),
            restored_vote=self._votes.load(self.region),
        )
        self._update_candidates(now)

    # ================================================================== messages

    def _on_message(self, link: _Link, msg: cw.ControlMessage, now: float) -> None:
        peer = link.peer
        if isinstance(msg, cw.Hello):
            link.hello = msg
            if msg.role == "node" and msg.addrs:
                self._addrs[peer] = msg.addrs
        elif isinstance(msg, (Claim, Vote, Renew, RenewAck, Release)):
            self._on_election(peer, msg, now)
        elif isinstance(msg, cw.SignedHeartbeat):
            self._on_heartbeat_blob(msg.blob, now, relay_from=peer)
        elif isinstance(msg, cw.GossipRelay):
            self._on_gossip(msg.topic, msg.data, now, relay_from=peer)
        elif isinstance(msg, cw.LoadReport):
            if self.coordinator is not None and self.membership is not None:
                info = self.membership.get(peer)
                self.coordinator.on_load(peer, msg, info.heartbeat.coord if info else None, now)
            else:
                self._count("load_not_coordinator")
        elif isinstance(msg, cw.LeaseRequest):
            self._on_lease_request(peer, msg, now)
        elif isinstance(msg, cw.StatusQuery):  # answers go back on the stream the question came on
            self._enqueue(link, cw.encode(cw.StatusReply(msg.request_id, self.snapshot())))
        elif isinstance(msg, cw.Ping):
            self._enqueue(link, cw.encode(cw.Pong(msg.nonce, self.vivaldi.coord, self.vivaldi.error)))
        elif isinstance(msg, cw.Pong):
            sent = self._pings.pop(msg.nonce, None)
            if sent is not None and sent[0] == peer:
                self.vivaldi.on_rtt_sample(peer, msg.coord, msg.error, now - sent[1], now)
        elif isinstance(msg, cw.Bye):
            if self.membership is not None:
                self.membership.on_peer_left(peer, now)
        else:
            self._count("unexpected_message")

    def _on_election(self, peer: str, msg: ElectionMessage, now: float) -> None:
        author = getattr(msg, _ELECTION_AUTHOR[type(msg)])
        if author != peer:
            self._count("forged_election")
            return
        if self.election is None:
            self._count("election_before_electorate")
            return
        log.debug("election: %s from %s at %.3f", type(msg).__name__, peer[-6:], now)
        self.election.on_message(msg, now)
        if isinstance(msg, Renew) and self.election.coordinator == msg.coordinator:
            self._renew_seen_at = now

    def _on_lease_request(self, peer: str, req: cw.LeaseRequest, now: float) -> None:
        if self.coordinator is not None and self.is_coordinator():
            self.coordinator.on_lease_request(peer, req, now)
            return
        coord = self.live_coordinator(now)
        if coord is not None and coord != self.self_id and self.region is not None:
            self._send(peer, cw.LeaseRedirect(req.request_id, self.region, coord, self.known_addrs(coord)))
        else:
            self._send(
                peer, cw.LeaseRefused(req.request_id, UnavailableError.code, "no coordinator elected yet")
            )

    # ------------------------------------------------------------------ gossip in

    def _gossip_handler(self, topic: str) -> Callable[[str, bytes], None]:
        def handler(origin: str, data: bytes) -> None:
            try:
                self._events_send.send_nowait(_GossipIn(topic, origin, data))
            except trio.WouldBlock:
                self._count("dropped_overload")

        return handler

    def _validate_heartbeat_blob(self, data: bytes) -> str | None:
        try:
            blob = cw.Signed.decode(data, 8192)
            hb = Heartbeat.decode(cw.decode_heartbeat_payload(blob.payload)[0])
            cw.verify_blob(blob, cw.DOMAIN_HEARTBEAT, hb.peer)
        except VerificationError:
            return "bad_signature"
        except ProtocolError:
            return "malformed"
        return None

    def _validate_summary_blob(self, data: bytes) -> str | None:
        try:
            blob = cw.Signed.decode(data)
            view, _ = cw.decode_summary_payload(blob.payload)
            assert view.coordinator is not None
            cw.verify_blob(blob, cw.DOMAIN_SUMMARY, view.coordinator)
        except VerificationError:
            return "bad_signature"
        except ProtocolError:
            return "malformed"
        return None

    def _on_gossip(self, topic: str, data: bytes, now: float, *, relay_from: str | None) -> None:
        if topic == SUMMARY_TOPIC:
            try:
                blob = cw.Signed.decode(data)
            except ProtocolError:
                self._count("malformed")
                return
            self._on_summary_blob(blob, now, relay_from=relay_from)
        elif self.region is not None and topic == region_topic(self.region):
            try:
                blob = cw.Signed.decode(data, 8192)
            except ProtocolError:
                self._count("malformed")
                return
            self._on_heartbeat_blob(blob, now, relay_from=relay_from)
        else:
            self._count("wrong_topic")

    def _on_heartbeat_blob(self, blob: cw.Signed, now: float, *, relay_from: str | None) -> None:
        try:
            raw, addrs = cw.decode_heartbeat_payload(blob.payload)
            hb = Heartbeat.decode(raw)
        except ProtocolError:
            self._count("malformed")
            return
        try:
            cw.verify_blob(blob, cw.DOMAIN_HEARTBEAT, hb.peer)
        except VerificationError:
            self._count("bad_signature")
            return
        if self.membership is None or hb.region != self.region:
            self._count("wrong_region")
            return
        if not self.membership.on_heartbeat(hb, now):
            return
        if addrs:
            self._addrs[hb.peer] = addrs
        if self.coordinator is not None:
            self.coordinator.on_heartbeat(hb, now)
        if relay_from is not None and self._gossip is None:
            # Flooding fallback: forward what was new to us, once, to our other region links.
            frame = cw.encode(cw.SignedHeartbeat(blob))
            for peer in self._region_link_peers():
                if peer not in (relay_from, hb.peer):
                    link = self._link_for(peer)
                    if link is not None:
                        self._enqueue(link, frame)
        if self._link_for(hb.peer) is None and hb.peer not in self._dialing:
            self._send(hb.peer, self._hello())  # link to every member: the election needs it

    def _on_summary_blob(self, blob: cw.Signed, now: float, *, relay_from: str | None) -> None:
        try:
            view, seq = cw.decode_summary_payload(blob.payload)
            assert view.coordinator is not None
            cw.verify_blob(blob, cw.DOMAIN_SUMMARY, view.coordinator)
        except VerificationError:
            self._count("bad_signature")
            return
        except ProtocolError:
            self._count("malformed")
            return
        if view.region == self.region and view.voters:
            # before the staleness check: another founder's epochs are not comparable to ours
            self._adopt_voters(view.voters, now, why="learned from the coordinator's summary")
        old = self._regions.get(view.region)
        if old is not None and (view.epoch, seq) <= (old[0].epoch, old[1]):
            self._count("summary_stale")
            return
        self._regions[view.region] = (view, seq, now)
        if view.coordinator_addrs and view.coordinator is not None:
            self._addrs.setdefault(view.coordinator, view.coordinator_addrs)
        if self.coordinator is not None and view.region != self.region and view.centroid is not None:
            self.coordinator.on_summary(
                RegionSummary(view.region, view.coordinator or "", view.free, view.centroid), now
            )
        if self._on_region_record is not None:
            self._on_region_record(view)
        if relay_from is not None and self._gossip is None:
            frame = cw.encode(cw.GossipRelay(SUMMARY_TOPIC, blob.encode(), view.coordinator or ""))
            for peer in sorted(self._links):
                if peer != relay_from and peer != view.coordinator:
                    link = self._link_for(peer)
                    if link is not None and link.hello is not None and link.hello.role == "node":
                        self._enqueue(link, frame)

    def _merge_snapshot(self, snap: cw.Snapshot, now: float) -> None:
        if snap.addrs:
            self._addrs.setdefault(snap.peer, snap.addrs)
        for view in snap.regions:
            for m in view.members:
                if m.addrs and m.peer != self.self_id:
                    self._addrs.setdefault(m.peer, m.addrs)
            if view.coordinator and view.coordinator_addrs:
                self._addrs.setdefault(view.coordinator, view.coordinator_addrs)
            old = self._regions.get(view.region)
            if old is None or view.epoch >= old[0].epoch:
                self._regions[view.region] = (view, old[1] if old else 0, now - view.age_s)
            if view.region == self.region and view.voters:
                self._adopt_voters(view.voters, now, why=f"learned from {snap.peer[-8:]}")

    # ================================================================== effects

    def _process_effects(self, now: float) -> None:
        for _ in range(8):  # effects can cause effects (a new member re-ranks the election)
            busy = False
            if self.membership is not None:
                effs = self.membership.poll_effects()
                busy |= bool(effs)
                self._membership_effects(effs, now)
            if self.election is not None:
                effs2 = self.election.poll_effects()
                busy |= bool(effs2)
                self._election_effects(effs2, now)
            if self.coordinator is not None:
                for peer, msg in self.coordinator.poll():
                    busy = True
                    self._send(peer, msg)
            if not busy:
                return

    def _membership_effects(self, effects: list[Any], now: float) -> None:
        changed = False
        for eff in effects:
            if isinstance(eff, HeartbeatDue):
                self._publish_heartbeat(now)
            elif isinstance(eff, (PeerJoined, PeerAlive)):
                changed = True
                if isinstance(eff, PeerJoined):
                    log.debug("member %s joined region %s", eff.peer[-8:], self.region)
            elif isinstance(eff, (PeerSuspected, PeerDead)):
                changed = True
                if self.coordinator is not None:
                    self.coordinator.on_member_gone(eff.peer, now)
            elif isinstance(eff, PeerForgotten):
                changed = True
        if changed:
            self._update_candidates(now)

    def _election_effects(self, effects: list[Any], now: float) -> None:
        for eff in effects:
            if isinstance(eff, Broadcast):
                log.debug("election: broadcast %s at %.3f", eff.message, now)
                for peer in self._region_peers():
                    self._send(peer, eff.message)
            elif isinstance(eff, Send):
                self._send(eff.to, eff.message)
            elif isinstance(eff, PersistVote):
                self._votes.save(eff.region, VoteRecord(eff.epoch, eff.candidate))
            elif isinstance(eff, BecomeCoordinator):
                log.info("became coordinator of region %s, epoch %d", eff.region, eff.epoch)
                self._count("became_coordinator")
                self.coordinator = Coordinator(
                    eff.region,
                    self.self_id,
                    eff.epoch,
                    random.Random(self.rng.random()),
                    self.config.scheduler,
                    addrs_of=self.known_addrs,
                    now=now,
                )
                self._seed_coordinator(now)
                self._next_summary = now
            elif isinstance(eff, StepDown):
                log.info(
                    "stepped down as coordinator of %s (epoch %d): %s", eff.region, eff.epoch, eff.reason
                )
                self.coordinator = None
            elif isinstance(eff, CoordinatorChanged):
                self._coord_since = now
                log.info(
                    "region %s coordinator: %s (epoch %d)",
                    eff.region,
                    eff.coordinator[-8:] if eff.coordinator else "none",
                    eff.epoch,
                )
                self.coordinator_changed.set()
                self.coordinator_changed = trio.Event()
            elif isinstance(eff, InvariantViolated):
                self._count("election_invariant_violations")
                log.error("election invariant violated in %s epoch %d: %s", eff.region, eff.epoch, eff.detail)

    def _seed_coordinator(self, now: float) -> None:
        assert self.coordinator is not None and self.membership is not None
        for info in self.membership.peers(state=PeerState.ALIVE, region=self.region):
            self.coordinator.on_heartbeat(info.heartbeat, now)
        self._report_load(now)

    def _update_candidates(self, now: float) -> None:
        if self.election is None or self.membership is None:
            return
        alive = [i.heartbeat for i in self.membership.peers(state=PeerState.ALIVE, region=self.region)]
        # Published coordinates only, ours included: our live coordinate is fresher than the
        # one the others rank us by, and ranks must agree (see ``rank_score``).
        mine = self._published_coord or self.vivaldi.coord
        cen = centroid([h.coord for h in alive] + [mine])
        scores: dict[str, float] = {}
        for hb in alive:
            if self.config.voter_candidates and hb.peer not in self.voters:
                continue  # not a candidate: must not push the candidates' ranks (and stagger) back
            scores[hb.peer] = _score(sum(n for _, n in hb.capacity), hb.uptime_s, hb.coord, cen)
        local = self._load_fn()
        own = _score(sum(local.capacity.values()), now - self._started_at, mine, cen)
        if self._eligible():
            scores[self.self_id] = own
        if self.config.voter_candidates:
            # Ranks must agree across voters or they split the vote: a voter whose heartbeat
            # has not reached us yet (slow gossip at start-up) is ranked as if it scored like
            # us, so ties break by peer id everywhere instead of each voter thinking it is
            # first. (Unranked, all three voters of a loaded region claimed at once and
            # duelled for 200+ epochs.) Suspected and dead voters are no candidates.
            for v in self.voters:
                if v != self.self_id and v not in scores and self.membership.get(v) is None:
                    scores[v] = own
        self.election.on_candidates(scores, now)

    # ================================================================== periodic output

    def _publish_heartbeat(self, now: float) -> None:
        assert self.membership is not None and self.region is not None
        local = self._load_fn()
        hb = self.membership.local_heartbeat(
            region=self.region,
            version=SOFTWARE_VERSION,
            load=min(max(local.load, 0.0), 1e6),
            queue_depth=max(0, local.queue_depth),
            capacity=local.capacity,
            coord=self.vivaldi.coord,
            coord_error=self.vivaldi.error,
            uptime_s=max(0.0, now - self._started_at),
        )
        self._published_coord = hb.coord
        payload = cw.encode_heartbeat_payload(hb.encode(), tuple(self._addrs_fn()))
        blob = cw.sign_blob(self.identity.sign, cw.DOMAIN_HEARTBEAT, payload)
        if self._gossip is not None:
            self._queue_gossip(region_topic(self.region), blob.encode())
        else:
            frame = cw.encode(cw.SignedHeartbeat(blob))
            for peer in self._region_link_peers():
                link = self._link_for(peer)
                if link is not None:
                    self._enqueue(link, frame)
        self._update_candidates(now)
        if self.coordinator is not None:
            self.coordinator.on_heartbeat(hb, now)

    def _queue_gossip(self, topic: str, data: bytes) -> None:
        try:
            self._gossip_send.send_nowait((topic, data))
        except trio.WouldBlock:
            self._count("dropped_gossip_out")

    async def _gossip_publisher(self) -> None:
        async for topic, data in self._gossip_recv:
            if self._gossip is not None:
                await self._gossip.publish(topic, data)

    def _send_pings(self, now: float) -> None:
        horizon = now - 5.0
        for nonce in [n for n, (_, t) in self._pings.items() if t < horizon]:
            del self._pings[nonce]
        peers = self._region_link_peers() or sorted(p for p in self._links if self._is_node_link(p))
        if not peers:
            return
        targets = self.rng.sample(peers, min(self.config.ping_sample, len(peers)))
        self._ping_rounds += 1
        if self.config.wan_ping_every and self._ping_rounds % self.config.wan_ping_every == 0:
            anchor = self._wan_anchor()
            if anchor is not None:
                targets.append(anchor)
        for peer in targets:
            nonce = self._new_request()
            self._pings[nonce] = (peer, now)
            self._send(peer, cw.Ping(nonce))

    def _wan_anchor(self) -> str | None:
        """A member of another region to ping, so coordinates span regions, not just our own.

        Pinging only inside the region would leave every region's coordinates in a private
        frame (two regions 80 ms apart would overlap), and neither cross-region RTT estimates
        nor the automatic region choice could work. Each node pings one fixed anchor per other
        region, picked by rendezvous hashing: anchors spread evenly over the remote members
        and a node keeps reusing one link instead of dialling new ones.
        """
        others = [
            view
            for name, (view, _, _) in sorted(self._regions.items())
            if name != self.region and view.members
        ]
        if not others:
            return None
        view = self.rng.choice(others)
        live = [m for m in view.members if m.addrs and m.peer != self.self_id and m.state == "alive"]
        if not live:
            return None
        anchor = min(live, key=lambda m: hashlib.sha256(f"{self.self_id}/{m.peer}".encode()).digest())
        self._addrs.setdefault(anchor.peer, anchor.addrs)
        return anchor.peer

    def _report_load(self, now: float) -> None:
        if self.election is None:
            return
        local = self._load_fn()
        self._load_seq += 1
        deltas = {k: n - self._last_completed.get(k, 0) for k, n in sorted(local.completed.items())}
        deltas = {k: d for k, d in deltas.items() if d > 0}
        total = sum(deltas.values())
        mean = (local.busy_s - self._last_busy) / total if total else 0.0
        self._last_completed = dict(local.completed)
        self._last_busy = local.busy_s
        report = cw.LoadReport(
            self._load_seq,
            min(max(local.load, 0.0), 1e6),
            max(0, local.queue_depth),
            tuple(sorted(local.capacity.items()))[: cw.MAX_KINDS],
            tuple((k, d, min(max(mean, 0.0), 3600.0)) for k, d in deltas.items())[: cw.MAX_SAMPLES],
        )
        coord = self.election.coordinator
        if self.coordinator is not None:
            self.coordinator.on_load(self.self_id, report, self.vivaldi.coord, now)
        elif coord is not None and coord != self.self_id:
            self._send(coord, report)

    def _publish_summary(self, now: float) -> None:
        if self.coordinator is None or not self.is_coordinator():
            return
        view = self._own_region_view(now)
        if view is None:
            return
        self._summary_seq += 1
        payload = cw.encode_summary_payload(view, self._summary_seq)
        blob = cw.sign_blob(self.identity.sign, cw.DOMAIN_SUMMARY, payload)
        self._regions[view.region] = (view, self._summary_seq, now)
        if self._on_region_record is not None:
            self._on_region_record(view)
        if self._gossip is not None:
            self._queue_gossip(SUMMARY_TOPIC, blob.encode())
        else:
            frame = cw.encode(cw.GossipRelay(SUMMARY_TOPIC, blob.encode(), self.self_id))
            for peer in sorted(self._links):
                if self._is_node_link(peer):
                    link = self._link_for(peer)
                    if link is not None:
                        self._enqueue(link, frame)

    # ================================================================== views

    def _is_node_link(self, peer: str) -> bool:
        link = self._link_for(peer)
        return link is not None and link.hello is not None and link.hello.role == "node"

    def _region_link_peers(self) -> list[str]:
        out = []
        for peer in sorted(self._links):
            link = self._link_for(peer)
            if (
                link is not None
                and link.hello is not None
                and link.hello.role == "node"
                and link.hello.region == self.region
            ):
                out.append(peer)
        return out

    def _region_peers(self) -> list[str]:
        """Everyone an election broadcast must reach: members (not dead), voters, region links."""
        peers: set[str] = set(self.voters)
        if self.membership is not None:
            for info in self.membership.peers(state=None, region=self.region):
                if info.state is not PeerState.DEAD:
                    peers.add(info.heartbeat.peer)
        peers.update(self._region_link_peers())
        peers.discard(self.self_id)
        return sorted(peers)

    def _is_candidate(self) -> bool:
        from mesh.election import Role

        return self.election is not None and self.election.role is Role.CANDIDATE

    def _own_region_view(self, now: float) -> cw.RegionView | None:
        if self.region is None or self.membership is None:
            return None
        local = self._load_fn()
        members = [
            cw.MemberView(
                peer=self.self_id,
                region=self.region,
                state="alive",
                load=min(max(local.load, 0.0), 1e6),
                queue_depth=max(0, local.queue_depth),
                capacity=tuple(sorted(local.capacity.items()))[: cw.MAX_KINDS],
                coord=self.vivaldi.coord,
                rtt_s=0.0,
                addrs=tuple(self._addrs_fn())[: cw.MAX_ADDRS],
                version=SOFTWARE_VERSION,
            )
        ]
        coords = [self.vivaldi.coord]
        for info in self.membership.peers(state=None, region=self.region)[: cw.MAX_MEMBERS - 1]:
            hb = info.heartbeat
            if info.state is PeerState.ALIVE:
                coords.append(hb.coord)
            members.append(
                cw.MemberView(
                    peer=hb.peer,
                    region=hb.region,
                    state=info.state.value,
                    load=hb.load,
                    queue_depth=hb.queue_depth,
                    capacity=hb.capacity[: cw.MAX_KINDS],
                    coord=hb.coord,
                    rtt_s=min(estimate_rtt(self.vivaldi.coord, hb.coord), 1e3),
                    addrs=self._addrs.get(hb.peer, ())[: cw.MAX_ADDRS],
                    version=hb.version,
                )
            )
        coord = self.live_coordinator(now)
        free: tuple[tuple[str, int], ...] = ()
        cen = centroid(coords)
        if self.coordinator is not None:
            free = self.coordinator.summary(cen or Coord()).free_slots
        else:
            old = self._regions.get(self.region)
            if old is not None:
                free = old[0].free
        return cw.RegionView(
            region=self.region,
            coordinator=coord,
            epoch=self.election.known_epoch if self.election is not None else 0,
            voters=self.voters,
            coordinator_addrs=self.known_addrs(coord)[: cw.MAX_ADDRS] if coord else (),
            free=free[: cw.MAX_KINDS],
            centroid=cen,
            members=tuple(sorted(members, key=lambda m: m.peer)),
            age_s=max(0.0, now - self._coord_since) if coord else 0.0,
        )


def _with_age(view: cw.RegionView, age: float) -> cw.RegionView:
    return cw.RegionView(
        view.region,
        view.coordinator,
        view.epoch,
        view.voters,
        view.coordinator_addrs,
        view.free,
        view.centroid,
        view.members,
        max(0.0, min(age, 1e9)),
    )


def _score(slots: int, uptime_s: float, coord: Coord, cen: Coord | None) -> float:
    """The election rank score (``mesh.election.rank_score``) of a member at ``coord``.

    An earlier version used each member's live coordinate for itself: observer-dependent, so
    12 busy processes on 2 cores disagreed on ranks and duelled for 60 s (epochs > 150, no
    winner). Now every term is published data, and the distance moves in 10 ms steps.
    """
    return rank_score(slots, uptime_s, estimate_rtt(coord, cen) if cen is not None else 0.0)
