"""The gamer-side SDK: submit work to workers and get verified results back.

Async (trio)::

    async with GamerClient.connect(["/ip4/127.0.0.1/tcp/4001/p2p/12D3Koo..."]) as gamer:
        handle = await gamer.submit("upscale", frame_bytes, {"scale": 2.0}, deadline=0.1)
        frame2x = await handle.result()

Sync, e.g. from a pygame loop (never blocks the loop: ``submit`` returns a future)::

    with SyncGamerClient(peers) as gamer:
        fut = gamer.submit("physics_step", world, {"steps": 4})
        ...
        if fut.done(): world = fut.result()

What the client guarantees: every handle ends with a verified result or a typed error.
Two layers decide what "verified" means:

1. **Signatures** (always): a result counts only when its signature verifies against the
   peer id the Noise handshake authenticated for the stream it arrived on, over a digest
   the client rebuilds from what it sent (wire id, kind, parameters, input) and what it
   received (output). A bad one is a ``VerificationError`` for that copy (and a ban).
2. **The verification policy** (``nodes.verification.VerificationCore``, on by default,
   ``verification=VerificationConfig.off()`` for raw-transport benchmarks): per-kind
   self-checks on every result, known-answer probes, redundancy at a rate that follows
   each worker's reputation, disputes settled by re-running the kernel here, hedging of
   copies that do not answer, bans. The core decides where each copy goes; this shell
   does the I/O. Every copy is a real task on the wire with its own wire id (the
   worker cannot tell a probe or a duplicate from a first request); the user's task id
   never leaves this process.

A deadline that passes fails the handle with ``TaskTimeoutError`` (or its subclass
``VerificationTimeoutError`` when an answer came but its confirmation did not) and any
later result is dropped. When a worker's connection drops, its copies fail and the core
places replacements on other workers; with nobody left, tasks fail with a typed error.

Evidence against caught workers (``Penalise`` with ``Evidence``) is kept
(``evidence()``), handed to hooks (``add_penalise_hook``), sent to every connected
worker node over ``/p2c2r/evidence/1.0.0`` and published on an optional in-process
``EvidenceBus`` that other gamers verify for themselves (``nodes.evidence``).

Workers on the same host get big payloads through shared memory (``nodes.shm``,
``GamerConfig.shm``, on by default): the first payload of ``shm_min_bytes`` or more for a
worker comes with a hello that proves, on the authenticated stream, that the worker reads
segments this client creates; from then on such inputs and outputs travel as segments
named in the frames.
Digests and signatures are checked exactly as for the stream (the output digest is of
the bytes read back here). Any failure of that path sends the copy again through the
stream (``p2c2r_shm_fallbacks_total``); a copy's input segment is unlinked whenever the
copy ends, however it ends.

How peers are found is replaceable: ``connect`` takes multiaddrs (or a ready ``Host``);
the mesh control plane plugs in through ``add_worker``, ``set_placement`` and
``add_completion_hook``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import itertools
import logging
import math
import os
import random
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from mesh import wire
from mesh.errors import (
    CancelledTaskError,
    ConnectionLostError,
    LimitExceededError,
    P2C2RError,
    ProtocolError,
    TaskTimeoutError,
    UnavailableError,
    ValidationError,
    VerificationError,
    error_from_wire,
)
from mesh.identity import Identity, peer_id_to_str
from mesh.identity import verify as verify_signature
from mesh.transport import Host, Stream, write_chunked
from nodes import shm
from nodes.evidence import EvidenceBus, send_evidence, verify_in_thread
from nodes.metrics import NodeMetrics
from nodes.reputation import Evidence, InvalidEvidenceError, Reputation, ReputationConfig
from nodes.sdk_cores import (
    DEFAULT_LEVELS,
    AdaptiveTimeouts,
    CachedResult,
    HedgeBudget,
    QualityController,
    QualityLevel,
    ResultCache,
    TimeoutConfig,
    content_key,
)
from nodes.shm import DEFAULT_MIN_BYTES as SHM_MIN_BYTES
from nodes.verification import (
    Cancel,
    Effect,
    LeasePlacer,
    Penalise,
    Probe,
    Reject,
    Resolve,
    Role,
    RunCheck,
    SendTo,
    Task,
    VerificationConfig,
    VerificationCore,
    VerificationStats,
    run_check,
)
from tasks.receipt import MerkleTree, batch_digest, make_seal, receipt_digest, verify_receipt
from tasks.registry import Registry, default_registry

log = logging.getLogger("p2c2r.gamer")

_NO_DEADLINE = math.inf


@dataclass(frozen=True)
class GamerConfig:
    #: Seconds a task may take when ``submit`` is given no deadline.
    default_deadline_s: float = 30.0
    max_frame: int = wire.DEFAULT_MAX_FRAME
    #: Tasks queued for sending per worker before ``submit`` waits (back-pressure).
    send_queue: int = 8192
    max_batch_bytes: int = 4 * 1024 * 1024
    #: Most tasks packed into one frame; 1 turns batching off (pipelining only).
    max_batch_tasks: int = 1024
    #: Copies of one task that may fail (error reply, lost connection, bad signature)
    #: before the task ends with the last error; copies always go to distinct workers.
    max_attempts: int = 3
    #: Re-dial a worker whose connection dropped, with exponential backoff up to this
    #: many seconds between tries (0 turns reconnection off). Banned workers are not re-dialled.
    reconnect_max_backoff_s: float = 10.0
    #: Outputs larger than this are hashed off the trio thread.
    offload_hash_bytes: int = 256 * 1024
    read_chunk: int = 256 * 1024
    #: The verification policy (default: on). ``VerificationConfig.off()`` keeps only the
    #: signature check, for benchmarks of the raw transport.
    verification: VerificationConfig = field(default_factory=VerificationConfig)
    #: Reputation settings of this client's local view of workers.
    reputation: ReputationConfig = field(default_factory=ReputationConfig)
    #: Checks (self-checks, comparisons, re-runs) running at once in worker threads.
    check_threads: int = 2
    #: Keep this client's bans and worker scores in this file across restarts, with
    #: their expiry (``nodes.reputation_store``; e.g. ``~/.p2c2r/gamer-reputation.json``).
    #: None: in memory only.
    reputation_file: str | os.PathLike[str] | None = None
    #: Seed of the policy's random choices (placement, sampling, wire ids); None: from
    #: the OS. Tests pin it for repeatable runs.
    seed: int | None = None
    #: Content-addressed cache of verified results of deterministic kinds, bounded by
    #: entries and bytes (0 entries: off). A hit skips the network; it is re-verified
    #: against the original worker's signed receipt and refused if that worker is banned.
    cache_entries: int = 1024
    cache_bytes: int = 64 * 1024 * 1024
    #: Per-kind latencies learned from verified completions (``srtt + k * rttvar``),
    #: used as the deadline when ``submit`` gets none and as the hedging delay. Samples
    #: are per task ahead in the queue (latency / (1 + tasks of the kind already in
    #: flight)) and the deadline scales back up by the queue at submit, so a burst of
    #: tasks is not failed by what one task alone takes (Little's law, roughly). A floor
    #: of a second, as TCP's RTO has, keeps one hiccup from failing tasks; a timeout at a
    #: learned deadline backs the estimate off. None: always ``default_deadline_s`` and
    #: no hedging.
    adaptive_timeouts: TimeoutConfig | None = field(default_factory=lambda: TimeoutConfig(minimum_s=1.0))
    #: Hedged requests: a task still unanswered after its kind's hedging delay (about
    #: its 95th percentile latency) gets an independent second copy on another worker;
    #: the first verified answer wins and the other is cancelled. At most
    #: ``hedge_fraction`` hedges per submitted task, plus a burst of ``hedge_burst``.
    hedge: bool = True
    hedge_fraction: float = 0.05
    hedge_burst: float = 5.0
    #: Same-host fast path: payloads of ``shm_min_bytes`` or more go to (and come back
    #: from) workers proved to share this host through shared-memory segments instead of
    #: the stream (``nodes.shm``). Off: every payload takes the stream.
    shm: bool = True
    shm_min_bytes: int = SHM_MIN_BYTES
    #: Each kind's priority class when ``submit`` names none (``wire.PRIORITY_FRAME``,
    #: ``PRIORITY_NORMAL``, ``PRIORITY_BATCH``; unnamed kinds: normal). Workers run batch
    #: tasks in a niced background lane, so tiles never hold a slot a frame needs; the
    #: mesh client asks the coordinator for leases in the same class.
    priorities: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind in self.priorities:
            self.priority_of(kind)  # a bad class is refused here, not at the first probe

    def priority_of(self, kind: str, priority: int | None = None) -> int:
        """``priority`` when given, else ``kind``'s class; a typed error when out of range."""
        p = self.priorities.get(kind, wire.PRIORITY_NORMAL) if priority is None else priority
        if not wire.is_priority(p):
            raise ValueError(
                f"priority of {kind!r} must be an integer from 0 to {wire.MAX_PRIORITY}, got {p!r}"
            )
        return p


@dataclass
class GamerStats:
    submitted: int = 0
    verified: int = 0
    failed: int = 0
    timeouts: int = 0
    #: Replacement copies sent after a copy failed, was lost or did not answer in time.
    resubmitted: int = 0
    late_dropped: int = 0
    #: Results refused for a bad signature or task binding.
    verification_failures: int = 0
    #: Extra copies sent to confirm results (duplicates, tie-breaks) and probes.
    duplicates: int = 0
    probes: int = 0
    #: Results resolved on their self-check alone for want of another worker (lower
    #: assurance than the policy asked for).
    unconfirmed: int = 0
    bans: int = 0
    evidence_shared: int = 0
    #: Tasks answered from the result cache (re-verified, no network).
    cache_hits: int = 0
    #: Hedged (second) copies sent, and hedges the budget refused.
    hedges: int = 0
    hedges_denied: int = 0
    #: Tasks whose hedge answered first.
    hedges_won: int = 0
    #: Inputs sent and outputs received through shared memory, and payloads that took
    #: the stream after a shared-memory failure.
    shm_out: int = 0
    shm_in: int = 0
    shm_fallbacks: int = 0


#: ``placer(kind, [(worker peer id, tasks in flight), ...]) -> worker peer id or None``
Placer = Callable[[str, list[tuple[bytes, int]]], bytes | None]
#: ``hook(kind, worker peer id or None, latency_s, outcome)``; outcome "ok" or an error code
CompletionHook = Callable[[str, bytes | None, float, str], None]
#: ``hook(penalise)``: a worker was penalised; ``penalise.evidence`` set when transferable
PenaliseHook = Callable[[Penalise], None]


class TaskHandle:
    """One submitted task. ``await handle.result()`` gives the verified output bytes."""

    __slots__ = (
        "_cancel_hook",
        "_error",
        "_event",
        "_output",
        "kind",
        "latency_s",
        "submitted_at",
        "task_id",
        "worker",
    )

    def __init__(self, task_id: bytes, kind: str, submitted_at: float) -> None:
        self.task_id = task_id
        self.kind = kind
        self.submitted_at = submitted_at
        self.worker: bytes | None = None
        self.latency_s: float | None = None
        self._event = trio.Event()
        self._output: bytes | None = None
        self._error: P2C2RError | None = None
        self._cancel_hook: Callable[[TaskHandle], None] | None = None

    def done(self) -> bool:
        return self._event.is_set()

    async def result(self) -> bytes:
        """Wait for the verified output; raises the task's typed error instead."""
        await self._event.wait()
        if self._error is not None:
            raise self._error
        assert self._output is not None
        return self._output

    def exception(self) -> P2C2RError | None:
        return self._error

    def cancel(self) -> bool:
        """Stop waiting for this task; ``result()`` raises ``CancelledTaskError``."""
        if self.done() or self._cancel_hook is None:
            return False
        self._cancel_hook(self)
        return True

    def _resolve(self, output: bytes | None, error: P2C2RError | None, now: float) -> None:
        self._output = output
        self._error = error
        self.latency_s = now - self.submitted_at
        self._event.set()

    def __repr__(self) -> str:
        state = "done" if self.done() else "pending"
        return f"<TaskHandle {self.kind} {self.task_id.hex()[:8]} {state}>"


@dataclass(eq=False)
class _UserTask:
    handle: TaskHandle
    kind: str
    #: As it travels on a stream; None until needed when shared memory may carry it.
    payload: bytes | None
    enc: int
    params_digest: bytes
    input_digest: bytes
    last_worker: bytes | None = None
    params: dict[str, Any] = field(default_factory=dict)
    data: bytes = b""
    deadline: float = _NO_DEADLINE
    #: The deadline was learned (``adaptive_timeouts``), not given by the caller.
    adaptive: bool = False
    #: Tasks of the same kind already in flight when this one was submitted.
    ahead: int = 0
    #: Key in the result cache (deterministic kinds with the cache on), else None.
    cache_key: bytes | None = None
    #: Tasks the policy core runs for this one: the task itself, plus its hedge.
    core_ids: list[bytes] = field(default_factory=list)
    #: Signed receipts of verified copies: (core task id, worker) -> (wire id, ts_ms, seal).
    receipts: dict[tuple[bytes, bytes], tuple[bytes, int, bytes]] = field(default_factory=dict)
    priority: int = wire.PRIORITY_NORMAL


@dataclass(frozen=True, slots=True)
class _Batch:
    """An ``"S"`` frame's signature, checked once for every result it covers."""

    tree: MerkleTree
    leaves: tuple[bytes, ...]
    signature: bytes
    error: str | None  # None: the signature is the worker's


@dataclass(eq=False)
class _Wire:
    """One copy on the wire: what its receipt must bind, and the link it went out on."""

    wire_id: bytes
    link: _WorkerLink
    kind: str
    params: dict[str, Any]
    payload: bytes | None  # None: not encoded for the stream (yet)
    enc: int
    params_digest: bytes
    input_digest: bytes
    deadline: float
    task_id: bytes | None  # None: a probe
    data: bytes = b""
    #: The input goes through shared memory; ``segment`` once created (unlinked when the
    #: copy ends: ``GamerClient._release``).
    via_shm: bool = False
    segment: str | None = None
    #: Sent again on the stream after a shared-memory failure (only ever once).
    resent: bool = False
    priority: int = wire.PRIORITY_NORMAL

    def stream_payload(self) -> tuple[bytes, int]:
        if self.payload is None:
            self.payload, self.enc = wire.compress_payload(self.data)
        return self.payload, self.enc


@dataclass(frozen=True, slots=True)
class _Hello:
    """A shared-memory hello in flight: the segment holding the nonce, and the token the
    worker's output names must carry."""

    name: str
    nonce: bytes
    token: str


@dataclass(frozen=True, slots=True)
class _LinkShm:
    """Shared memory on a link: the tokens the two sides' segment names carry."""

    in_token: str  # ours (inputs), assigned by the worker
    out_token: str  # the worker's (outputs), assigned by us


@dataclass(eq=False)
class _WorkerLink:
    peer: bytes
    stream: Stream
    send: trio.MemorySendChannel[_Wire | bytes]
    recv: trio.MemoryReceiveChannel[_Wire | bytes]
    pending: dict[bytes, _Wire] = field(default_factory=dict)
    #: Items that did not fit in the send queue, in order; a flusher task drains them.
    overflow: deque[_Wire | bytes] = field(default_factory=deque)
    flushed: trio.Event = field(default_factory=trio.Event)
    alive: bool = True
    #: The multiaddr it was dialled at, for reconnecting (None when added by peer id).
    addr: str | None = None
    #: Shared memory: tried (once, at the first big payload), the hello in flight, then
    #: (same host proved) the tokens.
    shm_tried: bool = False
    hello: _Hello | None = None
    shm: _LinkShm | None = None
    #: Turned off after a failure: payloads take the stream both ways (the tokens stay,
    #: to read and unlink outputs already on their way).
    shm_off: bool = False
    #: Closed on purpose (idle): the stream is closed, not reset, and never re-dialled.
    closing: bool = False
    #: Seconds the task stream took to open (its protocol negotiation: one round trip).
    rtt: float | None = None

    @property
    def name(self) -> str:
        return peer_id_to_str(self.peer)


class GamerClient:
    """Async client. Create with ``async with GamerClient.connect(...)``."""

    def __init__(
        self,
        host: Host,
        nursery: trio.Nursery,
        config: GamerConfig,
        *,
        registry: Registry | None = None,
        identity: Identity | None = None,
        evidence_bus: EvidenceBus | None = None,
    ) -> None:
        self.host = host
        self.config = config
        self.registry = registry or default_registry()
        self.identity = identity
        self.stats = GamerStats()
        self._nursery = nursery
        self._links: list[_WorkerLink] = []
        self._by_peer: dict[bytes, _WorkerLink] = {}
        self._tasks: dict[bytes, _UserTask] = {}
        self._wires: dict[bytes, _Wire] = {}
        self._reaper_scope: trio.CancelScope | None = None
        self._completion_hooks: list[CompletionHook] = []
        self._penalise_hooks: list[PenaliseHook] = []
        self._evidence: deque[Evidence] = deque(maxlen=256)
        self._check_limiter = trio.CapacityLimiter(max(1, config.check_threads))
        self._anchoring: dict[str, int] = {}
        self._bus = evidence_bus
        seed = config.seed if config.seed is not None else int.from_bytes(os.urandom(8), "big")
        vconf = config.verification
        if vconf.max_failures != config.max_attempts:
            from dataclasses import replace

            vconf = replace(vconf, max_failures=config.max_attempts)
        self.reputation = Reputation(config.reputation)
        self._core = VerificationCore(self.registry, self.reputation, random.Random(seed), vconf)
        self._core.rtt_estimate = self._link_rtt
        self.metrics = NodeMetrics("gamer")
        self.cache = ResultCache(config.cache_entries, config.cache_bytes)
        #: Learned per-kind latencies (None when ``adaptive_timeouts`` is off).
        self.timeouts = AdaptiveTimeouts(config.adaptive_timeouts) if config.adaptive_timeouts else None
        self.hedge_budget = HedgeBudget(config.hedge_fraction, config.hedge_burst)
        #: Hedge timers: (when, seq, user task id).
        self._hedge_timers: list[tuple[float, int, bytes]] = []
        self._timer_seq = itertools.count()
        #: Core task id -> user task id, for hedge copies (the first copy uses the user's id).
        self._hedge_of: dict[bytes, bytes] = {}
        #: User tasks in flight per kind (the queue a new task joins).
        self._in_flight: dict[str, int] = {}
        #: The mesh control-plane client (``nodes.mesh_client.MeshClient``) when joined by bootstrap.
        self.mesh: Any = None
        self.shm_metrics = shm.ShmMetrics(self.metrics.registry)
        self._shm = config.shm and shm.available()

    # ------------------------------------------------------------------ set-up

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        peers: Sequence[str] = (),
        *,
        host: Host | None = None,
        identity: Identity | None = None,
        config: GamerConfig = GamerConfig(),
        bootstrap: Sequence[str] = (),
        region: str | None = None,
        verification: VerificationConfig | None = None,
        registry: Registry | None = None,
        evidence_bus: EvidenceBus | None = None,
    ) -> AsyncIterator[GamerClient]:
        """Open a client connected to the workers at ``peers`` (``/p2p/`` multiaddrs).

        Without ``host``, runs its own py-libp2p host (TCP, Noise, yamux) with a fresh
        identity unless one is given. With ``bootstrap`` multiaddrs, joins the mesh
        (``nodes.mesh_client``): finds the region's coordinator, holds placement leases and
        connects to the leased workers, failing over when the coordinator disappears.
        ``verification`` overrides ``config.verification`` (e.g. ``VerificationConfig.off()``);
        ``registry`` is the set of kinds this client can verify (default: every built-in);
        ``evidence_bus`` shares evidence with other clients in this process.
        """
        if verification is not None:
            from dataclasses import replace

            config = replace(config, verification=verification)
        async with AsyncExitStack() as stack:
            if host is None:
                from mesh.libp2p_host import open_host

                identity = identity or Identity.generate()
                host = await stack.enter_async_context(open_host(identity))
            else:
                identity = identity or getattr(host, "identity", None)
            nursery = await stack.enter_async_context(trio.open_nursery())
            client = cls(
                host, nursery, config, registry=registry, identity=identity, evidence_bus=evidence_bus
            )
            if client._shm:
                shm.sweep()  # what crashed gamers and nodes on this host left behind
            await nursery.start(client._reap_deadlines)
            if config.reputation_file is not None:
                from nodes.reputation_store import persist_reputation

                await nursery.start(persist_reputation, client.reputation, config.reputation_file)
            unsubscribe = evidence_bus.subscribe(client._on_bus_evidence) if evidence_bus else None
            try:
                for addr in peers:
                    await client.add_worker(addr)
                if bootstrap:
                    from nodes.mesh_client import join_mesh

                    client.mesh = await join_mesh(client, nursery, bootstrap, region=region)
                yield client
            finally:
                if unsubscribe is not None:
                    unsubscribe()
                client._fail_all(UnavailableError("the client was closed before the task completed"))
                client._release_all()
                nursery.cancel_scope.cancel()

    async def add_worker(self, addr: str | None = None, *, peer: bytes | None = None) -> bytes:
        """Connect to a worker (by multiaddr, or by peer id when already connected)."""
        if addr is not None:
            peer = await self.host.connect(addr)
        if peer is None:
            raise ValueError("add_worker needs an address or a peer id")
        old = self._by_peer.get(peer)
        if old is not None and old.alive:
            return peer
        t0 = trio.current_time()
        stream = await self.host.open_stream(peer, wire.PROTOCOL_ID)
        send, recv = trio.open_memory_channel[_Wire | bytes](self.config.send_queue)
        link = _WorkerLink(peer=peer, stream=stream, send=send, recv=recv, addr=addr)
        link.rtt = trio.current_time() - t0
        self._links.append(link)
        self._by_peer[peer] = link
        self._nursery.start_soon(self._run_link, link)
        self._core.on_worker_up(peer, trio.current_time())
        self._drain()
        if self._evidence:  # what we caught before it joined
            self._nursery.start_soon(self._share_evidence, list(self._evidence), [link])
        log.info("connected to worker %s", link.name)
        return peer

    def workers(self) -> list[bytes]:
        return [link.peer for link in self._links if link.alive]

    def _link_rtt(self, peer: bytes) -> float | None:
        """The core's ``rtt_estimate``: the round trip measured when the worker's task stream
        opened, before any of its answers are (so a duplicate, probe or replacement goes to a
        near worker, not one an ocean away; the simulator gives its cores the same hook)."""
        link = self._by_peer.get(peer)
        return link.rtt if link is not None else None

    def close_idle_links(self, idle_s: float, keep: Collection[bytes] = ()) -> list[bytes]:
        """Close the links to connected workers the policy has not used for ``idle_s``
        seconds (``VerificationCore.idle_workers``), except those in ``keep`` (the mesh
        client passes the workers it holds leases on); returns the workers closed.

        Why: duplicates, probes and replacements are drawn from the connected set, and a
        gamer on the mesh is handed new workers by every lease; without this it ends up
        connected to every worker it was ever leased (the simulator counted 100-160 per
        gamer after a few minutes at 1,000 peers), many far away or banned, each a stream,
        a task on both sides and a pool entry. A closed worker is not re-dialled; a later
        lease connects it again (paying a join probe, as any new link does)."""
        idle = self._core.idle_workers(trio.current_time(), idle_s, keep)
        for peer in idle:
            link = self._by_peer.get(peer)
            if link is not None and link.alive:
                link.addr = None  # closed on purpose: no reconnect
                link.closing = True
                link.send.close()  # the writer ends, then _run_link closes the stream
        return idle

    def same_host(self, peer: bytes) -> bool:
        """Whether payloads to ``peer`` go through shared memory (its hello succeeded)."""
        link = self._by_peer.get(peer)
        return link is not None and link.alive and link.shm is not None and not link.shm_off

    # ------------------------------------------------------------------ shared memory

    def _start_hello(self, link: _WorkerLink) -> None:
        """Ask the worker to read a nonce from a segment of ours (``nodes.shm``); sent
        with the first payload big enough to use it, which itself takes the stream."""
        link.shm_tried = True
        token, nonce = shm.new_token(), os.urandom(shm.NONCE_LEN)
        name = shm.segment_name(token)
        try:
            shm.write_segment(name, nonce)
        except shm.ShmUnavailableError as exc:
            log.info("no shared memory with worker %s: %s", link.name, exc)
            self.shm_metrics.fallback("create_failed")
            return
        link.hello = _Hello(name, nonce, token)
        self._queue(
            link, wire.encode_hello(wire.ShmHello(name, shm.NONCE_LEN, token, self.config.shm_min_bytes))
        )

    def _drop_hello(self, link: _WorkerLink) -> _Hello | None:
        """The hello in flight on ``link``, if any, its segment unlinked."""
        hello, link.hello = link.hello, None
        if hello is not None:
            shm.unlink(hello.name)
        return hello

    def _end_hello(self, link: _WorkerLink, reply: wire.ShmHelloReply | None) -> None:
        """The worker answered the hello (``reply``), or refused the frame (None)."""
        hello = self._drop_hello(link)
        if hello is None:
            return  # unsolicited
        if reply is not None and reply.ok and reply.nonce == hello.nonce and shm.valid_token(reply.token):
            link.shm = _LinkShm(reply.token, hello.token)
            log.info("worker %s shares this host: big payloads go through shared memory", link.name)
            return
        if reply is not None and reply.ok:
            log.warning("worker %s answered the shared-memory hello with a wrong nonce", link.name)
        self.shm_metrics.fallback("not_same_host")

    def _segment_for(self, link: _WorkerLink, w: _Wire) -> wire.ShmRef | None:
        """The input segment of a copy bound for shared memory (created on first use);
        None when it must take the stream."""
        if not w.via_shm or link.shm is None or link.shm_off:
            return None
        if w.segment is None:
            name = shm.segment_name(link.shm.in_token)
            try:
                shm.write_segment(name, w.data)
            except shm.ShmUnavailableError as exc:
                log.warning("input through the stream instead: %s", exc)
                self._shm_fallback(w, "create_failed")
                return None
            w.segment = name
            self.stats.shm_out += 1
            self.shm_metrics.moved("out")
        return wire.ShmRef(w.segment, len(w.data))

    def _shm_fallback(self, w: _Wire, reason: str, *, resend: bool = False) -> None:
        """Send ``w`` through the stream from now on; a failure the worker saw (or caused)
        also turns shared memory off for its link, both ways."""
        self.stats.shm_fallbacks += 1
        self.shm_metrics.fallback(reason)
        self._release(w)
        w.via_shm = False
        if reason != "create_failed":
            self._shm_off(w.link)
        if resend and w.link.alive and self._wires.get(w.wire_id) is w:
            w.resent = True
            self._queue(w.link, w)

    def _shm_off(self, link: _WorkerLink) -> None:
        """Payloads to and from ``link`` take the stream from now on; the worker is told
        before any task queued after this (an ``"H"`` with no segment)."""
        if link.shm is None or link.shm_off:
            return
        link.shm_off = True
        if link.alive:
            self._queue(link, wire.encode_hello(wire.SHM_OFF))

    def _release(self, w: _Wire) -> None:
        if w.segment is not None:
            shm.unlink(w.segment)
            w.segment = None

    def _release_all(self) -> None:
        """Unlink every segment still held (the client is closing)."""
        for w in list(self._wires.values()):
            self._release(w)
        for link in self._links:
            self._drop_hello(link)

    def _output_ref_ok(self, link: _WorkerLink, ref: wire.ShmRef) -> bool:
        """Whether ``ref`` names an output segment this worker may hand us."""
        if link.shm is None:
            return False
        try:
            shm.check_name(ref.name, link.shm.out_token)
        except shm.ShmRefusedError:
            return False
        return True

    # ------------------------------------------------------------------ trust surface

    @property
    def verification_stats(self) -> VerificationStats:
        """The policy's own counters (probes, duplicates, disputes, bans, ...)."""
        return self._core.stats

    def evidence(self) -> list[Evidence]:
        """Evidence against workers this client caught (most recent last, bounded)."""
        return list(self._evidence)

    def banned(self) -> list[bytes]:
        """Workers this client currently bans."""
        return [p for p, _ in self.reputation.banned(trio.current_time())]

    def add_penalise_hook(self, hook: PenaliseHook) -> None:
        """Call ``hook(penalise)`` whenever the policy penalises a worker."""
        self._penalise_hooks.append(hook)

    def add_known_answer(self, kind: str, params: dict[str, Any] | None, data: bytes, output: bytes) -> bool:
        """Seed a probe with an answer this client trusts (e.g. computed itself)."""
        ok = self._core.add_known_answer(
            kind, dict(params or {}), bytes(data), bytes(output), trio.current_time()
        )
        return ok

    async def add_evidence(self, evidence: Evidence) -> bool:
        """Evidence from elsewhere: verified here (off the loop) before it bans anyone."""
        if not self.reputation.first_sight(evidence):
            return False
        try:
            proof = await verify_in_thread(evidence, self.registry)
        except InvalidEvidenceError as exc:
            log.info("refused evidence against %s: %s", peer_id_to_str(evidence.accused), exc)
            return False
        now = trio.current_time()
        if self.reputation.apply_evidence(evidence, proof, now) is None:
            return False
        self._core.ban(evidence.accused, now, f"evidence:{proof.value}")
        self._drain()
        return True

    def _on_bus_evidence(self, evidence: Evidence, origin: object) -> None:
        if origin is not self:
            self._nursery.start_soon(self.add_evidence, evidence)

    # ------------------------------------------------------------------ submit

    async def submit(
        self,
        kind: str,
        data: bytes = b"",
        params: dict[str, Any] | None = None,
        *,
        deadline: float | None = None,
        priority: int | None = None,
    ) -> TaskHandle:
        """Send one task; ``deadline`` is seconds from now (default ``default_deadline_s``),
        ``priority`` its class (default: the kind's in ``GamerConfig.priorities``)."""
        handle = self._submit(kind, data, params, deadline, priority)
        await self._wait_room()
        await trio.lowlevel.checkpoint()
        return handle

    async def submit_many(
        self,
        items: Iterable[tuple[str, bytes, dict[str, Any] | None]],
        *,
        deadline: float | None = None,
        priority: int | None = None,
    ) -> list[TaskHandle]:
        """Send several tasks at once; queued together, they travel in as few frames as fit."""
        handles = []
        for kind, data, params in items:
            handles.append(self._submit(kind, data, params, deadline, priority))
            await self._wait_room()  # yields only when a send queue is full
        await trio.lowlevel.checkpoint()
        return handles

    async def map(
        self,
        kind: str,
        inputs: Iterable[bytes],
        params: dict[str, Any] | None = None,
        *,
        deadline: float | None = None,
        priority: int | None = None,
    ) -> list[bytes]:
        """Run ``kind`` over every input; results in input order. Raises the first error."""
        items = ((kind, d, params) for d in inputs)
        handles = await self.submit_many(items, deadline=deadline, priority=priority)
        return [await h.result() for h in handles]

    async def run(
        self,
        kind: str,
        data: bytes = b"",
        params: dict[str, Any] | None = None,
        *,
        deadline: float | None = None,
        priority: int | None = None,
    ) -> bytes:
        """Submit one task and wait for its verified output."""
        return await (await self.submit(kind, data, params, deadline=deadline, priority=priority)).result()

    def _submit(
        self,
        kind: str,
        data: bytes,
        params: dict[str, Any] | None,
        deadline: float | None,
        priority: int | None = None,
    ) -> TaskHandle:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"task data must be bytes, got {type(data).__name__}")
        data = bytes(data)
        params = dict(params or {})
        now = trio.current_time()
        budget = self.config.default_deadline_s if deadline is None else deadline
        adaptive = False
        ahead = self._in_flight.get(kind, 0)
        if deadline is None and self.timeouts is not None and self.timeouts.estimate(kind) is not None:
            budget, adaptive = self.timeouts.deadline(kind) * (1 + ahead), True
        if not budget > 0:
            raise ValueError("deadline must be a positive number of seconds")
        klass = self.config.priority_of(kind, priority)
        task_id = os.urandom(wire.TASK_ID_LEN)
        payload: bytes | None
        if self._shm and len(data) >= self.config.shm_min_bytes:
            payload, enc = None, wire.ENC_RAW  # encoded only if a stream carries it
        else:
            payload, enc = wire.compress_payload(data)
        framed = len(data if payload is None else payload) + len(kind) + len(wire.packed_params(params))
        framed += wire.RECORD_OVERHEAD
        if max(len(data), framed) > self.config.max_frame:
            # A frame over the worker's limit makes it reset the stream, failing every
            # task on it, and the replacement would do the same to the next worker.
            raise LimitExceededError(
                f"task input of {len(data)} bytes does not fit in a frame of {self.config.max_frame} bytes"
            )
        handle = TaskHandle(task_id, kind, now)
        handle._cancel_hook = self._cancel
        pdig, idig = wire.params_digest(params), wire.digest(data)
        self.stats.submitted += 1
        ckey = self._cache_key(kind, pdig, idig)
        if ckey is not None and self._answer_from_cache(handle, ckey, pdig, idig):
            return handle
        ut = _UserTask(handle, kind, payload, enc, pdig, idig, params=params, data=data)
        ut.deadline, ut.adaptive, ut.cache_key, ut.core_ids = now + budget, adaptive, ckey, [task_id]
        ut.ahead, ut.priority = ahead, klass
        self._tasks[task_id] = ut
        self._in_flight[kind] = ahead + 1
        self._core.on_submit(Task(task_id, kind, params, data, now + budget), now)
        self._arm_hedge(ut, now)
        self._drain()
        if task_id in self._tasks:
            self._maybe_anchor(kind, params, data)
        return handle

    # ------------------------------------------------------------------ result cache

    def _cache_key(self, kind: str, params_digest: bytes, input_digest: bytes) -> bytes | None:
        if self.config.cache_entries <= 0 or kind not in self.registry:
            return None
        if not self.registry.get(kind).deterministic:
            return None  # another run may rightly give another answer: nothing to reuse
        return content_key(kind, params_digest, input_digest)

    def _answer_from_cache(self, handle: TaskHandle, key: bytes, pdig: bytes, idig: bytes) -> bool:
        """Resolve ``handle`` from the cache when a still-valid signed answer is there."""
        entry = self.cache.get(key)
        if entry is None:
            self.metrics.cache_miss.inc()
            return False
        try:
            if self.reputation.is_banned(entry.worker, handle.submitted_at):
                raise VerificationError("the worker that computed it is banned")
            out_digest = wire.digest(entry.output)
            d = receipt_digest(entry.task_id, handle.kind, pdig, idig, out_digest, entry.worker, entry.ts_ms)
            verify_receipt(entry.worker, d, entry.signature)
        except VerificationError as exc:
            log.warning("dropped a cached %s result: %s", handle.kind, exc)
            self.cache.remove(key)
            self.metrics.cache_refused.inc()
            return False
        self.stats.cache_hits += 1
        self.metrics.cache_hit.inc()
        self.stats.verified += 1
        handle.worker = entry.worker
        handle._resolve(entry.output, None, trio.current_time())
        return True

    def _remember(self, ut: _UserTask, core_id: bytes, worker: bytes, output: bytes) -> None:
        """Cache a verified answer of a deterministic kind with its signed receipt."""
        receipt = ut.receipts.get((core_id, worker))
        if ut.cache_key is None or receipt is None:
            return
        wire_id, ts_ms, seal = receipt
        self.cache.put(ut.cache_key, CachedResult(output, worker, wire_id, ts_ms, seal))

    # ------------------------------------------------------------------ hedging

    def _arm_hedge(self, ut: _UserTask, now: float) -> None:
        if not self.config.hedge or self.timeouts is None:
            return
        self.hedge_budget.on_submit()
        delay = self.timeouts.hedge_delay(ut.kind)
        if delay is None:
            return
        delay *= 1 + ut.ahead  # a task behind a queue is late only beyond its queue
        if now + delay >= ut.deadline:
            return
        heapq.heappush(self._hedge_timers, (now + delay, next(self._timer_seq), ut.handle.task_id))

    def _fire_hedges(self, now: float) -> None:
        timers = self._hedge_timers
        while timers and timers[0][0] <= now:
            _, _, tid = heapq.heappop(timers)
            ut = self._tasks.get(tid)
            if ut is None or len(ut.core_ids) != 1:
                continue  # answered, failed or cancelled in time
            self._hedge(ut, now)

    def _hedge(self, ut: _UserTask, now: float) -> None:
        """Send an independent second copy of ``ut`` to a worker other than its first."""
        avoid = ut.last_worker
        others = [w for w in self.workers() if w != avoid and not self.reputation.is_banned(w, now)]
        if not others:
            return  # nobody else to ask: the hedge could only add load
        core = self._core
        pending = {w: len(self._by_peer[w].pending) for w in others if w in self._by_peer}
        if not pending:
            return
        # The control plane's choice (e.g. leases) binds hedges too: no pick, no hedge.
        if core.lease_placer is not None:
            target = core.lease_placer(ut.kind, pending.get)
        elif core.placer is not None:
            target = core.placer(ut.kind, sorted(pending.items()))
        else:
            target = min(pending.items(), key=lambda c: (c[1], c[0]))[0]
        if target is None or target not in pending:
            return
        if not self.hedge_budget.try_spend():
            self.stats.hedges_denied += 1
            self.metrics.hedge_denied.inc()
            return

        def elsewhere(kind: str, in_flight: Callable[[bytes], int | None]) -> bytes | None:
            return target

        hid = os.urandom(wire.TASK_ID_LEN)
        self._hedge_of[hid] = ut.handle.task_id
        ut.core_ids.append(hid)
        self.stats.hedges += 1
        self.metrics.hedge_sent.inc()
        lease_placer, core.lease_placer = core.lease_placer, elsewhere  # it takes precedence
        try:
            core.on_submit(Task(hid, ut.kind, ut.params, ut.data, ut.deadline), now)
        finally:
            core.lease_placer = lease_placer

    def _user_task(self, core_id: bytes) -> _UserTask | None:
        return self._tasks.get(self._hedge_of.get(core_id, core_id))

    # ------------------------------------------------------------------ adaptive quality

    def quality(
        self,
        target_fps: float,
        *,
        kind: str = "upscale",
        frames_in_flight: int = 1,
        levels: Sequence[QualityLevel] = DEFAULT_LEVELS,
    ) -> FrameQuality:
        """A helper that picks upscale mode and scale so frames keep ``target_fps``.

        ``await q.upscale(frame)`` submits at the current level with the frame budget
        as deadline and feeds the latency back; ``q.params()`` gives the current
        parameters for callers that submit themselves (then call ``q.observe``).
        """
        ctl = QualityController(target_fps, frames_in_flight=frames_in_flight, levels=tuple(levels))
        return FrameQuality(self, ctl, kind)

    def set_placement(self, placer: Placer | None) -> None:
        """Let the control plane choose workers (e.g. from placement leases).

        ``placer(kind, candidates)`` gets the live, unbanned workers as ``(peer id,
        copies in flight)`` pairs and returns the peer id to use as the task's primary,
        or None to let the policy choose. Duplicates and probes stay the policy's choice.
        """
        self._core.placer = placer

    def set_lease_placement(self, placer: LeasePlacer | None) -> None:
        """Like ``set_placement``, without building the list of every live worker for each
        task (the mesh client's placement from leases): ``placer(kind, in_flight)`` returns
        the primary's peer id or None, where ``in_flight(peer id)`` is that worker's copies
        in flight, or None when it is not live or is banned. It takes precedence over a
        ``set_placement`` placer."""
        self._core.lease_placer = placer

    def add_completion_hook(self, hook: CompletionHook) -> None:
        """Call ``hook(kind, worker, latency_s, outcome)`` when a task ends (for coordinators)."""
        self._completion_hooks.append(hook)

    # ------------------------------------------------------------------ effects

    def _drain(self) -> None:
        """Carry out everything the policy asked for. Never blocks: sends that do not fit
        a queue wait in the link's overflow, checks that compute go to threads."""
        core = self._core
        while True:
            effs = core.poll_effects()
            if not effs:
                break
            for eff in effs:
                self._apply(eff)
        self.stats.unconfirmed = core.stats.unconfirmed
        self._rearm()

    def _apply(self, eff: Effect) -> None:
        if isinstance(eff, (SendTo, Probe)):
            self._send(eff)
        elif isinstance(eff, RunCheck):
            kind = self.registry.get(eff.kind)
            if kind.inline:
                # Trivially cheap kinds: a thread hop would cost more than the check.
                self._core.on_check(eff.check_id, run_check(self.registry, eff), trio.current_time())
            else:
                self._nursery.start_soon(self._check_in_thread, eff)
        elif isinstance(eff, Cancel):
            w = self._wires.pop(eff.wire_id, None)
            if w is not None:
                w.link.pending.pop(eff.wire_id, None)
                self._release(w)
                if w.link.alive:
                    self._queue(w.link, wire.encode_cancels([eff.wire_id]))
        elif isinstance(eff, Resolve):
            ut = self._user_task(eff.task_id)
            if ut is not None:
                ut.last_worker = eff.worker
                if eff.task_id != ut.handle.task_id:
                    self.stats.hedges_won += 1
                    self.metrics.hedge_won.inc()
                self._remember(ut, eff.task_id, eff.worker, eff.output)
                self._finish(ut.handle.task_id, eff.output, None)
        elif isinstance(eff, Reject):
            ut = self._user_task(eff.task_id)
            if ut is None:
                return
            if len(ut.core_ids) > 1 and eff.task_id in ut.core_ids:
                ut.core_ids.remove(eff.task_id)  # its twin may still answer
                self._hedge_of.pop(eff.task_id, None)
                return
            self._finish(ut.handle.task_id, None, eff.error)
        elif isinstance(eff, Penalise):
            self._on_penalise(eff)

    def _send(self, eff: SendTo | Probe) -> None:
        link = self._by_peer.get(eff.worker)
        via_shm = link is not None and link.alive and self._shm_bound(link, eff.data)
        if isinstance(eff, SendTo):
            ut = self._user_task(eff.task_id)
            if ut is None:
                return
            ut.last_worker = eff.worker
            data = ut.data
            if ut.payload is None and not via_shm:
                ut.payload, ut.enc = wire.compress_payload(data)  # once, for every stream copy
            payload, enc, pdig, idig = ut.payload, ut.enc, ut.params_digest, ut.input_digest
            if eff.role is Role.REPLACEMENT:
                self.stats.resubmitted += 1
            elif eff.role is not Role.PRIMARY:
                self.stats.duplicates += 1
            task_id: bytes | None = eff.task_id
            priority = ut.priority
        else:
            data, payload, enc = eff.data, None, wire.ENC_RAW
            pdig, idig = wire.params_digest(eff.params), wire.digest(eff.data)
            self.stats.probes += 1
            task_id, priority = None, self.config.priority_of(eff.kind)
        if link is None or not link.alive:
            self._core.on_failure(
                eff.wire_id, eff.worker, UnavailableError("worker link is down"), trio.current_time()
            )
            return
        w = _Wire(
            eff.wire_id, link, eff.kind, eff.params, payload, enc, pdig, idig, eff.deadline, task_id, data
        )
        w.via_shm, w.priority = via_shm, priority
        self._wires[eff.wire_id] = w
        link.pending[eff.wire_id] = w
        self._queue(link, w)

    def _shm_bound(self, link: _WorkerLink, data: bytes) -> bool:
        """Whether ``data`` goes to ``link`` through shared memory (first use: say hello)."""
        if not self._shm or len(data) < self.config.shm_min_bytes:
            return False
        if not link.shm_tried:
            self._start_hello(link)
        return link.shm is not None and not link.shm_off

    def _queue(self, link: _WorkerLink, item: _Wire | bytes) -> None:
        if not link.overflow:
            try:
                # Queue without yielding when there is room, so tasks submitted together
                # reach the writer together and travel in one frame.
                link.send.send_nowait(item)
                return
            except trio.WouldBlock:
                pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the link is dying; its failover fails this copy
            link.flushed = trio.Event()
            self._nursery.start_soon(self._flush, link)
        link.overflow.append(item)

    async def _flush(self, link: _WorkerLink) -> None:
        try:
            while link.overflow:
                await link.send.send(link.overflow[0])
                link.overflow.popleft()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            link.overflow.clear()  # the link died: its copies are failed over by _run_link
        finally:
            link.flushed.set()

    async def _wait_room(self) -> None:
        for link in list(self._links):
            if link.overflow:
                await link.flushed.wait()

    async def _check_in_thread(self, eff: RunCheck) -> None:
        async with self._check_limiter:
            ok = await trio.to_thread.run_sync(run_check, self.registry, eff)
        self._core.on_check(eff.check_id, ok, trio.current_time())
        self._drain()

    def _maybe_anchor(self, kind: str, params: dict[str, Any], data: bytes) -> None:
        """Compute a few tasks of each kind here: the known answers trust is anchored on."""
        n = self._core.config.anchors_per_kind
        if n <= 0:
            return
        have = self._core.known_kinds().get(kind, 0) + self._anchoring.get(kind, 0)
        if have >= n:
            return
        try:
            spec = self.registry.get(kind)
            norm = spec.validate_params(params, len(data))
        except ValidationError:
            return
        if not self._core.cheap_to_rerun(kind, norm, len(data)):
            return
        self._anchoring[kind] = self._anchoring.get(kind, 0) + 1

        async def anchor() -> None:
            try:
                if spec.inline:
                    out = spec.execute(norm, data)
                else:
                    async with self._check_limiter:
                        out = await trio.to_thread.run_sync(spec.execute, norm, data)
                self._core.add_known_answer(kind, params, data, out, trio.current_time())
            except Exception as exc:  # the input may be invalid, or the kernel broken: no anchor
                log.debug("anchor for %s not computed: %r", kind, exc)
            finally:
                self._anchoring[kind] -= 1

        self._nursery.start_soon(anchor)

    def _on_penalise(self, eff: Penalise) -> None:
        if eff.banned:
            self.stats.bans += 1
            log.warning("banned worker %s: %s", peer_id_to_str(eff.worker), eff.reason)
        self.metrics.verification.labels(f"penalise_{eff.reason.split(':')[0]}").inc()
        for hook in self._penalise_hooks:
            try:
                hook(eff)
            except Exception:  # a hook must never break result delivery
                log.exception("penalise hook failed")
        ev = eff.evidence
        if ev is None:
            return
        if self.identity is not None:
            ev = ev.signed_by(self.identity.peer_id_bytes, self.identity.sign)
        self._evidence.append(ev)
        if self._bus is not None:
            self._bus.publish(ev, self)
        self._nursery.start_soon(self._share_evidence, [ev], list(self._links))

    async def _share_evidence(self, evs: list[Evidence], links: list[_WorkerLink]) -> None:
        """Hand evidence to worker nodes (best effort, one at a time)."""
        for ev in evs:
            for link in links:
                if not link.alive or link.peer == ev.accused:
                    continue
                try:
                    ok, code = await send_evidence(self.host, link.peer, ev)
                    if ok:
                        self.stats.evidence_shared += 1
                    else:
                        log.info("worker %s refused evidence: %s", link.name, code)
                except P2C2RError as exc:
                    log.debug("could not share evidence with %s: %s", link.name, exc)

    # ------------------------------------------------------------------ completion

    def _finish(self, task_id: bytes, output: bytes | None, error: P2C2RError | None) -> None:
        ut = self._tasks.pop(task_id, None)
        if ut is None:
            return
        handle = ut.handle
        handle.worker = ut.last_worker
        now = trio.current_time()
        latency = now - handle.submitted_at
        left = self._in_flight.get(ut.kind, 1) - 1
        if left > 0:
            self._in_flight[ut.kind] = left
        else:
            self._in_flight.pop(ut.kind, None)
        if error is None:
            self.stats.verified += 1
            outcome = "ok"
            if self.timeouts is not None:
                self.timeouts.observe(ut.kind, latency / (1 + ut.ahead))
        else:
            self.stats.failed += 1
            outcome = error.code
            if isinstance(error, TaskTimeoutError):
                self.stats.timeouts += 1
                if ut.adaptive and self.timeouts is not None:
                    self.timeouts.backoff(ut.kind, latency / (1 + ut.ahead))
        # The other copy (a hedge, or the task its hedge raced) is a loser now: cancel it.
        others = [cid for cid in ut.core_ids if cid != task_id]
        for cid in ut.core_ids:
            self._hedge_of.pop(cid, None)
        ut.core_ids = []
        for cid in others:
            self._core.on_cancel(cid, now)
        handle._resolve(output, error, now)
        self.metrics.observe_task(ut.kind, outcome, latency)
        if output is not None:
            self.metrics.bytes_in.inc(len(output))
        for hook in self._completion_hooks:
            try:
                hook(ut.kind, ut.last_worker, latency, outcome)
            except Exception:  # a hook must never break result delivery
                log.exception("completion hook failed")

    def _cancel(self, handle: TaskHandle) -> None:
        if handle.task_id not in self._tasks:
            return
        self._finish(handle.task_id, None, CancelledTaskError("cancelled by the caller"))
        self._core.on_cancel(handle.task_id, trio.current_time())
        self._drain()  # best effort: cancel frames go out; a late result is dropped

    def _fail_all(self, error: P2C2RError) -> None:
        for tid in sorted(self._tasks):
            self._finish(tid, None, type(error)(str(error)))
            self._core.on_cancel(tid, trio.current_time())
        self._core.poll_effects()

    def _next_deadline(self) -> float | None:
        nd = self._core.next_deadline()
        if self._hedge_timers:
            hd = self._hedge_timers[0][0]
            nd = hd if nd is None else min(nd, hd)
        return nd

    def _rearm(self) -> None:
        scope = self._reaper_scope
        nd = self._next_deadline()
        if scope is not None and nd is not None and nd < scope.deadline:
            scope.deadline = nd

    async def _reap_deadlines(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """One task drives every timer of the policy (deadlines, hedges, probe expiry)."""
        task_status.started()
        while True:
            nd = self._next_deadline()
            with trio.CancelScope(deadline=nd if nd is not None else _NO_DEADLINE) as scope:
                self._reaper_scope = scope
                await trio.sleep_forever()
            self._reaper_scope = None
            now = trio.current_time()
            self._core.on_tick(now)
            self._fire_hedges(now)
            self._drain()

    # ------------------------------------------------------------------ per-worker link

    async def _run_link(self, link: _WorkerLink) -> None:
        reasons: list[str] = []

        async def guarded(fn: Callable[[_WorkerLink], Awaitable[None]], done: str) -> None:
            try:
                await fn(link)
                reasons.append(done)
            except ConnectionLostError as exc:
                reasons.append(str(exc))
            except ProtocolError as exc:
                reasons.append(f"protocol violation: {exc}")
                log.warning("worker %s: %s", link.name, exc)
                await link.stream.reset()
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(guarded, self._write_link, "writer stopped")
            nursery.start_soon(guarded, self._read_link, "worker closed the stream")
        why = reasons[0] if reasons else "connection closed"
        link.alive = False
        link.send.close()
        if self._by_peer.get(link.peer) is link:
            del self._by_peer[link.peer]
        if link in self._links:
            self._links.remove(link)
        if link.closing:
            why = "idle, closed"
            with trio.move_on_after(1.0), contextlib.suppress(P2C2RError):
                await link.stream.close()
        log.info("lost worker %s: %s", link.name, why)
        for wid in sorted(link.pending):
            self._wires.pop(wid, None)
            self._release(link.pending[wid])
        link.pending.clear()
        self._drop_hello(link)
        if link.shm is not None:
            shm.sweep()  # outputs a crashed worker created and never sent
        # The policy fails this worker's copies and places replacements elsewhere.
        self._core.on_worker_down(link.peer, trio.current_time())
        self._drain()
        if link.addr is not None and self.config.reconnect_max_backoff_s > 0:
            self._nursery.start_soon(self._reconnect, link.addr, link.peer)

    async def _reconnect(self, addr: str, peer: bytes) -> None:
        """Re-dial a lost worker with exponential backoff until it answers (or is banned)."""
        delay = 0.25
        while True:
            await trio.sleep(delay)
            delay = min(delay * 2, self.config.reconnect_max_backoff_s)
            current = self._by_peer.get(peer)
            if current is not None and current.alive:
                return  # someone else (the control plane, the caller) reconnected it
            if self.reputation.is_banned(peer, trio.current_time()):
                log.info("not reconnecting to banned worker %s", peer_id_to_str(peer))
                return
            try:
                await self.add_worker(addr)
            except P2C2RError as exc:
                log.debug("reconnect to %s failed: %s", addr, exc)
                continue
            log.info("reconnected to worker %s", peer_id_to_str(peer))
            return

    async def _write_link(self, link: _WorkerLink) -> None:
        async for first in link.recv:
            batch: list[wire.TaskRecord] = []
            size = 0
            item: _Wire | bytes = first
            now = trio.current_time()
            while True:
                if isinstance(item, bytes):
                    # In queue order: a shared-memory hello must reach the worker before
                    # the tasks queued after it.
                    if batch:
                        await self._write_tasks(link, batch)
                        batch, size = [], 0
                    await write_chunked(link.stream, item)
                elif item.wire_id in self._wires:  # skip copies cancelled or expired while queued
                    budget_ms = max(1, int((item.deadline - now) * 1000))
                    ref = self._segment_for(link, item)
                    payload, enc = (b"", wire.ENC_SHM) if ref is not None else item.stream_payload()
                    rec = wire.TaskRecord(
                        item.wire_id, item.kind, item.params, payload, enc, budget_ms, ref, item.priority
                    )
                    if batch and size + len(rec.data) > self.config.max_batch_bytes:
                        # Never pile a big task onto a batch: the frame could pass max_frame.
                        await self._write_tasks(link, batch)
                        batch, size = [], 0
                    batch.append(rec)
                    size += len(rec.data)
                if size >= self.config.max_batch_bytes or len(batch) >= self.config.max_batch_tasks:
                    break
                try:
                    item = link.recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            if batch:
                await self._write_tasks(link, batch)

    async def _write_tasks(self, link: _WorkerLink, batch: list[wire.TaskRecord]) -> None:
        """Write one frame of tasks; their copies' hedge clocks start once it is out (a frame
        that waited behind the gamer's own uplink is not the worker's delay)."""
        await write_chunked(link.stream, wire.encode_tasks(batch))
        now = trio.current_time()
        for rec in batch:
            self._core.on_sent(rec.task_id, now)

    async def _read_link(self, link: _WorkerLink) -> None:
        decoder = wire.FrameDecoder(self.config.max_frame)
        while True:
            data = await link.stream.read(self.config.read_chunk)
            if not data:
                return
            for body in decoder.feed(data):
                frame = wire.decode_frame(body, self.config.max_frame)
                if frame.type in ("R", "S"):
                    batch = self._open_batch(link, frame.batch) if frame.batch is not None else None
                    for rec in frame.results:
                        await self._on_result(link, rec, batch)
                    self._drain()
                elif frame.type == "Q":
                    # Copies waiting behind other work on the worker: their hedges count
                    # from the announced start (``VerificationCore.on_queued``).
                    now = trio.current_time()
                    self.metrics.queue_notices_received.inc(len(frame.queued))
                    for q in frame.queued:
                        w = link.pending.get(q.task_id)
                        if w is not None:
                            self._core.on_queued(w.wire_id, link.peer, q.wait_ms / 1000, now)
                    self._drain()
                elif frame.type == "HA":
                    self._end_hello(link, frame.hello_reply)
                elif frame.type == "E" and frame.error is not None:
                    if link.hello is not None:
                        self._end_hello(link, None)  # a worker that does not speak "H"
                    log.warning("worker %s reported a protocol error: %s: %s", link.name, *frame.error)
                else:
                    raise ProtocolError(f"unexpected {frame.type!r} frame from a worker")

    def _open_batch(self, link: _WorkerLink, sb: wire.SignedBatch) -> _Batch:
        """Check a batch signature once; each result is then checked against its leaf."""
        tree = MerkleTree(sb.leaves) if sb.leaves else MerkleTree([bytes(32)])
        error = None
        try:
            verify_signature(link.peer, batch_digest(tree.root, tree.size), sb.signature)
        except VerificationError as exc:
            error = f"batch signature rejected: {exc}"
        self.metrics.observe_batch("verified" if error is None else "rejected", len(sb.leaves))
        return _Batch(tree, sb.leaves, sb.signature, error)

    async def _on_result(
        self, link: _WorkerLink, rec: wire.ResultRecord | wire.ErrorRecord, batch: _Batch | None = None
    ) -> None:
        w = link.pending.get(rec.task_id)
        ref = rec.shm if isinstance(rec, wire.ResultRecord) else None
        ref_ok = ref is not None and self._output_ref_ok(link, ref)
        if w is None:
            # Late (deadline passed, cancelled, already confirmed) or never ours: drop it,
            # and its segment (the worker handed it to us).
            if ref is not None and ref_ok:
                shm.unlink(ref.name)
            self.stats.late_dropped += 1
            return
        core = self._core
        if isinstance(rec, wire.ErrorRecord):
            if rec.code in shm.ERROR_CODES and w.via_shm and not w.resent:
                log.info(
                    "worker %s could not take shared memory (%s); using the stream", link.name, rec.message
                )
                self._shm_fallback(
                    w, "refused" if rec.code == shm.ShmRefusedError.code else "read_failed", resend=True
                )
                return
            self._forget(w)
            err = error_from_wire(rec.code, f"worker {link.name}: {rec.message}")
            core.on_failure(w.wire_id, link.peer, err, trio.current_time())
            return
        try:
            if ref is not None and not ref_ok:
                raise ProtocolError(f"worker named a segment outside this link's scheme: {ref.name[:80]!r}")
            if ref is not None and not 0 < ref.size <= self.config.max_frame:
                shm.unlink(ref.name)
                raise ProtocolError(f"result segment of {ref.size} bytes, over the maximum frame")
            size = len(rec.output) if ref is None else ref.size
            if size > self.config.offload_hash_bytes:
                output, out_digest = await trio.to_thread.run_sync(self._open_output, rec)
            else:
                output, out_digest = self._open_output(rec)
            if ref is not None:
                self.stats.shm_in += 1
                self.shm_metrics.moved("in")
            d = receipt_digest(
                w.wire_id, w.kind, w.params_digest, w.input_digest, out_digest, link.peer, rec.ts_ms
            )
            seal = self._check_receipt(link, rec, d, batch)
        except shm.ShmUnavailableError as exc:
            if not w.resent and self._wires.get(w.wire_id) is w:
                log.warning(
                    "result from worker %s unreadable (%s); asking again on the stream", link.name, exc
                )
                self._shm_fallback(w, "read_failed", resend=True)
                return
            if self._wires.get(w.wire_id) is w:
                self._forget(w)
                core.on_failure(w.wire_id, link.peer, exc, trio.current_time())
            return
        except (VerificationError, ProtocolError) as exc:
            if ref is not None:
                self._shm_off(link)  # a worker that breaks the scheme gets the stream only
            self.stats.verification_failures += 1
            self.metrics.verification.labels("bad_signature_or_binding").inc()
            log.warning("rejected a result from worker %s: %s", link.name, exc)
            if self._wires.get(w.wire_id) is w:
                self._forget(w)
                err = VerificationError(f"result from worker {link.name} rejected: {exc}")
                core.on_failure(w.wire_id, link.peer, err, trio.current_time())
            return
        if self._wires.get(w.wire_id) is not w:
            self.stats.late_dropped += 1  # finished while the output was being hashed
            return
        self.metrics.signature_ok.inc()
        self._forget(w)
        if w.task_id is not None:
            ut = self._user_task(w.task_id)
            if ut is not None and ut.cache_key is not None:
                ut.receipts[(w.task_id, link.peer)] = (w.wire_id, rec.ts_ms, seal)
        core.on_result(
            w.wire_id,
            link.peer,
            output,
            trio.current_time(),
            ts_ms=rec.ts_ms,
            signature=seal,
            digest=out_digest,
        )

    @staticmethod
    def _check_receipt(
        link: _WorkerLink, rec: wire.ResultRecord, digest: bytes, batch: _Batch | None
    ) -> bytes:
        """Verify one result's receipt; returns what proves it to anyone: its signature,
        or (batched) its seal, the batch signature with this result's Merkle path."""
        if rec.leaf < 0:
            verify_receipt(link.peer, digest, rec.signature)
            return rec.signature
        if batch is None or rec.leaf >= len(batch.leaves):
            raise ProtocolError("a batched result came without its batch")
        if batch.error is not None:
            raise VerificationError(batch.error)
        if batch.leaves[rec.leaf] != digest:
            raise VerificationError("the result does not match the digest its batch signed")
        return make_seal(batch.signature, rec.leaf, batch.tree.size, batch.tree.path(rec.leaf))

    def _forget(self, w: _Wire) -> None:
        self._wires.pop(w.wire_id, None)
        w.link.pending.pop(w.wire_id, None)
        self._release(w)

    def _open_output(self, rec: wire.ResultRecord) -> tuple[bytes, bytes]:
        """The output and the digest of exactly these bytes (read back from shared memory,
        and that segment unlinked, when the worker put it there)."""
        if rec.shm is not None:
            output = shm.read_segment(rec.shm.name, rec.shm.size, remove=True)
        else:
            output = wire.decompress_payload(rec.output, rec.enc, self.config.max_frame)
        return output, wire.digest(output)


class FrameQuality:
    """Adaptive quality for a frame stream (``GamerClient.quality``).

    Wraps a ``QualityController``: each frame is submitted at the current level (upscale
    ``mode`` and ``scale``) with twice the frame budget as its deadline, so a late frame
    still gives a latency sample; its latency (or a miss) moves the level down at once
    when frames run late and back up only after a run of frames with room to spare.
    """

    def __init__(self, client: GamerClient, controller: QualityController, kind: str = "upscale") -> None:
        self.client = client
        self.controller = controller
        self.kind = kind
        self.frames = 0
        self.missed = 0

    @property
    def level(self) -> QualityLevel:
        return self.controller.current

    def params(self, base: dict[str, Any] | None = None) -> dict[str, Any]:
        """``base`` with the current level's ``mode`` and ``scale`` (and output ``quality``
        when the level sets one)."""
        return self.controller.current.params(base)

    def observe(
        self, latency_s: float, level: QualityLevel | None = None, *, missed: bool = False
    ) -> QualityLevel:
        """Feed back one frame submitted at ``level`` (default: the current one)."""
        idx = None if level is None else self.controller.levels.index(level)
        self.frames += 1
        self.missed += int(missed or latency_s > self.controller.budget_s)
        return self.controller.observe(latency_s, idx, missed=missed)

    async def upscale(
        self, frame: bytes, params: dict[str, Any] | None = None, *, deadline_s: float | None = None
    ) -> bytes:
        """Upscale one frame at the current level; raises the task's typed error.

        ``deadline_s`` (default twice the frame budget) is how long a late frame may still
        arrive; a longer one lets an overloaded stream show late frames instead of none.
        """
        ctl = self.controller
        level = ctl.current
        limit = 2 * ctl.budget_s if deadline_s is None else deadline_s
        handle = await self.client.submit(self.kind, frame, self.params(params), deadline=limit)
        try:
            out = await handle.result()
        except TaskTimeoutError:
            self.observe(limit, level, missed=True)
            raise
        self.observe(handle.latency_s if handle.latency_s is not None else limit, level)
        return out


class SyncGamerClient:
    """A blocking facade over ``GamerClient`` for code without trio (e.g. a pygame loop).

    The async client runs on a background thread; ``submit`` hands the task over without
    waiting and returns a ``concurrent.futures.Future``, so a render loop can poll
    ``future.done()`` every frame.
    """

    def __init__(
        self,
        peers: Sequence[str] = (),
        *,
        identity: Identity | None = None,
        config: GamerConfig = GamerConfig(),
        connect_timeout_s: float = 15.0,
    ) -> None:
        self._peers = list(peers)
        self._identity = identity
        self._config = config
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._client: GamerClient | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=self._thread_main, name="p2c2r-gamer", daemon=True)
        self._thread.start()
        if not self._ready.wait(connect_timeout_s):
            raise UnavailableError(f"could not connect within {connect_timeout_s:g} s")
        if self._startup_error is not None:
            err = self._startup_error
            if isinstance(err, BaseExceptionGroup) and len(err.exceptions) == 1:
                err = err.exceptions[0]
            raise err

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # surfaced to the constructor or logged on close
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
            else:
                log.error("gamer client thread ended: %r", exc)

    async def _main(self) -> None:
        async with GamerClient.connect(self._peers, identity=self._identity, config=self._config) as client:
            self._client = client
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self._ready.set()
            await self._stop.wait()

    def submit(
        self,
        kind: str,
        data: bytes = b"",
        params: dict[str, Any] | None = None,
        *,
        deadline: float | None = None,
        priority: int | None = None,
    ) -> concurrent.futures.Future[bytes]:
        """Hand a task to the client thread; returns at once with a future."""
        fut: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        client, token = self._client, self._token
        if client is None or token is None:
            fut.set_exception(UnavailableError("the client is closed"))
            return fut

        async def drive() -> None:
            try:
                handle = await client.submit(kind, data, params, deadline=deadline, priority=priority)
                out = await handle.result()
            except BaseException as exc:
                if not fut.cancelled():
                    fut.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                if not fut.cancelled():
                    fut.set_result(out)

        try:
            token.run_sync_soon(client._nursery.start_soon, drive)
        except trio.RunFinishedError:
            fut.set_exception(UnavailableError("the client is closed"))
        return fut

    def run(
        self,
        kind: str,
        data: bytes = b"",
        params: dict[str, Any] | None = None,
        *,
        deadline: float | None = None,
        priority: int | None = None,
    ) -> bytes:
        """Submit and block until the verified output (or a typed error) is in."""
        return self.submit(kind, data, params, deadline=deadline, priority=priority).result()

    def map(
        self,
        kind: str,
        inputs: Iterable[bytes],
        params: dict[str, Any] | None = None,
        *,
        deadline: float | None = None,
        priority: int | None = None,
    ) -> list[bytes]:
        futs = [self.submit(kind, d, params, deadline=deadline, priority=priority) for d in inputs]
        return [f.result() for f in futs]

    @property
    def stats(self) -> GamerStats:
        return self._client.stats if self._client else GamerStats()

    def close(self) -> None:
        token, stop = self._token, self._stop
        self._client = None
        if token is not None and stop is not None:
            try:
                token.run_sync_soon(stop.set)
            except trio.RunFinishedError:
                pass
        self._thread.join(timeout=10)

    def __enter__(self) -> SyncGamerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
