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

- **mesh-wide, over GossipSub** (``EvidenceGossip``, topic ``/p2c2r/evidence``): a node
  that verified evidence first-hand (from a gamer, over the stream above) re-signs it as
  its reporter, stamps it with the time and publishes it after a short random delay
  (skipped when another node published the same incident meanwhile). Every receiver
  screens it (size, decodes, signed by a reporter that is the gossip origin, not stale,
  not from a reporter whose evidence failed before) and then *re-verifies it itself*
  (``verify_evidence``, off the loop) inside GossipSub's asynchronous validator, before
  anything is delivered or forwarded: forged evidence stops at the first hop and bans no
  one. Verified evidence bans the accused in the node's ``Reputation``, which the node's
  coordinator consults for every lease (``nodes.scheduler.TrustView``).
"""

from __future__ import annotations

import logging
import random
import struct
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import msgpack
import trio

from mesh import clock
from mesh.errors import ConnectionLostError, ProtocolError, UnavailableError, VerificationError
from mesh.gossip import EVIDENCE_MAX_BYTES, EVIDENCE_TOPIC, AsyncGossipPort
from mesh.transport import Host, Stream
from nodes.reputation import (
    MAX_EVIDENCE_BYTES,
    Evidence,
    InvalidEvidenceError,
    Proof,
    Reputation,
    evidence_digest,
    incident_key,
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
        #: Incidents (``incident_key``) verified here, by whatever path, with their proof.
        self.incidents: OrderedDict[bytes, Proof] = OrderedDict()
        #: ``listener(evidence, proof)`` for evidence verified first-hand over the stream.
        self.listeners: list[Callable[[Evidence, Proof], None]] = []

    def remember(self, evidence: Evidence, proof: Proof) -> None:
        """Record a verified incident (bounded like ``Reputation``'s seen set)."""
        self.incidents[incident_key(evidence)] = proof
        while len(self.incidents) > self.reputation.config.max_seen_evidence:
            self.incidents.popitem(last=False)

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
        if not self.reputation.first_sight(ev) or incident_key(ev) in self.incidents:
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
        self.remember(ev, proof)
        self.stats.accepted += 1
        self.stats.by_reason[proof.value] = self.stats.by_reason.get(proof.value, 0) + 1
        for listener in list(self.listeners):
            try:
                listener(ev, proof)
            except Exception:  # a listener (e.g. gossip) must not fail the reply
                log.exception("evidence listener failed")
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


# --------------------------------------------------------------------------- gossip


@dataclass(frozen=True)
class EvidenceGossipConfig:
    #: Largest evidence message on the topic (bigger evidence is trimmed, else not gossiped).
    max_bytes: int = EVIDENCE_MAX_BYTES
    #: Evidence stamped (``created_ms``) longer ago than this is stale: dropped, counted.
    max_age_s: float = 600.0
    #: ... and stamped further than this in the future (reporter clock skew) likewise.
    max_skew_s: float = 60.0
    #: A first-hand node waits up to this (uniform) before publishing, and does not when
    #: another node published the same incident meanwhile (most incidents go out once).
    publish_jitter_s: float = 1.0
    #: Verifications running at once (each may re-run a kernel in a thread).
    max_concurrent: int = 2
    #: Distinct incidents being verified at once; more are refused ("overloaded").
    max_pending: int = 32
    #: Evidence from one reporter that fails verification this many times...
    reporter_strikes: int = 3
    #: ... gets its further messages refused unverified for this long.
    reporter_block_s: float = 3600.0
    #: Re-run the kernel when that is cheap (``verify_evidence``).
    recompute: bool = True
    #: Refused incidents remembered (so a replayed forgery is refused without work).
    max_refused: int = 4096


@dataclass
class EvidenceGossipStats:
    published: int = 0
    #: First-hand incidents not published because another node published them first.
    suppressed: int = 0
    #: First-hand evidence that does not fit ``max_bytes`` even trimmed: not gossiped.
    too_large: int = 0
    #: Incidents verified from gossip, and the bans they caused.
    accepted: int = 0
    banned: int = 0
    #: Messages dropped, by reason (unsigned, malformed, stale, invalid_evidence, ...).
    dropped: dict[str, int] = field(default_factory=dict)


class EvidenceGossip:
    """Evidence on GossipSub: publish what this node verified first-hand, verify and act
    on what others publish. ``await nursery.start(gossip.run)``; the verification and the
    ban happen in the topic's asynchronous validator, so only evidence this node verified
    itself is delivered and forwarded.

    ``wall_ms`` is the wall clock used for evidence timestamps (injected in tests);
    ``sign``/``peer_id`` are this node's identity (the reporter of what it publishes).
    """

    def __init__(
        self,
        port: AsyncGossipPort,
        service: EvidenceService,
        peer_id: bytes,
        sign: Callable[[bytes], bytes],
        config: EvidenceGossipConfig = EvidenceGossipConfig(),
        *,
        wall_ms: Callable[[], int] = clock.wall_ms,
        rng: random.Random | None = None,
    ) -> None:
        self.port = port
        self.service = service
        self.peer_id = peer_id
        self._sign = sign
        self.config = config
        self.stats = EvidenceGossipStats()
        self._wall_ms = wall_ms
        self._rng = rng or random.Random()
        self._limiter = trio.CapacityLimiter(config.max_concurrent)
        self._pending: dict[bytes, trio.Event] = {}
        self._refused: OrderedDict[bytes, str] = OrderedDict()
        self._strikes: dict[bytes, int] = {}
        self._blocked: dict[bytes, float] = {}
        self._nursery: trio.Nursery | None = None

    @property
    def reputation(self) -> Reputation:
        return self.service.reputation

    def counters(self) -> dict[str, int]:
        s = self.stats
        out = {
            "evidence_published": s.published,
            "evidence_suppressed": s.suppressed,
            "evidence_too_large": s.too_large,
            "evidence_accepted": s.accepted,
            "evidence_banned": s.banned,
        }
        out.update({f"evidence_dropped_{k}": v for k, v in sorted(s.dropped.items())})
        return out

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.port.subscribe_async(
                EVIDENCE_TOPIC, self._validate, self._on_message, max_bytes=self.config.max_bytes
            )
            self.service.listeners.append(self._on_first_hand)
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None
                if self._on_first_hand in self.service.listeners:
                    self.service.listeners.remove(self._on_first_hand)

    # ------------------------------------------------------------------ publishing

    def _on_first_hand(self, evidence: Evidence, proof: Proof) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._publish_later, evidence)

    async def _publish_later(self, evidence: Evidence) -> None:
        await trio.sleep(self._rng.uniform(0.0, self.config.publish_jitter_s))
        if self.service.incidents.get(incident_key(evidence)) is not None and self._heard(evidence):
            self.stats.suppressed += 1
            return
        await self.publish(evidence)

    def _heard(self, evidence: Evidence) -> bool:
        return incident_key(evidence) in self._heard_keys

    _heard_keys: set[bytes] = set()  # replaced per instance in publish/validate (see below)

    async def publish(self, evidence: Evidence) -> bool:
        """Sign ``evidence`` as this node, stamp it now, trim it to the topic's bound and
        publish it. Returns False when it cannot be made to fit (it is then not gossiped).

        Callers publish only evidence they verified themselves."""
        ev = await self.gossip_form(evidence)
        if ev is None:
            self.stats.too_large += 1
            log.info("evidence against %s is too large to gossip", evidence.accused.hex()[:12])
            return False
        self._mark_heard(ev)
        await self.port.publish(EVIDENCE_TOPIC, ev.to_wire())
        self.stats.published += 1
        return True

    async def gossip_form(self, evidence: Evidence) -> Evidence | None:
        """``evidence`` re-signed by this node with a fresh timestamp, at most
        ``max_bytes`` on the wire: outputs (then the reference) are left out when the kind
        is deterministic and a re-run still proves the accused output wrong."""
        base = replace(evidence, created_ms=self._wall_ms(), reporter=b"", reporter_sig=b"")
        candidates = [base]
        kind = self.service.registry.get(evidence.kind) if evidence.kind in self.service.registry else None
        if kind is not None and kind.deterministic and evidence.input is not None:
            ref = base.reference
            no_ref_out = replace(base, reference=None if ref is None else replace(ref, output=None))
            candidates.append(no_ref_out)
            candidates.append(replace(no_ref_out, bad=replace(base.bad, output=None)))
            candidates.append(replace(base, reference=None, bad=replace(base.bad, output=None)))
        for i, cand in enumerate(candidates):
            signed = cand.signed_by(self.peer_id, self._sign)
            if len(signed.to_wire()) > self.config.max_bytes:
                continue
            if i == 0:
                return signed  # same proof as what we verified, only re-signed
            try:
                async with self._limiter:
                    await verify_in_thread(signed, self.service.registry, self.config.recompute)
            except InvalidEvidenceError:
                continue  # trimmed too far to prove anything: try the next form
            return signed
        return None

    def _mark_heard(self, ev: Evidence) -> None:
        if "_heard_keys" not in self.__dict__:
            self._heard_keys = set()
        self._heard_keys.add(incident_key(ev))
        if len(self._heard_keys) > self.config.max_refused:
            self._heard_keys.pop()

    # ------------------------------------------------------------------ receiving

    def _on_message(self, origin: str, data: bytes) -> None:
        pass  # everything happens in the validator; delivery is only counted by the port

    def _drop(self, why: str) -> str:
        self.stats.dropped[why] = self.stats.dropped.get(why, 0) + 1
        return why

    async def _validate(self, origin: str, data: bytes) -> str | None:
        """GossipSub's validator: ``None`` accepts (deliver and forward), else a reason."""
        c = self.config
        try:
            ev = Evidence.from_wire(data, max_bytes=c.max_bytes)
        except ProtocolError:
            return self._drop("malformed")
        if not ev.reporter:
            return self._drop("unsigned")
        from mesh.identity import peer_id_to_str, verify  # py-libp2p: the node has it loaded

        try:
            if peer_id_to_str(ev.reporter) != origin:
                return self._drop("reporter_not_origin")
            verify(ev.reporter, evidence_digest(replace(ev, reporter_sig=b"")), ev.reporter_sig)
        except VerificationError:
            return self._drop("bad_signature")
        except Exception:  # a malformed reporter id: py-libp2p raises foreign types
            return self._drop("bad_signature")
        now_ms = self._wall_ms()
        if ev.created_ms < now_ms - c.max_age_s * 1000:
            return self._drop("stale")
        if ev.created_ms > now_ms + c.max_skew_s * 1000:
            return self._drop("future")
        now = trio.current_time()
        if self._blocked.get(ev.reporter, -1.0) > now:
            return self._drop("blocked_reporter")
        key = incident_key(ev)
        self._mark_heard(ev)
        if key in self.service.incidents:
            return None  # verified here before (first-hand or from gossip)
        if key in self._refused:
            self._strike(ev.reporter, now)
            return self._drop(self._refused[key])
        done = self._pending.get(key)
        if done is None:
            if len(self._pending) >= c.max_pending or self._nursery is None:
                return self._drop("overloaded")
            done = self._pending[key] = trio.Event()
            # In our own nursery: GossipSub's validation timeout must not cut a ban short.
            self._nursery.start_soon(self._verify, key, ev, done)
        await done.wait()
        if key in self.service.incidents:
            return None
        if key not in self._refused:
            return self._drop("overloaded")  # the verification was cut short (shutdown)
        self._strike(ev.reporter, now)
        return self._drop(self._refused[key])

    async def _verify(self, key: bytes, ev: Evidence, done: trio.Event) -> None:
        try:
            try:
                async with self._limiter:
                    proof = await verify_in_thread(ev, self.service.registry, self.config.recompute)
            except InvalidEvidenceError as exc:
                log.info("refused gossiped evidence from %s: %s", ev.reporter.hex()[:12], exc)
                self._refused[key] = exc.code
                while len(self._refused) > self.config.max_refused:
                    self._refused.popitem(last=False)
                return
            now = trio.current_time()
            banned = self.reputation.apply_evidence(ev, proof, now)
            self.service.remember(ev, proof)
            self.stats.accepted += 1
            if banned is not None:
                self.stats.banned += 1
                log.warning("banned worker %s on gossiped evidence (%s)", ev.accused.hex()[:12], proof.value)
        finally:
            self._pending.pop(key, None)
            done.set()

    def _strike(self, reporter: bytes, now: float) -> None:
        n = self._strikes.get(reporter, 0) + 1
        self._strikes[reporter] = n
        if n >= self.config.reporter_strikes:
            self._blocked[reporter] = now + self.config.reporter_block_s
            self._strikes.pop(reporter, None)
        if len(self._strikes) > self.config.max_refused:
            self._strikes.clear()
        if len(self._blocked) > self.config.max_refused:
            self._blocked = {p: t for p, t in self._blocked.items() if t > now}
