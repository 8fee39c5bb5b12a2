"""Result verification policy: which results the SDK may resolve, and what else to send to know.

``VerificationCore`` is a sans-IO state machine (no I/O, no clock, no global randomness;
time is an input and randomness a seeded ``random.Random``) that the gamer SDK puts
between the wire and its futures. Signatures and task binding are checked by the shell
*before* a result reaches the core (``tasks.receipt``); the core decides whether a
correctly signed result is also a *right* one, using, per the cheating maths in
``shared/notes/faults.md`` (majority voting alone is weak):

1. **Cheap per-kind checks on every result** (``TaskKind.self_check``: the upscale
   downsample check, physics invariants, ...). A failed self-check is a definitive,
   transferable proof: the worker is banned and the evidence gossiped.
2. **Known-answer probes.** Outputs confirmed by two independent workers are kept in a
   bounded store; with probability ``p_probe(trust)`` per task placed on a worker, the
   core re-issues a stored task to that worker under a fresh task id (same wire shape as
   any task; preferably to a worker that did not compute it). A wrong answer is caught
   against the stored, signed reference.
3. **Sampled redundancy, adapted to reputation.** With probability ``p_dup(trust)`` of
   the primary worker the task is sent at once to a second worker (picked with weight
   rising with trust); both outputs must agree under the kind's ``equivalent`` check.
   On disagreement a third worker breaks the tie and the minority is penalised.
4. **Low initial trust and bans** (``nodes.reputation``): a new key has trust 0, so its
   tasks are all duplicated and probed at ``probe_max``; trust grows only with
   independently verified results and decays back in virtual time.
5. **Disputes settled by a local re-run.** When two answer groups disagree and the kind
   is cheap enough (``recompute_max_cost``), the gamer re-runs the kernel itself
   (``RunCheck.recompute``): the wrong side is banned with evidence any node can check
   by re-running it too (``Proof.RECOMPUTED``), whatever anyone's trust. Costlier kinds
   fall back to a tie-break vote.
6. **Unresponsive workers are hedged, then banned locally.** A copy not answered by its
   hedge time (``hedge_factor`` x the worker's own recent latency for the kind, for a
   worker not measured yet the larger of the kind's recent latency and its cost model's
   run time, at least ``hedge_min_s``, at most ``hedge_max_fraction`` of the budget) is a
   strike and the task gets a
   replacement copy elsewhere; ``strikes_to_ban`` strikes in a row ban the worker
   locally (no transferable proof, so no evidence). Only when another worker exists:
   a lone slow worker is never punished for being the only one. A worker that says a
   copy waits for a slot (``on_queued``, the wire's ``"Q"`` frame) has its hedge counted
   from the announced start (within the cap), and is not struck before that start plus
   the copy's run time. Only an answer in time (before its copy's hedge, or within the
   hedge delay of the slowest pace believed for the kind, ``max_slowdown`` times the
   kind's; a copy cancelled while it ran included) shows a worker is not silent, and a
   worker's own pace is believed only up to that limit: a worker that holds every task far
   longer than its kind takes answers after its hedges, so it is struck like a silent one.
7. **Bad signatures ban locally.** A result whose signature fails on a stream the Noise
   handshake authenticated can only come from that peer: it is banned at once (no
   evidence: an invalid signature proves nothing to a third party).

With a single worker (or when every other worker is gone) a task that wanted a second
opinion resolves on its self-check alone when ``allow_unconfirmed``; ``stats.unconfirmed``
counts these lower-assurance results.

Inputs (all take ``now``, seconds on the shell's clock; deadlines use the same base)::

    on_worker_up(worker, now) / on_worker_down(worker, now)
    on_submit(task, now)                                  a user task to place and verify
    on_result(wire_id, worker, output, now, ts_ms=, signature=)   signature already checked
    on_failure(wire_id, worker, error, now)               error reply, lost link, bad signature
    on_sent(wire_id, now) / on_queued(wire_id, worker, wait_s, now)   left the gamer / waits for a slot
    on_check(check_id, ok, now)                           the verdict of a ``RunCheck``
    on_cancel(task_id, now) / on_tick(now)
    add_known_answer(kind, params, data, output, now, reference=None)

Shell hooks and queries (all optional)::

    placer(kind, [(worker, copies in flight), ...]) -> worker | None     primary placement
    lease_placer(kind, in_flight) -> worker | None    the same without the list of every
        eligible worker: ``in_flight(worker)`` is its copies in flight, None if not eligible
    rtt_estimate(worker) -> seconds | None            keeps duplicates near (see _pick_partner)
    idle_workers(now, idle_s, keep=()) -> [worker]    links the shell may close: no copy in
        flight and nothing sent/answered for idle_s (banned: at once), less ``keep``; the
        shell closes them and calls ``on_worker_down`` (the simulator's gamer does, every 5 s
        with idle_s = 10 s and keep = its leased workers)

Cost: picking a worker for a copy is O(``placement_sample``) whatever the number of
connected workers (``placer`` alone still gets, and costs, the list of all); the eligible set
(connected, unbanned) is cached and rebuilt only when ``Reputation.ban_version`` moves, the
connected set changes or the earliest ban of a connected worker ends. A ban still looks at
every pending task (rare); a lost worker at its own copies.

Effects (``poll_effects()``, in order): ``SendTo`` (a task copy to a chosen worker; the
role is for the shell's statistics and must never reach the wire), ``Probe`` (a
known-answer task; same wire shape), ``RunCheck`` (run ``self_check`` or ``equivalent``
off the event loop, then call ``on_check``; ``drain_inline`` does it synchronously for
tests and simulations), ``Cancel`` (a copy no longer needed), ``Resolve`` (the verified
output for a user task), ``Reject`` (a typed error for it) and ``Penalise`` (lower or ban
a worker; ``evidence`` set when there is a transferable proof to gossip).

States of a user task::

    PLACED --answers/checks--> (group of `need` equivalent, self-checked answers) RESOLVED
    PLACED --disagreement--> TIEBREAK (one more copy per missing vote, up to max_sends)
    PLACED/TIEBREAK --two groups, cheap kind--> DISPUTE (local re-run of each side)
    DISPUTE --a side matches the re-run--> RESOLVED (other sides banned with evidence)
    PLACED/TIEBREAK --deadline, no answer--> REJECTED(TaskTimeoutError)
    PLACED/TIEBREAK --deadline, answers unconfirmed--> REJECTED(VerificationTimeoutError)
    PLACED/TIEBREAK --no worker or send left--> REJECTED(VerificationIncompleteError or the error)

``need`` is 1 (self-check only) or 2 (duplicated); it is drawn once at submit.

Invariants:

* Every submitted task ends with exactly one ``Resolve`` or ``Reject``; nothing is
  resolved twice and anything arriving for a finished task is dropped (``stats.late``).
* A resolved output passed its kind's self-check (unless ``self_check`` is off), and
  either an equivalent output came from a second, distinct worker, or it matched a local
  re-run, or ``need == 1`` (drawn, or degraded for want of any other worker).
* No answer from a banned worker is ever resolved, even one that arrived before the ban.
* Copies of one task always go to distinct workers; banned workers get no new copies
  and their answers are ignored.
* At most ``max_sends`` copies per task; none is started with less than
  ``min_send_budget_s`` before the deadline; every copy carries the task's deadline.
* Deterministic: candidates are iterated in sorted order, every random choice comes from
  the injected ``random.Random`` (partner samples included), and wire ids are drawn from it.
"""

from __future__ import annotations

import bisect
import enum
import heapq
import itertools
import math
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh import wire
from mesh.errors import (
    P2C2RError,
    TaskTimeoutError,
    UnavailableError,
    ValidationError,
    VerificationError,
)
from nodes.reputation import Evidence, Reputation, SignedResult, make_evidence
from tasks.registry import Registry

__all__ = [
    "Cancel",
    "Effect",
    "LeasePlacer",
    "Penalise",
    "Placer",
    "Probe",
    "Reject",
    "Resolve",
    "Role",
    "RttEstimate",
    "RunCheck",
    "SendTo",
    "Task",
    "VerificationConfig",
    "VerificationCore",
    "VerificationIncompleteError",
    "VerificationStats",
    "VerificationTimeoutError",
    "drain_inline",
    "run_check",
]


class VerificationIncompleteError(VerificationError):
    """The policy wanted a confirmation it could not get (no other worker, sends used up)."""

    code = "verification_incomplete"


class VerificationTimeoutError(VerificationIncompleteError, TaskTimeoutError):
    """The deadline passed while a result was still being verified."""

    code = "verification_timeout"


class Role(enum.Enum):
    PRIMARY = "primary"
    DUPLICATE = "duplicate"
    TIEBREAK = "tiebreak"
    #: A copy replacing one that failed, was lost, or did not answer by its hedge time.
    REPLACEMENT = "replacement"


@dataclass(frozen=True, slots=True)
class Task:
    """A user task. ``params`` as they will be sent; ``deadline`` on the shell's clock."""

    task_id: bytes
    kind: str
    params: dict[str, Any]
    data: bytes
    deadline: float


# --------------------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True)
class SendTo:
    """Send ``(wire_id, kind, params, data)`` to ``worker``; ``role`` stays local."""

    worker: bytes
    wire_id: bytes
    kind: str
    params: dict[str, Any]
    data: bytes
    deadline: float
    role: Role
    task_id: bytes


@dataclass(frozen=True, slots=True)
class Probe:
    """A known-answer task for ``worker``; send it exactly like a ``SendTo``."""

    worker: bytes
    wire_id: bytes
    kind: str
    params: dict[str, Any]
    data: bytes
    deadline: float


@dataclass(frozen=True, slots=True)
class RunCheck:
    """Run ``self_check(params, data, output)`` (``reference is None``) or
    ``equivalent(params, output, reference)`` off the event loop; report via ``on_check``.
    With ``recompute``: run the kernel on ``data`` and report whether ``output`` is
    equivalent to what it gives. ``params`` are normalised by the registry."""

    check_id: int
    kind: str
    params: dict[str, Any]
    data: bytes
    output: bytes
    reference: bytes | None
    recompute: bool = False


@dataclass(frozen=True, slots=True)
class Cancel:
    worker: bytes
    wire_id: bytes


@dataclass(frozen=True, slots=True)
class Resolve:
    task_id: bytes
    output: bytes
    worker: bytes


@dataclass(frozen=True, slots=True)
class Reject:
    task_id: bytes
    error: P2C2RError


@dataclass(frozen=True, slots=True)
class Penalise:
    """``banned``: the core banned ``worker`` in its ``Reputation``; ``evidence`` to gossip."""

    worker: bytes
    reason: str
    evidence: Evidence | None
    banned: bool


Effect = SendTo | Probe | RunCheck | Cancel | Resolve | Reject | Penalise


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class VerificationConfig:
    #: p_dup(t) = dup_floor + (dup_max - dup_floor) * (1 - t) ** dup_exponent.
    dup_floor: float = 0.15
    dup_max: float = 1.0
    dup_exponent: float = 2.0
    #: p_probe(t) = probe_floor + (probe_max - probe_floor) * (1 - t); probes run on the
    #: worker under test, so heavy probing of new keys costs honest workers nothing.
    probe_floor: float = 0.08
    probe_max: float = 0.5
    #: Most copies of one task (primary, duplicates, tie-breakers, replacements).
    max_sends: int = 5
    #: No copy is started with less than this left before the task's deadline.
    min_send_budget_s: float = 0.0
    #: Primary placement: weight (floor + trust) / (1 + copies in flight), so a new key gets
    #: a small share of the work (and of the chances to cheat) until it has earned trust.
    primary_trust_floor: float = 0.1
    #: Trust-weighted choice of duplicate and tie-break workers: weight (floor + t)**bias.
    partner_trust_bias: float = 2.0
    partner_trust_floor: float = 0.05
    #: Duplicates, tie-breakers, replacements (and primaries, without a placer) are drawn
    #: from a seeded uniform sample of this many eligible workers, weighted as above, when
    #: more are connected (power-of-d choices): a copy costs O(sample), not O(connected).
    placement_sample: int = 8
    #: Trust flows from anchors: agreeing workers gain trust weighted by the highest trust
    #: among the *other* agreeing workers (probes answered right count with weight 1), so
    #: colluders confirming each other earn nothing.
    #: A disagreeing minority is banned (with evidence) only when the winning group holds
    #: a worker trusted at least this much; otherwise it only loses trust (soft fault),
    #: so a colluding majority of untrusted keys cannot get honest workers banned.
    ban_trust: float = 0.5
    #: Agreed outputs become known answers (probe material) only when the group holds a
    #: worker trusted at least this much (or via ``add_known_answer``).
    known_answer_trust: float = 0.5
    #: A worker that says the input is invalid is believed once this many distinct
    #: workers agree (one liar cannot fail a task by claiming bad input).
    validation_quorum: int = 2
    #: Known-answer store bounds.
    known_answers: int = 512
    known_answer_max_bytes: int = 1024 * 1024
    known_answers_total_bytes: int = 64 * 1024 * 1024
    #: Inputs/outputs up to this size are embedded in evidence.
    evidence_max_blob: int = 1024 * 1024
    max_pending: int = 100_000
    #: Run the kind's self-check on every result (off only for raw-transport benchmarks).
    self_check: bool = True
    #: With no other worker to ask at all, resolve on the self-check alone (counted in
    #: ``stats.unconfirmed``) instead of failing with ``VerificationIncompleteError``.
    allow_unconfirmed: bool = True
    #: Copies of one task that may fail (error reply, lost link, bad signature) before
    #: the task is given up with the last error (the SDK sets it from ``max_attempts``).
    max_failures: int = 3
    #: Settle disagreements by re-running the kernel locally when its cost estimate is at
    #: most this many work units (~ms of one core) and the input at most this many bytes.
    recompute_max_cost: float = 250.0
    recompute_max_bytes: int = 1024 * 1024
    #: Hedging: a copy not answered within max(hedge_min_s, hedge_factor * recent latency
    #: of the kind), capped at hedge_max_fraction of its budget, is a strike and gets a
    #: replacement elsewhere. Budgets too short for hedge_min_s are never hedged.
    hedge: bool = True
    hedge_factor: float = 4.0
    hedge_min_s: float = 0.5
    hedge_max_fraction: float = 0.5
    #: Every task whose primary has fewer than this many independently verified results
    #: is duplicated, whatever its score: trust must be earned on confirmed work before
    #: any result of a worker is taken on its word (sleepers get no early shortcut).
    dup_until_verified: int = 30
    #: Local bans for unresponsiveness (no proof anyone else could check) last this long.
    unresponsive_ban_s: float = 300.0
    #: Strikes in a row (hedged copies, probes unanswered) that ban a worker locally;
    #: an answer in time clears them. 0: never. Strikes closer together than
    #: ``strike_interval_s`` count once, so a worker that is silent for a moment (a cold
    #: start, a GC pause) with many copies queued is not banned for one stall; only
    #: silence sustained over about ``strikes_to_ban * strike_interval_s`` is.
    strikes_to_ban: int = 5
    strike_interval_s: float = 0.5
    #: A worker's own pace for a kind is believed up to this many times the kind's (the
    #: larger of its recent latency over all workers and the cost model's run time on one
    #: reference core). A slower worker's answers come after its hedges, which is no sign
    #: of life, so it is struck as silent: a worker that held every task 5 s and answered
    #: right was never banned once its pace was learned, however useless to a game. An
    #: honest CPU peer beside GPU peers is well within it on compute-bound kinds (its
    #: pace is near the cost model's), and on a slow link on transfer-bound ones (the
    #: kind's latency includes everyone's transfers).
    max_slowdown: float = 4.0
    #: Known-answer probes sent to each worker as it joins (when answers are known).
    join_probes: int = 1
    join_probe_budget_s: float = 10.0
    #: The shell computes this many tasks of each kind itself (cost at most
    #: ``recompute_max_cost``) as the known answers that trust is anchored on.
    anchors_per_kind: int = 2

    @classmethod
    def off(cls) -> VerificationConfig:
        """No checks at all beyond the signature (raw-transport benchmarks): every task
        goes to one worker and its signed output is resolved as is."""
        return cls(
            dup_floor=0.0,
            dup_max=0.0,
            dup_until_verified=0,
            probe_floor=0.0,
            probe_max=0.0,
            known_answers=0,
            self_check=False,
            recompute_max_cost=-1.0,
            hedge=False,
            strikes_to_ban=0,
            join_probes=0,
            anchors_per_kind=0,
        )

    @property
    def enabled(self) -> bool:
        return self.self_check or self.dup_max > 0 or self.probe_max > 0

    def p_dup(self, trust: float) -> float:
        t = min(1.0, max(0.0, trust))
        return self.dup_floor + (self.dup_max - self.dup_floor) * float((1.0 - t) ** self.dup_exponent)

    def p_probe(self, trust: float) -> float:
        t = min(1.0, max(0.0, trust))
        return self.probe_floor + (self.probe_max - self.probe_floor) * (1.0 - t)


@dataclass
class VerificationStats:
    submitted: int = 0
    resolved: int = 0
    rejected: int = 0
    timeouts: int = 0
    sends: dict[str, int] = field(default_factory=lambda: {r.value: 0 for r in Role})
    probes: int = 0
    probes_passed: int = 0
    probes_failed: int = 0
    probe_timeouts: int = 0
    self_check_failures: int = 0
    mismatches: int = 0
    mismatches_unproven: int = 0
    unconfirmed: int = 0
    bans: int = 0
    late: int = 0
    recomputes: int = 0
    strikes: int = 0
    hedges: int = 0
    #: Copies a worker said wait for a slot (``on_queued``), and those of them it said
    #: could not be done before their hedge cap (hedged there, unstruck).
    queued: int = 0
    queued_past_cap: int = 0


# --------------------------------------------------------------------------- internals


@dataclass(eq=False, slots=True)
class _Known:
    kind: str
    params: dict[str, Any]
    norm: dict[str, Any]
    data: bytes
    output: bytes
    digest: bytes
    reference: SignedResult | None
    workers: frozenset[bytes]
    #: Its run-time estimate in seconds (``VerificationCore._estimate``), if any.
    estimate: float | None = None
    #: Positions in the core's probe indexes (every known answer; those of its kind).
    pos_all: int = -1
    pos_kind: int = -1


@dataclass(eq=False, slots=True)
class _Copy:
    wire_id: bytes
    worker: bytes
    deadline: float
    role: Role | None  # None: a probe
    sent_at: float = 0.0
    hedge_at: float = math.inf
    #: This task's copies already waiting on the same worker when it was sent (hedge delay).
    ahead: int = 0
    task: _Task | None = None
    known: _Known | None = None
    live: bool = True
    #: Set when its worker said it waits for a slot (``on_queued``): its announced start
    #: plus its run time, before which it is not silent.
    due: float = -math.inf
    #: Counted in its worker's in-flight load (placement weight); a hedged copy is
    #: presumed lost and stops counting, so a silent worker keeps being tried (and struck).
    counted: bool = True

    @property
    def queued(self) -> bool:
        """Its worker said it waits for a slot: its latency is not the worker's pace."""
        return self.due > -math.inf


@dataclass(eq=False, slots=True)
class _Answer:
    copy: _Copy
    output: bytes
    digest: bytes
    signed: SignedResult
    self_ok: bool | None = None
    #: Verdict of a local re-run on this answer (a group representative), once asked.
    recomputed: bool | None = None


class _Task:
    """A user task in flight (a plain slotted class: one is made per task, and a dataclass's
    default factories cost more than the literals here)."""

    __slots__ = (
        "answers",
        "ban_seen",
        "checks",
        "comparing",
        "copies",
        "done",
        "estimate",
        "failures",
        "groups",
        "invalid_from",
        "last_error",
        "need",
        "norm",
        "owed",
        "queue",
        "recomputing",
        "task",
    )

    def __init__(
        self, task: Task, norm: dict[str, Any], need: int, ban_seen: int = -1, estimate: float | None = None
    ) -> None:
        self.task = task
        #: Its run-time estimate in seconds (``VerificationCore._estimate``), if any.
        self.estimate = estimate
        self.norm = norm
        self.need = need
        self.copies: list[_Copy] = []
        self.answers: list[_Answer] = []
        self.groups: list[list[_Answer]] = []
        self.queue: deque[_Answer] = deque()
        self.comparing: tuple[_Answer, int] | None = None
        self.checks = 0
        self.recomputing = 0
        self.invalid_from: set[bytes] = set()
        self.last_error: P2C2RError | None = None
        self.failures = 0
        #: Copies that failed or were hedged and still owe a replacement.
        self.owed = 0
        self.done = False
        #: The reputation's ``ban_version`` when the answers were last checked for bans.
        self.ban_seen = ban_seen

    def in_flight(self) -> int:
        return sum(1 for c in self.copies if c.live)

    def pending_answers(self) -> int:
        return (
            sum(1 for a in self.answers if a.self_ok is None) + len(self.queue) + (1 if self.comparing else 0)
        )


@dataclass(eq=False, slots=True)
class _Check:
    purpose: str  # "self" | "compare" | "probe" | "recompute"
    answer: _Answer
    task: _Task | None


#: ``placer(kind, [(worker, copies in flight), ...]) -> worker or None`` (see ``placer``).
Placer = Callable[[str, list[tuple[bytes, int]]], bytes | None]
#: ``lease_placer(kind, in_flight) -> worker or None`` (see ``lease_placer``).
LeasePlacer = Callable[[str, Callable[[bytes], int | None]], bytes | None]
#: ``rtt_estimate(worker) -> seconds or None`` (see ``VerificationCore.rtt_estimate``).
RttEstimate = Callable[[bytes], float | None]
#: How long a connected worker goes unused before a shell on the mesh closes its link
#: (``idle_workers``): the SDK's ``MeshClientConfig.idle_link_s`` and the simulated gamer.
IDLE_LINK_S = 10.0


class VerificationCore:
    """The verification policy. See the module docstring for states and invariants."""

    def __init__(
        self,
        registry: Registry,
        reputation: Reputation,
        rng: random.Random,
        config: VerificationConfig = VerificationConfig(),
    ) -> None:
        self.registry = registry
        self.reputation = reputation
        self.rng = rng
        self.config = config
        self.stats = VerificationStats()
        #: Optional outside placement of primaries (the control plane's leases): called
        #: with the eligible (unbanned) workers; a worker it returns is used as primary.
        self.placer: Placer | None = None
        #: The same for a shell that knows its own candidates (the workers it holds leases
        #: on): called with ``in_flight(worker)``, the copies in flight on an eligible
        #: worker or ``None`` for one that is not (not connected, or banned), instead of
        #: the list of every eligible worker, so that placing a primary costs O(the shell's
        #: candidates) and not O(connected workers). Takes precedence over ``placer``.
        self.lease_placer: LeasePlacer | None = None
        #: Optional round-trip estimate to a worker, in seconds, from the shell (link pings,
        #: Vivaldi coordinates). Used, until the core has measured the worker's own latency
        #: for a kind, to keep duplicates off workers too far away to answer in time.
        self.rtt_estimate: RttEstimate | None = None
        self._workers: set[bytes] = set()
        self._inflight: dict[bytes, int] = {}
        #: Eligible workers (connected, not banned), sorted, cached: valid while the
        #: reputation's ``ban_version`` and the connected set are unchanged and ``now`` is in
        #: [``_elig_from``, ``_elig_until``) (the earliest end of a connected worker's ban).
        self._elig: list[bytes] = []
        self._elig_set: frozenset[bytes] = frozenset()
        self._elig_version = -1
        self._elig_from = math.inf
        self._elig_until = -math.inf
        #: Live copies (tasks and probes) per worker, by wire id; when each worker was last
        #: sent a copy or heard from (for ``idle_workers``).
        self._live: dict[bytes, dict[bytes, None]] = {}
        self._last_active: dict[bytes, float] = {}
        self._tasks: dict[bytes, _Task] = {}
        self._copies: dict[bytes, _Copy] = {}
        self._checks: dict[int, _Check] = {}
        self._check_ids = itertools.count(1)
        #: (when, seq, tag, key): tag "task" (key: user task id), "probe" or "hedge"
        #: (key: wire id).
        self._deadlines: list[tuple[float, int, str, bytes]] = []
        self._seq = itertools.count()
        self._known: OrderedDict[tuple[str, bytes, bytes], _Known] = OrderedDict()
        self._known_bytes = 0
        #: The known answers again, as lists a probe draws from by index: all, and per kind.
        self._known_all: list[_Known] = []
        self._known_by_kind: dict[str, list[_Known]] = {}
        #: Normalised parameters and run-time estimate (``_estimate``) by (kind, typed
        #: params, input length): the registry's ``validate_params`` is pure, and a stream
        #: submits the same parameters every frame.
        self._norms: dict[tuple[Any, ...], tuple[dict[str, Any], float | None]] = {}
        self._latency: dict[str, float] = {}
        #: The same per worker and kind: a worker is judged against its own pace once known.
        self._wlatency: dict[bytes, dict[str, float]] = {}
        #: Per worker and kind, when the worker said its queue, ours included, should be
        #: through (the latest ``due`` it announced, ``on_queued``): a copy of that kind sent
        #: there now waits behind it. Per kind: a worker may run kinds apart (batch work
        #: niced behind interactive work), and one that queues all kinds alike announces
        #: each kind's wait when it queues it.
        self._backlog: dict[bytes, dict[str, float]] = {}
        self._strikes: dict[bytes, int] = {}
        self._last_strike: dict[bytes, float] = {}
        #: When each connected worker last answered in time (``_alive_until``; a copy hedged
        #: after that is slow, not silent: it is replaced, not struck). A late answer is no
        #: sign of life: one that holds every task past its hedge would never be struck.
        self._last_answer: dict[bytes, float] = {}
        #: Copies cancelled while out (their task ended), the most recent ``_CANCELLED``:
        #: wire id -> (worker, until when an answer to it still shows the worker alive). A
        #: worker finishes a copy it was already running, and that answer is a sign of life
        #: (the simulator, 1,000 peers: without it twice the strikes on honest workers).
        self._cancelled: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self._effects: list[Effect] = []

    # ------------------------------------------------------------------ queries

    def poll_effects(self) -> list[Effect]:
        out, self._effects = self._effects, []
        return out

    def next_deadline(self) -> float | None:
        while self._deadlines:
            when, _, tag, key = self._deadlines[0]
            if tag == "task":
                if key in self._tasks:
                    return when
            elif tag == "probe":
                copy = self._copies.get(key)
                if copy is not None and copy.live:
                    return when
            else:
                copy = self._copies.get(key)
                if copy is not None and copy.live and copy.hedge_at == when:
                    return when
                heapq.heappop(self._deadlines)
                self._hedge_due(copy, when)  # re-queues a moved one
                continue
            heapq.heappop(self._deadlines)
        return None

    def pending(self) -> int:
        return len(self._tasks)

    def known_answers(self) -> int:
        return len(self._known)

    def known_kinds(self) -> dict[str, int]:
        """Known answers held per kind."""
        return {kind: len(lst) for kind, lst in sorted(self._known_by_kind.items()) if lst}

    def workers(self) -> list[bytes]:
        return sorted(self._workers)

    def idle_workers(self, now: float, idle_s: float, keep: Collection[bytes] = ()) -> list[bytes]:
        """Connected workers the shell may disconnect (then call ``on_worker_down``), sorted.

        A worker is idle when no copy (task or probe) is in flight on it and none was sent
        to it, answered or failed for ``idle_s`` seconds; a banned worker with nothing in
        flight is idle at once (it gets no copies until its ban ends). ``keep`` names the
        workers the shell still needs (e.g. those it holds placement leases on).

        Why: the connected set is the pool duplicates, probes and replacements are drawn
        from, and a gamer that never closes the links of workers it no longer leases ends
        up connected to every worker the coordinator ever handed it (100-160 per gamer
        after a few simulated minutes at 1,000 peers), many of them far away or banned.
        Reconnecting later costs a join probe (``join_probes``), as for any new link.
        """
        rep = self.reputation
        cutoff = now - idle_s
        out: list[bytes] = []
        for w in sorted(self._workers):
            if w in keep or self._live.get(w):
                continue
            if self._last_active.get(w, -math.inf) <= cutoff or rep.is_banned(w, now):
                out.append(w)
        return out

    # ------------------------------------------------------------------ workers

    def on_worker_up(self, worker: bytes, now: float) -> None:
        new = worker not in self._workers
        self._workers.add(worker)
        self._inflight.setdefault(worker, 0)
        if new:
            self._elig_version = -1
            self._last_active[worker] = now
        if new and not self.reputation.is_banned(worker, now):
            for _ in range(self.config.join_probes):
                self._probe(worker, None, now + self.config.join_probe_budget_s, now)

    def on_worker_down(self, worker: bytes, now: float) -> None:
        """Forget ``worker``; its copies fail here (the shell need not report them)."""
        if worker in self._workers:
            self._workers.discard(worker)
            self._elig_version = -1
        self._strikes.pop(worker, None)
        self._last_strike.pop(worker, None)
        self._last_answer.pop(worker, None)
        self._wlatency.pop(worker, None)
        self._backlog.pop(worker, None)
        self._fail_worker(worker, UnavailableError("worker went away"), now)
        if not self._inflight.get(worker):
            self._inflight.pop(worker, None)
        self._last_active.pop(worker, None)

    def ban(self, worker: bytes, now: float, reason: str, evidence: Evidence | None = None) -> None:
        """Ban ``worker`` on outside information (e.g. gossiped evidence the shell verified)."""
        self.reputation.ban(worker, now, evidence)
        self.stats.bans += 1
        self._emit(Penalise(worker, reason, None, True))
        self._after_ban(worker, now)

    # ------------------------------------------------------------------ tasks

    def on_submit(self, task: Task, now: float) -> None:
        c = self.config
        self.stats.submitted += 1
        if task.task_id in self._tasks:
            raise ValueError("task id already pending")
        try:
            norm, estimate = self._normalise(task.kind, task.params, len(task.data))
        except ValidationError as exc:
            self._reject_new(task, exc)
            return
        if len(self._tasks) >= c.max_pending:
            self._reject_new(task, UnavailableError("too many tasks awaiting verification"))
            return
        if task.deadline <= now:
            self._reject_new(task, TaskTimeoutError("deadline already passed"))
            return
        primary = self._pick_primary(task.kind, now)
        if primary is None:
            self._reject_new(task, UnavailableError("no worker is available"))
            return
        trust = self.reputation.trust(primary, now)
        need = 2 if self.rng.random() < c.p_dup(trust) else 1
        rec = self.reputation.record(primary)
        if (rec.verified if rec is not None else 0) < c.dup_until_verified:
            need = 2
        t = _Task(task, norm, need, self.reputation.ban_version, estimate)  # no answers yet
        self._tasks[task.task_id] = t
        heapq.heappush(self._deadlines, (task.deadline, next(self._seq), "task", task.task_id))
        self._send(t, primary, Role.PRIMARY, now)
        if need == 2:
            partner = self._pick_partner(t, now)
            if partner is None:
                if c.allow_unconfirmed:
                    t.need = 1
                    self.stats.unconfirmed += 1
            else:
                self._send(t, partner, Role.DUPLICATE, now)
        if self.rng.random() < c.p_probe(trust):
            self._probe(primary, task.kind, task.deadline, now)

    def _normalise(
        self, kind: str, params: Mapping[str, Any], data_len: int
    ) -> tuple[dict[str, Any], float | None]:
        """``registry.get(kind).validate_params(params, data_len)`` (a copy each time) and
        the task's run-time estimate, memoised. Values are keyed with their type, so ``1``,
        ``1.0`` and ``True`` stay apart; parameters that cannot be hashed are validated
        every time."""
        key: tuple[Any, ...] | None = (
            kind,
            data_len,
            tuple(params.items()),
            tuple(map(type, params.values())),
        )
        try:
            memo = self._norms.get(key)  # type: ignore[arg-type]
        except TypeError:  # an unhashable value: validate (and most likely refuse) it
            key, memo = None, None
        if memo is None:
            norm = self.registry.get(kind).validate_params(params, data_len)
            memo = (norm, self._estimate(kind, norm, data_len))
            if key is not None:
                if len(self._norms) >= 256:
                    self._norms.clear()
                self._norms[key] = memo
        return dict(memo[0]), memo[1]

    def _estimate(self, kind: str, norm: Mapping[str, Any], data_len: int) -> float | None:
        """A task's run time in seconds on one reference core, from the kind's cost model
        (work units, ~ms). It sets the hedge delay while no latency of the kind is known:
        without it a 16 s path-tracing tile was hedged after ``hedge_min_s``, and so was
        every replacement, so the first tiles struck (and banned as unresponsive) honest
        workers in a cascade, while the measured latency, capped at the hedge delay, grew
        only 4x per round."""
        cost = self._cost(kind, norm, data_len)
        return cost / 1000.0 if cost is not None and cost > 0 else None

    def _cost(self, kind: str, norm: Mapping[str, Any], data_len: int) -> float | None:
        """The kind's cost model (work units), ``None`` when it cannot be made or is not
        finite (the kind's own code: whatever it raises means "no estimate")."""
        try:
            cost = float(self.registry.get(kind).cost(dict(norm), data_len))
        except Exception:
            return None
        return cost if math.isfinite(cost) else None

    def on_result(
        self,
        wire_id: bytes,
        worker: bytes,
        output: bytes,
        now: float,
        *,
        ts_ms: int = 0,
        signature: bytes = b"",
        digest: bytes | None = None,
    ) -> None:
        """A result whose signature and task binding the shell has already verified.

        ``digest``: the output's digest when the shell already has it (it checked the
        receipt against it); the core hashes the output itself otherwise. Hashing a 1 MiB
        output again cost the gamer's event loop ~1.3-1.5 ms per result here."""
        copy = self._copies.get(wire_id)
        if copy is None or copy.worker != worker or not copy.live:
            self.stats.late += 1
            gone = self._cancelled.pop(wire_id, None)
            if gone is not None and gone[0] == worker and now <= gone[1] and worker in self._workers:
                self._last_answer[worker] = now
            return
        if worker in self._workers and (now <= copy.hedge_at or now <= self._alive_until(copy)):
            self._last_answer[worker] = now
        self._retire(copy)
        if worker in self._last_active:
            self._last_active[worker] = now
        if self.reputation.is_banned(worker, now):
            self._copy_failed(copy, VerificationError("worker is banned"), now)
            return
        self._observe_latency(copy, now)
        if digest is None:
            digest = wire.digest(output)
        signed = SignedResult(wire_id, worker, digest, ts_ms, signature, output)
        answer = _Answer(copy, output, digest, signed)
        if copy.known is not None:
            known = copy.known
            if digest == known.digest:
                self._probe_verdict(answer, True, now)
            else:
                self._run_check("probe", answer, None, known.kind, known.norm, known.data, known.output)
            return
        t = copy.task
        assert t is not None
        t.answers.append(answer)
        if not self.config.self_check:
            answer.self_ok = True
            t.queue.append(answer)
            self._advance(t, now)
            return
        self._run_check("self", answer, t, t.task.kind, t.norm, t.task.data, None)

    def on_failure(self, wire_id: bytes, worker: bytes, error: P2C2RError, now: float) -> None:
        """A copy ended without a usable result (error reply, lost link, bad signature).

        A ``VerificationError`` here means a bad signature on a stream the handshake
        authenticated as ``worker``: only that peer could have sent it, so it is banned
        locally (without evidence: a bad signature proves nothing to anyone else).
        """
        copy = self._copies.get(wire_id)
        if copy is None or copy.worker != worker or not copy.live:
            self.stats.late += 1
            return
        self._retire(copy)
        if worker in self._last_active:
            self._last_active[worker] = now
        if isinstance(error, VerificationError):
            self.reputation.ban(worker, now)
            self.stats.bans += 1
            self._emit(Penalise(worker, "bad_signature", None, True))
            self._copy_failed(copy, error, now)
            self._after_ban(worker, now)
            return
        self._copy_failed(copy, error, now)

    def on_check(self, check_id: int, ok: bool, now: float) -> None:
        chk = self._checks.pop(check_id, None)
        if chk is None:
            return
        a, t = chk.answer, chk.task
        if chk.purpose == "probe":
            self._probe_verdict(a, ok, now)
            return
        assert t is not None
        t.checks -= 1
        if t.done:
            return
        if chk.purpose == "self":
            a.self_ok = ok
            if a not in t.answers:
                pass  # its worker was banned meanwhile; the answer is already forgotten
            elif not ok:
                self.stats.self_check_failures += 1
                t.answers.remove(a)
                self._catch(a, t.task, t.norm, "self_check", None, now)
            else:
                t.queue.append(a)
        elif chk.purpose == "recompute":
            t.recomputing -= 1
            a.recomputed = ok
            group = next((g for g in t.groups if a in g), None)
            if ok and group is not None:
                self._accept(t, group, now, proven=True)
                return
            if group is not None:
                t.groups.remove(group)
                ref = next((g[0].signed for g in t.groups if g[0].recomputed), None)
                for bad in group:
                    self._catch(bad, t.task, t.norm, "recomputed", ref, now)
        else:
            assert t.comparing is not None
            cand, idx = t.comparing
            t.comparing = None
            if ok:
                t.groups[idx].append(cand)
            else:
                self._group_from(t, cand, idx + 1)
        if not t.done:
            self._advance(t, now)

    def on_cancel(self, task_id: bytes, now: float) -> None:
        t = self._tasks.get(task_id)
        if t is not None:
            self._finish(t)

    def on_tick(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            when, _, tag, key = heapq.heappop(self._deadlines)
            if tag == "hedge":
                copy = self._copies.get(key)
                if self._hedge_due(copy, when):
                    assert copy is not None
                    self._hedge(copy, now)
                continue
            if tag == "probe":
                copy = self._copies.get(key)
                if copy is not None and copy.live:
                    self.stats.probe_timeouts += 1
                    self._retire(copy)
                    del self._copies[key]
                    self._emit(Cancel(copy.worker, key))
                continue
            t = self._tasks.get(key)
            if t is not None and t.task.deadline <= now:
                self.stats.timeouts += 1
                err: P2C2RError
                if t.answers or t.groups:
                    err = VerificationTimeoutError(
                        f"{t.task.kind} task {key.hex()[:8]}: deadline passed before its result was confirmed"
                    )
                else:
                    err = TaskTimeoutError(f"{t.task.kind} task {key.hex()[:8]} missed its deadline")
                self._reject(t, err)

    # ------------------------------------------------------------------ known answers

    def add_known_answer(
        self,
        kind: str,
        params: Mapping[str, Any],
        data: bytes,
        output: bytes,
        now: float,
        reference: SignedResult | None = None,
        workers: frozenset[bytes] = frozenset(),
    ) -> bool:
        """Store a verified answer for probes (e.g. one the gamer computed itself)."""
        c = self.config
        if len(data) + len(output) > c.known_answer_max_bytes or c.known_answers <= 0:
            return False
        try:
            norm, estimate = self._normalise(kind, params, len(data))
        except ValidationError:
            return False
        p = dict(params)
        key = (kind, wire.params_digest(p), wire.digest(data))
        if key in self._known:
            return False
        known = _Known(kind, p, norm, data, output, wire.digest(output), reference, workers, estimate)
        self._known[key] = known
        self._known_bytes += len(data) + len(output)
        known.pos_all = len(self._known_all)
        self._known_all.append(known)
        same = self._known_by_kind.setdefault(kind, [])
        known.pos_kind = len(same)
        same.append(known)
        while len(self._known) > c.known_answers or self._known_bytes > c.known_answers_total_bytes:
            _, old = self._known.popitem(last=False)
            self._known_bytes -= len(old.data) + len(old.output)
            self._unindex_known(old)
        return True

    def _unindex_known(self, known: _Known) -> None:
        """Drop an evicted answer from the probe indexes (swap with the last, O(1))."""
        lst = self._known_all
        last = lst.pop()
        if last is not known:
            lst[known.pos_all] = last
            last.pos_all = known.pos_all
        same = self._known_by_kind[known.kind]
        last = same.pop()
        if last is not known:
            same[known.pos_kind] = last
            last.pos_kind = known.pos_kind
        if not same:
            del self._known_by_kind[known.kind]

    # ------------------------------------------------------------------ placement

    def _eligible(self, now: float) -> list[bytes]:
        """Connected, unbanned workers in sorted order (do not modify the list).

        Kept between calls instead of asking the reputation about every connected worker
        for every copy: bans are events (``Reputation.ban_version``) and their ends are
        times, so the list is rebuilt only when a ban starts, the connected set changes or
        the earliest ban of a connected worker ends."""
        if self._elig_version != self.reputation.ban_version or not self._elig_from <= now < self._elig_until:
            rep = self.reputation
            elig: list[bytes] = []
            until = math.inf
            for w in sorted(self._workers):
                end = rep.ban_end(w)
                if end > now:
                    until = min(until, end)
                else:
                    elig.append(w)
            self._elig = elig
            self._elig_set = frozenset(elig)
            self._elig_version = rep.ban_version
            self._elig_from = now
            self._elig_until = until
        return self._elig

    def _eligible_besides(self, now: float, taken: set[bytes]) -> bool:
        """Whether an eligible worker exists outside ``taken``."""
        elig = self._eligible(now)
        return len(elig) > sum(1 for w in taken if w in self._elig_set)

    def _sample(self, now: float, taken: set[bytes]) -> list[bytes]:
        """Eligible workers outside ``taken``: all of them up to ``placement_sample``, else
        that many consecutive ones in peer-id order from a seeded random offset (wrapping
        around), so that the weighted choice that follows costs O(sample) however many
        workers are connected. Peer ids are key hashes, so id order says nothing about a
        worker and each one is in the window with the same probability."""
        elig = self._eligible(now)
        n = len(elig)
        k = self.config.placement_sample
        if n > k > 0:
            i = self.rng.randrange(n)
            window = elig[i : i + k] if i + k <= n else elig[i:] + elig[: i + k - n]
            cands = [w for w in window if w not in taken]
            if cands:
                return cands
        return [w for w in elig if w not in taken]

    def _in_flight_if_eligible(self, worker: bytes) -> int | None:
        """``lease_placer``'s view of a worker (the eligible set is current while it runs)."""
        return self._inflight.get(worker, 0) if worker in self._elig_set else None

    def _pick_primary(self, kind: str, now: float) -> bytes | None:
        c = self.config
        elig = self._eligible(now)
        if not elig:
            return None
        if self.lease_placer is not None:
            chosen = self.lease_placer(kind, self._in_flight_if_eligible)
            if chosen is not None and chosen in self._elig_set:
                return chosen
        elif self.placer is not None:
            chosen = self.placer(
                kind, list(zip(elig, map(self._inflight.get, elig, itertools.repeat(0)), strict=True))
            )
            if chosen is not None and chosen in self._elig_set:
                return chosen
        cands = self._sample(now, set())
        weights = [
            (c.primary_trust_floor + self.reputation.trust(w, now)) / (1 + self._inflight.get(w, 0))
            for w in cands
        ]
        return self.rng.choices(cands, weights=weights)[0]

    def _pick_partner(self, t: _Task, now: float) -> bytes | None:
        """A worker for another copy of ``t``: weight (floor + trust)**bias / (1 + copies in
        flight), drawn from a sample of the eligible workers not holding a copy yet.

        Latency counts too (the simulator sent two thirds of frame duplicates to another
        region: partners were picked by trust alone among every connected worker): with an
        expected answer time ``est`` (the worker's own measured latency for the kind, else
        the shell's ``rtt_estimate``), a worker that cannot answer within the time left is
        dropped while any other can, and the rest are weighted by ``left / (left + est)``.
        A worker that announced a queue for the kind (``on_queued``) adds what is left of
        it to ``est``: a copy sent there waits behind it (without this, replacements of
        tiles queued past their cap went to workers just as backlogged: the simulator's
        reference load missed 3.5-5 % of tiles, against 0.7-1.0 % with it)."""
        c = self.config
        cands = self._sample(now, {cp.worker for cp in t.copies})
        if not cands:
            return None
        trust = self.reputation.trust
        inflight = self._inflight
        wlatency = self._wlatency
        backlog = self._backlog
        rtt = self.rtt_estimate
        left = t.task.deadline - now
        kind = t.task.kind
        floor, bias = c.partner_trust_floor, c.partner_trust_bias
        weights: list[float] = []
        timely: list[bytes] = []
        timely_w: list[float] = []
        for w in cands:
            wt = (floor + trust(w, now)) ** bias / (1 + inflight.get(w, 0))
            weights.append(wt)
            # The expected answer time (inline: this loop runs for every duplicate).
            own = wlatency.get(w)
            est = own.get(kind) if own is not None else None
            if est is None and rtt is not None:
                est = rtt(w)
            queued = backlog.get(w)
            queue_end = queued.get(kind) if queued is not None else None
            if queue_end is not None and queue_end > now:
                est = queue_end - now + (est or 0.0)
            if est is None:
                timely.append(w)
                timely_w.append(wt)
            elif est < left:
                timely.append(w)
                timely_w.append(wt * left / (left + est))
        if timely:  # without any latency known this is exactly the trust-weighted choice
            return _weighted_choice(self.rng, timely, timely_w)
        return _weighted_choice(self.rng, cands, weights)

    def _new_wire_id(self) -> bytes:
        while True:
            wid = self.rng.randbytes(wire.TASK_ID_LEN)
            if wid not in self._copies and wid not in self._tasks:
                return wid

    def _hedge_time(
        self,
        kind: str,
        now: float,
        deadline: float,
        ahead: int = 0,
        worker: bytes | None = None,
        estimate: float | None = None,
    ) -> float:
        """When a copy sent now is overdue: ``hedge_factor`` times the kind's recent latency,
        once more for each copy already waiting on the same worker (``ahead``), so a worker
        that is merely busy with our own earlier tasks is not taken for a silent one (the
        demo banned an honest worker as "unresponsive" that way, under load); capped at
        ``hedge_max_fraction`` of the budget, so a silent worker is still caught in time.
        The latency is the worker's own for the kind once known (a CPU peer is not judged by
        the pace of GPU peers: the simulator saw hundreds of honest CPU workers banned as
        unresponsive that way), else the larger of the kind's and the task's run-time
        ``estimate`` (the kind's cost model): a worker of unknown pace is given the benefit
        of the doubt, and a kind nobody answered yet is not hedged at ``hedge_min_s``
        whatever its size."""
        c = self.config
        if not c.hedge:
            return math.inf
        delay = self._hedge_delay(self._pace(kind, worker, estimate), ahead)
        cap = c.hedge_max_fraction * (deadline - now)
        if cap < c.hedge_min_s:
            return math.inf
        return now + min(delay, cap)

    def _hedge_delay(self, pace: float | None, ahead: int = 0) -> float:
        """``hedge_factor`` x the copy's expected run time, once more per copy ahead of it
        on the same worker, at least ``hedge_min_s`` (``hedge_min_s`` when unknown)."""
        c = self.config
        return max(c.hedge_min_s, c.hedge_factor * pace * (1 + ahead)) if pace is not None else c.hedge_min_s

    def _pace(self, kind: str, worker: bytes | None, estimate: float | None) -> float | None:
        """How long a copy of ``kind`` should run: ``worker``'s own latency for the kind
        once known, else the larger of the kind's and the task's ``estimate``."""
        own = self._wlatency.get(worker) if worker is not None else None
        est = own.get(kind) if own is not None else None
        if est is None:
            est = self._latency.get(kind)
            if estimate is not None and (est is None or estimate > est):
                est = estimate
        return est

    def _track(self, copy: _Copy, now: float) -> None:
        self._copies[copy.wire_id] = copy
        worker = copy.worker
        ahead = self._inflight.get(worker, 0)
        self._inflight[worker] = ahead + 1
        live = self._live.get(worker)
        if live is None:
            live = self._live[worker] = {}
        live[copy.wire_id] = None
        if worker in self._workers:
            self._last_active[worker] = now
        copy.ahead = ahead
        self._arm_hedge(copy, now)

    def _arm_hedge(self, copy: _Copy, now: float) -> None:
        """Start ``copy``'s clock at ``now``: its latency and hedge time count from here."""
        copy.sent_at = now
        kind, estimate = _kind_of(copy)
        old = copy.hedge_at
        copy.hedge_at = self._hedge_time(kind, now, copy.deadline, copy.ahead, copy.worker, estimate)
        # A hedge moved later keeps its heap entry, which re-queues itself when it comes up
        # (``_hedge_due``): most copies are answered before then, and it is never pushed.
        if copy.hedge_at < old:
            heapq.heappush(self._deadlines, (copy.hedge_at, next(self._seq), "hedge", copy.wire_id))

    def _hedge_due(self, copy: _Copy | None, when: float) -> bool:
        """Whether the heap entry ``when`` of a hedge is ``copy``'s current one; an entry
        its copy's clock has moved past (``on_sent``) re-queues the copy at its new time."""
        if copy is None or not copy.live or copy.hedge_at < when:
            return False
        if copy.hedge_at > when:
            if copy.counted and copy.hedge_at < math.inf:  # not hedged yet
                heapq.heappush(self._deadlines, (copy.hedge_at, next(self._seq), "hedge", copy.wire_id))
            return False
        return True

    def on_sent(self, wire_id: bytes, now: float) -> None:
        """The copy ``wire_id`` left the gamer (the transport took its bytes) at ``now``.

        Its hedge clock and measured latency restart here: the time it spent queued behind
        the gamer's own uplink is not the worker's. Without this call they count from the
        ``SendTo``/``Probe`` effect, and a gamer whose uplink is saturated hedges, strikes
        and in the end bans honest workers for its own backlog (the simulator saw upscale
        probes wait ~1 s behind a gamer's frames and strike their workers at a 0.5 s hedge).
        Optional: a shell that cannot tell when bytes leave simply never calls it. A copy
        whose hedge already fired keeps it (its replacement is out)."""
        copy = self._copies.get(wire_id)
        if copy is None or not copy.live or not copy.counted or copy.queued or now <= copy.sent_at:
            return
        self._arm_hedge(copy, now)

    def on_queued(self, wire_id: bytes, worker: bytes, wait_s: float, now: float) -> None:
        """``worker`` took copy ``wire_id`` and says it waits about ``wait_s`` seconds for a
        slot, behind work the gamer cannot see (other gamers' tasks; wire frame ``"Q"``).

        The copy's hedge then counts from when it should start, not from the send, still
        capped at ``hedge_max_fraction`` of the budget (the point that leaves a replacement
        time to finish), and never earlier than it was; and a hedge before the announced
        start plus the copy's run time strikes nobody: a worker busy with others' work is
        not a silent one (the simulator, 1,000 peers: nearly every strike left was a
        path-tracing tile queued behind other gamers' tiles, hedged at half its budget and
        struck). A notice is not an answer: a worker that announces a short wait and then
        stays silent is still hedged, and struck, at the hedge counted from the start it
        announced.

        A copy that cannot be done before its cap is not replaced at once: the simulator
        tried, and with batch work queued on every worker each replacement was announced
        as queued too, and replaced again, up to ``max_sends`` (4.6x the hedges)."""
        c = self.config
        copy = self._copies.get(wire_id)
        if (
            copy is None
            or copy.worker != worker
            or not copy.live
            or not copy.counted  # hedged already
            or copy.queued
            or not c.hedge
            or not 0.0 <= wait_s < math.inf
        ):
            return
        self.stats.queued += 1
        kind, estimate = _kind_of(copy)
        start = now + wait_s
        cap_at = copy.sent_at + c.hedge_max_fraction * (copy.deadline - copy.sent_at)
        pace = self._pace(kind, worker, estimate)
        copy.due = start + (pace or 0.0)
        if worker in self._workers:
            queued = self._backlog.setdefault(worker, {})
            if copy.due > queued.get(kind, -math.inf):
                queued[kind] = copy.due
        if copy.due > cap_at:
            self.stats.queued_past_cap += 1
        at = min(start + self._hedge_delay(pace), cap_at)
        if at > copy.hedge_at:
            copy.hedge_at = at  # the old heap entry re-queues it when it comes up

    def _send(self, t: _Task, worker: bytes, role: Role, now: float) -> None:
        wid = self._new_wire_id()
        copy = _Copy(wid, worker, t.task.deadline, role, task=t)
        t.copies.append(copy)
        self._track(copy, now)
        self.stats.sends[role.value] += 1
        tk = t.task
        self._emit(SendTo(worker, wid, tk.kind, tk.params, tk.data, tk.deadline, role, tk.task_id))

    #: Cancelled copies remembered (``_cancelled``): minutes of a game's cancels.
    _CANCELLED = 4096

    #: Up to this many known answers a probe's choice scans them all (exactly uniform over
    #: those ``worker`` did not compute); above, it draws at random, a few times at most.
    _PROBE_SCAN = 32
    _PROBE_DRAWS = 4

    def _pick_known(self, worker: bytes, kind: str | None) -> _Known | None:
        """A known answer (of ``kind``, or any) for a probe of ``worker``, preferably one it
        did not compute."""
        same = self._known_all if kind is None else self._known_by_kind.get(kind, [])
        if len(self._known) <= self._PROBE_SCAN:
            # Insertion order, as the store keeps it (the indexes are reordered by evictions).
            small = [k for k in self._known.values() if kind is None or k.kind == kind]
            pool = [k for k in small if worker not in k.workers] or small
            return pool[self.rng.randrange(len(pool))] if pool else None
        if not same:
            return None
        known = same[0]
        for _ in range(self._PROBE_DRAWS):
            known = same[self.rng.randrange(len(same))]
            if worker not in known.workers:
                break
        return known

    def _probe(self, worker: bytes, kind: str | None, deadline: float, now: float) -> None:
        known = self._pick_known(worker, kind)
        if known is None:
            return
        wid = self._new_wire_id()
        copy = _Copy(wid, worker, deadline, None, known=known)
        self._track(copy, now)
        heapq.heappush(self._deadlines, (deadline, next(self._seq), "probe", wid))
        self.stats.probes += 1
        self._emit(Probe(worker, wid, known.kind, known.params, known.data, deadline))

    def _retire(self, copy: _Copy) -> None:
        if copy.live:
            copy.live = False
            self._uncount(copy)
            live = self._live.get(copy.worker)
            if live is not None:
                live.pop(copy.wire_id, None)
                if not live:
                    del self._live[copy.worker]

    def _uncount(self, copy: _Copy) -> None:
        if copy.counted:
            copy.counted = False
            self._inflight[copy.worker] = max(0, self._inflight.get(copy.worker, 0) - 1)

    # ------------------------------------------------------------------ latency, hedging, strikes

    def _observe_latency(self, copy: _Copy, now: float) -> None:
        if copy.queued:
            # Its latency is mostly a queue of other gamers' work, not the worker's pace.
            if now <= copy.hedge_at:
                self._strikes.pop(copy.worker, None)
                self._last_strike.pop(copy.worker, None)
            return
        kind, estimate = _kind_of(copy)
        # Capped at the hedge delay, so slow workers cannot drag the estimate (and with
        # it the point where they get hedged) up without bound.
        lat = max(0.0, now - copy.sent_at)
        if copy.hedge_at < math.inf:
            lat = min(lat, copy.hedge_at - copy.sent_at)
        own = self._wlatency.get(copy.worker)
        if own is None:
            if copy.worker not in self._workers:
                own = {}  # answered after its link went down: nothing kept for it
            else:
                own = self._wlatency[copy.worker] = {}
        old = own.get(kind)
        pace = lat if old is None else 0.8 * old + 0.2 * lat
        kind_lat = self._latency.get(kind)
        if kind_lat is None:
            self._latency[kind] = lat
        else:
            # A worker slower than ``max_slowdown`` x the kind is held there, and its answers
            # do not move the kind's pace (three slow workers in ten would drag it up).
            limit = self._slowest_pace(kind, estimate)
            if pace > limit:
                pace = limit
            else:
                self._latency[kind] = 0.8 * kind_lat + 0.2 * lat
        own[kind] = pace
        if now <= copy.hedge_at:
            self._strikes.pop(copy.worker, None)
            self._last_strike.pop(copy.worker, None)

    def _alive_until(self, copy: _Copy) -> float:
        """Until when an answer to ``copy`` shows its worker is alive: its hedge time, or
        later, the hedge delay of the slowest pace believed for its kind (``max_slowdown``)
        from the send or, for a queued copy, from its announced start plus run time. The
        second keeps honest workers alive whose copies were hedged early by the budget cap
        (deep queues of our own tiles); a worker that holds every task is not."""
        slowest = self._slowest_pace(*_kind_of(copy))
        if slowest <= 0.0:
            return math.inf  # nothing to judge it by
        since = copy.due if copy.queued else copy.sent_at
        return max(copy.hedge_at, since + self._hedge_delay(slowest, copy.ahead))

    def _slowest_pace(self, kind: str, estimate: float | None) -> float:
        """The slowest pace believed for ``kind``: ``max_slowdown`` x the larger of its
        recent latency over all workers and the task's cost-model ``estimate`` (0: neither
        is known)."""
        return self.config.max_slowdown * max(self._latency.get(kind, 0.0), estimate or 0.0)

    def _hedge(self, copy: _Copy, now: float) -> None:
        """``copy`` is still unanswered at its hedge time: the task gets a replacement, and
        the worker a strike unless it answered something in time since the copy was sent.
        Such a worker is busy, not silent (for instance with a queue of our own pipelined
        batch tiles, whose later ones outlast the hedge cap): the simulator saw hundreds of
        honest workers banned as unresponsive that way. Nor is one whose worker said the
        copy waits behind other work and cannot be done yet (``on_queued``)."""
        if not self._eligible_besides(now, {copy.worker}):
            return  # the only worker: waiting is all there is
        self._uncount(copy)
        strikes = self._strikes.get(copy.worker, 0)
        last = self._last_strike.get(copy.worker)
        # Busy, not silent, when it answered in time since the copy was sent. A probe never
        # strikes: nobody waits on it, and it is sent on top of real work, often of the
        # slowest kind (the simulator, 1,000 peers: 46 % of all strikes, nearly all on
        # honest CPU workers running a path-tracing probe or with it queued behind other
        # gamers' tiles). A worker cannot tell a probe from a task, so a silent one is
        # struck on its tasks.
        silent = (
            copy.known is None
            and now >= copy.due
            and self._last_answer.get(copy.worker, -math.inf) < copy.sent_at
        )
        if silent and (last is None or now - last >= self.config.strike_interval_s):
            self.stats.strikes += 1
            self.reputation.record_fault(copy.worker, now)
            strikes = self._strikes[copy.worker] = strikes + 1
            self._last_strike[copy.worker] = now
        t = copy.task
        if t is not None and not t.done:
            t.owed += 1
            self.stats.hedges += 1
            self._advance(t, now)
        if 0 < self.config.strikes_to_ban <= strikes and not self.reputation.is_banned(copy.worker, now):
            self.reputation.ban(copy.worker, now, duration_s=self.config.unresponsive_ban_s)
            self.stats.bans += 1
            self._emit(Penalise(copy.worker, "unresponsive", None, True))
            self._after_ban(copy.worker, now)

    # ------------------------------------------------------------------ checking

    def _run_check(
        self,
        purpose: str,
        answer: _Answer,
        t: _Task | None,
        kind: str,
        norm: dict[str, Any],
        data: bytes,
        reference: bytes | None,
        recompute: bool = False,
    ) -> None:
        cid = next(self._check_ids)
        self._checks[cid] = _Check(purpose, answer, t)
        if t is not None:
            t.checks += 1
        self._emit(RunCheck(cid, kind, norm, data, answer.output, reference, recompute))

    def _probe_verdict(self, a: _Answer, ok: bool, now: float) -> None:
        known = a.copy.known
        assert known is not None
        self._copies.pop(a.copy.wire_id, None)
        if ok:
            self.stats.probes_passed += 1
            self.reputation.record_verified(a.copy.worker, now)
            return
        self.stats.probes_failed += 1
        tk = Task(b"", known.kind, known.params, known.data, a.copy.deadline)
        self._catch(a, tk, known.norm, "probe", known.reference, now)

    def _group_from(self, t: _Task, a: _Answer, start: int) -> None:
        """Place ``a`` in the first equivalent group from ``start``, or start a new one."""
        for idx in range(start, len(t.groups)):
            rep = t.groups[idx][0]
            if rep.digest == a.digest:
                t.groups[idx].append(a)
                return
            t.comparing = (a, idx)
            self._run_check("compare", a, t, t.task.kind, t.norm, t.task.data, rep.output)
            return
        t.groups.append([a])

    def _recomputable(self, t: _Task) -> bool:
        return self.cheap_to_rerun(t.task.kind, t.norm, len(t.task.data))

    def cheap_to_rerun(self, kind: str, norm: Mapping[str, Any], data_len: int) -> bool:
        """Whether the gamer may run this task itself (disputes, anchors)."""
        c = self.config
        if c.recompute_max_cost < 0 or data_len > c.recompute_max_bytes:
            return False
        cost = self._cost(kind, norm, data_len)  # none: treated as too expensive
        return cost is not None and cost <= c.recompute_max_cost

    def _advance(self, t: _Task, now: float) -> None:
        if t.comparing is None:
            self._drop_banned(t, now)
        while t.comparing is None and t.queue:
            self._group_from(t, t.queue.popleft(), 0)
        if t.comparing is not None or t.done:
            return
        if t.recomputing:
            return
        if len(t.groups) >= 2 and self._recomputable(t):
            # A dispute: re-run the kernel here on each side's representative.
            for g in t.groups:
                if g[0].recomputed is None:
                    g[0].recomputed = False  # asked; the verdict overwrites it
                    t.recomputing += 1
                    self.stats.recomputes += 1
                    self._run_check("recompute", g[0], t, t.task.kind, t.norm, t.task.data, None, True)
            if t.recomputing:
                return
        best = max(t.groups, key=len, default=[])
        if len(best) >= t.need:
            self._accept(t, best, now)
            return
        missing = t.need - len(best)
        coming = t.in_flight() + t.pending_answers()
        live_unhedged = sum(1 for cp in t.copies if cp.live and cp.hedge_at > now)
        role = Role.TIEBREAK if len(t.groups) >= 2 else (Role.DUPLICATE if t.groups else Role.PRIMARY)
        want = max(missing - (coming - t.in_flight()) - live_unhedged, 0)
        # A failed or hedged copy is owed a replacement; hedged copies still count as
        # coming (they may answer), so they are replaced on top of what is missing.
        sent = 0
        while sent < want and self._can_send(t, now):
            worker = self._pick_partner(t, now)
            if worker is None:
                break
            self._send(t, worker, Role.REPLACEMENT if t.owed > 0 else role, now)
            t.owed = max(0, t.owed - 1)
            sent += 1
        coming += sent
        if coming == 0:
            if (
                len(t.groups) == 1
                and self.config.allow_unconfirmed
                and not self._eligible_besides(now, {cp.worker for cp in t.copies})
            ):
                # Nobody else to ask: resolve on the self-check alone, at lower assurance.
                self.stats.unconfirmed += 1
                self._accept(t, best, now)
            elif t.last_error is not None and not t.groups:
                self._reject(t, t.last_error)
            else:
                self._reject(
                    t,
                    VerificationIncompleteError(
                        f"{t.task.kind} task {t.task.task_id.hex()[:8]}: could not confirm its result "
                        f"({len(t.groups)} disagreeing answer group(s), no worker or send left)"
                    ),
                )

    def _drop_banned(self, t: _Task, now: float) -> None:
        """Forget answers from workers banned since they answered (an answer from a banned
        worker is refused on arrival, so only a ban started since the last look can apply)."""
        rep = self.reputation
        if t.ban_seen == rep.ban_version:
            return
        t.ban_seen = rep.ban_version
        if not any(rep.is_banned(a.copy.worker, now) for a in t.answers):
            return
        t.answers = [a for a in t.answers if not rep.is_banned(a.copy.worker, now)]
        t.queue = deque(a for a in t.queue if not rep.is_banned(a.copy.worker, now))
        groups = [[a for a in g if not rep.is_banned(a.copy.worker, now)] for g in t.groups]
        t.groups = [g for g in groups if g]

    def _can_send(self, t: _Task, now: float) -> bool:
        c = self.config
        return (
            len(t.copies) < c.max_sends
            and t.failures < c.max_failures
            and t.task.deadline - now > c.min_send_budget_s
        )

    def _accept(self, t: _Task, best: list[_Answer], now: float, proven: bool = False) -> None:
        c = self.config
        winner = best[0]
        trust = {a.copy.worker: self.reputation.trust(a.copy.worker, now) for a in best}
        top = max(trust.values())
        if len(best) >= 2 or proven:
            for a in best:
                others = [v for w, v in trust.items() if w != a.copy.worker]
                # A local re-run is the strongest confirmation there is: weight 1.
                self.reputation.record_verified(a.copy.worker, now, weight=1.0 if proven else max(others))
            if top >= c.known_answer_trust or proven:
                self.add_known_answer(
                    t.task.kind,
                    t.task.params,
                    t.task.data,
                    winner.output,
                    now,
                    reference=max(best, key=lambda a: trust[a.copy.worker]).signed,
                    workers=frozenset(trust),
                )
        self._emit(Resolve(t.task.task_id, winner.output, winner.copy.worker))
        self.stats.resolved += 1
        self._finish(t)
        # After finishing: banning fails the losers' other copies, which may advance
        # (and finish) other tasks, never this one.
        for group in t.groups:
            if group is best:
                continue
            for a in group:
                if proven:
                    self.stats.mismatches += 1
                    self._catch(a, t.task, t.norm, "recomputed", winner.signed, now)
                elif top >= c.ban_trust:
                    self.stats.mismatches += 1
                    self._catch(a, t.task, t.norm, "mismatch", winner.signed, now)
                else:
                    # Untrusted majority: no information on who lied, so nobody is
                    # penalised (a colluding pair must not erode an honest worker's trust).
                    self.stats.mismatches_unproven += 1

    def _catch(
        self,
        a: _Answer,
        task: Task,
        norm: dict[str, Any],
        reason: str,
        reference: SignedResult | None,
        now: float,
    ) -> None:
        """``a`` is a wrong, validly signed result: ban its worker, emit the evidence."""
        worker = a.copy.worker
        ev = make_evidence(
            kind=task.kind,
            params=task.params,
            data=task.data,
            bad=a.signed,
            reason=reason,
            reference=reference,
            max_blob=self.config.evidence_max_blob,
        )
        self.reputation.ban(worker, now, ev)
        self.stats.bans += 1
        self._emit(Penalise(worker, reason, ev, True))
        self._after_ban(worker, now)

    def _after_ban(self, worker: bytes, now: float) -> None:
        """Fail the banned worker's live copies; drop its answers from pending tasks."""
        self._strikes.pop(worker, None)
        self._fail_worker(worker, VerificationError("worker was banned"), now)
        for tid in sorted(self._tasks):
            t = self._tasks.get(tid)
            if t is not None and not t.done and any(a.copy.worker == worker for a in t.answers):
                self._advance(t, now)

    # ------------------------------------------------------------------ failures and endings

    def _fail_worker(self, worker: bytes, error: P2C2RError, now: float) -> None:
        for wid in sorted(self._live.get(worker, ())):
            copy = self._copies.get(wid)
            if copy is not None and copy.worker == worker and copy.live:
                self._retire(copy)
                self._emit(Cancel(worker, wid))
                self._copy_failed(copy, error, now)

    def _copy_failed(self, copy: _Copy, error: P2C2RError, now: float) -> None:
        if copy.known is not None:
            self._copies.pop(copy.wire_id, None)
            return
        t = copy.task
        assert t is not None
        if t.done:
            return
        t.last_error = error
        t.failures += 1
        if copy.hedge_at <= now:
            t.owed = max(0, t.owed - 1)  # its replacement was already sent at the hedge
        else:
            t.owed += 1
        if isinstance(error, ValidationError):
            t.invalid_from.add(copy.worker)
            if len(t.invalid_from) >= self.config.validation_quorum:
                self._reject(t, error)
                return
        self._advance(t, now)

    def _reject_new(self, task: Task, error: P2C2RError) -> None:
        self.stats.rejected += 1
        self._emit(Reject(task.task_id, error))

    def _reject(self, t: _Task, error: P2C2RError) -> None:
        self.stats.rejected += 1
        self._emit(Reject(t.task.task_id, error))
        self._finish(t)

    def _finish(self, t: _Task) -> None:
        t.done = True
        self._tasks.pop(t.task.task_id, None)
        for copy in t.copies:
            if copy.live:
                self._retire(copy)
                self._emit(Cancel(copy.worker, copy.wire_id))
                self._cancelled[copy.wire_id] = (copy.worker, self._alive_until(copy))
                if len(self._cancelled) > self._CANCELLED:
                    self._cancelled.popitem(last=False)
            self._copies.pop(copy.wire_id, None)
            # Break the task <-> copy cycle (answers hold copies too), so a finished task is
            # freed by reference counting, not left for the cyclic collector: the SDK runs in
            # the game's process, where full collections are frame-time spikes, and the
            # simulator made 20,000 such cycles per 30 simulated s at 1,000 peers.
            copy.task = None
        if t.checks:
            for cid in [cid for cid, chk in self._checks.items() if chk.task is t]:
                del self._checks[cid]

    def _emit(self, eff: Effect) -> None:
        self._effects.append(eff)


# --------------------------------------------------------------------------- helpers


def _kind_of(copy: _Copy) -> tuple[str, float | None]:
    """The kind of a copy (of a task or a known answer) and its run-time estimate."""
    if copy.task is not None:
        return copy.task.task.kind, copy.task.estimate
    if copy.known is not None:
        return copy.known.kind, copy.known.estimate
    return "", None


def _weighted_choice(rng: random.Random, items: list[bytes], weights: list[float]) -> bytes:
    """``rng.choices(items, weights=weights)[0]`` without its argument handling: the same
    single ``random()`` draw and the same bisection, so the same pick."""
    cum = list(itertools.accumulate(weights))
    return items[bisect.bisect(cum, rng.random() * (cum[-1] + 0.0), 0, len(items) - 1)]


def run_check(registry: Registry, eff: RunCheck) -> bool:
    """Execute a ``RunCheck`` (the shell calls this off the event loop)."""
    kind = registry.get(eff.kind)
    try:
        if eff.recompute:
            honest = kind.execute(eff.params, eff.data)
            return eff.output == honest or bool(kind.equivalent(eff.params, eff.output, honest))
        if eff.reference is None:
            return bool(kind.self_check(eff.params, eff.data, eff.output))
        return eff.output == eff.reference or bool(kind.equivalent(eff.params, eff.output, eff.reference))
    except Exception:  # a check that crashes on a stranger's output is a failed check
        return False


def drain_inline(core: VerificationCore, now: float, registry: Registry | None = None) -> list[Effect]:
    """Poll effects, running every ``RunCheck`` synchronously; return the other effects."""
    reg = registry or core.registry
    out: list[Effect] = []
    while True:
        effs = core.poll_effects()
        if not effs:
            return out
        for eff in effs:
            if isinstance(eff, RunCheck):
                core.on_check(eff.check_id, run_check(reg, eff), now)
            else:
                out.append(eff)
