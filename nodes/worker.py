"""The worker role: serves ``/p2c2r/task/1.0.0`` streams, runs registered kernels, signs results.

One stream carries many tasks in flight. Per stream, a reader task decodes frames and
starts one trio task per received task; a writer task drains finished results and packs
everything queued into one frame (batching without a timer: under load, results
accumulate while the previous frame is written). When a frame carries more than one
result, the writer signs once for all of them (``batch_sign``): a Merkle root over their
receipt digests (``tasks.receipt``), each result still checkable alone by its path. Kernels run off the trio thread in a
bounded thread pool (``trio.to_thread`` with a ``CapacityLimiter``) or, when configured,
a process pool; only kinds marked ``inline`` (echo) run on the loop.

Two lanes share the cores. Interactive tasks (frames, ticks: priority below
``wire.PRIORITY_BATCH``) take ``concurrency`` slots; batch tasks (path-tracing tiles)
take ``batch_concurrency`` slots of their own, in threads (or processes) niced by
``batch_nice``, so the OS runs an interactive kernel first and batch work soaks up what
is left. A frame therefore never waits for a slot behind a multi-second tile.

Protocol errors are answered, logged with the peer id, and never take the node down:

- a body that does not decode gets an ``E`` frame and the stream keeps going;
- a frame whose declared length exceeds the maximum cannot be skipped, so the stream
  gets an ``E`` frame and is reset; other streams are untouched;
- a task that fails validation gets a typed error result for its task id.

A task that must wait for a slot behind at least ``queue_notice_s`` of other work (by
``QueueEstimate``, from the recent run times of the kinds queued and running) is announced
to its gamer in a ``"Q"`` frame with the expected wait: the gamer's hedge then counts from
the announced start, and a worker busy with other gamers' work is not struck as silent.

The worker never stops reading a stream to apply back-pressure (py-libp2p resets streams
whose reader stalls for ~5 s, see shared/notes); beyond ``max_queued`` tasks it answers
``rejected`` at once, so the gamer can place the work elsewhere.

Limits per peer (a stranger must not be able to starve the others):

- **requests per second**: a token bucket per peer (``rate_per_peer``, ``burst_per_peer``);
  a task over the limit gets a typed ``rejected`` reply for its id, never a silent drop;
- **concurrent task streams**: beyond ``max_streams_per_peer`` a new stream gets an ``E``
  frame (``rejected``) and is reset; the peer's other streams are untouched;
- **connections**: the host keeps one connection per peer (``max_connections_per_peer=1``
  in ``mesh.libp2p_host``; one per pair in ``mesh.memory``) and ``max_connections`` overall;
- **slow senders**: once a frame has started, it must complete within
  ``frame_timeout_s`` and bytes must keep coming at least every ``idle_timeout_s``;
  otherwise the stream gets an ``E`` frame (``frame_timeout``) and is reset. An idle
  stream *between* frames is fine (gamers keep one open).

Same-host gamers may move big payloads through shared memory (``nodes.shm``): after a
hello on the stream proves the gamer's segments are readable here, a task may name its
input segment (read here, checked against this stream's token and the stated size; a
bad name gets a typed ``shm_refused`` error for that task only) and outputs of the
gamer's threshold or more go back in segments this worker creates. The worker hashes what
it read and produced, exactly as for the stream. When the stream ends, the segments
created or named on it that still exist are unlinked (a gamer that crashed never will).

Evidence against cheating workers arrives on ``/p2c2r/evidence/1.0.0``
(``nodes.evidence``); it is verified here and kept in ``Worker.reputation``, where a
coordinator on this node can use it when it picks workers.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn, Protocol

import trio

from mesh import wire
from mesh.clock import wall_ms
from mesh.errors import (
    ConnectionLostError,
    FrameTooLargeError,
    LimitExceededError,
    P2C2RError,
    ProtocolError,
    RejectedError,
    TaskFailedError,
    TaskTimeoutError,
)
from mesh.identity import Identity, peer_id_to_str
from mesh.transport import Host, Stream, write_chunked
from nodes import shm
from nodes.evidence import PROTOCOL_ID as EVIDENCE_PROTOCOL_ID
from nodes.evidence import EvidenceService
from nodes.metrics import NodeMetrics
from nodes.reputation import Reputation
from tasks.receipt import receipt_digest, sign_batch
from tasks.registry import Registry, TaskKind

log = logging.getLogger("p2c2r.worker")


@dataclass(frozen=True)
class WorkerConfig:
    #: Kernels running at once. Default: one per core (numpy/torch release the GIL).
    concurrency: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    #: "thread" (default, measured faster for our kernels) or "process".
    executor: str = "thread"
    #: Slots of the background lane for batch tasks (priority >= ``wire.PRIORITY_BATCH``),
    #: beside the ``concurrency`` interactive ones; 0: as many as ``concurrency``.
    batch_concurrency: int = 0
    #: How much nicer than the node the batch lane's threads (or processes) run, so the OS
    #: gives the cores to interactive kernels first (Linux sets it per thread; elsewhere
    #: the batch threads run at the node's priority). 0: not niced.
    batch_nice: int = 10
    max_frame: int = wire.DEFAULT_MAX_FRAME
    #: Tasks queued or running per node before new ones are rejected.
    max_queued: int = 8192
    #: Largest frame of results the writer packs before writing.
    max_batch_bytes: int = 4 * 1024 * 1024
    #: Sign the results flushed together in one frame with one signature over the
    #: Merkle root of their receipt digests (a lone result is signed on its own). Off:
    #: one signature per result.
    batch_sign: bool = True
    read_chunk: int = 256 * 1024
    #: Run each kernel once on a small example at start (in the background), so the first
    #: real task does not pay for imports and model loading (torch: ~1.5 s).
    warmup: bool = False
    #: Tasks per second per peer (token bucket refill) and the bucket's size (burst).
    rate_per_peer: float = 2000.0
    burst_per_peer: float = 4096.0
    #: Task streams one peer may hold open at once.
    max_streams_per_peer: int = 16
    #: A frame must complete within this many seconds of its first byte ...
    frame_timeout_s: float = 30.0
    #: ... and, mid-frame, bytes must keep arriving at least this often.
    idle_timeout_s: float = 10.0
    #: Peers whose rate buckets are remembered (least recently seen forgotten first).
    max_tracked_peers: int = 10_000
    #: Accept the same-host shared-memory path (``nodes.shm``) when a gamer proves it
    #: shares this host; off: every payload travels on the stream.
    shm: bool = True
    #: A task expected to wait at least this long for a slot is announced to its gamer in
    #: a ``"Q"`` frame with the expected wait (``QueueEstimate``), so the gamer does not
    #: take a worker busy with other gamers' work for a silent one. ``inf``: never.
    queue_notice_s: float = 0.25

    @property
    def batch_slots(self) -> int:
        """The batch lane's slots: ``batch_concurrency``, or ``concurrency`` when 0."""
        return self.batch_concurrency or self.concurrency


class FrameTimeoutError(ProtocolError):
    """A peer started a frame and did not finish it in time (a slow or stalled sender)."""

    code = "frame_timeout"


class TokenBucket:
    """Sans-IO token bucket: ``rate`` tokens per second up to ``burst``; time is an input."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def take(self, now: float, n: float = 1.0) -> bool:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False


class Behaviour(Protocol):
    """Test-only misbehaviour of a worker (``nodes.misbehave``); never set in production."""

    def delay(self, task: wire.TaskRecord) -> float | None:
        """Seconds to hold the reply back; None: never answer."""
        ...

    def corrupt(self, task: wire.TaskRecord, output: bytes) -> bytes:
        """The output to sign and send instead of the honest one."""
        ...

    def after(self, task: wire.TaskRecord, result: wire.ResultRecord) -> wire.ResultRecord:
        """Rewrite the signed result record (forgery, replay)."""
        ...


@dataclass(frozen=True, slots=True)
class _Unsigned:
    """A result waiting for the writer to sign it, alone or in its frame's batch."""

    record: wire.ResultRecord
    digest: bytes


#: What a stream's writer sends: results (signed or not yet), failures, raw frames.
_Reply = wire.ResultRecord | wire.ErrorRecord | _Unsigned | bytes


@dataclass(slots=True)
class QueueTicket:
    """One admitted task's share of the queue: its kind's expected run time."""

    pace: float
    started: bool = False
    left: bool = False


class QueueEstimate:
    """Sans-IO: how long a task admitted now should wait for one of ``concurrency`` slots.

    Every kind's run time is an average of its recent runs here. Admitted tasks add their
    kind's run time to the work waiting; a started one moves it to the work running, until
    its kernel is done. A new task waits when every slot is taken, waiting tasks included;
    its wait is then the waiting work plus half the running work (on average half done),
    spread over the slots. Rough by design: it only has to tell a gamer that a copy sits
    behind seconds of other work, which the gamer cannot see."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = max(1, concurrency)
        self.pace: dict[str, float] = {}
        self.waiting_s = 0.0
        self.running_s = 0.0
        #: Tasks admitted and not started, and running.
        self.waiting = 0
        self.running = 0

    def observe(self, kind: str, seconds: float) -> None:
        old = self.pace.get(kind)
        self.pace[kind] = seconds if old is None else 0.8 * old + 0.2 * seconds

    def admit(self, kind: str) -> tuple[QueueTicket, float]:
        """The new task's ticket, and the wait expected ahead of it (seconds; 0 when a
        slot is free for it)."""
        wait = 0.0
        if self.waiting + self.running >= self.concurrency:
            wait = max(0.0, self.waiting_s + self.running_s / 2) / self.concurrency
        ticket = QueueTicket(self.pace.get(kind, 0.0))
        self.waiting_s += ticket.pace
        self.waiting += 1
        return ticket, wait

    def start(self, ticket: QueueTicket) -> None:
        if not ticket.started and not ticket.left:
            ticket.started = True
            self.waiting_s -= ticket.pace
            self.waiting -= 1
            self.running_s += ticket.pace
            self.running += 1

    def leave(self, ticket: QueueTicket) -> None:
        """Its kernel is done, or the task ended without running (failed, cancelled);
        a second call changes nothing."""
        if ticket.left:
            return
        ticket.left = True
        if ticket.started:
            self.running_s -= ticket.pace
            self.running -= 1
        else:
            self.waiting_s -= ticket.pace
            self.waiting -= 1


class _Lane:
    """Slots for one class of work: interactive, or batch in the niced background."""

    def __init__(self, slots: int) -> None:
        self.slots = max(1, slots)
        self.limiter = trio.CapacityLimiter(self.slots)
        self.queue = QueueEstimate(self.slots)
        #: Where its kernels run; None: trio's thread cache.
        self.executor: Executor | None = None


def _lower_priority(nice: int) -> None:
    """Initializer of the batch lane's threads and processes: make the calling thread
    ``nice`` steps nicer. Linux keeps a nice value per thread (``setpriority`` on the
    thread's id); where that fails, batch work runs at the node's priority."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except (AttributeError, OSError) as exc:
        log.debug("batch lane not niced: %s", exc)


@dataclass
class WorkerStats:
    received: int = 0
    completed: int = 0
    failed: int = 0
    rejected: int = 0
    rate_limited: int = 0
    streams_refused: int = 0
    slow_senders: int = 0
    protocol_errors: int = 0
    #: Payloads read from / written to shared memory, and segments refused.
    shm_in: int = 0
    shm_out: int = 0
    shm_refused: int = 0
    streams: int = 0
    #: Signatures made: one per lone result, one per batch.
    signatures: int = 0
    batches_signed: int = 0
    busy_s: float = 0.0
    #: Queued tasks their gamer cancelled before they ran (never run, never answered).
    cancelled: int = 0
    #: Tasks announced to their gamer as waiting for a slot (``"Q"`` frames).
    queue_notices: int = 0
    per_kind: dict[str, int] = field(default_factory=dict)


def _execute(
    kind: TaskKind, params: dict[str, Any], data: bytes, enc: int, max_frame: int
) -> tuple[bytes, bytes, bytes]:
    """Decode, compute and hash one task: returns (input digest, output digest, output)."""
    raw = wire.decompress_payload(data, enc, max_frame)
    output = kind.execute(params, raw)
    in_digest = wire.digest(raw)
    # A kernel that hands its input back (echo) gives the very same bytes: one hash, not two.
    return in_digest, in_digest if output is raw else wire.digest(output), output


_kind_cache: dict[str, TaskKind] = {}


def _execute_by_name(
    kind_name: str, params: dict[str, Any], data: bytes, enc: int, max_frame: int
) -> tuple[bytes, bytes, bytes]:
    """Process-pool entry point: kinds are looked up in the child's own default registry."""
    kind = _kind_cache.get(kind_name)
    if kind is None:
        from tasks.registry import default_registry

        kind = _kind_cache[kind_name] = default_registry().get(kind_name)
    return _execute(kind, params, data, enc, max_frame)


class Worker:
    """Serves tasks on a host. Start with ``await nursery.start(worker.run)``."""

    def __init__(
        self, host: Host, identity: Identity, registry: Registry, config: WorkerConfig = WorkerConfig()
    ):
        self.host = host
        self.identity = identity
        self.registry = registry
        self.config = config
        self.stats = WorkerStats()
        self.metrics = NodeMetrics("worker")
        self._queued = 0
        self._interactive = _Lane(config.concurrency)
        self._batch = _Lane(config.batch_slots)
        #: The interactive and batch lanes' queue estimates.
        self.queue = self._interactive.queue
        self.batch_queue = self._batch.queue
        self._nursery: trio.Nursery | None = None
        #: Set when warm-up has finished (immediately when warm-up is off).
        self.warm = trio.Event()
        if not config.warmup:
            self.warm.set()
        #: Test hook: a function that may rewrite (output, signature) before sending.
        self.tamper: Callable[[wire.TaskRecord, bytes, bytes], tuple[bytes, bytes]] | None = None
        #: Test hook: a misbehaviour (``nodes.misbehave``) for adversarial tests.
        self.behaviour: Behaviour | None = None
        #: Test hook: rewrites the records of a signed batch after signing, before sending.
        self.tamper_batch: Callable[[list[wire.ResultRecord]], list[wire.ResultRecord]] | None = None
        #: What this node believes about other workers (bans from verified evidence).
        self.reputation = Reputation()
        self.evidence = EvidenceService(registry, self.reputation)
        self._buckets: OrderedDict[bytes, TokenBucket] = OrderedDict()
        self._streams_per_peer: dict[bytes, int] = {}
        self.shm_metrics = shm.ShmMetrics(self.metrics.registry)

    @property
    def load(self) -> float:
        return self._queued / max(1, self.config.concurrency)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        c, batch = self.config, self._batch
        if c.executor == "process":
            self._interactive.executor = ProcessPoolExecutor(self._interactive.slots)
            batch.executor = ProcessPoolExecutor(
                batch.slots, initializer=_lower_priority, initargs=(c.batch_nice,)
            )
        elif c.batch_nice > 0:
            batch.executor = ThreadPoolExecutor(
                batch.slots, "p2c2r-batch", initializer=_lower_priority, initargs=(c.batch_nice,)
            )
        if self.config.shm and shm.available():
            shm.sweep()  # what crashed nodes and gamers on this host left behind
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.host.set_stream_handler(wire.PROTOCOL_ID, self.handle_stream)
                self.host.set_stream_handler(EVIDENCE_PROTOCOL_ID, self.evidence.handle_stream)
                if self.config.warmup:
                    nursery.start_soon(self._warm_up)
                task_status.started()
                await trio.sleep_forever()
        finally:
            for lane in (self._interactive, self._batch):
                if lane.executor is not None:
                    lane.executor.shutdown(wait=False, cancel_futures=True)
                    lane.executor = None

    async def _warm_up(self) -> None:
        import numpy as np

        rng = np.random.default_rng(0)
        for kind in self.registry.kinds():
            if kind.inline or kind.example is None:
                continue
            try:
                params, data = kind.example(rng, "small")
                norm = kind.validate_params(params, len(data))
                async with self._interactive.limiter:
                    await trio.to_thread.run_sync(kind.execute, norm, data, abandon_on_cancel=True)
            except Exception:  # warm-up is an optimisation; a failure here must not stop serving
                log.exception("warm-up of %s failed", kind.name)
        self.warm.set()

    def _admit(self, peer: bytes, now: float) -> bool:
        """Take one request token from ``peer``'s bucket."""
        c = self.config
        bucket = self._buckets.get(peer)
        if bucket is None:
            bucket = self._buckets[peer] = TokenBucket(c.rate_per_peer, c.burst_per_peer, now)
            while len(self._buckets) > c.max_tracked_peers:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(peer)
        return bucket.take(now)

    async def handle_stream(self, stream: Stream) -> None:
        key = stream.remote_peer
        open_now = self._streams_per_peer.get(key, 0)
        if open_now >= self.config.max_streams_per_peer:
            self.stats.streams_refused += 1
            log.warning("peer %s: over %d task streams; refusing another", peer_id_to_str(key), open_now)
            try:
                with trio.move_on_after(1):
                    await stream.write(
                        wire.encode_error(
                            RejectedError.code,
                            f"too many task streams from one peer (limit {self.config.max_streams_per_peer})",
                        )
                    )
            except ConnectionLostError:
                pass
            await stream.reset()
            return
        self._streams_per_peer[key] = open_now + 1
        try:
            await self._handle_stream(stream)
        finally:
            left = self._streams_per_peer.get(key, 1) - 1
            if left > 0:
                self._streams_per_peer[key] = left
            else:
                self._streams_per_peer.pop(key, None)

    async def _handle_stream(self, stream: Stream) -> None:
        peer = peer_id_to_str(stream.remote_peer)
        self.stats.streams += 1
        send, recv = trio.open_memory_channel[_Reply](self.config.max_queued)
        outcome: list[str] = []
        state = _StreamState()

        async def reader() -> None:
            try:
                async with send:
                    await self._read_loop(stream, send, nursery, peer, state)
            except ConnectionLostError as exc:
                outcome.append(f"lost: {exc}")
                nursery.cancel_scope.cancel()

        async def writer() -> None:
            try:
                await self._write_loop(stream, recv, state)
            except ConnectionLostError as exc:
                outcome.append(f"lost: {exc}")
                nursery.cancel_scope.cancel()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                nursery.start_soon(reader)
        except Exception:  # per-stream boundary: one bad stream must never stop the node
            log.exception("stream handler for %s failed", peer)
            await stream.reset()
            return
        finally:
            if state.segments is not None:
                state.segments.close()
        if outcome:
            log.info("stream from %s ended: %s", peer, outcome[0])
            await stream.reset()
        else:
            await stream.close()

    async def _read_loop(
        self,
        stream: Stream,
        send: trio.MemorySendChannel[_Reply],
        nursery: trio.Nursery,
        peer: str,
        state: _StreamState,
    ) -> None:
        c = self.config
        decoder = wire.FrameDecoder(c.max_frame)
        frame_started: float | None = None
        # Every task on this stream gets its own clone of the send side, so the writer
        # sees end-of-channel only once the reader and all its tasks are done.
        while True:
            if frame_started is None:
                data = await stream.read(c.read_chunk)
            else:
                now = trio.current_time()
                with trio.move_on_at(min(frame_started + c.frame_timeout_s, now + c.idle_timeout_s)) as scope:
                    data = await stream.read(c.read_chunk)
                if scope.cancelled_caught:
                    await self._slow_sender(send, peer, trio.current_time() - frame_started, decoder.buffered)
            if not data:
                return
            try:
                bodies = list(decoder.feed(data))
            except FrameTooLargeError as exc:
                self.stats.protocol_errors += 1
                self.metrics.protocol_errors.inc()
                log.warning("peer %s: %s; resetting the stream", peer, exc)
                await send.send(wire.encode_error(exc.code, str(exc)))
                await trio.sleep(0.05)  # give the writer a moment to get the error out
                raise ConnectionLostError(str(exc)) from exc
            if not decoder.buffered:
                frame_started = None
            elif bodies or frame_started is None:
                frame_started = trio.current_time()  # a new frame began in this chunk
            for body in bodies:
                try:
                    frame = wire.decode_frame(body, self.config.max_frame)
                except ProtocolError as exc:
                    self.stats.protocol_errors += 1
                    self.metrics.protocol_errors.inc()
                    log.warning("peer %s sent a bad frame: %s", peer, exc)
                    await send.send(wire.encode_error(exc.code, str(exc)))
                    continue
                if frame.type == "T":
                    notices: list[wire.QueuedRecord] = []
                    for task in frame.tasks:
                        self.stats.received += 1
                        if not self._admit(stream.remote_peer, trio.current_time()):
                            self.stats.rate_limited += 1
                            await send.send(
                                wire.ErrorRecord(
                                    task.task_id,
                                    RejectedError.code,
                                    f"rate limit: over {c.rate_per_peer:g} tasks/s from one peer; slow down",
                                )
                            )
                            continue
                        if self._queued >= self.config.max_queued:
                            self.stats.rejected += 1
                            await send.send(
                                wire.ErrorRecord(
                                    task.task_id, RejectedError.code, "worker is over capacity; try another"
                                )
                            )
                            continue
                        self._queued += 1
                        ticket, wait = self._lane(task).queue.admit(task.kind)
                        if wait >= c.queue_notice_s:
                            notices.append(wire.QueuedRecord(task.task_id, int(wait * 1000)))
                        # Its cancel scope exists from now on: a cancel frame read in the same
                        # chunk, before the task got to run at all, still stops it.
                        waiting = state.queued[task.task_id] = trio.CancelScope()
                        nursery.start_soon(
                            self._serve_task, task, state, send.clone(), trio.current_time(), waiting, ticket
                        )
                    if notices:
                        self.stats.queue_notices += len(notices)
                        self.metrics.queue_notices_sent.inc(len(notices))
                        await send.send(wire.encode_queued(notices))
                elif frame.type == "C":
                    # The gamer no longer wants these (a losing copy, a hedge that lost, a
                    # cancelled task): one still waiting for a slot gives its place up. One
                    # already running finishes; its result is dropped by the gamer.
                    for tid in frame.cancels:
                        queued = state.queued.pop(tid, None)
                        if queued is not None:
                            queued.cancel()
                elif frame.type == "H" and frame.hello is not None:
                    await send.send(wire.encode_hello_reply(self._hello(frame.hello, state, peer)))
                else:
                    self.stats.protocol_errors += 1
                    self.metrics.protocol_errors.inc()
                    log.warning("peer %s sent a %r frame on a task stream", peer, frame.type)
                    await send.send(
                        wire.encode_error(ProtocolError.code, f"unexpected frame type {frame.type!r}")
                    )

    async def _slow_sender(
        self,
        send: trio.MemorySendChannel[_Reply],
        peer: str,
        waited: float,
        buffered: int,
    ) -> NoReturn:
        self.stats.slow_senders += 1
        self.stats.protocol_errors += 1
        self.metrics.protocol_errors.inc()
        exc = FrameTimeoutError(
            f"frame not completed: {buffered} bytes in {waited:.1f} s "
            f"(limits {self.config.frame_timeout_s:g} s per frame, {self.config.idle_timeout_s:g} s idle)"
        )
        log.warning("peer %s: %s; resetting the stream", peer, exc)
        with trio.move_on_after(1):
            await send.send(wire.encode_error(exc.code, str(exc)))
            await trio.sleep(0.05)  # give the writer a moment to get the error out
        raise ConnectionLostError(str(exc))

    def _hello(self, hello: wire.ShmHello, state: _StreamState, peer: str) -> wire.ShmHelloReply:
        """Answer a gamer's shared-memory hello: read its nonce, or say why not."""
        if hello == wire.SHM_OFF:
            if state.segments is not None:
                state.segments.outputs_on = False  # what was handed out is still unlinked at the end
            return wire.ShmHelloReply(False, b"", "", "shared memory off for this stream, as asked")
        if not (self.config.shm and shm.available()):
            return wire.ShmHelloReply(False, b"", "", "shared memory is off on this worker")
        try:
            if not shm.valid_token(hello.token):
                raise shm.ShmRefusedError("the hello's token is not 16 hex digits")
            if hello.size != shm.NONCE_LEN:
                raise shm.ShmRefusedError(f"a hello segment holds {shm.NONCE_LEN} bytes, not {hello.size}")
            shm.check_name(hello.name, hello.token)
            nonce = shm.read_segment(hello.name, hello.size)
        except (shm.ShmRefusedError, shm.ShmUnavailableError) as exc:
            # The usual case for a gamer on another host: its segment is not here.
            log.debug("peer %s: no shared memory: %s", peer, exc)
            return wire.ShmHelloReply(False, b"", "", str(exc))
        if state.segments is not None:
            state.segments.close()
        state.segments = shm.StreamSegments(
            shm.new_token(), hello.token, max(shm.MIN_BYTES_FLOOR, hello.min_bytes)
        )
        log.debug("peer %s: shared memory on (same host)", peer)
        return wire.ShmHelloReply(True, nonce, state.segments.in_token, "")

    def _read_input(self, task: wire.TaskRecord, state: _StreamState) -> wire.TaskRecord:
        """The task with its input read from the shared-memory segment it names."""
        ref = task.shm
        assert ref is not None
        segs = state.segments
        try:
            if segs is None:
                raise shm.ShmRefusedError("a task named a segment before a shared-memory hello")
            shm.check_name(ref.name, segs.in_token)
            if not 0 < ref.size <= self.config.max_frame:
                raise shm.ShmRefusedError(
                    f"segment size {ref.size} is outside 1..{self.config.max_frame} (max frame)"
                )
            segs.named_input(ref.name)
            data = shm.read_segment(ref.name, ref.size)
        except shm.ShmRefusedError:
            self.stats.shm_refused += 1
            self.shm_metrics.fallback("refused")
            raise
        self.stats.shm_in += 1
        self.shm_metrics.moved("in")
        return replace(task, data=data, enc=wire.ENC_RAW, shm=None)

    async def _serve_task(
        self,
        task: wire.TaskRecord,
        state: _StreamState,
        send: trio.MemorySendChannel[_Reply],
        received_at: float,
        waiting: trio.CancelScope,
        ticket: QueueTicket,
    ) -> None:
        """``waiting`` is cancelled by a cancel frame until the task gets a slot."""
        async with send:
            kind_label = task.kind if task.kind in self.registry else "unknown"
            self.metrics.in_flight.inc()
            try:
                if task.shm is not None:
                    task = self._read_input(task, state)
                self.metrics.bytes_in.inc(len(task.data))
                with waiting:
                    done = await self._compute(task, received_at, ticket, state.segments, state.queued)
                if waiting.cancelled_caught:
                    self.stats.cancelled += 1
                    return  # its gamer cancelled it while it waited: nobody wants an answer
                reply: wire.ResultRecord | wire.ErrorRecord | _Unsigned = done
                result = done.record if isinstance(done, _Unsigned) else done
                if self.behaviour is not None:
                    hold = self.behaviour.delay(task)
                    if hold is None:
                        return  # test-only: a worker that drops tasks never answers
                    if hold > 0:
                        await trio.sleep(hold)
                self.stats.completed += 1
                self.metrics.bytes_out.inc(len(result.output))
                outcome = "ok"
            except P2C2RError as exc:
                self.stats.failed += 1
                reply = wire.ErrorRecord(task.task_id, exc.code, str(exc))
                outcome = exc.code
            except Exception as exc:  # a kernel bug must become a typed error, not a dead stream
                self.stats.failed += 1
                log.exception("kernel %s failed", task.kind)
                reply = wire.ErrorRecord(task.task_id, TaskFailedError.code, f"{type(exc).__name__}: {exc}")
                outcome = TaskFailedError.code
            finally:
                if state.queued.get(task.task_id) is waiting:
                    del state.queued[task.task_id]
                self._queued -= 1
                self._lane(task).queue.leave(ticket)
                self.metrics.in_flight.dec()
            self.metrics.observe_task(kind_label, outcome, trio.current_time() - received_at)
            try:
                await send.send(reply)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                log.debug("result for %s dropped: stream closed", task.task_id.hex())

    async def _compute(
        self,
        task: wire.TaskRecord,
        received_at: float,
        ticket: QueueTicket,
        segments: shm.StreamSegments | None = None,
        queued: dict[bytes, trio.CancelScope] | None = None,
    ) -> wire.ResultRecord | _Unsigned:
        """Run the task; the result comes signed, or unsigned for the writer to sign
        with the rest of its frame (``batch_sign``; never with test hooks installed,
        which rewrite signed records one at a time). An output bound for shared memory
        (``segments``) stays raw: the writer puts it in a segment. ``queued`` holds the
        task's cancel scope while it waits for a slot; it leaves once the task runs.
        ``ticket`` is the task's share of its lane's queue, started and left with its kernel."""
        kind = self.registry.get(task.kind)
        params = kind.validate_params(task.params, len(task.data))
        budget = task.budget_ms / 1000 if task.budget_ms else None
        deadline = received_at + budget if budget is not None else float("inf")
        if kind.inline:
            in_digest, out_digest, output = _execute(kind, params, task.data, task.enc, self.config.max_frame)
        else:
            lane = self._lane(task)
            with trio.move_on_at(deadline) as scope:
                async with lane.limiter:
                    if queued is not None:
                        queued.pop(task.task_id, None)  # running: a cancel no longer stops it
                    lane.queue.start(ticket)
                    t0 = trio.current_time()
                    self.metrics.queue_wait.labels(task.kind).observe(t0 - received_at)
                    try:
                        in_digest, out_digest, output = await self._offload(kind, task, params)
                    finally:
                        lane.queue.leave(ticket)  # the slot is free again
                    ran = trio.current_time() - t0
                    self.stats.busy_s += ran
                    lane.queue.observe(task.kind, ran)
            if scope.cancelled_caught:
                raise TaskTimeoutError(f"deadline passed before {task.kind} ran; result would be late")
        if len(output) + wire.RECORD_OVERHEAD > self.config.max_frame:
            # Sent anyway, the frame would be refused by the gamer's decoder and cost the
            # whole stream; a typed error costs only this task.
            raise LimitExceededError(
                f"{task.kind} output of {len(output)} bytes does not fit in a frame of {self.config.max_frame}"
            )
        self.stats.per_kind[task.kind] = self.stats.per_kind.get(task.kind, 0) + 1
        if self.behaviour is not None:
            bad = self.behaviour.corrupt(task, output)
            if bad != output:
                output, out_digest = bad, wire.digest(bad)
        # Wall-clock time is an attestation in the receipt, not used for any timing logic.
        ts_ms = wall_ms()
        d = receipt_digest(
            task.task_id,
            task.kind,
            wire.params_digest(task.params),
            in_digest,
            out_digest,
            self.identity.peer_id_bytes,
            ts_ms,
        )
        if segments is not None and segments.outputs_on and len(output) >= segments.min_bytes:
            payload, enc = output, wire.ENC_RAW
        else:
            payload, enc = wire.compress_payload(output)
        if self.config.batch_sign and self.tamper is None and self.behaviour is None:
            return _Unsigned(wire.ResultRecord(task.task_id, payload, enc, ts_ms, b""), d)
        sig = self.identity.sign(d)
        self.stats.signatures += 1
        if self.tamper is not None:
            payload, sig = self.tamper(task, payload, sig)
        result = wire.ResultRecord(task.task_id, payload, enc, ts_ms, sig)
        if self.behaviour is not None:
            result = self.behaviour.after(task, result)
        return result

    def _lane(self, task: wire.TaskRecord) -> _Lane:
        return self._batch if task.priority >= wire.PRIORITY_BATCH else self._interactive

    async def _offload(
        self, kind: TaskKind, task: wire.TaskRecord, params: dict[str, Any]
    ) -> tuple[bytes, bytes, bytes]:
        """Run the kernel where its lane runs them (the caller holds the lane's slot)."""
        executor = self._lane(task).executor
        if executor is None:
            return await trio.to_thread.run_sync(
                _execute, kind, params, task.data, task.enc, self.config.max_frame, abandon_on_cancel=True
            )
        if isinstance(executor, ProcessPoolExecutor):
            fut = executor.submit(
                _execute_by_name, task.kind, params, task.data, task.enc, self.config.max_frame
            )
        else:
            fut = executor.submit(_execute, kind, params, task.data, task.enc, self.config.max_frame)
        return await trio.to_thread.run_sync(fut.result, abandon_on_cancel=True)

    async def _write_loop(
        self, stream: Stream, recv: trio.MemoryReceiveChannel[_Reply], state: _StreamState
    ) -> None:
        async with recv:
            async for first in recv:
                if isinstance(first, bytes):
                    await write_chunked(stream, first)
                    continue
                batch: list[wire.ResultRecord | wire.ErrorRecord | _Unsigned] = [first]
                size = _reply_size(first)
                raw_frames: list[bytes] = []
                while size < self.config.max_batch_bytes:
                    try:
                        nxt = recv.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    if isinstance(nxt, bytes):
                        raw_frames.append(nxt)
                        continue
                    n = _reply_size(nxt)
                    if size + n > self.config.max_batch_bytes:
                        # Never pile a big result onto a batch: the frame could pass max_frame.
                        await write_chunked(stream, self._encode_results(batch, state.segments))
                        batch, size = [], 0
                    batch.append(nxt)
                    size += n
                await write_chunked(stream, self._encode_results(batch, state.segments))
                for f in raw_frames:
                    await write_chunked(stream, f)

    def _to_segment(self, r: wire.ResultRecord, segments: shm.StreamSegments | None) -> wire.ResultRecord:
        """``r`` with a big raw output moved into a shared-memory segment, when the stream
        has shared memory on; unchanged (the stream carries it) on any failure."""
        if (
            segments is None
            or not segments.outputs_on
            or r.enc != wire.ENC_RAW
            or len(r.output) < segments.min_bytes
        ):
            return r
        if not segments.output_room(len(r.output)):
            self.shm_metrics.fallback("full")
            return r
        name = shm.segment_name(segments.out_token)
        try:
            shm.write_segment(name, r.output)
        except shm.ShmUnavailableError as exc:
            log.warning("result through the stream instead: %s", exc)
            self.shm_metrics.fallback("create_failed")
            return r
        segments.handed_out(name, len(r.output))
        self.stats.shm_out += 1
        self.shm_metrics.moved("out")
        return replace(r, output=b"", enc=wire.ENC_SHM, shm=wire.ShmRef(name, len(r.output)))

    def _encode_results(
        self,
        batch: list[wire.ResultRecord | wire.ErrorRecord | _Unsigned],
        segments: shm.StreamSegments | None = None,
    ) -> bytes:
        """One frame for ``batch``, signing what is unsigned: alone, or as one batch.
        Signing covers the output's digest, so moving it to shared memory comes after."""
        unsigned = [r for r in batch if isinstance(r, _Unsigned)]
        rest = [
            self._to_segment(r, segments) if isinstance(r, wire.ResultRecord) else r
            for r in batch
            if not isinstance(r, _Unsigned)
        ]
        if len(unsigned) == 1:
            u = unsigned[0]
            self.stats.signatures += 1
            signed_one = replace(u.record, signature=self.identity.sign(u.digest))
            return wire.encode_results([*rest, self._to_segment(signed_one, segments)])
        if not unsigned:
            return wire.encode_results(rest)
        signature, _ = sign_batch(self.identity, [u.digest for u in unsigned])
        self.stats.signatures += 1
        self.stats.batches_signed += 1
        self.metrics.observe_batch("signed", len(unsigned))
        records = [u.record for u in unsigned]
        if self.tamper_batch is not None:
            records = self.tamper_batch(records)
        records = [self._to_segment(r, segments) for r in records]
        # Records that came signed (test hooks) travel in an "R" frame of their own.
        signed = [r for r in rest if isinstance(r, wire.ResultRecord)]
        errors = [r for r in rest if isinstance(r, wire.ErrorRecord)]
        frame = wire.encode_signed_results([*records, *errors], signature, [u.digest for u in unsigned])
        return frame + wire.encode_results(list(signed)) if signed else frame


@dataclass
class _StreamState:
    """What a worker knows about one gamer stream: its shared-memory segments, once a
    hello proved the gamer shares this host."""

    segments: shm.StreamSegments | None = None
    #: Tasks of this stream waiting for a slot, by task id: a cancel frame stops them.
    queued: dict[bytes, trio.CancelScope] = field(default_factory=dict)


def _reply_size(r: wire.ResultRecord | wire.ErrorRecord | _Unsigned) -> int:
    if isinstance(r, _Unsigned):
        return len(r.record.output)
    return len(r.output) if isinstance(r, wire.ResultRecord) else 64
