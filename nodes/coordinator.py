"""The coordinator role: drives ``nodes.scheduler.Scheduler`` for one region, for one epoch.

A ``Coordinator`` exists only while this node holds the region's election lease
(``nodes.control`` creates it on ``BecomeCoordinator`` and drops it on ``StepDown``); a new
epoch starts from a fresh scheduler fed from membership, so no state has to be handed over
between coordinators: leases granted by a dead coordinator simply run out, and gamers keep
using their workers meanwhile.

It is sans-IO like the cores it wraps: inputs are control messages and membership facts
with ``now``; outputs are ``(peer, message)`` pairs drained with ``poll``. Lease requests
are keyed by (gamer, request id) so that two gamers' ids never collide, and every request
gets exactly one answer: a grant, a refusal, or a redirect to another region's coordinator
(overflow). Times on the wire are relative (``ttl_s``, ``within_s``), never timestamps.

Reputation: with ``SchedulerConfig.trust`` set (``nodes.node`` sets it to this node's
``Reputation``), banned workers get no lease and trust weighs placement (see
``nodes.scheduler``). The latencies gamers piggyback (``LeaseRequest.observed``) are results
those gamers verified, so each one also counts as a small positive observation for the
worker's trust (``TrustView.observed``); worker-reported load samples never do.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from mesh.control_wire import (
    ControlMessage,
    LeaseGrant,
    LeaseRedirect,
    LeaseRefused,
    LeaseRequest,
    LoadReport,
)
from mesh.errors import ValidationError
from mesh.membership import Heartbeat
from mesh.vivaldi import Coord
from nodes.scheduler import (
    LeaseExpired,
    LeaseGranted,
    OverflowToRegion,
    PlacementRefused,
    PlacementRequest,
    RegionSummary,
    Scheduler,
    SchedulerConfig,
)

#: Lease requests waiting for an answer, per coordinator (bounded: beyond it, refuse).
MAX_OPEN_REQUESTS = 10_000


@dataclass
class Coordinator:
    region: str
    self_id: str
    epoch: int
    rng: random.Random
    config: SchedulerConfig = field(default_factory=SchedulerConfig)
    #: Known listen addresses of a peer (for grants and redirects).
    addrs_of: Callable[[str], tuple[str, ...]] = lambda _p: ()
    now: float = 0.0
    _out: list[tuple[str, ControlMessage]] = field(default_factory=list)
    _open: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: Latency samples gamers piggybacked on lease requests (``LeaseRequest.observed``).
    observed_samples: int = 0

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(self.rng, self.config, region=self.region)

    # -- inputs --------------------------------------------------------------------------

    def on_heartbeat(self, hb: Heartbeat, now: float) -> None:
        """A member's (gossiped) heartbeat: capacity, load, coordinates."""
        self.now = now
        self.scheduler.on_worker(
            hb.peer, dict(hb.capacity), now, queue_depth=hb.queue_depth, load=hb.load, coord=hb.coord
        )
        self._drain()

    def on_load(self, peer: str, report: LoadReport, coord: Coord | None, now: float) -> None:
        """A member's direct, high-rate load report (fresher than its last heartbeat)."""
        self.now = now
        self.scheduler.on_worker(
            peer, dict(report.capacity), now, queue_depth=report.queue_depth, load=report.load, coord=coord
        )
        for kind, count, mean_s in report.samples:
            if count > 0:
                self.scheduler.on_completion(peer, kind, mean_s, now)
        self._drain()

    def on_member_gone(self, peer: str, now: float) -> None:
        self.now = now
        self.scheduler.on_worker_gone(peer, now)
        self._drain()

    def on_summary(self, summary: RegionSummary, now: float) -> None:
        self.now = now
        self.scheduler.on_region_summary(summary, now)
        self._drain()

    def on_lease_request(self, gamer: str, req: LeaseRequest, now: float) -> None:
        self.now = now
        for lease_id in req.release:
            self.scheduler.release(lease_id, now)
        trust = self.config.trust
        for worker, kind, latency in req.observed:
            self.observed_samples += 1
            self.scheduler.on_completion(worker, kind, latency, now)
            if trust is not None and worker != gamer:
                trust.observed(worker, now)
        key = f"{gamer}:{req.request_id}"
        if len(self._open) >= MAX_OPEN_REQUESTS and key not in self._open:
            self._out.append((gamer, LeaseRefused(req.request_id, "rejected", "coordinator is overloaded")))
            return
        self._open[key] = (gamer, req.request_id)
        try:
            self.scheduler.submit(
                PlacementRequest(
                    request_id=key,
                    gamer=gamer,
                    kind=req.kind,
                    slots=req.slots,
                    deadline=now + req.within_s,
                    priority=req.priority,
                    gamer_coord=req.coord,
                    affinity=req.affinity,
                    exclude=req.exclude,
                ),
                now,
            )
        except ValidationError as exc:
            self._open.pop(key, None)
            self._out.append((gamer, LeaseRefused(req.request_id, exc.code, str(exc))))
        self._drain()

    def on_tick(self, now: float) -> None:
        self.now = now
        self.scheduler.on_tick(now)
        self._drain()

    # -- outputs -------------------------------------------------------------------------

    def poll(self) -> list[tuple[str, ControlMessage]]:
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> float | None:
        return self.scheduler.next_deadline()

    def summary(self, centroid: Coord) -> RegionSummary:
        return self.scheduler.region_summary(self.self_id, centroid)

    def open_requests(self) -> int:
        return len(self._open)

    def leases_in_use(self) -> Mapping[str, int]:
        out: dict[str, int] = {}
        for lease in self.scheduler.leases():
            out[lease.worker] = out.get(lease.worker, 0) + lease.slots
        return out

    # -- internals -----------------------------------------------------------------------

    def _drain(self) -> None:
        for eff in self.scheduler.poll_effects():
            if isinstance(eff, LeaseGranted):
                lease = eff.lease
                opened = self._open.pop(lease.request_id, None)
                if opened is None:
                    continue
                gamer, rid = opened
                self._out.append(
                    (
                        gamer,
                        LeaseGrant(
                            request_id=rid,
                            lease_id=lease.lease_id,
                            worker=lease.worker,
                            addrs=self.addrs_of(lease.worker),
                            kind=lease.kind,
                            slots=lease.slots,
                            ttl_s=max(0.0, lease.expires_at - self.now),
                            predicted_s=max(0.0, lease.predicted_s),
                            epoch=self.epoch,
                        ),
                    )
                )
            elif isinstance(eff, PlacementRefused):
                opened = self._open.pop(eff.request_id, None)
                if opened is not None:
                    gamer, rid = opened
                    self._out.append((gamer, LeaseRefused(rid, eff.error_type.code, eff.reason)))
            elif isinstance(eff, OverflowToRegion):
                opened = self._open.pop(eff.request.request_id, None)
                if opened is not None:
                    gamer, rid = opened
                    self._out.append(
                        (
                            gamer,
                            LeaseRedirect(rid, eff.region, eff.coordinator, self.addrs_of(eff.coordinator)),
                        )
                    )
            elif isinstance(eff, LeaseExpired):
                pass  # the gamer renews before expiry; nothing to tell anyone
