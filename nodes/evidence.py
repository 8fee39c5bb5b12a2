"""Passing on proof that a worker cheated: the ``/p2c2r/evidence/1.0.0`` protocol and an in-process bus.

When the gamer SDK catches a worker (``nodes.verification``), it holds an ``Evidence``:
the worker's signed wrong result beside what shows it wrong (``nodes.reputation``).
Evidence is checkable by anyone, so it can travel without trusting whoever carries it:

- **to worker nodes**, over ``/p2c2r/evidence/1.0.0``: one stream per piece of evidence,
  one length-prefixed frame each way (request: ``Evidence.to_wire()``; reply: msgpack
  ``[accepted, code, message]``). ``EvidenceService`` (run by every ``Worker``) reads it
  with a size cap and a read deadline, verifies it itself off the event loop
  (``verify_evidence``, re-running the kernel when that is cheap) and records the ban in
  the node's own ``Reputation``. The node does not refuse work from anyone because of
  it (a worker has no reason to); the ban matters to whoever *picks* workers, so it is
  kept where a coordinator on that node can read it (``Worker.reputation``).
- **to other gamers in the same process**, through an ``EvidenceBus``: each subscribed
  ``GamerClient`` verifies what it is told before banning, exactly as a node does.

Not done here: gossiping evidence mesh-wide over GossipSub (the control plane's topic)
and coordinators consulting node-level bans when they grant placement leases.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack
import trio

from mesh.errors import ConnectionLostError, ProtocolError, UnavailableError
from mesh.transport import Host, Stream
from nodes.reputation import (
    MAX_EVIDENCE_BYTES,
    Evidence,
    InvalidEvidenceError,
    Proof,
    Reputation,
    verify_evidence,
)
from tasks.registry import Registry

log = logging.getLogger("p2c2r.evidence")

PROTOCOL_ID = "/p2c2r/evidence/1.0.0"
_HEADER = struct.Struct(">I")
MAX_REPLY = 4096


@dataclass(frozen=True)
class EvidenceConfig:
    #: Largest evidence frame accepted.
    max_bytes: int = MAX_EVIDENCE_BYTES
    #: The whole request must arrive within this (slow senders are cut off).
    read_timeout_s: float = 10.0
    #: Pieces of evidence verified at once (each may re-run a kernel).
    max_concurrent: int = 2
    #: Re-run the kernel on the included input when its cost estimate allows it.
    recompute: bool = True


@dataclass
class EvidenceStats:
    received: int = 0
    accepted: int = 0
    refused: int = 0
    duplicates: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


async def _read_frame(stream: Stream, limit: int) -> bytes:
    buf = bytearray()
    need: int | None = None
    while True:
        if need is None and len(buf) >= 4:
            (need,) = _HEADER.unpack_from(buf)
            if need > limit:
                raise ProtocolError(f"evidence frame of {need} bytes exceeds the limit of {limit}")
        if need is not None and len(buf) >= 4 + need:
            return bytes(buf[4 : 4 + need])
        chunk = await stream.read(65536)
        if not chunk:
            raise ProtocolError("stream ended before the evidence frame was complete")
        buf += chunk


async def _write_frame(stream: Stream, body: bytes) -> None:
    await stream.write(_HEADER.pack(len(body)) + body)


async def verify_in_thread(evidence: Evidence, registry: Registry, recompute: bool = True) -> Proof:
    """``verify_evidence`` off the event loop (it may re-run a kernel); kinds marked
    ``inline`` (trivially cheap, e.g. echo) are checked on the loop, like their tasks."""
    if evidence.kind in registry and registry.get(evidence.kind).inline:
        await trio.lowlevel.checkpoint()
        return verify_evidence(evidence, registry, recompute)
    return await trio.to_thread.run_sync(verify_evidence, evidence, registry, recompute)


class EvidenceService:
    """Receives, verifies and records evidence on a node. ``host.set_stream_handler(
    PROTOCOL_ID, service.handle_stream)``; ``Worker.run`` does this."""

    def __init__(
        self,
        registry: Registry,
        reputation: Reputation | None = None,
        config: EvidenceConfig = EvidenceConfig(),
    ) -> None:
        self.registry = registry
        self.reputation = reputation if reputation is not None else Reputation()
        self.config = config
        self.stats = EvidenceStats()
        self._limiter = trio.CapacityLimiter(config.max_concurrent)

    async def handle_stream(self, stream: Stream) -> None:
        try:
            reply = await self._serve(stream)
            with trio.move_on_after(5):
                await _write_frame(stream, msgpack.packb(reply, use_bin_type=True))
            await stream.close()
        except ConnectionLostError as exc:
            log.debug("evidence stream lost: %s", exc)
        except Exception:  # per-stream boundary: a bad peer must never stop the node
            log.exception("evidence handler failed")
            await stream.reset()

    async def _serve(self, stream: Stream) -> list[object]:
        c = self.config
        self.stats.received += 1
        try:
            with trio.fail_after(c.read_timeout_s):
                body = await _read_frame(stream, c.max_bytes)
            ev = Evidence.from_wire(body, max_bytes=c.max_bytes)
        except trio.TooSlowError:
            self.stats.refused += 1
            return [False, "timeout", f"evidence not received within {c.read_timeout_s:g} s"]
        except ProtocolError as exc:
            self.stats.refused += 1
            return [False, exc.code, str(exc)[:MAX_REPLY]]
        if not self.reputation.first_sight(ev):
            self.stats.duplicates += 1
            return [True, "duplicate", "already known"]
        try:
            async with self._limiter:
                proof = await verify_in_thread(ev, self.registry, c.recompute)
        except InvalidEvidenceError as exc:
            self.stats.refused += 1
            log.info("refused evidence from %s: %s", stream.remote_peer.hex()[:12], exc)
            return [False, exc.code, str(exc)[:MAX_REPLY]]
        banned = self.reputation.apply_evidence(ev, proof, trio.current_time())
        self.stats.accepted += 1
        self.stats.by_reason[proof.value] = self.stats.by_reason.get(proof.value, 0) + 1
        return [True, proof.value, "banned" if banned else "recorded (not trusted enough to ban)"]


async def send_evidence(
    host: Host, peer: bytes, evidence: Evidence, timeout_s: float = 10.0
) -> tuple[bool, str]:
    """Hand ``evidence`` to ``peer``; returns ``(accepted, code)`` from its reply."""
    try:
        with trio.fail_after(timeout_s):
            stream = await host.open_stream(peer, PROTOCOL_ID)
            try:
                await _write_frame(stream, evidence.to_wire())
                await stream.close()
                body = await _read_frame(stream, MAX_REPLY)
            finally:
                await stream.reset()
    except trio.TooSlowError as exc:
        raise UnavailableError(f"peer did not take the evidence within {timeout_s:g} s") from exc
    try:
        reply = msgpack.unpackb(body, raw=False, max_str_len=MAX_REPLY, max_array_len=3)
        ok, code, _message = reply
    except Exception as exc:  # a stranger's reply: any decoding problem is a protocol error
        raise ProtocolError("malformed evidence reply") from exc
    if not isinstance(ok, bool) or not isinstance(code, str):
        raise ProtocolError("malformed evidence reply")
    return ok, code


#: ``callback(evidence, origin)``; origin is whatever the publisher passed (e.g. itself).
Subscriber = Callable[[Evidence, object], None]


class EvidenceBus:
    """Evidence shared between clients in one process (several gamers, a test harness).

    Subscribers are called on the trio loop they subscribed from (``run_sync_soon``), so
    a ``SyncGamerClient`` on its own thread is safe. A subscriber must verify what it
    gets before acting on it: the bus carries claims, not verdicts.
    """

    def __init__(self, history: int = 256) -> None:
        self._subs: list[tuple[Subscriber, trio.lowlevel.TrioToken]] = []
        self._history: deque[tuple[Evidence, object]] = deque(maxlen=history)
        self.published = 0

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Subscribe from a trio task; recent evidence is replayed to the newcomer."""
        token = trio.lowlevel.current_trio_token()
        entry = (callback, token)
        self._subs.append(entry)
        for ev, origin in list(self._history):
            token.run_sync_soon(callback, ev, origin)

        def unsubscribe() -> None:
            if entry in self._subs:
                self._subs.remove(entry)

        return unsubscribe

    def publish(self, evidence: Evidence, origin: object = None) -> None:
        self.published += 1
        self._history.append((evidence, origin))
        for callback, token in list(self._subs):
            try:
                token.run_sync_soon(callback, evidence, origin)
            except trio.RunFinishedError:
                self._subs = [s for s in self._subs if s[1] is not token]
