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
A result is returned only after its signature verifies against the peer id the Noise
handshake authenticated for the stream it arrived on, over a digest the client rebuilds
from what it sent (task id, kind, parameters, input) and what it received (output). A
deadline that passes fails the handle with ``TaskTimeoutError`` and any later result is
dropped. When a worker's connection drops, its in-flight tasks whose deadline has not
passed are resubmitted to another worker (up to ``max_attempts``); with no worker left
they fail with ``UnavailableError``.

How peers are found is replaceable: ``connect`` takes multiaddrs (or a ready ``Host``);
the mesh control plane plugs in through ``add_worker``.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import logging
import math
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
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
    RejectedError,
    TaskTimeoutError,
    UnavailableError,
    VerificationError,
    error_from_wire,
)
from mesh.identity import Identity, peer_id_to_str
from mesh.transport import Host, Stream, write_chunked
from nodes.metrics import NodeMetrics
from tasks.receipt import receipt_digest, verify_receipt

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
    #: Times one task is sent in total (first try + resubmissions after failures).
    max_attempts: int = 3
    #: Outputs larger than this are hashed off the trio thread.
    offload_hash_bytes: int = 256 * 1024
    read_chunk: int = 256 * 1024


@dataclass
class GamerStats:
    submitted: int = 0
    verified: int = 0
    failed: int = 0
    timeouts: int = 0
    resubmitted: int = 0
    late_dropped: int = 0
    verification_failures: int = 0


#: ``placer(kind, [(worker peer id, tasks in flight), ...]) -> worker peer id or None``
Placer = Callable[[str, list[tuple[bytes, int]]], bytes | None]
#: ``hook(kind, worker peer id or None, latency_s, outcome)``; outcome "ok" or an error code
CompletionHook = Callable[[str, bytes | None, float, str], None]


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
class _Pending:
    handle: TaskHandle
    record: wire.TaskRecord
    params_digest: bytes
    input_digest: bytes
    deadline: float
    attempts: int = 0
    link: _WorkerLink | None = None


@dataclass(eq=False)
class _WorkerLink:
    peer: bytes
    stream: Stream
    send: trio.MemorySendChannel[wire.TaskRecord | bytes]
    recv: trio.MemoryReceiveChannel[wire.TaskRecord | bytes]
    pending: dict[bytes, _Pending] = field(default_factory=dict)
    alive: bool = True
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def name(self) -> str:
        return peer_id_to_str(self.peer)


class GamerClient:
    """Async client. Create with ``async with GamerClient.connect(...)``."""

    def __init__(self, host: Host, nursery: trio.Nursery, config: GamerConfig) -> None:
        self.host = host
        self.config = config
        self.stats = GamerStats()
        self._nursery = nursery
        self._links: list[_WorkerLink] = []
        self._rr = itertools.count()
        self._pending: dict[bytes, _Pending] = {}
        self._deadlines: list[tuple[float, int, bytes]] = []
        self._seq = itertools.count()
        self._reaper_scope: trio.CancelScope | None = None
        self._links_changed = trio.Event()
        self._placer: Placer | None = None
        self._completion_hooks: list[CompletionHook] = []
        self.metrics = NodeMetrics("gamer")
        #: The mesh control-plane client (``nodes.mesh_client.MeshClient``) when joined by bootstrap.
        self.mesh: Any = None

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
    ) -> AsyncIterator[GamerClient]:
        """Open a client connected to the workers at ``peers`` (``/p2p/`` multiaddrs).

        Without ``host``, runs its own py-libp2p host (TCP, Noise, yamux) with a fresh
        identity unless one is given. With ``bootstrap`` multiaddrs, joins the mesh
        (``nodes.mesh_client``): finds the region's coordinator, holds placement leases and
        connects to the leased workers, failing over when the coordinator disappears.
        """
        async with AsyncExitStack() as stack:
            if host is None:
                from mesh.libp2p_host import open_host

                host = await stack.enter_async_context(open_host(identity or Identity.generate()))
            nursery = await stack.enter_async_context(trio.open_nursery())
            client = cls(host, nursery, config)
            await nursery.start(client._reap_deadlines)
            try:
                for addr in peers:
                    await client.add_worker(addr)
                if bootstrap:
                    from nodes.mesh_client import join_mesh

                    client.mesh = await join_mesh(client, nursery, bootstrap, region=region)
                yield client
            finally:
                client._fail_all(UnavailableError("the client was closed before the task completed"))
                nursery.cancel_scope.cancel()

    async def add_worker(self, addr: str | None = None, *, peer: bytes | None = None) -> bytes:
        """Connect to a worker (by multiaddr, or by peer id when already connected)."""
        if addr is not None:
            peer = await self.host.connect(addr)
        if peer is None:
            raise ValueError("add_worker needs an address or a peer id")
        for link in self._links:
            if link.peer == peer and link.alive:
                return peer
        stream = await self.host.open_stream(peer, wire.PROTOCOL_ID)
        send, recv = trio.open_memory_channel[wire.TaskRecord | bytes](self.config.send_queue)
        link = _WorkerLink(peer=peer, stream=stream, send=send, recv=recv)
        self._links.append(link)
        self._nursery.start_soon(self._run_link, link)
        self._links_changed.set()
        self._links_changed = trio.Event()
        log.info("connected to worker %s", link.name)
        return peer

    def workers(self) -> list[bytes]:
        return [link.peer for link in self._links if link.alive]

    # ------------------------------------------------------------------ submit

    async def submit(
        self,
        kind: str,
        data: bytes = b"",
        params: dict[str, Any] | None = None,
        *,
        deadline: float | None = None,
    ) -> TaskHandle:
        """Send one task; ``deadline`` is seconds from now (default ``default_deadline_s``)."""
        pending = self._new_pending(kind, data, params, deadline)
        await self._dispatch(pending)
        await trio.lowlevel.checkpoint()
        return pending.handle

    async def submit_many(
        self,
        items: Iterable[tuple[str, bytes, dict[str, Any] | None]],
        *,
        deadline: float | None = None,
    ) -> list[TaskHandle]:
        """Send several tasks at once; queued together, they travel in as few frames as fit."""
        handles = []
        for kind, data, params in items:
            pending = self._new_pending(kind, data, params, deadline)
            await self._dispatch(pending)  # yields only when a send queue is full
            handles.append(pending.handle)
        await trio.lowlevel.checkpoint()
        return handles

    async def map(
        self,
        kind: str,
        inputs: Iterable[bytes],
        params: dict[str, Any] | None = None,
        *,
        deadline: float | None = None,
    ) -> list[bytes]:
        """Run ``kind`` over every input; results in input order. Raises the first error."""
        handles = await self.submit_many(((kind, d, params) for d in inputs), deadline=deadline)
        return [await h.result() for h in handles]

    async def run(
        self,
        kind: str,
        data: bytes = b"",
        params: dict[str, Any] | None = None,
        *,
        deadline: float | None = None,
    ) -> bytes:
        """Submit one task and wait for its verified output."""
        return await (await self.submit(kind, data, params, deadline=deadline)).result()

    def _new_pending(
        self, kind: str, data: bytes, params: dict[str, Any] | None, deadline: float | None
    ) -> _Pending:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"task data must be bytes, got {type(data).__name__}")
        data = bytes(data)
        params = dict(params or {})
        now = trio.current_time()
        budget = self.config.default_deadline_s if deadline is None else deadline
        if budget <= 0:
            raise ValueError("deadline must be a positive number of seconds")
        task_id = os.urandom(wire.TASK_ID_LEN)
        payload, enc = wire.compress_payload(data)
        framed = len(payload) + len(kind) + len(wire.packed_params(params)) + wire.RECORD_OVERHEAD
        if max(len(data), framed) > self.config.max_frame:
            # A frame over the worker's limit makes it reset the stream, failing every
            # task on it, and the resubmission would do the same to the next worker.
            raise LimitExceededError(
                f"task input of {len(data)} bytes does not fit in a frame of {self.config.max_frame} bytes"
            )
        record = wire.TaskRecord(task_id, kind, params, payload, enc, budget_ms=max(1, int(budget * 1000)))
        handle = TaskHandle(task_id, kind, now)
        handle._cancel_hook = self._cancel
        pending = _Pending(handle, record, wire.params_digest(params), wire.digest(data), now + budget)
        self._pending[task_id] = pending
        heapq.heappush(self._deadlines, (pending.deadline, next(self._seq), task_id))
        if self._reaper_scope is not None and pending.deadline < self._reaper_scope.deadline:
            self._reaper_scope.deadline = pending.deadline
        self.stats.submitted += 1
        return pending

    def set_placement(self, placer: Placer | None) -> None:
        """Let the control plane choose workers (e.g. from placement leases).

        ``placer(kind, candidates)`` gets the live workers as ``(peer id, tasks in flight)``
        pairs and returns the peer id to use, or None to fall back to least-loaded.
        """
        self._placer = placer

    def add_completion_hook(self, hook: CompletionHook) -> None:
        """Call ``hook(kind, worker, latency_s, outcome)`` when a task ends (for coordinators)."""
        self._completion_hooks.append(hook)

    def _pick_link(self, exclude: _WorkerLink | None = None, kind: str = "") -> _WorkerLink | None:
        alive = [link for link in self._links if link.alive and link is not exclude]
        if not alive:
            return None
        if self._placer is not None:
            chosen = self._placer(kind, [(link.peer, len(link.pending)) for link in alive])
            for link in alive:
                if link.peer == chosen:
                    return link
        start = next(self._rr) % len(alive)
        order = alive[start:] + alive[:start]
        return min(order, key=lambda link: len(link.pending))

    async def _dispatch(self, pending: _Pending, exclude: _WorkerLink | None = None) -> None:
        link = self._pick_link(exclude, pending.record.kind)
        if link is None:
            self._finish(pending, None, UnavailableError("no worker is connected; add one with add_worker()"))
            return
        pending.attempts += 1
        pending.link = link
        link.pending[pending.handle.task_id] = pending
        budget_ms = max(1, int((pending.deadline - trio.current_time()) * 1000))
        rec = pending.record
        record = wire.TaskRecord(rec.task_id, rec.kind, rec.params, rec.data, rec.enc, budget_ms)
        try:
            # Queue without yielding when there is room, so tasks submitted together
            # reach the writer together and travel in one frame.
            try:
                link.send.send_nowait(record)
            except trio.WouldBlock:
                await link.send.send(record)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The link died while we waited to queue; unless its failover already took
            # this task (and placed it elsewhere), resubmit it here.
            if link.pending.pop(pending.handle.task_id, None) is not None:
                await self._retry(pending, link, "worker connection closed")

    # ------------------------------------------------------------------ completion

    def _finish(self, pending: _Pending, output: bytes | None, error: P2C2RError | None) -> None:
        tid = pending.handle.task_id
        if self._pending.pop(tid, None) is None:
            return
        if pending.link is not None:
            pending.link.pending.pop(tid, None)
            pending.handle.worker = pending.link.peer
        if error is None:
            self.stats.verified += 1
            outcome = "ok"
        else:
            self.stats.failed += 1
            outcome = error.code
            if isinstance(error, TaskTimeoutError):
                self.stats.timeouts += 1
        now = trio.current_time()
        pending.handle._resolve(output, error, now)
        latency = now - pending.handle.submitted_at
        kind = pending.record.kind
        self.metrics.observe_task(kind, outcome, latency)
        if output is not None:
            self.metrics.bytes.labels("in").inc(len(output))
        worker = pending.link.peer if pending.link is not None else None
        for hook in self._completion_hooks:
            try:
                hook(kind, worker, latency, outcome)
            except Exception:  # a hook must never break result delivery
                log.exception("completion hook failed")

    def _cancel(self, handle: TaskHandle) -> None:
        pending = self._pending.get(handle.task_id)
        if pending is None:
            return
        link = pending.link
        self._finish(pending, None, CancelledTaskError("cancelled by the caller"))
        if link is not None and link.alive:
            try:
                link.send.send_nowait(wire.encode_cancels([handle.task_id]))
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # best effort: the worker's result will be dropped as late

    def _fail_all(self, error: P2C2RError) -> None:
        for tid in sorted(self._pending):
            pending = self._pending.get(tid)
            if pending is not None:
                self._finish(pending, None, type(error)(str(error)))

    async def _retry(self, pending: _Pending, failed: _WorkerLink, why: str) -> None:
        if pending.handle.task_id not in self._pending:
            return
        if trio.current_time() >= pending.deadline:
            self._finish(pending, None, TaskTimeoutError(f"deadline passed ({why})"))
            return
        if pending.attempts >= self.config.max_attempts:
            self._finish(pending, None, UnavailableError(f"gave up after {pending.attempts} attempts: {why}"))
            return
        self.stats.resubmitted += 1
        log.info("resubmitting %s %s after: %s", pending.record.kind, pending.handle.task_id.hex()[:8], why)
        await self._dispatch(pending, exclude=failed)

    async def _reap_deadlines(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """One task enforces every deadline (a heap), instead of one timer per task."""
        task_status.started()
        while True:
            with trio.CancelScope(
                deadline=self._deadlines[0][0] if self._deadlines else _NO_DEADLINE
            ) as scope:
                self._reaper_scope = scope
                await trio.sleep_forever()
            self._reaper_scope = None
            now = trio.current_time()
            while self._deadlines and self._deadlines[0][0] <= now:
                _, _, tid = heapq.heappop(self._deadlines)
                pending = self._pending.get(tid)
                if pending is not None and pending.deadline <= now:
                    where = f" on worker {pending.link.name}" if pending.link else ""
                    self._finish(
                        pending,
                        None,
                        TaskTimeoutError(
                            f"{pending.record.kind} task {tid.hex()[:8]} missed its deadline{where}; a late result will be dropped"
                        ),
                    )

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
        log.info("lost worker %s: %s", link.name, why)
        for tid in sorted(link.pending):
            # A dispatch blocked on this link's queue may have taken its task back meanwhile.
            pending = link.pending.pop(tid, None)
            if pending is not None:
                await self._retry(pending, link, why)

    async def _write_link(self, link: _WorkerLink) -> None:
        async for first in link.recv:
            parts: list[bytes] = []
            batch: list[wire.TaskRecord] = []
            size = 0
            item: wire.TaskRecord | bytes = first
            while True:
                if isinstance(item, bytes):
                    parts.append(item)
                elif item.task_id in self._pending:  # skip tasks cancelled or expired while queued
                    if batch and size + len(item.data) > self.config.max_batch_bytes:
                        # Never pile a big task onto a batch: the frame could pass max_frame.
                        await write_chunked(link.stream, wire.encode_tasks(batch))
                        batch, size = [], 0
                    batch.append(item)
                    size += len(item.data)
                if size >= self.config.max_batch_bytes or len(batch) >= self.config.max_batch_tasks:
                    break
                try:
                    item = link.recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            if batch:
                await write_chunked(link.stream, wire.encode_tasks(batch))
            for p in parts:
                await write_chunked(link.stream, p)

    async def _read_link(self, link: _WorkerLink) -> None:
        decoder = wire.FrameDecoder(self.config.max_frame)
        while True:
            data = await link.stream.read(self.config.read_chunk)
            if not data:
                return
            for body in decoder.feed(data):
                frame = wire.decode_frame(body, self.config.max_frame)
                if frame.type == "R":
                    for rec in frame.results:
                        await self._on_result(link, rec)
                elif frame.type == "E" and frame.error is not None:
                    log.warning("worker %s reported a protocol error: %s: %s", link.name, *frame.error)
                else:
                    raise ProtocolError(f"unexpected {frame.type!r} frame from a worker")

    async def _on_result(self, link: _WorkerLink, rec: wire.ResultRecord | wire.ErrorRecord) -> None:
        pending = link.pending.get(rec.task_id)
        if pending is None:
            # Late (deadline passed, cancelled) or never ours: drop it, never resolve twice.
            self.stats.late_dropped += 1
            return
        if isinstance(rec, wire.ErrorRecord):
            err = error_from_wire(rec.code, f"worker {link.name}: {rec.message}")
            if isinstance(err, RejectedError):
                link.pending.pop(rec.task_id, None)
                await self._retry(pending, link, rec.message)
            else:
                self._finish(pending, None, err)
            return
        try:
            if len(rec.output) > self.config.offload_hash_bytes:
                output, out_digest = await trio.to_thread.run_sync(self._open_output, rec)
            else:
                output, out_digest = self._open_output(rec)
            d = receipt_digest(
                pending.handle.task_id,
                pending.record.kind,
                pending.params_digest,
                pending.input_digest,
                out_digest,
                link.peer,
                rec.ts_ms,
            )
            verify_receipt(link.peer, d, rec.signature)
        except (VerificationError, ProtocolError) as exc:
            self.stats.verification_failures += 1
            self.metrics.verification.labels("bad_signature_or_binding").inc()
            log.warning("rejected a result from worker %s: %s", link.name, exc)
            self._finish(pending, None, VerificationError(f"result from worker {link.name} rejected: {exc}"))
            return
        self.metrics.verification.labels("signature_ok").inc()
        self._finish(pending, output, None)

    def _open_output(self, rec: wire.ResultRecord) -> tuple[bytes, bytes]:
        output = wire.decompress_payload(rec.output, rec.enc, self.config.max_frame)
        return output, wire.digest(output)


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
    ) -> concurrent.futures.Future[bytes]:
        """Hand a task to the client thread; returns at once with a future."""
        fut: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        client, token = self._client, self._token
        if client is None or token is None:
            fut.set_exception(UnavailableError("the client is closed"))
            return fut

        async def drive() -> None:
            try:
                handle = await client.submit(kind, data, params, deadline=deadline)
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
    ) -> bytes:
        """Submit and block until the verified output (or a typed error) is in."""
        return self.submit(kind, data, params, deadline=deadline).result()

    def map(
        self,
        kind: str,
        inputs: Iterable[bytes],
        params: dict[str, Any] | None = None,
        *,
        deadline: float | None = None,
    ) -> list[bytes]:
        futs = [self.submit(kind, d, params, deadline=deadline) for d in inputs]
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
