"""One simulation run: a world, a placement policy, and the real sans-IO cores in virtual time.

What runs where
    * every region steward (voter) runs a real ``ElectionCore``; their messages travel through
      the network model with delay, loss and partitions. ``BecomeCoordinator`` / ``StepDown``
      decide which peer coordinates the region;
    * the acting coordinator of a region owns a real ``MembershipCore`` (fed by the region's
      heartbeats, built with ``MembershipCore.local_heartbeat``-equivalent ``Heartbeat``s whose
      sizes come from ``Heartbeat.encode()``) and a real ``Scheduler`` with the policy under
      test. Every member runs membership all along in the real shell, so a new coordinator
      starts its membership table and scheduler from the region's live members (itself
      included: the coordinator is a worker too), as ``nodes.control`` seeds its coordinator;
    * gamers hold placement leases from their region's coordinator and send tasks straight to
      the leased worker (the coordinator never sees task bytes); workers are k-slot FIFO
      queues with service times from calibrated kind costs scaled by CPU speed / GPU;
    * coordinators gossip ``RegionSummary``s to each other, so ``OverflowToRegion`` works.

Shell decisions (what the real node's shell would do; the cores do not prescribe them)
    * heartbeats go to the region's coordinator (``heartbeat_delivery = "coordinator"``);
      with ``"topic"`` every region member receives each one (bytes only: one table is kept);
      the summary always reports what flooding would cost;
    * a stored heartbeat whose load, queue depth and incarnation equal what the scheduler
      already has is not passed to ``Scheduler.on_worker`` again (it would be a no-op);
    * the gamer reports measured service times to the coordinator piggybacked on its next
      lease request (``Scheduler.on_completion``), renews a lease 1 s before it ends (with the
      current worker as affinity), and replaces a lease whose worker misses 3 deadlines in a
      row, with ``nodes.mesh_client``'s ``LeaseMisses`` (hold-off included);
    * trust: every gamer runs the SDK's real ``VerificationCore`` with its own ``Reputation``
      and ``AdaptiveTimeouts`` (``simulations.trust`` answers the checks the core asks for,
      on token outputs); each copy it sends is a real task on a worker. Evidence goes to the
      region's other gamers and its coordinator node, whose scheduler consults that node's
      ``Reputation`` through ``ReputationTrust`` (a banned worker gets no lease);
    * heartbeats due in one tenth of an interval in one region travel as one event (each one
      still dropped by loss or partition on its own); load reports are counted in bytes;
    * the gamer tells its core when each copy has left its uplink (``VerificationCore.on_sent``,
      as ``GamerClient._write_tasks`` does), so time queued behind its own earlier payloads
      does not count against the worker;
    * a worker announces a copy that must wait at least ``WorkerConfig.queue_notice_s`` for a
      slot (the ``"Q"`` frame; ``VerificationCore.on_queued``), with the wait its FIFO queue
      gives here (exact: the real worker estimates it from its recent run times);
    * each gamer closes, every ``IDLE_CHECK_S``, the links its core reports idle
      (``VerificationCore.idle_workers``: nothing in flight for ``IDLE_LINK_S``, no lease held
      on the worker), and gives its core a round-trip estimate per worker (the link's RTT
      when it opened, as ``GamerClient`` measures it: ``VerificationCore.rtt_estimate``) so
      duplicates stay near; a forwarded lease
      request is marked so and never forwarded again (``PlacementRequest.forwarded``).

Determinism: one event heap ordered by (time, seq); every random draw comes from a generator
seeded by (seed, concern); no set of peers is ever iterated unsorted.
"""

from __future__ import annotations

import gc
import heapq
import math
import random
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import astuple, dataclass, field, replace
from typing import Any

import msgpack

from mesh import control_wire as cw
from mesh import wire
from mesh.election import (
    BecomeCoordinator,
    Broadcast,
    ElectionConfig,
    ElectionCore,
    ElectionEffect,
    ElectionMessage,
    InvariantViolated,
    PersistVote,
    Renew,
    Send,
    StepDown,
    VoteRecord,
    rank_score,
)
from mesh.errors import TaskTimeoutError, VerificationError
from mesh.membership import (
    Heartbeat,
    MembershipConfig,
    MembershipCore,
    PeerAlive,
    PeerDead,
    PeerJoined,
    PeerSuspected,
)
from nodes.reputation import Evidence, Reputation, ReputationConfig, ReputationTrust
from nodes.scheduler import (
    LeaseGranted,
    OverflowToRegion,
    PlacementLease,
    PlacementRefused,
    PlacementRequest,
    RegionSummary,
    Scheduler,
    SchedulerConfig,
    policy_by_name,
)
from nodes.sdk_cores import AdaptiveTimeouts, LeaseMisses, TimeoutConfig
from nodes.verification import (
    IDLE_LINK_S,
    Cancel,
    Penalise,
    Probe,
    Reject,
    Resolve,
    RunCheck,
    SendTo,
    Task,
    VerificationConfig,
    VerificationCore,
    VerificationStats,
)
from nodes.worker import WorkerConfig
from simulations.engine import EventLoop
from simulations.network import NetworkModel
from simulations.trust import check_verdict, evidence_proof, right_output, sim_registry, wrong_output
from simulations.world import World, concern_seed

__all__ = ["OUTCOMES", "SimResult", "Simulation"]

#: Task outcome codes (index = code stored per task).
OUTCOMES = ("ok", "late", "lost", "unplaced", "wrong", "caught")
OK, LATE, LOST, UNPLACED, WRONG, CAUGHT = range(6)

SIG_BYTES = 64
ENVELOPE_BYTES = 16  # gossip/stream framing around a signed message
RENEW_MARGIN_S = 1.0
REQUEST_TIMEOUT_S = 1.0
RETRY_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0
HB_SLOTS = 10
MEM_TICK_S = 0.1
CANDIDATE_REFRESH_S = 5.0
HB_REENCODE_EVERY = 64
#: Workloads at or above this priority class are batch work: a real worker runs them in
#: its niced background lane (``nodes.worker``), with ``batch_concurrency`` slots (default:
#: one per core) beside the interactive ones.
BATCH_PRIORITY = wire.PRIORITY_BATCH
#: A gamer notices a worker that vanished without a goodbye (its link times out) after this.
LINK_DEAD_S = 5.0
#: The gamer closes links to workers it holds no lease on and has had nothing in flight on
#: for ``nodes.verification.IDLE_LINK_S`` (``VerificationCore.idle_workers``, as the SDK's
#: mesh client does), checking every ``IDLE_CHECK_S``.
IDLE_CHECK_S = 5.0


@dataclass
class SimResult:
    """Everything a run measured, for ``simulations.report`` (picklable)."""

    policy: str
    interval_s: float
    # per task (record order)
    t_stream: array  # type: ignore[type-arg]
    t_worker: array  # type: ignore[type-arg]
    t_submit: array  # type: ignore[type-arg]
    t_latency: array  # type: ignore[type-arg]
    t_service: array  # type: ignore[type-arg]
    t_outcome: array  # type: ignore[type-arg]
    # per interval
    busy: list[float]
    capacity: list[float]
    ctrl_bytes: list[float]
    task_bytes: list[float]
    topic_hb_bytes: list[float]
    direct_hb_bytes: list[float]
    online: list[int]
    coordinators: list[int]
    # coordinator log: (t, region, event, peer, epoch, gap_s)
    failovers: list[tuple[float, str, str, str, int, float]]
    counters: dict[str, int]
    #: Every lease a gamer accepted: (request sent, lease received, worker index).
    leases: list[tuple[float, float, int]] = field(default_factory=list)
    #: The trust figures: the gamers' ``VerificationStats`` summed (``verify_*``), bans by
    #: who was banned (malicious or honest), coordinator bans, and the busy seconds workers
    #: spent on each kind of copy (primary, duplicate, tie-break, replacement, probe).
    verification: dict[str, float] = field(default_factory=dict)
    events_run: int = 0
    wall_s: float = 0.0


class _Peer:
    __slots__ = (
        "batch_free",
        "hb_count",
        "hb_size",
        "inc",
        "joined_at",
        "online",
        "pending",
        "rho",
        "seq",
        "session_end",
        "slot_free",
    )

    def __init__(self, cores: int) -> None:
        self.online = False
        self.inc = 0
        self.seq = 0
        self.session_end = 0.0
        self.joined_at = 0.0
        self.slot_free = [0.0] * cores
        self.batch_free = [0.0] * cores
        self.rho = 0.0
        self.pending: deque[tuple[float, float]] = deque()
        self.hb_size = 0
        self.hb_count = 0


class _Coordinator:
    __slots__ = ("alive", "epoch", "last_view", "membership", "peer", "region", "scheduler", "tick_at")

    def __init__(self, peer: int, region: int, epoch: int, membership: MembershipCore, scheduler: Scheduler):
        self.peer = peer
        self.region = region
        self.epoch = epoch
        self.membership = membership
        self.scheduler = scheduler
        self.alive = True
        self.tick_at = math.inf
        self.last_view: dict[str, tuple[int, int, float]] = {}


class _Voter:
    __slots__ = ("core", "gen", "peer", "region", "tick_at")

    def __init__(self, peer: int, region: int) -> None:
        self.peer = peer
        self.region = region
        self.core: ElectionCore | None = None
        self.gen = 0
        self.tick_at = math.inf


class _Lane:
    __slots__ = (
        "backoff",
        "busy",
        "held",
        "lane",
        "lease_coord",
        "lease_exp",
        "lease_id",
        "req_id",
        "req_n",
        "req_t",
        "samples",
        "stream",
        "worker",
    )

    def __init__(self, stream: int, lane: int) -> None:
        self.stream = stream
        self.lane = lane
        self.worker = -1
        self.lease_id = 0
        self.lease_exp = 0.0
        self.lease_coord: _Coordinator | None = None
        self.req_id: str | None = None
        self.req_n = 0
        self.req_t = 0.0
        self.held: list[float] = []
        self.busy = 0
        self.backoff = RETRY_BACKOFF_S
        self.samples: list[tuple[int, float]] = []


class _SimTrust(ReputationTrust):
    """``nodes.reputation.ReputationTrust`` over the simulator's peer names (no base58)."""

    def __init__(self, reputation: Reputation, ids: dict[str, bytes]) -> None:
        super().__init__(reputation)
        self._sim_ids = ids

    def _peer(self, worker: str) -> bytes | None:
        return self._sim_ids.get(worker)


class _Gamer:
    """One gamer's SDK: the real verification core, its reputation and adaptive timeouts."""

    __slots__ = (
        "anchored",
        "conn",
        "core",
        "cur",
        "index",
        "lanes",
        "lease_timeouts",
        "node",
        "pending",
        "region",
        "rep",
        "rtt",
        "spread",
        "spread_full",
        "spread_pick",
        "svc_last",
        "tick_at",
        "timeouts",
    )

    def __init__(self, index: int, node: int, region: int, core: VerificationCore, rep: Reputation) -> None:
        self.index = index
        self.node = node
        self.region = region
        self.core = core
        self.rep = rep
        self.timeouts = AdaptiveTimeouts()
        #: Lease round trips (kind "lease"): the placement request timeout.
        # Floored at the fixed timeout: only grants (fast) are sampled, and a request may wait
        # in the coordinator's queue for ``max_queue_wait_s`` before its answer.
        self.lease_timeouts = AdaptiveTimeouts(
            TimeoutConfig(initial_s=REQUEST_TIMEOUT_S, minimum_s=REQUEST_TIMEOUT_S, maximum_s=5.0)
        )
        self.tick_at = math.inf
        #: Connected workers -> the incarnation connected to.
        self.conn: dict[int, int] = {}
        #: Connected workers (peer id bytes) -> the round trip measured as the link opened:
        #: the core's ``rtt_estimate``, as ``GamerClient`` gives it.
        self.rtt: dict[bytes, float] = {}
        #: User task id -> (lane, submit time, deadline).
        self.pending: dict[bytes, tuple[_Lane, float, float]] = {}
        #: The worker the lane being submitted holds a lease on (the SDK's placer answer).
        self.cur: bytes | None = None
        #: Or, for a stream spread over several leased workers: (lane, worker, leased
        #: slots) of each, and the lane ``place`` picked.
        self.spread: list[tuple[_Lane, bytes, int]] | None = None
        self.spread_pick: _Lane | None = None
        #: Whether that pick was over its leased slots (the SDK then asks for one more).
        self.spread_full = False
        self.anchored: dict[str, int] = {}
        self.lanes: list[_Lane] = []
        self.svc_last: dict[int, float] = {}
        core.lease_placer = self.place
        core.rtt_estimate = self.rtt.get

    def place(self, kind: str, in_flight: Callable[[bytes], int | None]) -> bytes | None:
        """The SDK's placer: the worker the lane being submitted holds a lease on; over
        several (``spread``), as ``nodes.mesh_client``'s placer: the eligible one with the
        fewest copies in flight per leased slot (over capacity too: the worker queues it),
        none eligible: ``None`` (the core picks a connected worker)."""
        spread = self.spread
        if spread is None:
            return self.cur
        best: tuple[float, int] | None = None
        for i, (_lane, worker, slots) in enumerate(spread):
            n = in_flight(worker)
            if n is not None and (best is None or n / slots < best[0]):
                best = (n / slots, i)
        if best is None:
            return None
        lane, worker, _ = spread[best[1]]
        self.spread_pick = lane
        self.spread_full = best[0] >= 1.0
        return worker

    def leased(self) -> set[int]:
        """Workers this gamer's lanes hold leases on (links the gamer keeps open)."""
        return {lane.worker for lane in self.lanes if lane.worker >= 0}


@dataclass
class _Stream:
    index: int
    gamer: int
    region: int
    kind: str
    deadline_s: float
    priority: int
    period_s: float
    closed: bool
    cost_s: float
    in_bytes: int
    out_bytes: int
    gpu_speedup: float
    lease_s: float | None
    slots: int
    #: Tasks a closed-loop lane keeps in flight: its slots plus the workload's ``pipeline``.
    inflight: int
    params: dict[str, Any] = field(default_factory=dict)
    lanes: list[_Lane] = field(default_factory=list)
    #: Lanes in use (a periodic stream grows toward ``len(lanes)`` = ``max_workers``).
    active: int = 1
    #: Leases it holds whatever the demand (``workers``), and whether a dispatch found every
    #: leased worker over its slots since a lease was last asked for (``nodes.mesh_client``'s
    #: ``_wanted``): a lease beyond ``base`` that is lost is asked for again only then.
    base: int = 1
    wanted: bool = False
    #: When a lane's worker keeps missing and its lease should go (``nodes.mesh_client``
    #: keeps one per kind).
    misses: LeaseMisses = field(default_factory=LeaseMisses)


def _msg_size(msg: Any) -> int:
    body = [type(msg).__name__, *astuple(msg)]
    return len(msgpack.packb(body, use_bin_type=True)) + SIG_BYTES + ENVELOPE_BYTES


class Simulation:
    """Simulate ``world`` under placement policy ``policy``; ``run()`` returns a ``SimResult``."""

    def __init__(
        self,
        world: World,
        policy: str,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        self.w = world
        self.scn = world.scenario
        self.policy = policy
        self.progress = progress
        seed = world.seed
        self.loop = EventLoop()
        self.net = NetworkModel(
            self.scn.network,
            world.region_of,
            world.access_s,
            world.up_bps,
            random.Random(concern_seed(seed, "net")),
        )
        self.rng_service = random.Random(concern_seed(seed, "service"))
        self.rng_verify = random.Random(concern_seed(seed, "cheat"))
        self.rng_election = random.Random(concern_seed(seed, "election"))
        ctl = self.scn.control
        self.mem_cfg = MembershipConfig(
            heartbeat_interval_s=ctl.heartbeat_interval_s,
            suspect_after_s=ctl.suspect_after_s,
            dead_after_s=ctl.dead_after_s,
            forget_after_s=ctl.forget_after_s,
            max_peers=max(20_000, 2 * world.n_peers),
        )
        self.sched_cfg = SchedulerConfig(lease_s=ctl.lease_s, max_queue_wait_s=ctl.max_queue_wait_s)
        self.elec_cfg = ElectionConfig(
            lease_s=ctl.election_lease_s,
            renew_interval_s=ctl.renew_interval_s,
            claim_timeout_s=ctl.claim_timeout_s,
        )
        self.interval_s = self.scn.output.interval_s
        self.n_intervals = max(1, math.ceil(self.scn.duration_s / self.interval_s))
        n = self.n_intervals
        self.busy = [0.0] * n
        self.cap = [0.0] * n
        self.ctrl = [0.0] * n
        self.task_bytes = [0.0] * n
        self.topic_hb = [0.0] * n
        self.direct_hb = [0.0] * n
        self.online_n = [0] * n
        self.coord_n = [0] * n
        self.failovers: list[tuple[float, str, str, str, int, float]] = []
        self.lease_log: list[tuple[float, float, int]] = []
        self.counters: dict[str, int] = {}
        self.t_stream: array = array("i")  # type: ignore[type-arg]
        self.t_worker: array = array("i")  # type: ignore[type-arg]
        self.t_submit: array = array("d")  # type: ignore[type-arg]
        self.t_latency: array = array("d")  # type: ignore[type-arg]
        self.t_service: array = array("d")  # type: ignore[type-arg]
        self.t_outcome: array = array("b")  # type: ignore[type-arg]

        R = len(self.scn.network.regions)
        self.R = R
        self.peers = [_Peer(c) for c in world.peer_cores]
        self.peer_index = {pid: i for i, pid in enumerate(world.peer_ids)}
        #: Peer ids as the trust cores see them (bytes), and back.
        self.wb = [pid.encode() for pid in world.peer_ids]
        #: Peer ids per region (what a region view lists as members).
        self.region_ids: list[frozenset[str]] = [
            frozenset(pid for pid, r in zip(world.peer_ids, world.peer_region, strict=True) if r == region)
            for region in range(len(world.scenario.network.regions))
        ]
        self.wb_index = {b: i for i, b in enumerate(self.wb)}
        self.pid_bytes = dict(zip(world.peer_ids, self.wb, strict=True))
        self.region_online = [0] * R
        self.online_slots = 0
        self.acting: list[_Coordinator | None] = [None] * R
        self.region_lost_at: list[float] = [0.0] * R
        self.voters: list[list[_Voter]] = [
            [_Voter(p, r) for p in world.stewards_by_region[r]] for r in range(R)
        ]
        self.voter_by_id: dict[str, _Voter] = {world.peer_ids[v.peer]: v for vs in self.voters for v in vs}
        self.persisted: dict[int, VoteRecord] = {}
        self.req_lane: dict[str, _Lane] = {}
        gpu = dict(self.scn.peers.gpu_speedup)
        self.streams: list[_Stream] = []
        for sd in world.streams:
            wl = self.scn.workloads[sd.workload]
            prof = world.profiles[sd.workload]
            st = _Stream(
                sd.index,
                sd.gamer,
                world.region_of[sd.gamer],
                wl.kind,
                wl.deadline_ms / 1000.0,
                wl.priority,
                sd.period_s,
                sd.lanes > 0,
                prof.cost_ms / 1000.0,
                prof.in_bytes,
                prof.out_bytes,
                gpu.get(wl.kind, 1.0),
                wl.lease_s or None,
                max(1, wl.slots),
                max(1, wl.slots) + max(0, wl.pipeline),
                prof.params,
            )
            st.lanes = [_Lane(sd.index, k) for k in range(sd.lanes or max(wl.workers, wl.max_workers))]
            st.active = st.base = sd.lanes or wl.workers
            self.streams.append(st)
        self.gamer_ids = world.gamer_ids
        self.n_peers = world.n_peers
        self._init_trust()
        sigma2 = math.log(1.0 + self.scn.peers.service_cv**2)
        self.svc_mu = -0.5 * sigma2
        self.svc_sigma = math.sqrt(sigma2)
        self.req_bytes = _msg_size(
            PlacementRequest("s000000.0.000", "g00000", "upscale", 1, 1.0, 1, None, "p00000", None)
        )
        self.lease_bytes = _msg_size(
            PlacementLease(1, "s000000.0.000", "g00000", "p00000", "upscale", 1, 1.0, 0.01)
        )
        self.small_bytes = 48 + SIG_BYTES + ENVELOPE_BYTES
        kinds = sorted({st.kind for st in self.streams}) or ["upscale"]
        report = cw.LoadReport(1 << 20, 0.5, 2, tuple((k, 8) for k in kinds), ((kinds[0], 20, 0.01),))
        #: A LoadReport on a control stream (4-byte length prefix; the stream is authenticated).
        self.lr_bytes = len(cw.encode(report)) + 4
        lr = ctl.load_report_interval_s
        self.lr_per_hb = ctl.heartbeat_interval_s / lr if lr > 0 else 0.0
        self.warm = self.scn.output.warmup_s

    # -- bookkeeping -----------------------------------------------------------------------

    def _count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def _bucket(self, t: float) -> int:
        i = int(t / self.interval_s)
        return i if i < self.n_intervals else self.n_intervals - 1

    def _ctrl(self, nbytes: float) -> None:
        self.ctrl[self._bucket(self.loop.now)] += nbytes

    def _add_busy(self, start: float, end: float, sign: float = 1.0) -> None:
        iv = self.interval_s
        t = start
        while t < end:
            i = int(t / iv)
            if i >= self.n_intervals:
                return
            b_end = (i + 1) * iv
            e = end if end < b_end else b_end
            self.busy[i] += sign * (e - t)
            t = e

    def _record(
        self, lane: _Lane, worker: int, t0: float, latency: float, service: float, outcome: int
    ) -> None:
        if t0 < self.warm:
            return
        self.t_stream.append(lane.stream)
        self.t_worker.append(worker)
        self.t_submit.append(t0)
        self.t_latency.append(latency)
        self.t_service.append(service)
        self.t_outcome.append(outcome)

    # -- run -------------------------------------------------------------------------------

    def run(self) -> SimResult:
        import time

        wall0 = time.perf_counter()
        loop = self.loop
        w = self.w
        for p in range(self.n_peers):
            for start, _end in w.sessions[p]:
                if start < self.scn.duration_s:
                    loop.schedule(start, self._peer_join, p)
        for r in range(self.R):
            for v in self.voters[r]:
                loop.schedule(0.0, self._voter_start, v)
            loop.schedule(0.0, self._candidates_tick, r)
        interval = self.scn.control.heartbeat_interval_s
        self.slot_peers: list[list[list[int]]] = [[[] for _ in range(HB_SLOTS)] for _ in range(self.R)]
        for p in range(self.n_peers):
            s = min(HB_SLOTS - 1, int(w.hb_phase[p] / interval * HB_SLOTS))
            self.slot_peers[w.peer_region[p]][s].append(p)
        for r in range(self.R):
            for s in range(HB_SLOTS):
                loop.schedule(s * interval / HB_SLOTS, self._hb_slot, r, s)
        for i in range(self.n_intervals):
            loop.schedule(i * self.interval_s, self._interval, i)
        for st in self.streams:
            if st.closed:
                for lane in st.lanes:
                    loop.schedule(self.w.streams[st.index].phase_s, self._lane_next, lane)
            else:
                loop.schedule(self.w.streams[st.index].phase_s, self._frame, st)
        for ev in self.scn.events:
            loop.schedule(ev.at_s, self._event, ev)
        if not self.no_core:
            for g in self.gamers:
                loop.schedule(IDLE_CHECK_S * (1.0 + g.index / max(1, len(self.gamers))), self._idle_tick, g)
        for part in self.scn.network.partitions:
            loop.schedule(part.start_s, self._partition_start, part)
        # The world and this run's set-up live to the end: frozen, the cyclic collector never
        # walks them again, and ``_interval`` freezes whatever is alive at each interval. Full
        # collections walked a gigabyte at 10,000 peers (a quarter of the run's CPU). Nothing
        # frozen is lost: objects still die by reference count (finished tasks hold no cycle),
        # and the end of the run unfreezes what is left for a collection (and whatever else
        # the process had frozen: ``gc.freeze`` is process-wide).
        gc.collect()
        gc.freeze()
        try:
            loop.run_until(self.scn.duration_s)
        finally:
            gc.unfreeze()
        # Frames still held for want of a lease at the end are unplaced if already late.
        for st in self.streams:
            for lane in st.lanes:
                for t0 in lane.held:
                    if t0 + st.deadline_s <= self.scn.duration_s:
                        self._record(lane, -1, t0, math.nan, math.nan, UNPLACED)
        return SimResult(
            policy=self.policy,
            interval_s=self.interval_s,
            t_stream=self.t_stream,
            t_worker=self.t_worker,
            t_submit=self.t_submit,
            t_latency=self.t_latency,
            t_service=self.t_service,
            t_outcome=self.t_outcome,
            busy=self.busy,
            capacity=self.cap,
            ctrl_bytes=self.ctrl,
            task_bytes=self.task_bytes,
            topic_hb_bytes=self.topic_hb,
            direct_hb_bytes=self.direct_hb,
            online=self.online_n,
            coordinators=self.coord_n,
            failovers=self.failovers,
            counters=dict(sorted(self.counters.items())),
            leases=self.lease_log,
            verification=self.trust_figures(),
            events_run=loop.events_run,
            wall_s=time.perf_counter() - wall0,
        )

    def _interval(self, i: int) -> None:
        self.cap[i] += self.online_slots * self.interval_s
        self.online_n[i] = sum(self.region_online)
        self.coord_n[i] = sum(1 for c in self.acting if c is not None)
        gc.freeze()  # young objects too: they still die by reference count (see ``run``)
        if self.progress is not None:
            self.progress(self.loop.now)

    # -- churn and events ------------------------------------------------------------------

    def _slots_change(self, p: int, sign: int) -> None:
        k = self.w.peer_cores[p] * sign
        self.online_slots += k
        now = self.loop.now
        i = self._bucket(now)
        if now < self.n_intervals * self.interval_s:
            self.cap[i] += k * ((i + 1) * self.interval_s - now)

    def _peer_join(self, p: int, session_end: float | None = None) -> None:
        peer = self.peers[p]
        if peer.online:
            return
        now = self.loop.now
        peer.online = True
        peer.inc = int(now * 1000) + 1
        peer.seq = 0
        peer.hb_count = 0
        peer.joined_at = now
        peer.slot_free = [now] * len(peer.slot_free)
        peer.batch_free = [now] * len(peer.batch_free)
        peer.rho = 0.0
        peer.pending.clear()
        if session_end is None:
            session_end = math.inf
            for start, end in self.w.sessions[p]:
                if start <= now < end:
                    session_end = end
                    break
        peer.session_end = session_end
        self.region_online[self.w.peer_region[p]] += 1
        self._slots_change(p, +1)
        if session_end < self.scn.duration_s:
            self.loop.schedule(session_end, self._peer_leave, p, peer.inc, None)
        v = self.voter_by_id.get(self.w.peer_ids[p])
        if v is not None and v.core is None and now > 0:
            self._voter_start(v)

    def _peer_leave(self, p: int, inc: int, graceful: bool | None) -> None:
        peer = self.peers[p]
        if not peer.online or peer.inc != inc:
            return
        now = self.loop.now
        if graceful is None:
            graceful = self.rng_service.random() < self.scn.churn.graceful_fraction
        peer.online = False
        peer.session_end = min(peer.session_end, now)
        self.region_online[self.w.peer_region[p]] -= 1
        self._slots_change(p, -1)
        r = self.w.peer_region[p]
        c = self.acting[r]
        if c is not None and c.peer == p:
            self._coordinator_lost(c, "coordinator peer left")
        v = self.voter_by_id.get(self.w.peer_ids[p])
        if v is not None and v.core is not None:
            v.core = None
            v.gen += 1
        if graceful:
            c = self.acting[r]
            if c is not None:
                d = self.net.control_delay(p, c.peer)
                self._ctrl(self.small_bytes)
                if d is not None:
                    self.loop.schedule(now + d, self._goodbye_arrive, c, p)
        # Gamers linked to it see the stream reset (a goodbye) or the link time out.
        for g in self.links_of.pop(p, {}):
            d2 = self.net.control_delay(p, g.node) if graceful else None
            self.loop.schedule(now + (d2 if d2 is not None else LINK_DEAD_S), self._link_down, g, p, inc)

    def _goodbye_arrive(self, c: _Coordinator, p: int) -> None:
        if c.alive:
            c.membership.on_peer_left(self.w.peer_ids[p], self.loop.now)
            self._membership_effects(c)

    def _event(self, ev: Any) -> None:
        now = self.loop.now
        if ev.action == "kill_coordinator":
            r = self.scn.network.regions.index(ev.region)
            c = self.acting[r]
            if c is None:
                self._count("kill_no_coordinator")
                return
            p = c.peer
        else:
            p = self.peer_index.get(ev.peer, -1)
            if p < 0:
                return
        self.failovers.append(
            (now, self.scn.network.regions[self.w.peer_region[p]], "killed", self.w.peer_ids[p], 0, 0.0)
        )
        self._peer_leave(p, self.peers[p].inc, False)
        if ev.restart_after_s > 0:
            self.loop.schedule(now + ev.restart_after_s, self._peer_join, p, math.inf)

    def _partition_start(self, part: Any) -> None:
        regions = frozenset(self.scn.network.regions.index(r) for r in part.regions)
        eps: frozenset[int] = frozenset()
        if part.isolate_coordinator:
            c = self.acting[self.scn.network.regions.index(part.isolate_coordinator)]
            if c is not None:
                eps = frozenset([c.peer])
        cut = self.net.add_cut(regions, eps)
        self._count("partitions")
        self.loop.schedule(part.end_s, self.net.remove_cut, cut)

    # -- election --------------------------------------------------------------------------

    def _voter_start(self, v: _Voter) -> None:
        if not self.peers[v.peer].online and self.loop.now > 0:
            return
        r = v.region
        v.gen += 1
        v.core = ElectionCore(
            self.w.peer_ids[v.peer],
            self.scn.network.regions[r],
            tuple(self.w.peer_ids[u.peer] for u in self.voters[r]),
            random.Random(self.rng_election.getrandbits(64)),
            now=self.loop.now,
            config=self.elec_cfg,
            restored_vote=self.persisted.get(v.peer),
        )
        v.core.on_candidates(self._scores(r), self.loop.now)
        v.tick_at = math.inf
        self._election_touch(v)

    def _scores(self, r: int) -> dict[str, float]:
        """Candidate scores as ``nodes.control`` computes them: voters only (its default
        ``voter_candidates``), ``rank_score`` of the advertised slots summed over kinds and the
        uptime. The distance term is 0 here: the network model places a region's members at
        the region's location (intra-region jitter only), well inside one 10 ms step."""
        now = self.loop.now
        out: dict[str, float] = {}
        for v in self.voters[r]:
            peer = self.peers[v.peer]
            if peer.online or now == 0:
                slots = sum(self.w.capacity[v.peer].values())
                out[self.w.peer_ids[v.peer]] = rank_score(slots, now - peer.joined_at, 0.0)
        return out

    def _candidates_tick(self, r: int) -> None:
        scores = self._scores(r)
        for v in self.voters[r]:
            if v.core is not None:
                v.core.on_candidates(scores, self.loop.now)
                self._election_touch(v)
        self.loop.schedule(self.loop.now + CANDIDATE_REFRESH_S, self._candidates_tick, r)

    def _election_touch(self, v: _Voter) -> None:
        core = v.core
        if core is None:
            return
        self._election_effects(v, core.poll_effects())
        if v.core is not core:
            return
        d = core.next_deadline()
        if d is not None and d < v.tick_at:
            now = self.loop.now
            if d < now + 1e-6:
                d = now + 1e-6
            v.tick_at = d
            self.loop.schedule(d, self._election_tick, v, v.gen)

    def _election_tick(self, v: _Voter, gen: int) -> None:
        if gen != v.gen or v.core is None:
            return
        v.tick_at = math.inf
        v.core.on_tick(self.loop.now)
        self._election_touch(v)

    def _election_deliver(self, v: _Voter, gen: int, msg: ElectionMessage) -> None:
        if gen != v.gen or v.core is None:
            return
        v.core.on_message(msg, self.loop.now)
        self._election_touch(v)

    def _election_send(self, src: _Voter, dst: _Voter, msg: ElectionMessage) -> None:
        if dst.core is None:
            return
        d = self.net.control_delay(src.peer, dst.peer)
        if d is not None:
            self.loop.schedule(self.loop.now + d, self._election_deliver, dst, dst.gen, msg)

    def _election_effects(self, v: _Voter, effects: list[ElectionEffect]) -> None:
        r = v.region
        for eff in effects:
            if isinstance(eff, Broadcast):
                size = _msg_size(eff.message)
                copies = self.region_online[r] if isinstance(eff.message, Renew) else len(self.voters[r]) - 1
                self._ctrl(size * max(copies, 0))
                for u in self.voters[r]:
                    if u is not v:
                        self._election_send(v, u, eff.message)
            elif isinstance(eff, Send):
                self._ctrl(_msg_size(eff.message))
                dst = self.voter_by_id.get(eff.to)
                if dst is not None:
                    self._election_send(v, dst, eff.message)
            elif isinstance(eff, PersistVote):
                self.persisted[v.peer] = VoteRecord(eff.epoch, eff.candidate)
            elif isinstance(eff, BecomeCoordinator):
                self._become_coordinator(v, eff.epoch)
            elif isinstance(eff, StepDown):
                c = self.acting[r]
                if c is not None and c.peer == v.peer:
                    self._coordinator_lost(c, f"step down: {eff.reason}")
            elif isinstance(eff, InvariantViolated):
                self._count("election_invariant_violations")

    def _become_coordinator(self, v: _Voter, epoch: int) -> None:
        now = self.loop.now
        r = v.region
        old = self.acting[r]
        if old is not None:
            self._count("coordinator_overlap")
            self._coordinator_lost(old, "superseded")
        pid = self.w.peer_ids[v.peer]
        # The coordinator's scheduler consults its node's reputation (``nodes.node.with_trust``).
        sched = Scheduler(
            random.Random(concern_seed(self.w.seed, "sched", r * 100_003 + epoch)),
            replace(self.sched_cfg, trust=_SimTrust(self._node_reputation(v.peer), self.pid_bytes)),
            policy_by_name(self.policy),
            region=self.scn.network.regions[r],
        )
        c = _Coordinator(v.peer, r, epoch, MembershipCore(pid, self.mem_cfg, now=now), sched)
        self.acting[r] = c
        gap = now - self.region_lost_at[r]
        self.failovers.append((now, self.scn.network.regions[r], "elected", pid, epoch, gap))
        self._count("elections")
        # Every member runs membership all along, so the new coordinator already knows the live
        # members of its region and seeds its scheduler with them (nodes.control's
        # ``_seed_coordinator``), itself included.
        for p in sorted(q for slot in self.slot_peers[r] for q in slot):
            if self.peers[p].online:
                hb = self._peer_heartbeat(p, now)
                if p == v.peer:
                    c.last_view[pid] = (hb.queue_depth, hb.incarnation, hb.load)
                    sched.on_worker(pid, self.w.capacity[p], now, queue_depth=hb.queue_depth, load=hb.load,
                                    coord=hb.coord)  # fmt: skip
                else:
                    c.membership.on_heartbeat(hb, now)
        self._membership_effects(c)
        self.loop.schedule(now + MEM_TICK_S, self._mem_tick, c)
        self.loop.schedule(now + self.scn.control.summary_interval_s, self._summary_tick, c)

    def _coordinator_lost(self, c: _Coordinator, why: str) -> None:
        if not c.alive:
            return
        c.alive = False
        r = c.region
        if self.acting[r] is c:
            self.acting[r] = None
            self.region_lost_at[r] = self.loop.now
        self.failovers.append(
            (self.loop.now, self.scn.network.regions[r], "lost", self.w.peer_ids[c.peer], c.epoch, 0.0)
        )

    # -- coordinator: membership, scheduler ------------------------------------------------

    def _mem_tick(self, c: _Coordinator) -> None:
        if not c.alive:
            return
        c.membership.on_tick(self.loop.now)
        self._membership_effects(c)
        self.loop.schedule(self.loop.now + MEM_TICK_S, self._mem_tick, c)

    def _membership_effects(self, c: _Coordinator) -> None:
        effects = c.membership.poll_effects()
        if not effects:
            return
        now = self.loop.now
        sched = c.scheduler
        for eff in effects:
            if isinstance(eff, (PeerJoined, PeerAlive)):
                hb = eff.heartbeat
                p = self.peer_index[hb.peer]
                c.last_view[hb.peer] = (hb.queue_depth, hb.incarnation, hb.load)
                sched.on_worker(
                    hb.peer,
                    self.w.capacity[p],
                    now,
                    queue_depth=hb.queue_depth,
                    load=hb.load,
                    coord=hb.coord,
                )
            elif isinstance(eff, (PeerSuspected, PeerDead)):
                c.last_view.pop(eff.peer, None)
                sched.on_worker_gone(eff.peer, now)
        self._sched_touch(c)

    def _sched_touch(self, c: _Coordinator) -> None:
        sched = c.scheduler
        effects = sched.poll_effects()
        if effects:
            self._sched_effects(c, effects)
        d = sched.next_deadline()
        if d is not None and d < c.tick_at:
            c.tick_at = d
            self.loop.schedule(d, self._sched_tick, c, d)

    def _sched_tick(self, c: _Coordinator, at: float) -> None:
        if not c.alive or at != c.tick_at:
            return  # dead, or superseded by an earlier tick (which scheduled the next one)
        c.tick_at = math.inf
        c.scheduler.on_tick(self.loop.now)
        self._sched_touch(c)

    def _sched_effects(self, c: _Coordinator, effects: list[Any]) -> None:
        now = self.loop.now
        for eff in effects:
            if isinstance(eff, LeaseGranted):
                lane = self.req_lane.get(eff.lease.request_id)
                self._ctrl(self.lease_bytes)
                if lane is None:
                    continue
                d = self.net.control_delay(c.peer, self.streams[lane.stream].gamer)
                if d is not None:
                    self.loop.schedule(now + d, self._lease_arrive, lane, eff.lease, c)
            elif isinstance(eff, PlacementRefused):
                self._count("refused")
                lane = self.req_lane.get(eff.request_id)
                self._ctrl(self.small_bytes)
                if lane is None:
                    continue
                d = self.net.control_delay(c.peer, self.streams[lane.stream].gamer)
                if d is not None:
                    self.loop.schedule(now + d, self._refused_arrive, lane, eff.request_id)
            elif isinstance(eff, OverflowToRegion):
                self._count("overflowed")
                r2 = self.scn.network.regions.index(eff.region)
                c2 = self.acting[r2]
                self._ctrl(self.req_bytes)
                if c2 is None or self.w.peer_ids[c2.peer] != eff.coordinator:
                    continue
                d = self.net.control_delay(c.peer, c2.peer)
                if d is not None:
                    fwd = replace(eff.request, forwarded=True)  # one hop: never bounced back
                    self.loop.schedule(now + d, self._submit_arrive, c2, fwd, ())

    def _summary_tick(self, c: _Coordinator) -> None:
        if not c.alive:
            return
        now = self.loop.now
        summ = c.scheduler.region_summary(self.w.peer_ids[c.peer], self.w.region_centroid[c.region])
        size = len(msgpack.packb([summ.region, summ.coordinator, summ.free_slots, summ.centroid.to_wire()]))
        for c2 in self.acting:
            if c2 is None or c2 is c:
                continue
            self._ctrl(size + SIG_BYTES + ENVELOPE_BYTES)
            d = self.net.control_delay(c.peer, c2.peer)
            if d is not None:
                self.loop.schedule(now + d, self._summary_arrive, c2, summ)
        self.loop.schedule(now + self.scn.control.summary_interval_s, self._summary_tick, c)

    def _summary_arrive(self, c: _Coordinator, summ: RegionSummary) -> None:
        if c.alive:
            c.scheduler.on_region_summary(summ, self.loop.now)
            self._sched_touch(c)

    # -- heartbeats ------------------------------------------------------------------------

    def _hb_slot(self, r: int, s: int) -> None:
        now = self.loop.now
        loop = self.loop
        c = self.acting[r]
        w = self.w
        peers = self.peers
        net = self.net
        region_name = self.scn.network.regions[r]
        topic_copies = max(self.region_online[r] - 1, 0)
        total = 0
        topic = 0
        live = 0
        batch: list[tuple[Heartbeat, int]] = []
        far = 0.0
        cpeer = c.peer if c is not None else -1
        base = net.base_s[r][r] + 0.0
        access = net.access_s
        blocked = net.blocked if net._cuts else None
        loss = net.loss
        rnd = net.rng.random
        for p in self.slot_peers[r][s]:
            peer = peers[p]
            if not peer.online:
                continue
            live += 1
            peer.seq += 1
            # Load and queue as the worker would report them right now.
            busy = sum(map(now.__lt__, peer.slot_free)) + sum(map(now.__lt__, peer.batch_free))
            pend = peer.pending
            while pend and pend[0][1] <= now:
                pend.popleft()
            queued = 0
            for st, _f in pend:
                if st > now:
                    queued += 1
            hb = Heartbeat(
                w.peer_ids[p],
                peer.inc,
                peer.seq,
                region_name,
                "0.1.0",
                min(1.0, busy / len(peer.slot_free)),
                queued,
                (),
                w.coords[p],
                w.coord_err[p],
                now - peer.joined_at,
            )
            if peer.hb_count % HB_REENCODE_EVERY == 0:
                cap_hb = Heartbeat(
                    hb.peer, hb.incarnation, hb.seqno, hb.region, hb.version, hb.load, hb.queue_depth,
                    Heartbeat.make_capacity(w.capacity[p]), hb.coord, hb.coord_error, hb.uptime_s,
                )  # fmt: skip
                peer.hb_size = len(cap_hb.encode()) + SIG_BYTES + ENVELOPE_BYTES
            peer.hb_count += 1
            total += peer.hb_size
            topic += peer.hb_size * topic_copies
            if c is None:
                continue
            if p == cpeer:
                batch.append((hb, p))  # the coordinator's own report: no network hop
                continue
            # Loss and partitions per heartbeat; the batch lands when its farthest member's
            # would (half the mean RTT plus one jitter draw): one event per slot and region.
            if blocked is not None and blocked(p, cpeer):
                continue
            if loss > 0.0 and rnd() < loss:
                continue
            h = base + access[p]
            if h > far:
                far = h
            batch.append((hb, p))
        if batch:
            d = 0.5 * (far + access[cpeer])
            if net.jitter_mean_s > 0:
                d += net.rng.expovariate(1.0 / net.jitter_mean_s)
            loop.schedule(now + d, self._hb_batch_arrive, c, batch)
        b = self._bucket(now)
        # Load reports (the real shell's 2 Hz LoadReport to the coordinator) are counted in
        # bytes; their content reaches the scheduler with the heartbeats.
        reports = live * self.lr_per_hb * self.lr_bytes
        self.ctrl[b] += (topic if self.scn.control.heartbeat_delivery == "topic" else total) + reports
        self.topic_hb[b] += topic
        self.direct_hb[b] += total
        loop.schedule(now + self.scn.control.heartbeat_interval_s, self._hb_slot, r, s)

    def _peer_heartbeat(self, p: int, now: float) -> Heartbeat:
        """Peer ``p``'s latest heartbeat as a member's membership table holds it."""
        peer = self.peers[p]
        busy = sum(1 for f in peer.slot_free if f > now) + sum(1 for f in peer.batch_free if f > now)
        queued = sum(1 for st, f in peer.pending if st > now)
        return Heartbeat(
            self.w.peer_ids[p], peer.inc, peer.seq, self.scn.network.regions[self.w.peer_region[p]], "0.1.0",
            min(1.0, busy / len(peer.slot_free)), queued, (), self.w.coords[p], self.w.coord_err[p],
            now - peer.joined_at,
        )  # fmt: skip

    def _hb_batch_arrive(self, c: _Coordinator, batch: list[tuple[Heartbeat, int]]) -> None:
        if not c.alive:
            return
        now = self.loop.now
        mem = c.membership
        sched = c.scheduler
        cap = self.w.capacity
        last_view = c.last_view
        touched = False
        for hb, p in batch:
            if p == c.peer:
                # The coordinator schedules onto itself too (nodes.control feeds its own load
                # report to its coordinator core); its membership core ignores its own beat.
                view = (hb.queue_depth, hb.incarnation, hb.load)
                if last_view.get(hb.peer) != view:
                    last_view[hb.peer] = view
                    sched.on_worker(
                        hb.peer, cap[p], now, queue_depth=hb.queue_depth, load=hb.load, coord=hb.coord
                    )
                    touched = True
                continue
            if not mem.on_heartbeat(hb, now):
                continue
            effects = mem.poll_effects()
            view = (hb.queue_depth, hb.incarnation, hb.load)
            if effects:
                # Joined/alive: hand over with the capacity the real heartbeat carries.
                for eff in effects:
                    if isinstance(eff, (PeerJoined, PeerAlive)):
                        last_view[hb.peer] = view
                        sched.on_worker(
                            hb.peer, cap[p], now, queue_depth=hb.queue_depth, load=hb.load, coord=hb.coord
                        )
                        touched = True
            elif last_view.get(hb.peer) != view:
                last_view[hb.peer] = view
                sched.on_worker(
                    hb.peer, cap[p], now, queue_depth=hb.queue_depth, load=hb.load, coord=hb.coord
                )
                touched = True
        if touched:
            self._sched_touch(c)

    # -- gamers ----------------------------------------------------------------------------

    def _frame(self, st: _Stream) -> None:
        now = self.loop.now
        if len(st.lanes) == 1:
            self._dispatch(st, st.lanes[0], now)
        else:
            self._dispatch_spread(st, now)
        nxt = now + st.period_s
        if nxt < self.scn.duration_s:
            self.loop.schedule(nxt, self._frame, st)

    def _lane_next(self, lane: _Lane) -> None:
        st = self.streams[lane.stream]
        if lane.busy >= st.inflight:
            return
        now = self.loop.now
        if now >= self.scn.duration_s:
            return
        self._maybe_request(lane)
        while lane.worker >= 0 and now < lane.lease_exp and lane.busy < st.inflight:
            lane.busy += 1
            self._submit(st, lane, now)

    def _dispatch(self, st: _Stream, lane: _Lane, t0: float) -> None:
        self._maybe_request(lane)
        if lane.worker >= 0 and self.loop.now < lane.lease_exp:
            self._submit(st, lane, t0)
            return
        held = lane.held
        while held and held[0] + st.deadline_s <= self.loop.now:
            self._record(lane, -1, held.pop(0), math.nan, math.nan, UNPLACED)
        held.append(t0)

    def _dispatch_spread(self, st: _Stream, t0: float) -> None:
        """A periodic stream over several leased workers (``WorkloadSpec.workers``): the
        task goes to the one with the fewest copies in flight per leased slot, chosen by the
        gamer's ``lease_placer`` inside its core as ``nodes.mesh_client``'s placer does."""
        now = self.loop.now
        usable: list[_Lane] = []
        for lane in st.lanes[: st.active]:
            self._maybe_request(lane)
            if lane.worker >= 0 and now < lane.lease_exp:
                usable.append(lane)
        if not usable:
            self._dispatch(st, st.lanes[0], t0)  # held until a lease comes, as one lane is
            return
        if self.no_core:
            lane = min(usable, key=lambda ln: (ln.busy, ln.lane))
            lane.busy += 1  # released in _record
            self._submit(st, lane, t0)
            return
        g = self._gamer_of(st)
        g.spread = [(ln, self.wb[ln.worker], st.slots) for ln in usable]
        g.spread_full = False
        self._submit(st, usable[0], t0)
        if g.spread_full:
            st.wanted = True
        if g.spread_full and st.active < len(st.lanes):
            # Every leased worker was over its slots: one more lease (nodes.mesh_client).
            st.active += 1
            self._count("lease_grown")
            self._maybe_request(st.lanes[st.active - 1])

    def _maybe_request(self, lane: _Lane) -> None:
        now = self.loop.now
        if lane.req_id is not None or (lane.worker >= 0 and lane.lease_exp - now > RENEW_MARGIN_S):
            return
        st = self.streams[lane.stream]
        if lane.worker < 0 and st.active > st.base and (i := st.lanes.index(lane)) >= st.base:
            # A lease beyond the stream's base, lost (or never granted): the SDK asks for it
            # again only if demand still exceeds what it holds; else it lets it go.
            if i >= st.active:
                return  # not in use
            if not st.wanted:
                last = st.active - 1
                st.lanes[i], st.lanes[last] = st.lanes[last], st.lanes[i]
                st.active -= 1
                self._count("lease_shrunk")
                return
            st.wanted = False
        c = self.acting[st.region]
        if c is None:
            # No coordinator known: try again shortly (the gamer follows Renew broadcasts).
            lane.req_id = ""
            self.loop.schedule(now + RETRY_BACKOFF_S * 2, self._retry, lane, "")
            return
        lane.req_n += 1
        rid = f"s{lane.stream}.{lane.lane}.{lane.req_n}"
        lane.req_id = rid
        lane.req_t = now
        self.req_lane[rid] = lane
        req = PlacementRequest(
            request_id=rid,
            gamer=self.gamer_ids[st.gamer - self.n_peers],
            kind=st.kind,
            slots=st.slots,
            deadline=now + max(1.0, st.deadline_s or self._gamer_of(st).timeouts.deadline(st.kind)),
            priority=st.priority,
            gamer_coord=self.w.coords[st.gamer],
            affinity=self.w.peer_ids[lane.worker] if lane.worker >= 0 else None,
            lease_s=st.lease_s,
            # the gamer's own bans and the stream's replaced workers, as ``nodes.mesh_client``
            # sends them (``LeaseRequest.exclude``)
            exclude=cw.lease_exclusions(
                [p for p, _ in self._gamer_of(st).rep.banned(now)]
                + [self.wb[w] for w in st.misses.avoided(now)],
                self.region_ids[c.region],
                bytes.decode,
            ),
        )
        samples = tuple(lane.samples)
        lane.samples = []
        self._ctrl(self.req_bytes + 24 * len(samples))
        self._count("lease_requests")
        d = self.net.control_delay(st.gamer, c.peer)
        if d is not None:
            self.loop.schedule(now + d, self._submit_arrive, c, req, samples)
        timeout = self._gamer_of(st).lease_timeouts.deadline("lease")
        self.loop.schedule(now + timeout, self._retry, lane, rid)

    def _retry(self, lane: _Lane, rid: str) -> None:
        if lane.req_id != rid:
            return
        lane.req_id = None
        self.req_lane.pop(rid, None)
        self._maybe_request(lane)
        if self.streams[lane.stream].closed:
            self._lane_next(lane)

    def _submit_arrive(
        self, c: _Coordinator, req: PlacementRequest, samples: tuple[tuple[int, float], ...]
    ) -> None:
        if not c.alive:
            return
        now = self.loop.now
        trust = c.scheduler.config.trust
        for w, svc in samples:
            pid = self.w.peer_ids[w]
            c.scheduler.on_completion(pid, req.kind, svc, now)
            if trust is not None:
                trust.observed(pid, now)  # as ``nodes.coordinator`` does with gamers' samples
        c.scheduler.submit(req, now)
        self._sched_touch(c)

    def _refused_arrive(self, lane: _Lane, rid: str) -> None:
        if lane.req_id == rid:
            self._gamer_of(self.streams[lane.stream]).lease_timeouts.observe(
                "lease", self.loop.now - lane.req_t
            )
            self.req_lane.pop(rid, None)
            lane.req_id = None
            # Exponential backoff with seeded jitter, so full regions are not hammered.
            delay = lane.backoff * (0.5 + self.rng_service.random())
            lane.backoff = min(lane.backoff * 2.0, MAX_BACKOFF_S)
            self.loop.schedule(self.loop.now + delay, self._retry_after_refusal, lane)

    def _retry_after_refusal(self, lane: _Lane) -> None:
        self._maybe_request(lane)
        if self.streams[lane.stream].closed:
            self._lane_next(lane)

    def _lease_arrive(self, lane: _Lane, lease: PlacementLease, c: _Coordinator) -> None:
        now = self.loop.now
        st = self.streams[lane.stream]
        if lane.req_id != lease.request_id:
            self._release(c, lease.lease_id, st.gamer)  # a late answer to a request we gave up on
            return
        self.req_lane.pop(lease.request_id, None)
        lane.req_id = None
        g = self._gamer_of(st)
        g.lease_timeouts.observe("lease", now - lane.req_t)
        w = self.peer_index[lease.worker]
        if g.rep.is_banned(self.wb[w], now):
            # Leased a worker this gamer bans: give the lease back, hand the coordinator the
            # evidence again (as ``GamerClient.add_worker`` shares it with new links), back off.
            self._count("leases_of_banned_workers")
            self._release(c, lease.lease_id, st.gamer)
            for ev in g.rep.evidence_for(self.wb[w]):
                size = len(ev.to_wire()) + ENVELOPE_BYTES
                self._ctrl(size)
                d = self.net.control_delay(st.gamer, c.peer)
                if d is not None:
                    self.loop.schedule(now + d, self._coord_evidence, c, ev)
            lane.req_id = lease.request_id
            self.req_lane[lease.request_id] = lane
            self._refused_arrive(lane, lease.request_id)
            return
        lane.backoff = RETRY_BACKOFF_S
        self.lease_log.append((lane.req_t, now, w))
        if lane.worker >= 0 and lane.worker != w and lane.lease_coord is not None and now < lane.lease_exp:
            self._release(lane.lease_coord, lane.lease_id, st.gamer)
        self._drop_lease(lane)
        lane.worker = w
        lane.lease_id = lease.lease_id
        lane.lease_exp = lease.expires_at
        lane.lease_coord = c
        self._connect(g, w)
        if lane.held:
            held, lane.held = lane.held, []
            for t0 in held:
                if t0 + st.deadline_s > now:
                    self._submit(st, lane, t0)
                else:
                    self._record(lane, -1, t0, math.nan, math.nan, UNPLACED)
        if st.closed:
            self._lane_next(lane)

    def _replace_lease(self, lane: _Lane) -> None:
        """The lane's worker keeps missing (``LeaseMisses``): give its lease back, as
        ``nodes.mesh_client`` does (piggybacked there on the next request), and ask for
        another."""
        st = self.streams[lane.stream]
        self._count("leases_replaced")
        if lane.lease_coord is not None and self.loop.now < lane.lease_exp:
            self._release(lane.lease_coord, lane.lease_id, st.gamer)
        self._drop_lease(lane)
        self._maybe_request(lane)

    def _drop_lease(self, lane: _Lane) -> None:
        lane.worker = -1
        lane.lease_exp = 0.0
        lane.lease_coord = None

    def _release(self, c: _Coordinator, lease_id: int, gamer: int) -> None:
        self._ctrl(self.small_bytes)
        d = self.net.control_delay(gamer, c.peer)
        if d is not None:
            self.loop.schedule(self.loop.now + d, self._release_arrive, c, lease_id)

    def _release_arrive(self, c: _Coordinator, lease_id: int) -> None:
        if c.alive:
            c.scheduler.release(lease_id, self.loop.now)
            self._sched_touch(c)

    # -- trust: the gamers' verification cores -------------------------------------------

    def _init_trust(self) -> None:
        spec = self.scn.verification
        base = VerificationConfig.off() if spec.policy != "core" else VerificationConfig()
        #: "none": no verification core at all (tasks go straight to the leased worker and
        #: every result is accepted): the data and control planes alone, for scale runs.
        self.no_core = spec.policy == "none"
        self.queue_notice_s = WorkerConfig().queue_notice_s
        self.vconf = replace(base, **dict(spec.config))
        self.rconf = replace(ReputationConfig(), **dict(spec.reputation))
        self.detect = spec.self_check_detect
        self.collude = spec.collude
        self.cheat_rate = spec.cheat_rate
        #: The stream whose profile a probe of a kind uses (bytes, cost, priority).
        self.kind_stream: dict[str, _Stream] = {}
        for st in self.streams:
            self.kind_stream.setdefault(st.kind, st)
        self.kind_cost = {k: st.cost_s * 1000.0 for k, st in self.kind_stream.items()}
        self.registry = sim_registry(self.kind_cost.items())
        self.gamers: list[_Gamer] = []
        for gi, node in enumerate(range(self.n_peers, self.n_peers + len(self.gamer_ids))):
            rep = Reputation(self.rconf)
            core = VerificationCore(
                self.registry, rep, random.Random(concern_seed(self.w.seed, "verify", gi)), self.vconf
            )
            self.gamers.append(_Gamer(gi, node, self.w.region_of[node], core, rep))
        for st in self.streams:
            self.gamers[st.gamer - self.n_peers].lanes.extend(st.lanes)
        self.gamers_in_region: list[list[_Gamer]] = [[] for _ in range(self.R)]
        for g in self.gamers:
            self.gamers_in_region[g.region].append(g)
        #: Worker -> the gamers holding a link to it.
        self.links_of: dict[int, dict[_Gamer, None]] = {}
        #: Each coordinator node's own reputation (evidence handed to it).
        self.coord_rep: dict[int, Reputation] = {}
        self.task_seq = 0
        #: Busy seconds by copy role ("primary", ..., "probe") and who got banned.
        self.role_busy: dict[str, float] = {}
        #: Copies waiting for a slot on their worker, by wire id: (worker, its incarnation,
        #: start, finish, service, role, batch, result bytes); and those a cancel stopped.
        self.waiting: dict[bytes, tuple[int, int, float, float, float, str, bool, int]] = {}
        self.cancelled: set[bytes] = set()
        self.banned_by: dict[int, int] = {}
        self.proven_false_bans: dict[int, None] = {}

    def _gamer_of(self, st: _Stream) -> _Gamer:
        return self.gamers[st.gamer - self.n_peers]

    def _idle_tick(self, g: _Gamer) -> None:
        """Close the links the gamer's core reports idle (``VerificationCore.idle_workers``),
        as the SDK's shell would: the worker is forgotten (``on_worker_down``) and connected
        again if a later lease names it."""
        now = self.loop.now
        keep = {self.wb[w] for w in g.leased()}
        idle = g.core.idle_workers(now, IDLE_LINK_S, keep)
        for wb in idle:
            w = self.wb_index[wb]
            g.conn.pop(w, None)
            links = self.links_of.get(w)
            if links is not None:
                links.pop(g, None)
            g.core.on_worker_down(wb, now)
        if idle:
            self._count("links_closed_idle", len(idle))
            self._drain(g)
        if now + IDLE_CHECK_S < self.scn.duration_s:
            self.loop.schedule(now + IDLE_CHECK_S, self._idle_tick, g)

    def _connect(self, g: _Gamer, w: int) -> None:
        """The gamer opens a link to worker ``w`` (``GamerClient.add_worker``)."""
        inc = self.peers[w].inc
        if g.conn.get(w) == inc:
            return
        g.conn[w] = inc
        # ``GamerClient.add_worker`` times the task stream's opening: one round trip.
        g.rtt[self.wb[w]] = self.net.rtt(g.node, w)
        self.links_of.setdefault(w, {})[g] = None
        g.core.on_worker_up(self.wb[w], self.loop.now)
        self._drain(g)

    def _link_down(self, g: _Gamer, w: int, inc: int) -> None:
        """The gamer's link to ``w`` died (a goodbye's stream reset, or a timeout)."""
        if g.conn.get(w) != inc:
            return
        del g.conn[w]
        links = self.links_of.get(w)
        if links is not None:
            links.pop(g, None)
        g.core.on_worker_down(self.wb[w], self.loop.now)
        for lane in g.lanes:
            if lane.worker == w:
                self._drop_lease(lane)
                self._maybe_request(lane)
        self._drain(g)

    def _drain(self, g: _Gamer) -> None:
        """Carry out what the gamer's core asked for (``GamerClient._drain``), checks inline."""
        core = g.core
        now = self.loop.now
        while True:
            effs = core.poll_effects()
            if not effs:
                break
            for eff in effs:
                t = type(eff)
                if t is SendTo:
                    assert isinstance(eff, SendTo)
                    item = g.pending.get(eff.task_id)
                    lane = item[0] if item is not None else None
                    st = self.streams[lane.stream] if lane is not None else self.kind_stream[eff.kind]
                    self._send_copy(g, st, lane, eff.worker, eff.wire_id, eff.data, eff.role.value)
                elif t is RunCheck:
                    assert isinstance(eff, RunCheck)
                    if eff.recompute:
                        self._count("gamer_recompute_ms", round(self.kind_cost.get(eff.kind, 0.0)))
                    core.on_check(eff.check_id, check_verdict(eff, self.detect), now)
                elif t is Resolve:
                    assert isinstance(eff, Resolve)
                    self._resolved(g, eff)
                elif t is Reject:
                    assert isinstance(eff, Reject)
                    self._rejected(g, eff)
                elif t is Probe:
                    assert isinstance(eff, Probe)
                    self._send_copy(
                        g, self.kind_stream[eff.kind], None, eff.worker, eff.wire_id, eff.data, "probe"
                    )
                elif t is Penalise:
                    assert isinstance(eff, Penalise)
                    self._penalise(g, eff)
                else:
                    assert isinstance(eff, Cancel)
                    self._cancel_sent(g, eff.wire_id)
        nd = core.next_deadline()
        if nd is not None and nd < g.tick_at:
            g.tick_at = nd
            self.loop.schedule(nd if nd > now else now + 1e-6, self._gamer_tick, g, nd)

    def _gamer_tick(self, g: _Gamer, at: float) -> None:
        if at != g.tick_at:
            return
        g.tick_at = math.inf
        g.core.on_tick(self.loop.now)
        self._drain(g)

    def _resolved(self, g: _Gamer, eff: Resolve) -> None:
        item = g.pending.pop(eff.task_id, None)
        if item is None:
            return
        lane, t0, _dl = item
        st = self.streams[lane.stream]
        w = self.wb_index[eff.worker]
        latency = self.loop.now - t0
        g.timeouts.observe(st.kind, latency)
        wrong = eff.output[:1] == b"w"
        svc = g.svc_last.get(w, math.nan)
        self._record(lane, w, t0, latency, svc, WRONG if wrong else OK)
        if len(lane.samples) < 32:
            lane.samples.append((w, svc))  # verified results only, as ``nodes.mesh_client`` reports
        st.misses.on_ok(w, self.loop.now)
        if st.closed:
            lane.busy -= 1
            self._lane_next(lane)
        elif lane.busy:
            lane.busy -= 1

    def _rejected(self, g: _Gamer, eff: Reject) -> None:
        item = g.pending.pop(eff.task_id, None)
        if item is None:
            return
        lane, t0, _dl = item
        st = self.streams[lane.stream]
        err = eff.error
        if isinstance(err, TaskTimeoutError):
            outcome = LATE
        elif isinstance(err, VerificationError):
            outcome = CAUGHT
        else:
            outcome = LOST
        self._record(lane, lane.worker, t0, math.nan, math.nan, outcome)
        if lane.worker >= 0 and st.misses.on_miss(lane.worker, self.loop.now):
            self._replace_lease(lane)
        if st.closed:
            lane.busy -= 1
            self._lane_next(lane)
        elif lane.busy:
            lane.busy -= 1

    def _penalise(self, g: _Gamer, eff: Penalise) -> None:
        self._count("penalise_" + eff.reason.split(":")[0])
        w = self.wb_index[eff.worker]
        if eff.banned:
            self.banned_by[w] = self.banned_by.get(w, 0) + 1
            if eff.reason != "unresponsive" and not self.w.malicious[w]:
                self.proven_false_bans[w] = None  # an honest worker banned on a "proof"
            for lane in g.lanes:
                if lane.worker == w:
                    self._drop_lease(lane)
                    self._maybe_request(lane)
        if eff.evidence is not None and self.scn.verification.share_evidence:
            self._share_evidence(g, eff.evidence)

    def _share_evidence(self, g: _Gamer, ev: Evidence) -> None:
        """Hand evidence to the region's coordinator and the region's other gamers."""
        size = len(ev.to_wire()) + ENVELOPE_BYTES
        now = self.loop.now
        c = self.acting[g.region]
        if c is not None:
            self._ctrl(size)
            d = self.net.control_delay(g.node, c.peer)
            if d is not None:
                self.loop.schedule(now + d, self._coord_evidence, c, ev)
        for g2 in self.gamers_in_region[g.region]:
            if g2 is g:
                continue
            self._ctrl(size)
            d = self.net.control_delay(g.node, g2.node)
            if d is not None:
                self.loop.schedule(now + d, self._gamer_evidence, g2, ev)

    def _proof(self, ev: Evidence) -> Any:
        return evidence_proof(ev, self.kind_cost.get(ev.kind, math.inf), self.detect)

    def _gamer_evidence(self, g: _Gamer, ev: Evidence) -> None:
        """``GamerClient.add_evidence``: verify, apply to the reputation, ban in the core."""
        if not g.rep.first_sight(ev):
            return
        proof = self._proof(ev)
        if proof is None:
            self._count("evidence_refused")
            return
        now = self.loop.now
        if g.rep.apply_evidence(ev, proof, now) is None:
            self._count("evidence_not_trusted")
            return
        g.core.ban(ev.accused, now, f"evidence:{proof.value}")
        self._drain(g)

    def _node_reputation(self, p: int) -> Reputation:
        """Node ``p``'s own reputation (kept across its terms as coordinator)."""
        rep = self.coord_rep.get(p)
        if rep is None:
            rep = self.coord_rep[p] = Reputation(self.rconf)
        return rep

    def _coord_evidence(self, c: _Coordinator, ev: Evidence) -> None:
        """A coordinator node verifies evidence (``nodes.evidence``) and applies it to its
        reputation, which its scheduler consults (a banned worker gets no lease)."""
        if not c.alive:
            return
        rep = self._node_reputation(c.peer)
        if not rep.first_sight(ev):
            return
        proof = self._proof(ev)
        if proof is None or rep.apply_evidence(ev, proof, self.loop.now) is None:
            self._count("coordinator_evidence_not_banned")
            return
        self._count("coordinator_bans")

    # -- data plane ------------------------------------------------------------------------

    def _submit(self, st: _Stream, lane: _Lane, t0: float) -> None:
        """The gamer submits one task to its verification core, which places the primary on
        the lane's leased worker (the placer) and decides duplicates and probes."""
        now = self.loop.now
        g = self._gamer_of(st)
        w = lane.worker
        budget = st.deadline_s if st.deadline_s > 0 else g.timeouts.deadline(st.kind)
        if self.net.link_free[st.gamer] + st.in_bytes / self.net.up_bps[st.gamer] > t0 + budget:
            # The SDK drops work its own uplink cannot even send before the deadline.
            self._count("dropped_uplink")
            self._record(lane, w, t0, math.nan, math.nan, UNPLACED)
            if st.closed:
                lane.busy -= 1
                self.loop.schedule(now + 0.05, self._lane_next, lane)
            elif lane.busy:
                lane.busy -= 1  # a spread stream without the core (_dispatch_spread)
            return
        self.task_seq += 1
        tid = self.task_seq.to_bytes(16, "big")
        data = tid[8:]
        g.pending[tid] = (lane, t0, t0 + budget)
        if self.no_core:
            self._send_copy(g, st, lane, self.wb[w], tid, data, "primary")
            return
        if g.spread is None:
            g.cur = self.wb[w]
        g.core.on_submit(Task(tid, st.kind, st.params, data, t0 + budget), now)
        g.cur = None
        if g.spread is not None:
            pick, g.spread, g.spread_pick = g.spread_pick, None, None
            if pick is not None and pick is not lane and tid in g.pending:
                g.pending[tid] = (pick, t0, t0 + budget)
        n = g.anchored.get(st.kind, 0)
        if n < self.vconf.anchors_per_kind and tid in g.pending:
            # ``GamerClient._maybe_anchor``: the gamer computes a few tasks of each cheap kind
            # itself, as the known answers trust is anchored on.
            g.anchored[st.kind] = n + 1
            if g.core.cheap_to_rerun(st.kind, st.params, len(data)):
                self._count("gamer_anchor_ms", round(self.kind_cost[st.kind]))
                g.core.add_known_answer(st.kind, st.params, data, right_output(data), now)
        self._drain(g)

    def _send_copy(
        self, g: _Gamer, st: _Stream, lane: _Lane | None, wb: bytes, wire_id: bytes, data: bytes, role: str
    ) -> None:
        """One copy of a task (primary, duplicate, probe, ...) travels to worker ``wb``."""
        now = self.loop.now
        w = self.wb_index[wb]
        net = self.net
        self.task_bytes[self._bucket(now)] += st.in_bytes
        arrive = net.data_delay(g.node, w, st.in_bytes, now)
        if arrive is not None and not self.no_core:
            # The copy leaves once the gamer's uplink has sent it, and the core hears of it
            # then (``GamerClient._write_tasks``): its hedge clock starts there. No hedge can
            # fire sooner than ``hedge_min_s`` after the send, so a departure before that is
            # told now, with its time (the same outcome as an event then, without the event).
            left = net.link_free[g.node]
            if left - now < self.vconf.hedge_min_s:
                g.core.on_sent(wire_id, left)
            else:
                self.loop.schedule(left, self._copy_sent, g, wire_id)
        peer = self.peers[w]
        if arrive is None or not peer.online or arrive >= peer.session_end:
            # Lost on the way: the core's deadline, hedge or link-down deals with it.
            self._direct_lost(g, wire_id)
            return
        # Queued on the worker now (its arrival time is known), which saves an event per copy;
        # FIFO order on a worker is therefore send order.
        svc = st.cost_s / self.w.peer_speed[w]
        if self.w.peer_gpu[w]:
            svc /= st.gpu_speedup
        svc *= math.exp(self.svc_mu + self.svc_sigma * self.rng_service.gauss(0.0, 1.0))
        if st.priority >= BATCH_PRIORITY:
            # Batch work runs niced in the background: interactive work preempts it, so it
            # sees the cores left over (its wall time stretches by 1 / (1 - interactive load)).
            heap = peer.batch_free
            wall = svc / (1.0 - min(peer.rho, 0.9))
        else:
            heap = peer.slot_free
            busy = sum(map(arrive.__lt__, heap))
            peer.rho += 0.05 * (busy / len(heap) - peer.rho)
            wall = svc
        free = heapq.heappop(heap)
        start = free if free > arrive else arrive
        finish = start + wall
        heapq.heappush(heap, finish)
        peer.pending.append((start, finish))
        if finish > peer.session_end:
            self._add_busy(start, min(start + svc, max(start, peer.session_end)))
            self._direct_lost(g, wire_id)  # the worker leaves before it finishes
            return
        self._add_busy(start, start + svc)
        self.role_busy[role] = self.role_busy.get(role, 0.0) + svc
        if net.blocked(w, g.node):
            self._direct_lost(g, wire_id)
            return
        wrong = self.w.malicious[w] and self.rng_verify.random() < self.cheat_rate
        # Results do not queue behind each other on the uplink here (they leave at their own
        # finish times, out of event order); serialisation is still paid.
        back = finish + st.out_bytes / net.up_bps[w] + net.one_way(w, g.node)
        if net.loss > 0 and net.rng.random() < net.loss:
            back += max(0.2, 2.0 * net.rtt(w, g.node))
        self.task_bytes[self._bucket(finish)] += st.out_bytes
        if start > arrive and not self.no_core:
            # It waits for a slot on the worker: a cancel arriving before it starts stops it.
            batch = heap is peer.batch_free
            self.waiting[wire_id] = (w, peer.inc, start, finish, svc, role, batch, st.out_bytes)
            if start - arrive >= self.queue_notice_s:
                self._ctrl(self.small_bytes)
                # The worker's "Q" notice (a blocked link has already lost the copy above).
                self.loop.schedule(
                    arrive + net.one_way(w, g.node), self._copy_queued, g, wire_id, wb, start - arrive
                )
        self.loop.schedule(back, self._copy_result, g, wire_id, w, svc, wrong, peer.inc, finish, data, lane)

    def _cancel_sent(self, g: _Gamer, wire_id: bytes) -> None:
        """The core cancelled a copy; its worker gets a cancel frame (``nodes.worker`` drops a
        task still waiting for a slot, and runs one that has started)."""
        self._ctrl(self.small_bytes)
        item = self.waiting.get(wire_id)
        if item is None:
            return
        d = self.net.control_delay(g.node, item[0])
        if d is not None and self.loop.now + d < item[2]:
            self.loop.schedule(self.loop.now + d, self._cancel_arrive, wire_id)

    def _cancel_arrive(self, wire_id: bytes) -> None:
        """A cancel reaches a worker before the copy started: the copy never runs and is never
        answered. Its slot is given back when nothing was queued on that slot after it; else
        the copies behind it keep the start times they were given (they are already on their
        way back), so the worker idles in its place: the model errs on the slow side there."""
        item = self.waiting.pop(wire_id, None)
        if item is None:
            return
        w, inc, start, finish, svc, role, batch, out_bytes = item
        peer = self.peers[w]
        if peer.inc != inc or self.loop.now >= start:
            return
        heap = peer.batch_free if batch else peer.slot_free
        if finish in heap:
            heap[heap.index(finish)] = start
            heapq.heapify(heap)
        try:
            peer.pending.remove((start, finish))
        except ValueError:
            pass  # already pruned
        self._add_busy(start, start + svc, -1.0)
        self.role_busy[role] -= svc
        self.task_bytes[self._bucket(finish)] -= out_bytes
        self.cancelled.add(wire_id)
        self._count("cancelled_waiting")

    def _copy_sent(self, g: _Gamer, wire_id: bytes) -> None:
        g.core.on_sent(wire_id, self.loop.now)

    def _copy_queued(self, g: _Gamer, wire_id: bytes, wb: bytes, wait: float) -> None:
        """A worker's ``"Q"`` notice reaches the gamer (``GamerClient._read_link``)."""
        g.core.on_queued(wire_id, wb, wait, self.loop.now)
        self._drain(g)

    def _copy_result(
        self,
        g: _Gamer,
        wire_id: bytes,
        w: int,
        svc: float,
        wrong: bool,
        inc: int,
        finish: float,
        data: bytes,
        lane: _Lane | None,
    ) -> None:
        if self.waiting:
            self.waiting.pop(wire_id, None)
        if wire_id in self.cancelled:
            self.cancelled.discard(wire_id)  # cancelled before it ran: no answer comes
            return
        peer = self.peers[w]
        if peer.inc != inc or (not peer.online and peer.session_end < finish):
            self._direct_lost(g, wire_id)  # the worker died (or was killed) before it finished
            return
        wb = self.wb[w]
        out = wrong_output(data, wb, self.collude) if wrong else right_output(data)
        g.svc_last[w] = svc
        if self.no_core:
            item = g.pending.get(wire_id)
            if item is not None and self.loop.now > item[2]:
                self._rejected(g, Reject(wire_id, TaskTimeoutError("late")))
            else:
                self._resolved(g, Resolve(wire_id, out, wb))
            return
        g.core.on_result(wire_id, wb, out, self.loop.now)
        self._drain(g)

    def _direct_lost(self, g: _Gamer, wire_id: bytes) -> None:
        """Without a verification core, a lost copy fails its task at the task's deadline."""
        if self.no_core:
            item = g.pending.get(wire_id)
            if item is not None:
                self.loop.schedule(max(self.loop.now, item[2]), self._direct_expire, g, wire_id)

    def _direct_expire(self, g: _Gamer, tid: bytes) -> None:
        self._rejected(g, Reject(tid, TaskTimeoutError("lost")))

    def trust_figures(self) -> dict[str, float]:
        """The run's verification figures (see ``SimResult.verification``)."""
        tot = VerificationStats()
        out: dict[str, float] = {}
        for g in self.gamers:
            st = g.core.stats
            for f in ("submitted", "resolved", "rejected", "timeouts", "probes", "probes_passed",
                      "probes_failed", "probe_timeouts", "self_check_failures", "mismatches",
                      "mismatches_unproven", "unconfirmed", "bans", "late", "recomputes", "strikes",
                      "hedges", "queued", "queued_past_cap"):  # fmt: skip
                setattr(tot, f, getattr(tot, f) + getattr(st, f))
            for role, n in st.sends.items():
                tot.sends[role] = tot.sends.get(role, 0) + n
        for f, v in sorted(vars(tot).items()):
            if isinstance(v, dict):
                for role, n in sorted(v.items()):
                    out[f"verify_sends_{role}"] = float(n)
            else:
                out[f"verify_{f}"] = float(v)
        mal = [w for w in self.banned_by if self.w.malicious[w]]
        out["malicious_workers"] = float(sum(self.w.malicious))
        out["malicious_banned"] = float(len(mal))
        out["honest_banned"] = float(len(self.banned_by) - len(mal))
        #: Honest workers banned for anything but unresponsiveness (a check, a disagreement,
        #: evidence): each would be a false accusation.
        out["honest_banned_on_proof"] = float(len(self.proven_false_bans))
        out["gamer_bans"] = float(sum(self.banned_by.values()))
        out["coordinator_bans"] = float(self.counters.get("coordinator_bans", 0))
        for role, b in sorted(self.role_busy.items()):
            out[f"busy_s_{role}"] = round(b, 6)
        return out
