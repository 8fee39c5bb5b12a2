"""Per-region coordinator election: epochs, majority votes and leader leases.

One ``ElectionCore`` runs on every member of a region. It decides which member is the region's
coordinator (the scheduler that hands out placement leases) and for how long that is safe.

Algorithm — Raft's election with leader leases, without a log
    * The region has an *electorate*: a fixed, ordered set of voter peer ids that every member
      is configured with (the region's stewards, e.g. its long-lived bootstrap nodes; a single
      voter is allowed for a local demo). Any member may be a candidate; only voters vote.
      A majority ``q = len(voters) // 2 + 1`` of the electorate is a quorum.
    * Epochs are integers. A voter votes at most once per epoch (``voted_epoch``/``voted_for``,
      persisted through the ``PersistVote`` effect *before* the vote is sent), and only for an
      epoch above both its ``voted_epoch`` and the newest epoch it has seen a coordinator in.
    * A candidate that wins votes from a quorum for epoch E becomes coordinator of E
      (``BecomeCoordinator``). It then broadcasts ``Renew`` every ``renew_interval_s``; voters
      answer with ``RenewAck``.
    * Every grant and every ack is also a *promise*: the voter will not vote for, or ack,
      anybody else for ``lease_s`` measured from when it received the message. The coordinator
      measures its lease from when it *sent* the claim/renew that a quorum answered, and
      shortens it by ``drift_margin``: ``lease_end = q-th newest acked send time + lease_s ·
      (1 - drift_margin)``. It stops acting (``StepDown``) the instant its lease ends
      unrenewed, but keeps its epoch and keeps renewing for one more ``lease_s``: a quorum
      that acks a renew sent within the lease makes it act again (``BecomeCoordinator``, same
      epoch); otherwise it becomes a follower. (On a path whose round trip takes most of a
      lease, every winner used to lose its first lease before the first ack came back.)
    * Members that stop hearing renews for ``lease_s`` become candidates after a rank stagger
      (``rank · rank_stagger_s``, rank by candidate score then peer id, so the best member
      normally claims first and alone). A candidate that has no quorum after
      ``claim_timeout_s`` abandons the epoch for good, broadcasts ``Release`` so its voters may
      vote again at once, and retries later with a higher epoch after seeded jitter.

Why at most one coordinator per region per epoch
    Two winners of epoch E would each hold grants from a quorum; two quorums of one electorate
    share a voter, and that voter granted E to one candidate only. Abandoned epochs are never
    resumed, so a late grant cannot revive them. The core also checks this locally: it records
    the coordinator it has seen for each recent epoch, never becomes coordinator of an epoch it
    has seen someone else lead, and reports any conflicting ``Renew`` as ``InvariantViolated``
    (ignored, never trusted).

Why leases never overlap (at most one *acting* coordinator at any instant)
    If C and X both believed their leases valid at time t, their quorums share a voter v that
    answered C's message (sent at s1 >= t - L(1-m), received r1 >= s1) and X's (received r2).
    If r1 < r2, v was still promised to C until r1 + L when X's message arrived, so it answered
    only if r2 >= r1 + L > t — but X relied on that answer at t >= r2. Symmetric otherwise.
    Clock *rates* may differ by up to ``drift_margin``; clock offsets do not matter because no
    timestamp ever crosses the wire.

Why a returning minority cannot depose a healthy coordinator
    A node cut off from the quorum can raise its epoch as high as it likes by failing claims,
    but every voter on the majority side is promised to the live coordinator and refuses the
    claim *without adopting its epoch*, and the coordinator only steps down on losing its lease
    or on seeing a ``Renew`` of a higher epoch — which needs a quorum. A minority side cannot
    gather a quorum at all, so it elects nobody; an old coordinator stranded in a minority
    loses its lease (it gets no acks) and steps down before the majority elects a successor.
    On heal, the returning node sees the coordinator's ``Renew`` with an epoch newer than the
    last coordinator it knew and simply follows it; its inflated epoch is used only for its
    next claim. Epochs of coordinators only move forward: voters ack a ``Renew`` only when its
    epoch is at least their ``voted_epoch``, and a member ignores renews older than the newest
    coordinator it has seen.

Failover time with the defaults (lease 1.5 s, renew 0.5 s, stagger 0.1 s, one-way delay d):
voters' promises to a dead coordinator end at most 1.5 s + d after its death; the best live
candidate is usually rank 1 (the dead coordinator itself was rank 0), claims 0.1 s later and
wins 2d after that: about 1.6 s + 3d, under 2 s for d up to ~0.13 s. Split votes are rare
because of the stagger, and a candidate that sees a better-ranked claim yields at once.

Trust: the electorate is honest by assumption (a Byzantine voter could vote twice); all other
peers may be hostile, and none of their messages can make this core raise. A hostile member can
hurt liveness, not safety: it can win a fair election, or claim with an inflated score so that
honest candidates yield; voters do not yet check a candidate's eligibility (future work: check
claims against membership).

States: FOLLOWER --lease seen expired + stagger--> CANDIDATE --quorum--> COORDINATOR;
CANDIDATE --timeout / newer coordinator seen--> FOLLOWER; COORDINATOR --lease lost / higher
epoch renew--> FOLLOWER. Per event the work is O(k) in the electorate size k (small); ranks are
recomputed only in ``on_candidates`` (O(n)).
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mesh.errors import ConfigError

__all__ = [
    "BecomeCoordinator",
    "Broadcast",
    "Claim",
    "CoordinatorChanged",
    "ElectionConfig",
    "ElectionCore",
    "ElectionEffect",
    "ElectionMessage",
    "InvariantViolated",
    "PersistVote",
    "Release",
    "Renew",
    "RenewAck",
    "Role",
    "Send",
    "StepDown",
    "Vote",
    "VoteRecord",
    "candidate_score",
    "electorate_from",
]


# -- messages ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    """A candidate asks the electorate for its vote in ``epoch``."""

    region: str
    epoch: int
    candidate: str
    score: float


@dataclass(frozen=True, slots=True)
class Vote:
    """A voter's answer to a ``Claim``; a refusal says what the voter knows, to help catch up."""

    region: str
    epoch: int
    voter: str
    candidate: str
    granted: bool
    voted_epoch: int
    coordinator: str | None
    coordinator_epoch: int


@dataclass(frozen=True, slots=True)
class Renew:
    """The coordinator's periodic lease renewal, broadcast to the region (also its announcement)."""

    region: str
    epoch: int
    coordinator: str
    seq: int


@dataclass(frozen=True, slots=True)
class RenewAck:
    region: str
    epoch: int
    voter: str
    seq: int


@dataclass(frozen=True, slots=True)
class Release:
    """A candidate gives up ``epoch`` for good; voters promised to it for that epoch are free."""

    region: str
    epoch: int
    candidate: str


ElectionMessage = Claim | Vote | Renew | RenewAck | Release


# -- effects ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Publish to every member of the region (gossip topic or direct to each)."""

    message: ElectionMessage


@dataclass(frozen=True, slots=True)
class Send:
    to: str
    message: ElectionMessage


@dataclass(frozen=True, slots=True)
class PersistVote:
    """Durably store the vote before sending anything after this effect (Raft's HardState)."""

    region: str
    epoch: int
    candidate: str


@dataclass(frozen=True, slots=True)
class BecomeCoordinator:
    region: str
    epoch: int
    lease_until: float


@dataclass(frozen=True, slots=True)
class StepDown:
    region: str
    epoch: int
    reason: str


@dataclass(frozen=True, slots=True)
class CoordinatorChanged:
    """Who this member now believes coordinates the region (``None``: nobody it trusts)."""

    region: str
    epoch: int
    coordinator: str | None


@dataclass(frozen=True, slots=True)
class InvariantViolated:
    """Evidence of two coordinators in one epoch (a bug or a lying voter); the message was ignored."""

    region: str
    epoch: int
    detail: str


ElectionEffect = (
    Broadcast | Send | PersistVote | BecomeCoordinator | StepDown | CoordinatorChanged | InvariantViolated
)


@dataclass(frozen=True, slots=True)
class VoteRecord:
    """What must survive a restart: the last epoch voted in and for whom."""

    epoch: int
    candidate: str


class Role(enum.Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    COORDINATOR = "coordinator"


@dataclass(frozen=True)
class ElectionConfig:
    lease_s: float = 1.5
    renew_interval_s: float = 0.5
    claim_timeout_s: float = 0.2
    #: After each claim that timed out with fewer than a quorum of voters answering at all
    #: (refusals count as answers), the next one waits twice as long for its votes (and
    #: retries after a jitter twice as wide), up to this factor; reset once a coordinator is
    #: seen. Under CPU starvation a vote's round trip can exceed ``claim_timeout_s``: with a
    #: fixed timeout every claim then failed and voters stayed promised to stale claims
    #: (12 loaded processes on 2 cores: 150+ epochs, no winner). Backing off, like Raft's
    #: randomised timeouts, lets one claim outlast the delay. A fast network never backs off.
    claim_backoff_max: float = 8.0
    #: Must exceed an intra-region round trip, or neighbouring ranks split the vote.
    rank_stagger_s: float = 0.1
    #: Members ranked at or beyond this never claim (keeps big regions from stampeding).
    max_candidate_rank: int = 8
    #: Fraction by which the coordinator shortens its own lease, covering clock-rate drift.
    drift_margin: float = 0.05
    #: How many past epochs' coordinators are remembered for the invariant check.
    epoch_memory: int = 64

    def validate(self) -> None:
        if not 0 < self.renew_interval_s < self.lease_s * (1 - self.drift_margin) / 2:
            raise ConfigError("election renew_interval_s must be below half the effective lease")
        if not 0 <= self.drift_margin < 0.5:
            raise ConfigError("election drift_margin must be in [0, 0.5)")
        if self.claim_backoff_max < 1:
            raise ConfigError("election claim_backoff_max must be at least 1")
        if self.claim_timeout_s <= 0 or self.rank_stagger_s < 0 or self.max_candidate_rank < 1:
            raise ConfigError("election claim_timeout_s, rank_stagger_s, max_candidate_rank out of range")


def candidate_score(capacity_slots: int, uptime_s: float, rtt_to_region_s: float) -> float:
    """How good a coordinator a member would make; higher is better.

    Capacity counts with diminishing returns (the coordinator is control-plane only), uptime
    saturates after 10 minutes (a fresh node is more likely to leave again), and each 10 ms of
    distance to the region's centroid costs as much as doubling capacity.
    """
    cap = math.log2(1.0 + max(0, capacity_slots))
    stability = min(max(uptime_s, 0.0) / 600.0, 1.0) * 4.0
    distance = max(rtt_to_region_s, 0.0) / 0.010
    return cap + stability - distance


#: The latency term of ``rank_score``: distances under the dead zone count as 0, and above
#: it the distance moves in whole steps of ``RANK_RTT_STEP_S``.
RANK_RTT_DEAD_ZONE_S = 0.010
RANK_RTT_STEP_S = 0.020


def rank_score(capacity_slots: int, uptime_s: float, rtt_to_region_s: float) -> float:
    """``candidate_score`` made coarse enough that every member computes the same ranks.

    The rank stagger avoids split votes only when members agree on the ranks, so every input
    must be something all of them see identically: capacity and uptime as reported in the
    candidate's heartbeat, and its distance to the region's centroid computed from published
    (heartbeat) coordinates only. Even so, two members can hold heartbeats of different ages,
    so the distance is coarse: nothing under ``RANK_RTT_DEAD_ZONE_S`` (a LAN, a loopback mesh
    whose coordinates wobble by a few ms under load: a plain 10 ms rounding there split the
    votes of the 12-node test for six epochs), then steps of ``RANK_RTT_STEP_S``. Across a WAN
    a candidate 35 ms from its region loses 2 points.
    """
    over = max(rtt_to_region_s - RANK_RTT_DEAD_ZONE_S, 0.0)
    steps = math.floor(over / RANK_RTT_STEP_S)
    return float(round(candidate_score(capacity_slots, uptime_s, steps * RANK_RTT_STEP_S)))


_NO_ONE = ""  # promise holder during the restart quiet period: refuse everybody


@dataclass
class ElectionCore:
    """One member's view of its region's election; see the module docstring."""

    self_id: str
    region: str
    voters: tuple[str, ...]
    rng: random.Random
    now: float = 0.0
    config: ElectionConfig = field(default_factory=ElectionConfig)
    eligible: bool = True
    restored_vote: VoteRecord | None = None

    role: Role = field(init=False, default=Role.FOLLOWER)
    #: Highest epoch this member knows was claimed (used to pick the next claim's epoch).
    term: int = field(init=False, default=0)
    #: Newest epoch in which this member has seen (or been) a coordinator, and who it is.
    known_epoch: int = field(init=False, default=0)
    coordinator: str | None = field(init=False, default=None)
    voted_epoch: int = field(init=False, default=0)
    voted_for: str | None = field(init=False, default=None)
    violations: int = field(init=False, default=0)
    ignored: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.config.validate()
        voters = tuple(sorted(set(self.voters)))
        if not voters:
            raise ConfigError(f"region {self.region!r} has no electorate configured")
        self.voters = voters
        self._voter_set = frozenset(voters)
        self.quorum = len(voters) // 2 + 1
        self._effects: list[ElectionEffect] = []
        self._seen: dict[int, str] = {}
        self._rank = 0
        self._score = 0.0
        if self.restored_vote is not None:
            self.voted_epoch = self.restored_vote.epoch
            self.voted_for = self.restored_vote.candidate
            self.term = self.voted_epoch
        # Quiet period after (re)start: whatever this member promised before it lost its memory
        # has expired once ``lease_s`` has passed, so refuse everybody until then.
        self._promise_holder = _NO_ONE
        self._promise_epoch = -1
        self._promise_until = self.now + self.config.lease_s
        # Listen for an existing coordinator for one lease before claiming.
        self._lease_seen_until = self.now + self.config.lease_s
        self._claim_at = self._compute_claim_at()
        # candidate state
        self._claim_epoch = 0
        self._claim_sent = 0.0
        self._claim_deadline = 0.0
        self._grants: set[str] = set()
        #: A claim refused for a promise about to end, answered again when it ends.
        self._deferred: Claim | None = None
        #: Voters that answered the current claim at all (granted or refused).
        self._answered: set[str] = set()
        #: Claims in a row that timed out (see ``ElectionConfig.claim_backoff_max``).
        self._failed_claims = 0
        # coordinator state
        self._epoch = 0
        #: Coordinator whose lease ran out: not acting (StepDown sent), still renewing.
        self._lapsed = False
        self._lease_end = 0.0
        self._next_renew = 0.0
        self._seq = 0
        self._sent: dict[int, float] = {}
        self._acks: dict[str, float] = {}
        self._last_led_epoch = 0

    # -- queries -------------------------------------------------------------------------

    @property
    def is_voter(self) -> bool:
        return self.self_id in self._voter_set

    def is_coordinator(self, now: float) -> bool:
        """True while this member is coordinator and its lease is valid at ``now``."""
        return self.role is Role.COORDINATOR and now < self._lease_end

    @property
    def failed_claims(self) -> int:
        """Claims in a row that too few voters answered at all; each doubles the claim
        timeout (up to ``claim_backoff_max``). A win resets it."""
        return self._failed_claims

    @property
    def next_claim_at(self) -> float | None:
        """When this follower claims if no coordinator renews before then; None while it
        is a candidate or coordinator, or never claims (not eligible, ranked out)."""
        return self._claim_at if self.role is Role.FOLLOWER else None

    @property
    def epoch(self) -> int:
        """The epoch this member leads (coordinator), claims (candidate) or follows."""
        if self.role is Role.COORDINATOR:
            return self._epoch
        if self.role is Role.CANDIDATE:
            return self._claim_epoch
        return self.known_epoch

    @property
    def lease_end(self) -> float:
        return self._lease_end if self.role is Role.COORDINATOR else 0.0

    # -- inputs --------------------------------------------------------------------------

    def on_candidates(self, scores: Mapping[str, float], now: float) -> None:
        """The live, eligible members of the region and their ``candidate_score``s.

        Only our own rank is derived from it: the number of members that beat us by
        (score descending, peer id ascending). Absent from ``scores`` means last.
        """
        self._advance(now)
        if self.self_id in scores:
            self._score = float(scores[self.self_id])
            mine = (-scores[self.self_id], self.self_id)
            self._rank = sum(1 for p, s in scores.items() if p != self.self_id and (-s, p) < mine)
        else:
            self._rank = len(scores)
        if self.role is Role.FOLLOWER:
            self._claim_at = self._compute_claim_at()

    def on_message(self, msg: ElectionMessage, now: float) -> None:
        """Any election message from the network (already authenticated by the shell)."""
        self._advance(now)
        if msg.region != self.region:
            self.ignored += 1
            return
        if isinstance(msg, Claim):
            self._on_claim(msg, now)
        elif isinstance(msg, Vote):
            self._on_vote(msg, now)
        elif isinstance(msg, Renew):
            self._on_renew(msg, now)
        elif isinstance(msg, RenewAck):
            self._on_renew_ack(msg, now)
        else:
            self._on_release(msg, now)

    def on_tick(self, now: float) -> None:
        self._advance(now)

    # -- outputs -------------------------------------------------------------------------

    def poll_effects(self) -> list[ElectionEffect]:
        out, self._effects = self._effects, []
        return out

    def next_deadline(self) -> float | None:
        if self.role is Role.COORDINATOR:
            return min(self._next_renew, self._lease_end + (self.config.lease_s if self._lapsed else 0.0))
        own = self._claim_deadline if self.role is Role.CANDIDATE else self._claim_at
        if self._deferred is not None:
            return self._promise_until if own is None else min(own, self._promise_until)
        return own

    # -- time ----------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        if now < self.now:
            now = self.now  # the driver's clock never runs backwards for us
        self.now = now
        deferred = self._deferred
        if deferred is not None and now >= self._promise_until:
            # The promise that made us refuse this claim has run out: answer it again now,
            # as if it had arrived just after (it is granted only if still valid).
            self._deferred = None
            self._on_claim(deferred, now)
        # A loop, because one step can schedule another that is also already due.
        for _ in range(8):
            if self.role is Role.COORDINATOR:
                if now >= self._lease_end and not self._lapsed:
                    # The lease ran out unrenewed: stop acting now (StepDown), but keep the
                    # epoch and keep renewing for one more lease. A quorum that acks a
                    # renew brings the lease back (BecomeCoordinator again). A lease counts
                    # from the claim's send time, so when a round trip takes most of it
                    # (a loaded machine: the demo's two-voter regions), every winner lost
                    # it before the first ack came back, stepped down, and the region
                    # re-elected about once a second without ever holding a coordinator.
                    self._lapsed = True
                    self._effects.append(StepDown(self.region, self._epoch, "lease expired"))
                    continue
                if self._lapsed and now >= self._lease_end + self.config.lease_s:
                    self._step_down("lease not renewed", now)
                    continue
                if now >= self._next_renew:
                    self._send_renew(now)
                    continue
            elif self.role is Role.CANDIDATE:
                if now >= self._claim_deadline:
                    if len(self._answered | self._grants) < self.quorum:
                        # Too few voters answered at all: the round trip is the problem,
                        # so wait longer next time. Refusals (a voter still promised to a
                        # coordinator that just died) are answers: no back-off for them.
                        self._failed_claims += 1
                    self._abandon(now, retry=True)
                    continue
            elif self._claim_at is not None and now >= self._claim_at:
                self._start_claim(now)
                continue
            break

    def _compute_claim_at(self) -> float | None:
        if not self.eligible or self._rank >= self.config.max_candidate_rank:
            return None
        base = self._lease_seen_until
        if self._promise_holder != self.self_id and self.is_voter:
            # We promised someone else: our own vote would be refused, so wait it out.
            base = max(base, self._promise_until)
        return base + self._rank * self.config.rank_stagger_s

    # -- candidate -----------------------------------------------------------------------

    def _start_claim(self, now: float) -> None:
        epoch = max(self.term, self.known_epoch, self.voted_epoch) + 1
        self.term = epoch
        self.role = Role.CANDIDATE
        self._claim_epoch = epoch
        self._claim_sent = now
        self._claim_deadline = now + self._claim_timeout()
        self._grants = set()
        self._answered = set()
        if self.is_voter and self._may_promise(self.self_id, now):
            self._record_vote(epoch, self.self_id, now)
            self._grants.add(self.self_id)
        self._effects.append(Broadcast(Claim(self.region, epoch, self.self_id, self._score)))
        self._maybe_win(now)

    def _abandon(self, now: float, *, retry: bool) -> None:
        epoch = self._claim_epoch
        self.role = Role.FOLLOWER
        self._grants = set()
        self._effects.append(Broadcast(Release(self.region, epoch, self.self_id)))
        if self._promise_holder == self.self_id and self._promise_epoch == epoch:
            self._promise_until = now
        if retry:
            jitter = self._claim_timeout() * self.rng.uniform(0.5, 1.5)
            self._claim_at = now + jitter + self._rank * self.config.rank_stagger_s
        else:
            self._claim_at = self._compute_claim_at()

    def _on_vote(self, v: Vote, now: float) -> None:
        if v.voter not in self._voter_set:
            self.ignored += 1
            return
        if not v.granted:
            self.term = max(self.term, v.voted_epoch)
            if self.role is Role.CANDIDATE and v.epoch == self._claim_epoch and v.candidate == self.self_id:
                self._answered.add(v.voter)
            return
        if self.role is not Role.CANDIDATE or v.epoch != self._claim_epoch or v.candidate != self.self_id:
            return  # late grant for an epoch we abandoned or already won
        self._grants.add(v.voter)
        self._maybe_win(now)

    def _maybe_win(self, now: float) -> None:
        if len(self._grants) < self.quorum:
            return
        epoch = self._claim_epoch
        other = self._seen.get(epoch)
        if (other is not None and other != self.self_id) or epoch <= self._last_led_epoch:
            self._violation(epoch, f"won epoch {epoch} already led by {other or 'us'}")
            self._abandon(now, retry=True)
            return
        self.role = Role.COORDINATOR
        self._lapsed = False
        self._failed_claims = 0
        self._epoch = epoch
        self._last_led_epoch = epoch
        self._remember(epoch, self.self_id)
        self.known_epoch = epoch
        self.coordinator = self.self_id
        self._acks = {v: self._claim_sent for v in sorted(self._grants)}
        self._lease_end = self._claim_sent + self.config.lease_s * (1 - self.config.drift_margin)
        self._sent = {}
        self._seq = 0
        self._effects.append(BecomeCoordinator(self.region, epoch, self._lease_end))
        self._effects.append(CoordinatorChanged(self.region, epoch, self.self_id))
        self._send_renew(now)

    # -- coordinator ---------------------------------------------------------------------

    def _send_renew(self, now: float) -> None:
        self._seq += 1
        self._sent[self._seq] = now
        horizon = now - self.config.lease_s
        for s in [s for s, t in self._sent.items() if t < horizon]:
            del self._sent[s]
        self._next_renew = now + self.config.renew_interval_s
        if self.is_voter and self._may_promise(self.self_id, now):
            self._promise(self.self_id, self._epoch, now)
            self._ack(self.self_id, now)
        self._effects.append(Broadcast(Renew(self.region, self._epoch, self.self_id, self._seq)))

    def _on_renew_ack(self, a: RenewAck, now: float) -> None:
        if (
            self.role is not Role.COORDINATOR
            or a.epoch != self._epoch
            or a.voter not in self._voter_set
            or a.seq not in self._sent
        ):
            return
        self._ack(a.voter, self._sent[a.seq])

    def _ack(self, voter: str, sent_at: float) -> None:
        if sent_at <= self._acks.get(voter, float("-inf")):
            return
        self._acks[voter] = sent_at
        times = sorted(self._acks.values(), reverse=True)
        if len(times) >= self.quorum:
            end = times[self.quorum - 1] + self.config.lease_s * (1 - self.config.drift_margin)
            self._lease_end = max(self._lease_end, end)
            if self._lapsed and self._lease_end > self.now:
                self._lapsed = False  # a quorum acked a renew sent within the lease: acting again
                self._effects.append(BecomeCoordinator(self.region, self._epoch, self._lease_end))

    def _step_down(self, reason: str, now: float) -> None:
        epoch = self._epoch
        self.role = Role.FOLLOWER
        self._acks = {}
        self._sent = {}
        if not self._lapsed:  # a lapsed lease already said so
            self._effects.append(StepDown(self.region, epoch, reason))
        self._lapsed = False
        if self.coordinator == self.self_id:
            self.coordinator = None
            self._effects.append(CoordinatorChanged(self.region, epoch, None))
        self._lease_seen_until = now
        self._claim_at = self._compute_claim_at()

    # -- everyone ------------------------------------------------------------------------

    def _on_renew(self, r: Renew, now: float) -> None:
        if r.coordinator == self.self_id:
            return
        seen = self._seen.get(r.epoch)
        if seen is not None and seen != r.coordinator:
            self._violation(r.epoch, f"renew from {r.coordinator} but epoch led by {seen}")
            return
        if r.epoch < self.known_epoch:
            self.ignored += 1  # a deposed coordinator that has not noticed yet
            return
        self._remember(r.epoch, r.coordinator)
        self.term = max(self.term, r.epoch)
        self._failed_claims = 0
        newer = r.epoch > self.known_epoch
        if self.role is Role.COORDINATOR:
            # Only reachable with r.epoch > ours: a quorum moved on, so our lease is gone.
            self._step_down(f"coordinator of newer epoch {r.epoch} seen", now)
        elif self.role is Role.CANDIDATE and (newer or r.epoch >= self._claim_epoch):
            self._abandon(now, retry=False)
        if newer or self.coordinator != r.coordinator:
            self.known_epoch = r.epoch
            self.coordinator = r.coordinator
            self._effects.append(CoordinatorChanged(self.region, r.epoch, r.coordinator))
        self._lease_seen_until = max(self._lease_seen_until, now + self.config.lease_s)
        if self.is_voter and r.epoch >= self.voted_epoch and self._may_promise(r.coordinator, now):
            self._promise(r.coordinator, r.epoch, now)
            self._effects.append(Send(r.coordinator, RenewAck(self.region, r.epoch, self.self_id, r.seq)))
        if self.role is Role.FOLLOWER:
            self._claim_at = self._compute_claim_at()

    def _on_claim(self, c: Claim, now: float) -> None:
        if c.candidate == self.self_id or not self.is_voter:
            return
        if (
            self.role is Role.CANDIDATE
            and c.epoch >= self._claim_epoch
            and (-c.score, c.candidate) < (-self._score, self.self_id)
        ):
            # A better-ranked member claims too: yield instead of splitting the vote.
            self._abandon(now, retry=True)
        same = c.epoch == self.voted_epoch and self.voted_for == c.candidate
        granted = (same or c.epoch > max(self.voted_epoch, self.known_epoch)) and self._may_promise(
            c.candidate, now
        )
        if granted:
            if not same:
                self._record_vote(c.epoch, c.candidate, now)
            else:
                self._promise(c.candidate, c.epoch, now)
        elif (
            c.epoch > max(self.voted_epoch, self.known_epoch)
            and not self._may_promise(c.candidate, now)
            and self._promise_until - now <= self.config.claim_timeout_s
        ):
            # Refused only for a promise that ends within the claim's timeout (typically to
            # a coordinator that just died, whose last renew reached us a little after it
            # reached the candidate): grant then, instead of failing the claim and every
            # retry that races it. (Without this, failovers in the 12-node test took 3-6 s.)
            self._deferred = c
        self._effects.append(
            Send(
                c.candidate,
                Vote(
                    self.region,
                    c.epoch,
                    self.self_id,
                    c.candidate,
                    granted,
                    self.voted_epoch,
                    self.coordinator,
                    self.known_epoch,
                ),
            )
        )
        if self.role is Role.FOLLOWER and granted:
            # Our promise moves our own claim after it. A refused claim moves nothing: a
            # member that had just yielded (or failed a claim) used to reset its retry to
            # the lease-based time, long past, and claim again at once with the next epoch,
            # so the better-ranked candidate's next claim met a fresh self-vote every time
            # (two voters duelled that way for 45 s, a claim a second each).
            at = self._compute_claim_at()
            self._claim_at = at if at is None or self._claim_at is None else max(at, self._claim_at)

    def _on_release(self, r: Release, now: float) -> None:
        if self._promise_holder == r.candidate and self._promise_epoch == r.epoch:
            self._promise_until = min(self._promise_until, now)
            if self.role is Role.FOLLOWER:
                self._claim_at = self._compute_claim_at()

    # -- helpers -------------------------------------------------------------------------

    def _claim_timeout(self) -> float:
        factor = min(2.0 ** min(self._failed_claims, 16), self.config.claim_backoff_max)
        return self.config.claim_timeout_s * factor

    def _may_promise(self, peer: str, now: float) -> bool:
        return self._promise_holder == peer or now >= self._promise_until

    def _promise(self, peer: str, epoch: int, now: float) -> None:
        until = now + self.config.lease_s
        if self._promise_holder == peer:
            until = max(self._promise_until, until)
        self._promise_holder = peer
        self._promise_epoch = epoch
        self._promise_until = until

    def _record_vote(self, epoch: int, candidate: str, now: float) -> None:
        assert epoch > self.voted_epoch, "a voter votes at most once per epoch"
        self.voted_epoch = epoch
        self.voted_for = candidate
        self.term = max(self.term, epoch)
        self._effects.append(PersistVote(self.region, epoch, candidate))
        self._promise(candidate, epoch, now)

    def _remember(self, epoch: int, peer: str) -> None:
        self._seen[epoch] = peer
        if len(self._seen) > self.config.epoch_memory:
            for e in sorted(self._seen)[: len(self._seen) - self.config.epoch_memory]:
                del self._seen[e]

    def _violation(self, epoch: int, detail: str) -> None:
        self.violations += 1
        self._effects.append(InvariantViolated(self.region, epoch, detail))


def electorate_from(peers: Iterable[str]) -> tuple[str, ...]:
    """Canonical electorate tuple (sorted, de-duplicated)."""
    return tuple(sorted(set(peers)))
