"""The SDK side of the control plane: bootstrap -> region -> coordinator -> leases -> workers.

``join_mesh(gamer, nursery, bootstrap)`` (what ``GamerClient.connect(bootstrap=[...])``
calls) starts a ``MeshClient`` that

1. connects to the bootstrap addresses and asks each for its status (regions, their
   coordinators and members, with addresses);
2. picks the region: the configured one, else the one whose coordinator answers pings
   fastest;
3. asks the region's coordinator for placement leases (``workers_per_kind`` per kind) and
   connects the gamer to every leased worker with ``GamerClient.add_worker`` -- task bytes
   then go straight to the workers; the coordinator only ever sees lease traffic;
4. renews each lease at half its lifetime (asking for the same worker: affinity), and
   piggybacks releases of the old leases and the latencies the gamer observed per
   (worker, kind) since the last request (``LeaseRequest.observed``, fed by the SDK's
   completion hook) on the renewals, so the coordinator's service-time estimates learn
   from what gamers actually see;
4a. enforces the leases at dispatch (the SDK's placement hook): a task goes to a worker
   holding a lease for its kind with a free leased slot; when all are full, to the least
   over-subscribed one, and the client asks for another lease (up to
   ``max_workers_per_kind``); kinds nobody leased yet are leased on first use;
4b. replaces a lease whose worker keeps missing: three of its tasks of the kind in a row
   ended late (or lost, refused, or caught wrong) and the lease is given back and another
   asked for, the worker left out of the kind's requests for a while (``exclude``),
   at most every 0.25 s per kind, backing off while the kind gets no answer on time at
   all (``nodes.sdk_cores.LeaseMisses``: a gamer whose own uplink is the bottleneck
   misses on every worker, and must not hammer its coordinator);
5. fails over: when its coordinator stops answering (link lost, request timed out, "no
   coordinator"), it asks the region's members who coordinates now, every
   ``retry_s``; if the region has no coordinator for ``region_failover_s`` it moves to the
   next-nearest region. A ``LeaseRedirect`` is followed: to the region's coordinator, it
   becomes the coordinator; to another region (the coordinator's overflow: no room here
   within ``within_s``), the client asks that region's coordinator once for a new lease
   (never for a renewal). Such an overflow lease is neither renewed nor released: it serves
   until it expires, and the client then asks its own coordinator again (lease ids are per
   coordinator, so its id must never reach ours).

Submitted tasks are never lost to a coordinator failure: they travel on worker links that
do not depend on the coordinator, and the gamer resubmits tasks of a worker that dies to
another worker it holds. ``fetch_status`` is the one-shot status query used by
``p2c2r status``.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from mesh import control_wire as cw
from mesh.errors import (
    ConnectionLostError,
    P2C2RError,
    ProtocolError,
    RejectedError,
    TaskTimeoutError,
    UnavailableError,
    VerificationError,
)
from mesh.identity import peer_id_from_str, peer_id_to_str
from mesh.transport import Host, Stream
from nodes.sdk_cores import LeaseMisses, MissConfig
from nodes.verification import IDLE_LINK_S

if TYPE_CHECKING:
    from nodes.gamer import GamerClient

log = logging.getLogger("p2c2r.mesh_client")

#: Task outcomes that count against the worker that had the task (``LeaseMisses``; the
#: simulator counts its late, lost and caught tasks).
_MISSES = frozenset(
    {TaskTimeoutError.code, ConnectionLostError.code, RejectedError.code, VerificationError.code}
)

_REPLY_TYPES = (cw.StatusReply, cw.LeaseGrant, cw.LeaseRefused, cw.LeaseRedirect, cw.Pong)


@dataclass(frozen=True)
class MeshClientConfig:
    region: str | None = None
    #: Kinds to hold leases for; empty: every kind the region advertises free slots for.
    kinds: tuple[str, ...] = ()
    workers_per_kind: int = 2
    #: Upper bound on leased workers per kind when demand exceeds the leased slots.
    max_workers_per_kind: int = 4
    #: Slots asked per lease: tasks the gamer keeps in flight on that worker for the kind.
    slots: int = 2
    #: Deadline (s) given to the coordinator for placing a lease request.
    within_s: float = 1.0
    request_timeout_s: float = 1.0
    retry_s: float = 0.2
    region_failover_s: float = 3.0
    #: Renew a lease when this fraction of its lifetime is left.
    renew_at: float = 0.5
    #: Close links to workers neither leased nor used by the verification policy for this
    #: many seconds (``GamerClient.close_idle_links``); 0 keeps every link open.
    idle_link_s: float = IDLE_LINK_S
    join_timeout_s: float = 15.0
    #: When a leased worker's misses get its lease replaced (``LeaseMisses``).
    lease_misses: MissConfig = field(default_factory=MissConfig)


class ControlLink:
    """One client control stream to one peer: requests tagged with ids, replies routed back."""

    def __init__(self, peer: bytes, stream: Stream) -> None:
        self.peer = peer
        self.name = peer_id_to_str(peer)
        self.stream = stream
        self.alive = True
        self._waiters: dict[int, tuple[trio.Event, list[cw.ControlMessage]]] = {}
        self._lock = trio.Lock()

    async def run_reader(self) -> None:
        decoder = cw.decoder()
        try:
            while True:
                data = await self.stream.read(65536)
                if not data:
                    break
                for body in decoder.feed(data):
                    try:
                        msg = cw.decode(body)
                    except ProtocolError as exc:
                        log.debug("bad control frame from %s: %s", self.name, exc)
                        continue
                    if isinstance(msg, _REPLY_TYPES):
                        rid = msg.nonce if isinstance(msg, cw.Pong) else msg.request_id
                        w = self._waiters.get(rid)
                        if w is not None:
                            w[1].append(msg)
                            w[0].set()
        except P2C2RError as exc:
            log.debug("control link to %s lost: %s", self.name, exc)
        finally:
            self.alive = False
            for event, _ in self._waiters.values():
                event.set()

    async def send(self, msg: cw.ControlMessage) -> None:
        async with self._lock:
            await self.stream.write(cw.encode(msg))

    async def request(self, msg: cw.ControlMessage, rid: int, timeout: float) -> cw.ControlMessage:
        if not self.alive:
            raise UnavailableError(f"control link to {self.name} is closed")
        event = trio.Event()
        box: list[cw.ControlMessage] = []
        self._waiters[rid] = (event, box)
        try:
            await self.send(msg)
            with trio.fail_after(timeout):
                await event.wait()
        except trio.TooSlowError as exc:
            raise UnavailableError(f"{self.name} did not answer in {timeout:g} s") from exc
        finally:
            self._waiters.pop(rid, None)
        if not box:
            raise UnavailableError(f"control link to {self.name} closed before it answered")
        return box[0]


async def open_control_link(
    host: Host, nursery: trio.Nursery, peer: bytes, addrs: Sequence[str] = ()
) -> ControlLink:
    try:
        stream = await host.open_stream(peer, cw.PROTOCOL_ID)
    except P2C2RError:
        if not addrs:
            raise
        last: P2C2RError | None = None
        for a in addrs:
            try:
                await host.connect(a)
                break
            except P2C2RError as exc:
                last = exc
        else:
            assert last is not None
            raise last from None
        stream = await host.open_stream(peer, cw.PROTOCOL_ID)
    link = ControlLink(peer, stream)
    await link.send(cw.Hello(tuple(host.listen_addrs())[: cw.MAX_ADDRS], "", "0.1.0", "client"))
    nursery.start_soon(link.run_reader)
    return link


async def fetch_status(addr: str, *, host: Host | None = None, timeout: float = 5.0) -> cw.Snapshot:
    """One status query to the node at ``addr`` (``p2c2r status``). A node that cannot be
    reached or does not answer is an ``UnavailableError`` (raised outside the query's own
    nursery, so callers catch it as such, not inside an exception group)."""
    from contextlib import AsyncExitStack

    error: P2C2RError | None = None
    async with AsyncExitStack() as stack:
        if host is None:
            from mesh.identity import Identity
            from mesh.libp2p_host import open_host

            host = await stack.enter_async_context(open_host(Identity.generate()))
        nursery = await stack.enter_async_context(trio.open_nursery())
        link: ControlLink | None = None
        try:
            with trio.fail_after(timeout):
                peer = await host.connect(addr)
                link = await open_control_link(host, nursery, peer)
                reply = await link.request(cw.StatusQuery(1), 1, timeout)
        except trio.TooSlowError:
            error = UnavailableError(f"{addr} did not answer a status query within {timeout:g} s")
        except P2C2RError as exc:
            error = exc
        finally:
            nursery.cancel_scope.cancel()
            if link is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    await link.stream.reset()
    if error is not None:
        raise error
    if not isinstance(reply, cw.StatusReply):
        raise ProtocolError(f"{addr} answered a status query with {type(reply).__name__}")
    return reply.snapshot


@dataclass
class _Lease:
    lease_id: int
    worker: str
    kind: str
    slots: int
    expires_at: float
    renew_at: float
    #: The coordinator of another region that granted it (an overflow lease), else None.
    foreign: str | None = None
    #: ``worker`` as peer id bytes, as the SDK names workers (decoded once, not per task).
    peer: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.peer = peer_id_from_str(self.worker)


@dataclass
class MeshClientStats:
    leases_granted: int = 0
    leases_refused: int = 0
    redirects: int = 0
    #: Leases granted by another region's coordinator after an overflow redirect.
    overflow_leases: int = 0
    coordinator_changes: int = 0
    region_changes: int = 0
    #: Dispatches placed on a leased worker with a free leased slot.
    placed_leased: int = 0
    #: Dispatches placed on a leased worker beyond its leased slots (all were full).
    placed_over_capacity: int = 0
    #: Dispatches with no lease for the kind (left to the SDK's least-loaded choice).
    placed_unleased: int = 0
    #: Latency samples piggybacked on lease requests.
    observed_sent: int = 0
    #: Links to workers no longer leased or used, closed (``MeshClientConfig.idle_link_s``).
    idle_links_closed: int = 0
    #: Leases given back because their worker kept missing, and replacements the hold-off
    #: put off (``LeaseMisses``).
    leases_replaced: int = 0
    replacements_held: int = 0


@dataclass
class MeshClient:
    gamer: GamerClient
    host: Host
    nursery: trio.Nursery
    config: MeshClientConfig = field(default_factory=MeshClientConfig)
    region: str | None = None
    coordinator: str | None = None
    stats: MeshClientStats = field(default_factory=MeshClientStats)
    ready: trio.Event = field(default_factory=trio.Event)
    _regions: dict[str, cw.RegionView] = field(default_factory=dict)
    _addrs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _links: dict[str, ControlLink] = field(default_factory=dict)
    _leases: dict[int, _Lease] = field(default_factory=dict)
    _rids: Any = field(default_factory=lambda: itertools.count(1))
    _rtt: dict[str, float] = field(default_factory=dict)
    _to_release: list[int] = field(default_factory=list)
    #: The coordinator failed a request (timeout, closed link): ask the members before trusting it.
    _suspect: bool = False
    #: (worker, kind) -> (count, total latency s) observed since the last lease request.
    _observed: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    #: Kinds the gamer submitted that we hold no lease for, or whose leases were all full.
    _wanted: dict[str, int] = field(default_factory=dict)
    #: Per kind: the misses of its leased workers.
    _misses: dict[str, LeaseMisses] = field(default_factory=dict)
    _wake: trio.Event = field(default_factory=trio.Event)
    _member_rr: int = 0
    _foreign_keys: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        # Lease enforcement at dispatch, and latencies back to the coordinator (see module doc).
        self.gamer.set_lease_placement(self._place)
        self.gamer.add_completion_hook(self._on_completion)

    # ------------------------------------------------------------------ links

    async def _link(self, peer: str) -> ControlLink:
        link = self._links.get(peer)
        if link is not None and link.alive:
            return link
        link = await open_control_link(
            self.host, self.nursery, peer_id_from_str(peer), self._addrs.get(peer, ())
        )
        self._links[peer] = link
        return link

    async def _status(self, peer: str) -> cw.Snapshot:
        rid = next(self._rids)
        reply = await (await self._link(peer)).request(
            cw.StatusQuery(rid), rid, self.config.request_timeout_s
        )
        if not isinstance(reply, cw.StatusReply):
            raise ProtocolError("unexpected reply to a status query")
        self._merge(reply.snapshot)
        return reply.snapshot

    def _merge(self, snap: cw.Snapshot) -> None:
        if snap.addrs:
            self._addrs[snap.peer] = snap.addrs
        for view in snap.regions:
            old = self._regions.get(view.region)
            if old is None or view.epoch >= old.epoch:
                self._regions[view.region] = view
            for m in view.members:
                if m.addrs:
                    self._addrs[m.peer] = m.addrs
            if view.coordinator and view.coordinator_addrs:
                self._addrs[view.coordinator] = view.coordinator_addrs

    def regions(self) -> dict[str, tuple[str | None, int]]:
        """Every region this client knows: name -> (coordinator, members)."""
        return {n: (v.coordinator, len(v.members)) for n, v in sorted(self._regions.items())}

    # ------------------------------------------------------------------ join

    async def bootstrap(self, addrs: Sequence[str]) -> None:
        """Ask the bootstrap peers for the mesh's state, retrying with backoff until one
        answers (a busy or still-starting node is not a dead one); the caller bounds it with
        ``join_timeout_s``."""
        delay = 0.25
        while True:
            for addr in addrs:
                try:
                    peer = peer_id_to_str(await self.host.connect(addr))
                    self._addrs[peer] = (addr,)
                    await self._status(peer)
                except P2C2RError as exc:
                    log.warning("bootstrap %s: %s", addr, exc)
            if self._regions:
                break
            log.warning("no bootstrap peer answered; retrying in %.2g s", delay)
            await trio.sleep(delay)
            delay = min(2 * delay, 4.0)
        if self.config.region is not None:
            self.region = self.config.region
        else:
            try:
                self.region = await self._nearest_region(exclude=())
            except UnavailableError:
                # No region has a coordinator yet (the mesh is still electing): pick by name
                # and let the main loop wait for one.
                self.region = sorted(self._regions)[0]

    async def _nearest_region(self, exclude: Sequence[str]) -> str:
        best: tuple[float, str] | None = None
        for name in sorted(self._regions):
            view = self._regions[name]
            if name in exclude or view.coordinator is None:
                continue
            rtt = self._rtt.get(name)
            if rtt is None:
                try:
                    link = await self._link(view.coordinator)
                    t0 = trio.current_time()
                    rid = next(self._rids)
                    await link.request(cw.Ping(rid), rid, self.config.request_timeout_s)
                    rtt = self._rtt[name] = trio.current_time() - t0
                except P2C2RError:
                    continue
            if best is None or (rtt, name) < best:
                best = (rtt, name)
        if best is None:
            raise UnavailableError("no region with a reachable coordinator")
        return best[1]

    # ------------------------------------------------------------------ main loop

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        region_lost_since: float | None = None
        while True:
            try:
                await self._ensure_coordinator()
                await self._maintain_leases()
                region_lost_since = None
                if self.gamer.workers():
                    self.ready.set()
                with trio.move_on_at(self._next_wake()):
                    await self._wake.wait()
                self._wake = trio.Event()
                continue
            except P2C2RError as exc:
                self._suspect = True
                log.info("coordinator of %s unavailable: %s", self.region, exc)
            now = trio.current_time()
            if region_lost_since is None:
                region_lost_since = now
            elif now - region_lost_since >= self.config.region_failover_s:
                await self._change_region()
                region_lost_since = None
            await trio.sleep(self.config.retry_s)

    def _next_wake(self) -> float:
        now = trio.current_time()
        times = [lease.renew_at for lease in self._leases.values()]
        times.append(now + 1.0)
        return min(times)

    async def _ensure_coordinator(self) -> None:
        coord = self.coordinator
        if coord is not None and not self._suspect:
            try:
                await self._link(coord)
                return
            except P2C2RError:
                self._suspect = True
        # Ask the region's members (a few per round, rotating) who coordinates now.
        view = self._regions.get(self.region or "")
        candidates = [m.peer for m in view.members if m.peer != coord] if view else []
        if not candidates:
            candidates = sorted(p for p in self._addrs if p != coord)
        asked = 0
        start = self._member_rr
        self._member_rr += 3
        for i in range(min(3, len(candidates))):
            peer = candidates[(start + i) % len(candidates)]
            try:
                await self._status(peer)
                asked += 1
            except P2C2RError:
                continue
            fresh = self._regions.get(self.region or "")
            if fresh is not None and fresh.coordinator not in (None, coord):
                break
        fresh = self._regions.get(self.region or "")
        if fresh is None or fresh.coordinator is None:
            raise UnavailableError(
                f"region {self.region} has no reachable coordinator (asked {asked} members)"
            )
        if fresh.coordinator == coord:
            if asked == 0:
                raise UnavailableError(f"no member of region {self.region} answered")
            # The members still follow it: it may only have been slow. Try it again.
            assert coord is not None
            await self._link(coord)
            self._suspect = False
            return
        self._set_coordinator(fresh.coordinator)
        await self._link(fresh.coordinator)
        self._suspect = False

    def _set_coordinator(self, coord: str) -> None:
        if coord != self.coordinator:
            log.info("region %s coordinator is now %s", self.region, coord[-8:])
            self.coordinator = coord
            self.stats.coordinator_changes += 1

    async def _change_region(self) -> None:
        assert self.region is not None
        # Refresh what we know first: another region's coordinator may have changed too.
        for name, view in sorted(self._regions.items()):
            if name != self.region and view.coordinator is not None:
                try:
                    await self._status(view.coordinator)
                except P2C2RError:
                    continue
        try:
            new = await self._nearest_region(exclude=(self.region,))
        except UnavailableError:
            return
        log.warning("moving from region %s to %s", self.region, new)
        self.region = new
        self.coordinator = self._regions[new].coordinator
        self._suspect = False
        self.stats.region_changes += 1

    def _kinds(self) -> list[str]:
        kinds: set[str] = set(self._wanted)
        if self.config.kinds:
            kinds.update(self.config.kinds)
        else:
            view = self._regions.get(self.region or "")
            if view is not None:
                kinds.update(k for k, _ in view.free)
                for m in view.members:
                    kinds.update(k for k, n in m.capacity if n > 0)
        return sorted(kinds)

    async def _maintain_leases(self) -> None:
        now = trio.current_time()
        alive_workers = set(self.gamer.workers())
        for lid in sorted(self._leases):
            lease = self._leases[lid]
            if lease.expires_at <= now or lease.peer not in alive_workers:
                del self._leases[lid]
                if lease.expires_at > now and lease.foreign is None:
                    self._to_release.append(lid)
        wanted, self._wanted = self._wanted, {}
        for kind in self._kinds():
            held = [le for le in self._leases.values() if le.kind == kind]
            for lease in sorted(held, key=lambda le: le.lease_id):
                if lease.renew_at <= now:
                    await self._request(kind, affinity=lease.worker, replaces=lease.lease_id)
            workers = {le.worker for le in self._leases.values() if le.kind == kind}
            target = self.config.workers_per_kind
            if wanted.get(kind, 0) > 0 and workers:
                # Every leased worker of this kind was full at dispatch: ask for one more.
                target = min(self.config.max_workers_per_kind, len(workers) + 1)
            for _ in range(max(0, target - len(workers))):
                if not await self._request(kind, affinity=None, replaces=None):
                    break
        if self.config.idle_link_s > 0:
            leased = {le.peer for le in self._leases.values()}
            for peer in self.gamer.close_idle_links(self.config.idle_link_s, keep=leased):
                self.stats.idle_links_closed += 1
                log.debug("closed idle link to %s", peer_id_to_str(peer))

    def _take_observed(self) -> tuple[tuple[str, str, float], ...]:
        items = sorted(self._observed.items())[: cw.MAX_SAMPLES]
        for key, _ in items:
            del self._observed[key]
        self.stats.observed_sent += sum(n for _, (n, _) in items)
        return tuple((w, k, min(total / n, 3600.0)) for (w, k), (n, total) in items)

    async def _request(self, kind: str, *, affinity: str | None, replaces: int | None) -> bool:
        coord = self.coordinator
        if coord is None:
            raise UnavailableError("no coordinator")
        link = await self._link(coord)
        rid = next(self._rids)
        release = tuple(self._to_release[: cw.MAX_RELEASES])
        observed = self._take_observed()
        req = cw.LeaseRequest(
            rid,
            kind,
            self.config.slots,
            self.config.within_s,
            self.gamer.config.priority_of(kind),
            None,
            affinity,
            release,
            observed,
            self._exclusions(kind, self.region or ""),
        )
        try:
            reply = await link.request(req, rid, self.config.request_timeout_s)
        except P2C2RError:
            for w, k, lat in observed:  # not delivered: keep the samples for the next request
                self._observed.setdefault((w, k), (1, lat))
            raise
        del self._to_release[: len(release)]
        now = trio.current_time()
        if isinstance(reply, cw.LeaseGrant):
            self.stats.leases_granted += 1
            if not await self._connect_granted(reply):
                self._to_release.append(reply.lease_id)
                return False
            if replaces is not None and replaces in self._leases:
                del self._leases[replaces]
                self._to_release.append(replaces)
            self._leases[reply.lease_id] = _Lease(
                reply.lease_id,
                reply.worker,
                reply.kind,
                reply.slots,
                now + reply.ttl_s,
                now + reply.ttl_s * self.config.renew_at,
            )
            return True
        if isinstance(reply, cw.LeaseRedirect):
            self.stats.redirects += 1
            self._addrs[reply.coordinator] = reply.addrs
            if reply.region == self.region:
                self._set_coordinator(reply.coordinator)
                raise UnavailableError("redirected to the region's coordinator")
            if replaces is not None:
                return False  # a renewal stays here: keep what we hold, ask again later
            return await self._overflow_request(kind, reply.region, reply.coordinator)
        if isinstance(reply, cw.LeaseRefused):
            self.stats.leases_refused += 1
            if replaces is not None and replaces in self._leases:
                self._leases[replaces].renew_at = now + self.config.retry_s * 5
            if reply.code == UnavailableError.code and "coordinator" in reply.message:
                self.coordinator = None
                raise UnavailableError(reply.message)
            return False
        raise ProtocolError(f"unexpected reply to a lease request: {type(reply).__name__}")

    def _exclusions(self, kind: str, region: str) -> tuple[str, ...]:
        """What a lease request for ``kind`` to ``region`` leaves out: the workers this
        gamer banned itself (a lease on one would be wasted, and the coordinator may not
        know of the ban: a local one carries no proof to gossip), then those it replaced
        lately for missing (``LeaseMisses.avoided``)."""
        view = self._regions.get(region)
        members = {m.peer for m in view.members} if view is not None else set()
        misses = self._misses.get(kind)
        avoided = misses.avoided(trio.current_time()) if misses is not None else []
        return cw.lease_exclusions(self.gamer.banned() + avoided, members)

    async def _overflow_request(self, kind: str, region: str, coord: str) -> bool:
        """Ask ``region``'s coordinator, once, for the lease ours overflowed to it."""
        rid = next(self._rids)
        req = cw.LeaseRequest(
            rid,
            kind,
            self.config.slots,
            self.config.within_s,
            self.gamer.config.priority_of(kind),
            None,
            None,
            exclude=self._exclusions(kind, region),
        )
        try:
            link = await self._link(coord)
            reply = await link.request(req, rid, self.config.request_timeout_s)
        except P2C2RError as exc:
            log.info("overflow to region %s failed: %s", region, exc)
            return False
        if not isinstance(reply, cw.LeaseGrant):
            return False  # refused, or overflowed again: one hop only
        if not await self._connect_granted(reply):
            return False  # its lease expires there unused
        self.stats.leases_granted += 1
        self.stats.overflow_leases += 1
        # Keyed below zero: lease ids are per coordinator and must not collide with ours.
        key = -next(self._foreign_keys)
        now = trio.current_time()
        self._leases[key] = _Lease(
            reply.lease_id, reply.worker, reply.kind, reply.slots, now + reply.ttl_s, math.inf, coord
        )
        log.info("region %s lent a %s lease on %s", region, kind, reply.worker[-8:])
        return True

    async def _connect_granted(self, grant: cw.LeaseGrant) -> bool:
        """Connect to a lease's worker; False (logged) when it cannot be reached."""
        if grant.addrs:
            self._addrs[grant.worker] = grant.addrs
        try:
            await self._add_worker(grant.worker)
        except P2C2RError as exc:
            log.info("leased worker %s unreachable: %s", grant.worker[-8:], exc)
            return False
        return True

    async def _add_worker(self, worker: str) -> None:
        pid = peer_id_from_str(worker)
        if pid in self.gamer.workers():
            return
        addrs = self._addrs.get(worker, ())
        try:
            await self.gamer.add_worker(peer=pid)
            return
        except P2C2RError:
            if not addrs:
                raise
        for a in addrs:
            try:
                await self.gamer.add_worker(a)
                return
            except P2C2RError:
                continue
        raise UnavailableError(f"cannot reach worker {worker}")

    # ------------------------------------------------------------------ SDK hooks

    def _place(self, kind: str, in_flight: Callable[[bytes], int | None]) -> bytes | None:
        """The SDK's placer: a live worker we hold a lease for ``kind`` on, with a free slot.

        Leased slots per worker are summed over its unexpired leases of the kind. A worker
        with in-flight tasks below its slots wins (fewest in flight first); when every leased
        worker is full, the least over-subscribed one still gets the task (the worker queues
        it; nothing is refused or lost) and the main loop asks for one more lease. With no
        lease for the kind (before the first grant, or after a coordinator died and the
        leases ran out), ``None`` lets the SDK pick the least-loaded connected worker: every
        connected worker was leased to us once, and a task is never held back for a lease.

        Its cost is the leases held, whatever the number of connected workers (a lease
        placer: ``in_flight(peer)`` is None for a worker that is not live or is banned).
        """
        now = trio.current_time()
        slots: dict[bytes, int] = {}
        for lease in self._leases.values():
            if lease.kind == kind and lease.expires_at > now:
                slots[lease.peer] = slots.get(lease.peer, 0) + lease.slots
        best: tuple[float, bytes] | None = None
        for peer, s in slots.items():
            n = in_flight(peer)
            if n is None or s <= 0:
                continue
            key = (n / s, peer)
            if best is None or key < best:
                best = key
        if best is None:
            self.stats.placed_unleased += 1
            self._want(kind)
            return None
        if best[0] >= 1.0:
            self.stats.placed_over_capacity += 1
            self._want(kind)
        else:
            self.stats.placed_leased += 1
        return best[1]

    def _want(self, kind: str) -> None:
        first = kind not in self._wanted
        self._wanted[kind] = self._wanted.get(kind, 0) + 1
        if first:
            self._wake.set()

    def _on_completion(self, kind: str, worker: bytes | None, latency_s: float, outcome: str) -> None:
        """Completion hook: remember verified latencies per (worker, kind) for the coordinator,
        and replace the lease of a worker that keeps missing."""
        if worker is None:
            return
        if outcome != "ok":
            if outcome in _MISSES:
                self._missed(kind, worker)
            return
        misses = self._misses.get(kind)
        if misses is not None:
            misses.on_ok(worker, trio.current_time())
        if not (0.0 <= latency_s <= 3600.0):
            return
        key = (peer_id_to_str(worker), kind)
        if key not in self._observed and len(self._observed) >= 4 * cw.MAX_SAMPLES:
            return  # bounded: a coordinator that never answers must not grow our memory
        n, total = self._observed.get(key, (0, 0.0))
        self._observed[key] = (n + 1, total + latency_s)

    def _missed(self, kind: str, worker: bytes) -> None:
        held = [lid for lid, le in self._leases.items() if le.kind == kind and le.peer == worker]
        if not held:
            return  # not ours to replace (unleased, or already given back)
        misses = self._misses.get(kind)
        if misses is None:
            misses = self._misses[kind] = LeaseMisses(self.config.lease_misses)
        before = misses.held
        if not misses.on_miss(worker, trio.current_time()):
            self.stats.replacements_held += misses.held - before
            return
        for lid in held:
            lease = self._leases.pop(lid)
            if lease.foreign is None:
                self._to_release.append(lid)
        self.stats.leases_replaced += 1
        log.info(
            "worker %s keeps missing %s deadlines: its lease goes back, asking for another",
            lease.worker,
            kind,
        )
        self._wake.set()  # the loop asks for a lease to make up the kind's workers

    def leases(self) -> list[tuple[int, str, str, float]]:
        now = trio.current_time()
        return [(le.lease_id, le.worker, le.kind, le.expires_at - now) for le in self._leases.values()]


async def join_mesh(
    gamer: GamerClient,
    nursery: trio.Nursery,
    bootstrap: Sequence[str],
    *,
    region: str | None = None,
    config: MeshClientConfig | None = None,
) -> MeshClient:
    """Join from ``bootstrap`` and wait until the gamer holds at least one leased worker."""
    cfg = config or MeshClientConfig(region=region)
    if region is not None and cfg.region != region:
        from dataclasses import replace

        cfg = replace(cfg, region=region)
    client = MeshClient(gamer, gamer.host, nursery, cfg)
    try:
        with trio.fail_after(cfg.join_timeout_s if math.isfinite(cfg.join_timeout_s) else 1e9):
            await client.bootstrap(bootstrap)
            await nursery.start(client.run)
            await client.ready.wait()
    except trio.TooSlowError as exc:
        if not client._regions:
            raise UnavailableError(
                f"no bootstrap peer answered within {cfg.join_timeout_s:g} s ({', '.join(bootstrap)}); "
                "check the addresses (they must end in /p2p/<peer id>) and that the nodes run"
            ) from exc
        raise UnavailableError(
            f"joined the mesh but got no worker lease within {cfg.join_timeout_s:g} s "
            f"(region {client.region}: no coordinator elected yet, or no free capacity)"
        ) from exc
    return client
