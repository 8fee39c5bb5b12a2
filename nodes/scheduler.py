"""The coordinator's placement core: which worker gets which work, under a lease.

A gamer asks its region's coordinator for a *placement lease* — "worker W may take S slots of
kind K from you until time T" — and then sends tasks straight to W. This core decides W.

Inputs
    ``on_worker(worker, capacity, queue_depth, load, coord, now)`` from membership heartbeats,
    ``on_worker_gone``, ``submit(PlacementRequest, now)``, ``release(lease_id, now)``,
    ``on_completion(worker, kind, latency_s, now)`` (measured service times),
    ``on_region_summary(RegionSummary, now)`` from neighbouring coordinators, ``on_tick(now)``.
Effects
    ``LeaseGranted``, ``PlacementRefused`` (carrying a typed ``UnavailableError`` when no live
    worker runs the kind, ``RejectedError`` when they are all full), ``OverflowToRegion`` (a
    neighbour region has room: forward the request there), ``LeaseExpired``.

States of a request: QUEUED --placed--> LEASED --expired/released--> (gone);
QUEUED --queue timeout / deadline unreachable--> OVERFLOWED or REFUSED (one hop: a request
marked ``forwarded`` is refused, never overflowed again).

Ordering: requests wait in one EDF queue per kind, keyed (priority class, deadline, arrival):
priority classes are strict (0 = frame-critical first), deadlines order work inside a class.
The head of a kind's queue blocks later requests of that kind (no backfilling past an earlier
deadline), but kinds never block each other.

Scoring (``PredictedCompletion``, the default policy): every candidate worker is scored by the
time at which a task placed there would complete, in seconds::

    predicted = queue_wait + rtt + service
    service    = EWMA of measured latencies of (worker, kind), else the kind-wide EWMA, else a prior
    queue_wait = service * (reported queue depth + leased slots in use) / slots
    rtt        = estimate_rtt(worker coord, gamer coord)                      (Vivaldi)
    affinity   = the request's preferred worker (warm model / cache) gets ``affinity_bonus_s`` off

Every term is in seconds of the one quantity the gamer cares about, so the score needs no
weights and no normalisation: it is normalised by construction, and what is "learned" is the
per-worker service time (the history). The fixed 0.4/0.3/0.2/0.1 weighted score, random,
round-robin, least-loaded and power-of-two choices are kept behind the same ``PlacementPolicy``
interface for the simulator to compare against.

Trust (``SchedulerConfig.trust``, a ``TrustView`` over the node's ``nodes.reputation``
table, set by ``nodes.node``): a worker the view bans gets no lease, whatever its capacity
(its leases already granted run out on their own), and is placeable again when the ban
expires; when every live worker of a kind is banned the request is refused with
``UnavailableError`` at once. The default policy scales a worker's predicted completion by
``1 + distrust_factor * (1 - trust)``: a new identity (trust 0) counts as ``1 + f`` times
slower than a fully trusted worker, so it gets work when trusted workers are busy, and earns
its way up. Without a view every worker has trust 1 and nothing changes.

Invariants (checked by the property tests): a lease is only ever granted on a live worker that
advertises the kind with enough free slots; the slots in use on a worker never exceed its
capacity at grant time; every submitted request ends in exactly one of granted, refused or
overflowed. Costs: submit and grant are O(log q) in the queue plus O(c) in the candidates
scored, where c is capped by ``max_candidates`` (a seeded sample of larger pools); ticks pop
expired leases and timeouts from heaps in O(log n) each. Candidates are drawn from a per-kind
index of the workers that still have a free slot of that kind (kept sorted by worker id, updated
on every grant, release, expiry and heartbeat), so a full region costs O(1) per request to
answer "no room", not a scan of every capable worker; the free slots per kind that
``region_summary`` gossips are kept as running totals.
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect_left, insort
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mesh.errors import P2C2RError, RejectedError, UnavailableError, ValidationError
from mesh.vivaldi import Coord, estimate_rtt

__all__ = [
    "FixedWeighted",
    "LeaseExpired",
    "LeaseGranted",
    "LeastLoaded",
    "OverflowToRegion",
    "PlacementLease",
    "PlacementPolicy",
    "PlacementRefused",
    "PlacementRequest",
    "PowerOfTwo",
    "PredictedCompletion",
    "RandomPolicy",
    "RegionSummary",
    "RoundRobin",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerEffect",
    "TrustView",
    "WorkerView",
    "policy_by_name",
]


class TrustView(Protocol):
    """What the scheduler asks about a worker's reputation (``nodes.reputation`` behind it)."""

    def is_banned(self, worker: str, now: float) -> bool: ...

    def trust(self, worker: str, now: float) -> float:
        """In ``[0, 1]``; 0 for a key never seen."""
        ...

    def standing(self, worker: str, now: float) -> float | None:
        """``None`` while banned, else ``trust``: what ``_views`` asks of every candidate."""
        ...

    def observed(self, worker: str, now: float) -> None:
        """A gamer reported a result of ``worker`` it verified (``LeaseRequest.observed``)."""
        ...


@dataclass(frozen=True)
class SchedulerConfig:
    #: How long a granted placement lease lasts unless the request says otherwise.
    lease_s: float = 5.0
    #: Longest a request waits in the queue for capacity before overflow/refusal.
    max_queue_wait_s: float = 0.25
    max_queue: int = 10_000
    #: EWMA weight of a new latency sample.
    ewma_alpha: float = 0.2
    #: Service-time prior (s) for a kind nobody has measured yet.
    default_service_s: float = 0.02
    #: Seconds subtracted from the predicted completion on the request's preferred worker.
    affinity_bonus_s: float = 0.005
    #: Above this many capable workers, score a seeded sample of this size (plus the affinity one).
    max_candidates: int = 64
    #: Neighbour summaries older than this are ignored.
    summary_ttl_s: float = 3.0
    #: Latencies above this are treated as broken measurements and ignored.
    max_latency_s: float = 60.0
    #: The node's reputation, live (bans exclude, trust weighs); None: everyone trusted.
    trust: TrustView | None = field(default=None, compare=False, repr=False)
    #: An untrusted worker's predicted completion counts ``1 + distrust_factor`` times longer.
    distrust_factor: float = 1.0


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    request_id: str
    gamer: str
    kind: str
    slots: int
    #: Absolute time by which results are needed (EDF key).
    deadline: float
    #: Priority class, lower is more urgent (0 = frame-critical).
    priority: int = 1
    gamer_coord: Coord | None = None
    #: A worker the gamer would rather keep (warm model, cached inputs).
    affinity: str | None = None
    lease_s: float | None = None
    #: Workers this gamer will not use (it banned them itself): never leased to it.
    exclude: tuple[str, ...] = ()
    #: Already overflowed here from a neighbour region: refused, never overflowed again.
    forwarded: bool = False


@dataclass(frozen=True, slots=True)
class PlacementLease:
    lease_id: int
    request_id: str
    gamer: str
    worker: str
    kind: str
    slots: int
    expires_at: float
    predicted_s: float


@dataclass(frozen=True, slots=True)
class RegionSummary:
    """What a coordinator gossips to its neighbours: free slots per kind and where it is."""

    region: str
    coordinator: str
    free_slots: tuple[tuple[str, int], ...]
    centroid: Coord

    def free_for(self, kind: str) -> int:
        for k, n in self.free_slots:
            if k == kind:
                return n
        return 0


@dataclass(frozen=True, slots=True)
class LeaseGranted:
    lease: PlacementLease


@dataclass(frozen=True, slots=True)
class PlacementRefused:
    request_id: str
    gamer: str
    error_type: type[P2C2RError]
    reason: str

    def to_error(self) -> P2C2RError:
        return self.error_type(self.reason)


@dataclass(frozen=True, slots=True)
class OverflowToRegion:
    request: PlacementRequest
    region: str
    coordinator: str


@dataclass(frozen=True, slots=True)
class LeaseExpired:
    lease_id: int
    worker: str


SchedulerEffect = LeaseGranted | PlacementRefused | OverflowToRegion | LeaseExpired


@dataclass(frozen=True, slots=True)
class WorkerView:
    """A capable worker with room, as a policy sees it."""

    worker: str
    capacity: int
    in_use: int
    queue_depth: int
    load: float
    service_s: float
    rtt_s: float
    affinity: bool
    #: The coordinator's trust in this worker, ``[0, 1]`` (1 without a ``TrustView``).
    trust: float = 1.0

    @property
    def free(self) -> int:
        return self.capacity - self.in_use

    @property
    def utilisation(self) -> float:
        return (self.in_use + self.queue_depth) / max(self.capacity, 1)

    @property
    def predicted_s(self) -> float:
        wait = self.service_s * (self.queue_depth + self.in_use) / max(self.capacity, 1)
        return wait + self.rtt_s + self.service_s


class PlacementPolicy(Protocol):
    """Pick one of ``candidates`` (all capable and with room, sorted by worker id)."""

    name: str

    def choose(
        self, request: PlacementRequest, candidates: Sequence[WorkerView], rng: random.Random
    ) -> WorkerView: ...


class PredictedCompletion:
    """Lowest predicted completion time (queue wait + RTT + learned service time)."""

    name = "predicted"

    def __init__(self, affinity_bonus_s: float = 0.005, distrust_factor: float = 1.0) -> None:
        self.affinity_bonus_s = affinity_bonus_s
        self.distrust_factor = distrust_factor

    def choose(
        self, request: PlacementRequest, candidates: Sequence[WorkerView], rng: random.Random
    ) -> WorkerView:
        f = self.distrust_factor
        return min(
            candidates,
            key=lambda w: (
                w.predicted_s * (1.0 + f * (1.0 - w.trust)) - (self.affinity_bonus_s if w.affinity else 0.0),
                w.worker,
            ),
        )


class RandomPolicy:
    name = "random"

    def choose(
        self, request: PlacementRequest, candidates: Sequence[WorkerView], rng: random.Random
    ) -> WorkerView:
        return candidates[rng.randrange(len(candidates))]


class RoundRobin:
    """Cycles through workers by id, per kind, skipping those without room."""

    name = "round_robin"

    def __init__(self) -> None:
        self._last: dict[str, str] = {}

    def choose(
        self, request: PlacementRequest, candidates: Sequence[WorkerView], rng: random.Random
    ) -> WorkerView:
        ids = [w.worker for w in candidates]
        last = self._last.get(request.kind)
        i = 0 if last is None else bisect_left(ids, last)
        if last is not None and i < len(ids) and ids[i] == last:
            i += 1
        pick = candidates[i % len(candidates)]
        self._last[request.kind] = pick.worker
        return pick


class LeastLoaded:
    name = "least_loaded"

    def choose(
        self, request: PlacementRequest, candidates: Sequence[WorkerView], rng: random.Random
    ) -> WorkerView:
        return min(candidates, key=lambda w: (w.utilisation, w.worker))


class PowerOfTwo:
    """Sample two workers, take the less loaded (Mitzenmacher)."""

    name = "power_of_two"

    def choose(
        self, request: PlacementRequest, candidates: Sequence[WorkerView], rng: random.Random
    ) -> WorkerView:
        if len(candidates) == 1:
            return candidates[0]
        a, b = rng.sample(range(len(candidates)), 2)
        return min(candidates[a], candidates[b], key=lambda w: (w.utilisation, w.worker))


class FixedWeighted:
    """0.4 history + 0.3 load + 0.2 latency + 0.1 affinity, each min-max normalised, lowest wins."""

    name = "weighted"

    def __init__(
        self, history: float = 0.4, load: float = 0.3, latency: float = 0.2, affinity: float = 0.1
    ) -> None:
        self.weights = (history, load, latency, affinity)

    def choose(
        self, request: PlacementRequest, candidates: Sequence[WorkerView], rng: random.Random
    ) -> WorkerView:
        def span(vals: list[float]) -> tuple[float, float]:
            lo, hi = min(vals), max(vals)
            return lo, (hi - lo) or 1.0

        hs = [w.service_s for w in candidates]
        ls = [w.utilisation for w in candidates]
        rs = [w.rtt_s for w in candidates]
        (h0, hd), (l0, ld), (r0, rd) = span(hs), span(ls), span(rs)
        wh, wl, wr, wa = self.weights

        def score(k: int) -> tuple[float, str]:
            w = candidates[k]
            s = (
                wh * (hs[k] - h0) / hd
                + wl * (ls[k] - l0) / ld
                + wr * (rs[k] - r0) / rd
                + wa * (0.0 if w.affinity else 1.0)
            )
            return (s, w.worker)

        return candidates[min(range(len(candidates)), key=score)]


def policy_by_name(name: str) -> PlacementPolicy:
    """A fresh policy object by its ``name``."""
    table: dict[str, type[PlacementPolicy]] = {
        "predicted": PredictedCompletion,
        "random": RandomPolicy,
        "round_robin": RoundRobin,
        "least_loaded": LeastLoaded,
        "power_of_two": PowerOfTwo,
        "weighted": FixedWeighted,
    }
    try:
        return table[name]()
    except KeyError:
        raise ValidationError(f"unknown placement policy {name!r}; one of {sorted(table)}") from None


@dataclass
class _Worker:
    capacity: dict[str, int]
    queue_depth: int = 0
    load: float = 0.0
    coord: Coord | None = None
    in_use: dict[str, int] = field(default_factory=dict)
    #: Free slots per kind as last entered in the scheduler's free-slot index.
    indexed_free: dict[str, int] = field(default_factory=dict)


@dataclass
class Scheduler:
    """Placement state of one region's coordinator; see the module docstring."""

    rng: random.Random
    config: SchedulerConfig = field(default_factory=SchedulerConfig)
    policy: PlacementPolicy | None = None
    region: str = ""
    #: Counters for metrics: granted, refused_unavailable, refused_full, overflowed, expired.
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.policy is None:
            self.policy = PredictedCompletion(self.config.affinity_bonus_s, self.config.distrust_factor)
        self._workers: dict[str, _Worker] = {}
        self._by_kind: dict[str, list[str]] = {}  # kind -> sorted worker ids advertising it
        self._free_by_kind: dict[str, list[str]] = {}  # kind -> sorted ids with a free slot of it
        self._free_total: dict[str, int] = {}  # kind -> free slots over live workers
        self._service: dict[tuple[str, str], float] = {}
        self._kind_service: dict[str, float] = {}
        self._queues: dict[str, list[tuple[int, float, int, PlacementRequest]]] = {}
        # request id -> (give-up time, seq, request); heap entries not matching are dead
        self._queued: dict[str, tuple[float, int, PlacementRequest]] = {}
        self._timeouts: list[tuple[float, int, str, str]] = []  # (at, seq, kind, request id)
        self._leases: dict[int, PlacementLease] = {}
        self._expiries: list[tuple[float, int]] = []
        self._summaries: dict[str, tuple[RegionSummary, float]] = {}
        self._effects: list[SchedulerEffect] = []
        self._seq = 0
        self._next_lease = 1
        self.now = 0.0

    # -- workers -------------------------------------------------------------------------

    def on_worker(
        self,
        worker: str,
        capacity: Mapping[str, int],
        now: float,
        *,
        queue_depth: int = 0,
        load: float = 0.0,
        coord: Coord | None = None,
    ) -> None:
        """A worker's latest heartbeat: what it runs, how many slots, how busy, where."""
        self._advance(now)
        w = self._workers.get(worker)
        new_cap = {k: int(n) for k, n in capacity.items() if n > 0}
        if w is None:
            w = _Worker(capacity={})
            self._workers[worker] = w
        for k in sorted(set(w.capacity) - set(new_cap)):
            self._unindex(k, worker)
        for k in sorted(set(new_cap) - set(w.capacity)):
            insort(self._by_kind.setdefault(k, []), worker)
        old_kinds = w.capacity
        w.capacity = new_cap
        w.queue_depth = max(0, queue_depth)
        w.load = load
        w.coord = coord
        if old_kinds != new_cap or len(new_cap) != len(w.indexed_free):
            for kind in sorted(set(old_kinds) | set(new_cap) | set(w.indexed_free)):
                self._reindex(worker, w, kind)
        for kind in sorted(new_cap):
            self._dispatch(kind, now)

    def on_worker_gone(self, worker: str, now: float) -> None:
        """The worker is suspect or dead: no new placements; its leases lapse on their own."""
        self._advance(now)
        w = self._workers.get(worker)
        if w is None:
            return
        for k in sorted(w.capacity):
            self._unindex(k, worker)
        w.capacity = {}
        for k in sorted(w.indexed_free):
            self._reindex(worker, w, k)
        if not any(w.in_use.values()):
            del self._workers[worker]  # nothing outstanding to account for

    def on_completion(self, worker: str, kind: str, latency_s: float, now: float) -> None:
        """A measured service latency for (worker, kind): the history the score learns from."""
        self._advance(now)
        if not math.isfinite(latency_s) or not 0.0 <= latency_s <= self.config.max_latency_s:
            return
        a = self.config.ewma_alpha
        key = (worker, kind)
        prev = self._service.get(key)
        self._service[key] = latency_s if prev is None else (1 - a) * prev + a * latency_s
        kprev = self._kind_service.get(kind)
        self._kind_service[kind] = latency_s if kprev is None else (1 - a) * kprev + a * latency_s

    def service_estimate(self, worker: str, kind: str) -> float:
        s = self._service.get((worker, kind))
        if s is None:
            s = self._kind_service.get(kind, self.config.default_service_s)
        return s

    # -- requests ------------------------------------------------------------------------

    def submit(self, request: PlacementRequest, now: float) -> None:
        """Queue a request; its outcome arrives as an effect (possibly right away)."""
        self._advance(now)
        if request.slots <= 0 or not math.isfinite(request.deadline):
            raise ValidationError("placement request needs slots > 0 and a finite deadline")
        if request.request_id in self._queued:
            return  # duplicate of a request still waiting
        if not self._by_kind.get(request.kind):
            self._refuse(request, UnavailableError, f"no live worker runs {request.kind!r}")
            return
        if len(self._queued) >= self.config.max_queue:
            self._overflow_or_refuse(request, now, "coordinator queue full")
            return
        self._seq += 1
        q = self._queues.setdefault(request.kind, [])
        if len(q) > 2 * len(self._queued) + 64:
            q[:] = [e for e in q if self._live(e[3].request_id, e[2])]  # drop timed-out entries
            heapq.heapify(q)
        heapq.heappush(q, (request.priority, request.deadline, self._seq, request))
        give_up = min(request.deadline, now + self.config.max_queue_wait_s)
        self._queued[request.request_id] = (give_up, self._seq, request)
        heapq.heappush(self._timeouts, (give_up, self._seq, request.kind, request.request_id))
        self._dispatch(request.kind, now)
        self._advance(now)  # no waiting allowed (give-up time already reached): answer now

    def release(self, lease_id: int, now: float) -> None:
        """The gamer is done with a lease early; its slots are free again."""
        self._advance(now)
        lease = self._leases.pop(lease_id, None)
        if lease is not None:
            self._free(lease)
            self._dispatch(lease.kind, now)

    def on_region_summary(self, summary: RegionSummary, now: float) -> None:
        self._advance(now)
        if summary.region != self.region:
            self._summaries[summary.region] = (summary, now)

    def region_summary(self, coordinator: str, centroid: Coord) -> RegionSummary:
        """Our own summary for neighbours: free slots per kind over live workers."""
        free = {k: n for k, n in sorted(self._free_total.items()) if n > 0}
        return RegionSummary(self.region, coordinator, tuple(free.items()), centroid)

    def on_tick(self, now: float) -> None:
        self._advance(now)

    # -- outputs -------------------------------------------------------------------------

    def poll_effects(self) -> list[SchedulerEffect]:
        out, self._effects = self._effects, []
        return out

    def next_deadline(self) -> float | None:
        self._prune_heaps()
        times = [h[0][0] for h in (self._expiries, self._timeouts) if h]
        return min(times) if times else None

    def leases(self) -> list[PlacementLease]:
        return [self._leases[k] for k in sorted(self._leases)]

    def in_use(self, worker: str, kind: str) -> int:
        w = self._workers.get(worker)
        return 0 if w is None else w.in_use.get(kind, 0)

    def queued(self) -> int:
        return len(self._queued)

    # -- internals -----------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        """Handle lease expiries and queue give-ups due by ``now``, each at its own time.

        Working in event time makes the outcome independent of how late the driver ticks.
        """
        now = max(now, self.now)
        self.now = now
        while True:
            self._prune_heaps()
            exp = self._expiries[0][0] if self._expiries else math.inf
            out = self._timeouts[0][0] if self._timeouts else math.inf
            t = min(exp, out)
            if t > now:
                return
            if exp <= out:  # at a tie, freed slots go to the waiting request first
                _, lid = heapq.heappop(self._expiries)
                lease = self._leases.pop(lid)
                self._free(lease)
                self._count("expired")
                self._effects.append(LeaseExpired(lid, lease.worker))
                self._dispatch(lease.kind, t)
            else:
                _, _, kind, rid = heapq.heappop(self._timeouts)
                req = self._queued.pop(rid)[2]  # its queue entry is now dead, skipped lazily
                self._overflow_or_refuse(req, t, "all capable workers are full")
                self._dispatch(kind, t)  # a smaller request behind a timed-out head may fit

    def _prune_heaps(self) -> None:
        while self._expiries and self._expiries[0][1] not in self._leases:
            heapq.heappop(self._expiries)
        while self._timeouts and not self._live(self._timeouts[0][3], self._timeouts[0][1]):
            heapq.heappop(self._timeouts)

    def _live(self, rid: str, seq: int) -> bool:
        entry = self._queued.get(rid)
        return entry is not None and entry[1] == seq

    def _dispatch(self, kind: str, now: float) -> None:
        q = self._queues.get(kind)
        while q:
            _, _, seq, req = q[0]
            if not self._live(req.request_id, seq):
                heapq.heappop(q)
                continue
            if not self._by_kind.get(kind):
                heapq.heappop(q)
                self._queued.pop(req.request_id, None)
                self._refuse(req, UnavailableError, f"no live worker runs {kind!r}")
                continue
            if not self._place(req, now):
                if self._all_unusable(req, now):
                    heapq.heappop(q)
                    self._queued.pop(req.request_id, None)
                    self._refuse(
                        req, UnavailableError, f"every live worker running {kind!r} is banned or excluded"
                    )
                    continue
                return  # EDF: the head waits for room; later deadlines wait behind it
            heapq.heappop(q)
            self._queued.pop(req.request_id, None)

    def _place(self, req: PlacementRequest, now: float) -> bool:
        ids = self._free_by_kind.get(req.kind)
        if not ids:
            return False  # every capable worker is full
        views: list[WorkerView] = []
        if len(ids) > self.config.max_candidates:
            picked = set(self.rng.sample(range(len(ids)), self.config.max_candidates))
            if req.affinity is not None:
                j = bisect_left(ids, req.affinity)
                if j < len(ids) and ids[j] == req.affinity:
                    picked.add(j)
            views = self._views(req, [ids[j] for j in sorted(picked)], now)
        if not views:
            views = self._views(req, ids, now)  # a small pool, or no sampled worker had ``slots`` free
        if not views:
            return False
        assert self.policy is not None
        pick = self.policy.choose(req, views, self.rng)
        w = self._workers[pick.worker]
        if w.capacity.get(req.kind, 0) - w.in_use.get(req.kind, 0) < req.slots:
            raise AssertionError(f"policy {self.policy.name} chose a worker without room")
        w.in_use[req.kind] = w.in_use.get(req.kind, 0) + req.slots
        self._reindex(pick.worker, w, req.kind)
        lease = PlacementLease(
            lease_id=self._next_lease,
            request_id=req.request_id,
            gamer=req.gamer,
            worker=pick.worker,
            kind=req.kind,
            slots=req.slots,
            expires_at=now + (req.lease_s if req.lease_s is not None else self.config.lease_s),
            predicted_s=pick.predicted_s,
        )
        self._next_lease += 1
        self._leases[lease.lease_id] = lease
        heapq.heappush(self._expiries, (lease.expires_at, lease.lease_id))
        self._count("granted")
        self._effects.append(LeaseGranted(lease))
        return True

    def _all_unusable(self, req: PlacementRequest, now: float) -> bool:
        """Every live worker of the kind is banned here or excluded by the gamer: waiting
        would block the queue's head for ever, so the request is refused instead."""
        trust = self.config.trust
        if trust is None and not req.exclude:
            return False
        ids = self._by_kind.get(req.kind, ())
        return bool(ids) and all(
            w in req.exclude or (trust is not None and trust.is_banned(w, now)) for w in ids
        )

    def _views(self, req: PlacementRequest, pool: Sequence[str], now: float) -> list[WorkerView]:
        kind = req.kind
        trust = self.config.trust
        slots = req.slots
        here = req.gamer_coord
        affinity = req.affinity
        service = self._service
        kind_default = self._kind_service.get(kind, self.config.default_service_s)
        workers = self._workers
        views: list[WorkerView] = []
        exclude = frozenset(req.exclude)
        for wid in pool:
            if wid in exclude:
                continue
            w = workers[wid]
            cap = w.capacity.get(kind, 0)
            used = w.in_use.get(kind, 0)
            if cap - used < slots:
                continue
            t = 1.0
            if trust is not None:
                standing = trust.standing(wid, now)
                if standing is None:
                    continue  # banned
                t = standing
            coord = w.coord
            rtt = 0.0 if coord is None or here is None else estimate_rtt(coord, here)
            svc = service.get((wid, kind))
            views.append(
                WorkerView(
                    wid,
                    cap,
                    used,
                    w.queue_depth,
                    w.load,
                    kind_default if svc is None else svc,
                    rtt,
                    wid == affinity,
                    t,
                )
            )
        return views

    def _free(self, lease: PlacementLease) -> None:
        w = self._workers.get(lease.worker)
        if w is not None:
            w.in_use[lease.kind] = max(0, w.in_use.get(lease.kind, 0) - lease.slots)
            self._reindex(lease.worker, w, lease.kind)
            if not w.capacity and not any(w.in_use.values()):
                del self._workers[lease.worker]

    def _overflow_or_refuse(self, req: PlacementRequest, now: float, why: str) -> None:
        """Forward ``req`` to the nearest neighbour whose summary has room, else refuse it.

        A request that was itself forwarded here is refused, never forwarded again: a summary
        counts free slots this region cannot lease to that gamer (workers it excludes, workers
        the neighbour bans, or free slots spread over workers none of which has ``slots``
        free), so two regions could otherwise hand one request back and forth until its
        deadline. The simulator saw exactly that with the trust cores on:
        raytrace requests (60 s deadlines) excluding a gamer's local bans bounced between two
        regions every queue timeout, tens of thousands of times a second at 1,000 peers."""
        if req.forwarded:
            self._refuse(req, RejectedError, f"{why}; already overflowed here from a neighbour region")
            return
        best: tuple[float, str, RegionSummary] | None = None
        for region in sorted(self._summaries):
            summary, at = self._summaries[region]
            if now - at > self.config.summary_ttl_s or summary.free_for(req.kind) < req.slots:
                continue
            d = 0.0 if req.gamer_coord is None else estimate_rtt(summary.centroid, req.gamer_coord)
            if now + d > req.deadline:
                continue
            if best is None or (d, region) < (best[0], best[1]):
                best = (d, region, summary)
        if best is not None:
            self._count("overflowed")
            self._effects.append(OverflowToRegion(req, best[2].region, best[2].coordinator))
            return
        self._refuse(req, RejectedError, f"{why}; no neighbouring region has room")

    def _refuse(self, req: PlacementRequest, err: type[P2C2RError], why: str) -> None:
        self._count("refused_unavailable" if err is UnavailableError else "refused_full")
        self._effects.append(PlacementRefused(req.request_id, req.gamer, err, why))

    def _reindex(self, wid: str, w: _Worker, kind: str) -> None:
        """Bring ``wid``'s entry for ``kind`` in the free-slot index and totals up to date."""
        free = max(0, w.capacity.get(kind, 0) - w.in_use.get(kind, 0))
        old = w.indexed_free.get(kind, 0)
        if free == old:
            if free == 0:
                w.indexed_free.pop(kind, None)
            return
        self._free_total[kind] = self._free_total.get(kind, 0) + free - old
        ids = self._free_by_kind.setdefault(kind, [])
        if old == 0:
            insort(ids, wid)
        elif free == 0:
            i = bisect_left(ids, wid)
            if i < len(ids) and ids[i] == wid:
                del ids[i]
        if free:
            w.indexed_free[kind] = free
        else:
            w.indexed_free.pop(kind, None)
            if not ids:
                del self._free_by_kind[kind]
            if not self._free_total.get(kind):
                self._free_total.pop(kind, None)

    def _unindex(self, kind: str, worker: str) -> None:
        ids = self._by_kind.get(kind)
        if not ids:
            return
        i = bisect_left(ids, worker)
        if i < len(ids) and ids[i] == worker:
            del ids[i]
        if not ids:
            del self._by_kind[kind]

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1
