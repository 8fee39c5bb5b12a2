"""Reputation, bans and evidence: what this node believes about each peer, and why.

Three parts, all sans-IO (no clock, no network, no global randomness):

``Reputation``
    A decaying local trust score per peer in ``[0, 1]``. A score moves toward 1 with every
    *independently verified* result (a duplicate that agreed, a known-answer probe that
    passed) and decays exponentially toward ``prior`` in virtual time with half-life
    ``half_life_s``. New identities start at ``initial`` (default 0: no trust), so a
    banned peer that rejoins under a fresh key starts over at the heaviest level of
    checking and must re-earn trust with honest work before checks relax.

    A peer that is caught is banned until ``now + ban duration``; each further offence by
    the same key doubles the duration (``ban_base_s * ban_factor**(offences-1)``, capped
    at ``ban_max_s``). Bans expire with time; an expired ban leaves the score at 0.

``Evidence``
    A self-contained, transferable proof that a worker signed a wrong result: the task
    (id, kind, parameters as sent, input digest and, when small, the input itself), the
    worker's signed receipt (output digest, timestamp, signature or batch seal, and the output when
    small) and optionally a *reference*: another worker's signed result for the same
    (kind, parameters, input). ``to_wire``/``from_wire`` are strict msgpack.
    ``verify_evidence`` lets any node check it for itself: the signatures via
    ``tasks.receipt``, then that the output is wrong, by (strongest first)

    * ``Proof.SELF_CHECK``: the kind's cheap self-consistency check rejects the signed
      output against the signed-for input (definitive, cheap);
    * ``Proof.RECOMPUTED``: re-running the kernel on the included input gives an output
      that is not equivalent (definitive; only when ``recompute`` and the input is small);
    * ``Proof.CONFLICT``: a second, validly signed result for the same task content
      disagrees. This proves that *one of the two signers* lied, not which one, so
      ``Reputation.on_evidence`` bans on it only when it already trusts the reference
      signer (two colluding keys could otherwise frame an honest worker).

    Evidence that proves nothing raises ``InvalidEvidenceError``.

Invariants: scores stay in ``[0, 1]``; the peer table holds at most ``max_peers`` entries
(the least-informative, unbanned record is evicted first, so a flood of fresh keys
cannot push out a ban); every ban has an expiry; iteration is always in sorted peer order,
so equal inputs give equal outputs.
"""

from __future__ import annotations

import enum
import hashlib
import math
import struct
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

import msgpack

from mesh import wire
from mesh.errors import P2C2RError, ProtocolError, VerificationError
from tasks.receipt import MAX_SEAL_LEN, is_seal_shaped, receipt_digest, verify_receipt
from tasks.registry import Registry

__all__ = [
    "EVIDENCE_VERSION",
    "Evidence",
    "InvalidEvidenceError",
    "PeerRecord",
    "PeerState",
    "Proof",
    "Reputation",
    "ReputationConfig",
    "ReputationTrust",
    "SignedResult",
    "evidence_digest",
    "incident_key",
    "make_evidence",
    "verify_evidence",
]

EVIDENCE_VERSION: Final = 1
#: Outputs and inputs larger than this travel as digests only (the proof is then weaker).
MAX_EVIDENCE_BLOB: Final = 1024 * 1024
MAX_EVIDENCE_BYTES: Final = 3 * MAX_EVIDENCE_BLOB + 64 * 1024
MAX_PEER_ID_LEN: Final = 128
MAX_REASON_LEN: Final = 64
SIGNATURE_LEN: Final = 64
DIGEST_LEN: Final = 32
_EVIDENCE_DOMAIN: Final = b"p2c2r/evidence/v1\x00"


class InvalidEvidenceError(VerificationError):
    """Evidence that is malformed, badly signed, or does not show the result is wrong."""

    code = "invalid_evidence"


class Proof(enum.Enum):
    """How strongly a piece of evidence shows that the accused output is wrong."""

    SELF_CHECK = "self_check"
    RECOMPUTED = "recomputed"
    CONFLICT = "conflict"


# --------------------------------------------------------------------------- evidence


@dataclass(frozen=True, slots=True)
class SignedResult:
    """One worker's signed receipt for a task (``output`` only when small enough to ship)."""

    task_id: bytes
    worker: bytes
    output_digest: bytes
    ts_ms: int
    signature: bytes
    output: bytes | None = None

    def to_wire(self) -> list[Any]:
        return [self.task_id, self.worker, self.output_digest, self.ts_ms, self.signature, self.output]

    @classmethod
    def from_wire(cls, obj: object) -> SignedResult:
        if not isinstance(obj, list) or len(obj) != 6:
            raise ProtocolError("signed result must be a list of 6 fields")
        tid, worker, odig, ts, sig, out = obj
        return cls(
            task_id=_want_bytes(tid, "task id", wire.TASK_ID_LEN, exact=True),
            worker=_want_bytes(worker, "worker peer id", MAX_PEER_ID_LEN),
            output_digest=_want_bytes(odig, "output digest", DIGEST_LEN, exact=True),
            ts_ms=_want_u63(ts, "timestamp"),
            signature=_want_signature(sig),
            output=None if out is None else _want_bytes(out, "output", MAX_EVIDENCE_BLOB),
        )


@dataclass(frozen=True, slots=True)
class Evidence:
    """A worker's signed result beside what shows it wrong; checkable by anyone.

    ``params`` are the parameters exactly as sent on the wire (their digest is what the
    worker signed); ``input`` is the task input when at most ``MAX_EVIDENCE_BLOB`` bytes.
    ``reporter``/``reporter_sig`` are optional: the accusing node's peer id and its
    signature over ``evidence_digest`` (lets receivers rate-limit or distrust accusers).
    """

    kind: str
    params: dict[str, Any]
    input_digest: bytes
    bad: SignedResult
    reason: str
    input: bytes | None = None
    reference: SignedResult | None = None
    created_ms: int = 0
    reporter: bytes = b""
    reporter_sig: bytes = b""

    @property
    def accused(self) -> bytes:
        return self.bad.worker

    def _body(self) -> list[Any]:
        return [
            EVIDENCE_VERSION,
            self.kind,
            self.params,
            self.input_digest,
            self.input,
            self.bad.to_wire(),
            None if self.reference is None else self.reference.to_wire(),
            self.reason,
            self.created_ms,
            self.reporter,
        ]

    def to_wire(self) -> bytes:
        """Strict msgpack; ``Evidence.from_wire(ev.to_wire()) == ev``."""
        packed: bytes = msgpack.packb([*self._body(), self.reporter_sig], use_bin_type=True)
        return packed

    @classmethod
    def from_wire(cls, data: bytes, *, max_bytes: int = MAX_EVIDENCE_BYTES) -> Evidence:
        """Decode evidence from a stranger; anything malformed is a ``ProtocolError``."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ProtocolError(f"evidence must be bytes, got {type(data).__name__}")
        if len(data) > max_bytes:
            raise ProtocolError(f"evidence of {len(data)} bytes exceeds the limit of {max_bytes}")
        try:
            obj = msgpack.unpackb(
                bytes(data),
                raw=False,
                use_list=True,
                strict_map_key=True,
                max_str_len=MAX_EVIDENCE_BLOB,
                max_bin_len=MAX_EVIDENCE_BLOB,
                max_array_len=wire.MAX_PARAMS,
                max_map_len=wire.MAX_PARAMS,
                max_ext_len=0,
            )
        except Exception as exc:  # msgpack raises a zoo of ValueError/TypeError/ExtraData subclasses
            raise ProtocolError(f"evidence is not valid msgpack: {type(exc).__name__}") from None
        if not isinstance(obj, list) or len(obj) != 11:
            raise ProtocolError("evidence must be a list of 11 fields")
        version, kind, params, idig, inp, bad, ref, reason, created, reporter, rsig = obj
        if isinstance(version, bool) or version != EVIDENCE_VERSION:
            raise ProtocolError(f"evidence version {version!r} is not supported")
        if not isinstance(kind, str) or not 0 < len(kind) <= wire.MAX_KIND_LEN:
            raise ProtocolError("evidence kind must be a short string")
        if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
            raise ProtocolError("evidence params must be a map with string keys")
        if not isinstance(reason, str) or len(reason) > MAX_REASON_LEN:
            raise ProtocolError("evidence reason must be a short string")
        reporter_b = _want_bytes(reporter, "reporter", MAX_PEER_ID_LEN)
        rsig_b = _want_bytes(rsig, "reporter signature", SIGNATURE_LEN)
        if len(rsig_b) not in (0, SIGNATURE_LEN) or bool(reporter_b) != bool(rsig_b):
            raise ProtocolError("evidence reporter and its signature must come together")
        return cls(
            kind=kind,
            params=params,
            input_digest=_want_bytes(idig, "input digest", DIGEST_LEN, exact=True),
            bad=SignedResult.from_wire(bad),
            reason=reason,
            input=None if inp is None else _want_bytes(inp, "input", MAX_EVIDENCE_BLOB),
            reference=None if ref is None else SignedResult.from_wire(ref),
            created_ms=_want_u63(created, "created time"),
            reporter=reporter_b,
            reporter_sig=rsig_b,
        )

    def signed_by(self, reporter: bytes, sign: Any) -> Evidence:
        """A copy signed by the reporting node; ``sign`` is e.g. ``Identity.sign``."""
        unsigned = replace(self, reporter=reporter, reporter_sig=b"")
        sig = sign(evidence_digest(unsigned))
        return replace(unsigned, reporter_sig=bytes(sig))


def evidence_digest(ev: Evidence) -> bytes:
    """Domain-separated digest of everything but the reporter's signature."""
    body: bytes = msgpack.packb(ev._body(), use_bin_type=True)
    return hashlib.sha256(_EVIDENCE_DOMAIN + struct.pack(">I", len(body)) + body).digest()


def incident_key(ev: Evidence) -> bytes:
    """Names the accused signed result, whoever reports it and however it is trimmed:
    two pieces of evidence about the same wrong answer share it (one offence, verified once)."""
    b = ev.bad
    h = hashlib.sha256(b"p2c2r/incident/v1\x00")
    for part in (b.worker, b.task_id, b.output_digest, b.signature):
        h.update(struct.pack(">I", len(part)) + part)
    return h.digest()


def _want_bytes(x: Any, what: str, limit: int, *, exact: bool = False) -> bytes:
    if not isinstance(x, bytes) or len(x) > limit or (exact and len(x) != limit):
        size = f"exactly {limit}" if exact else f"at most {limit}"
        raise ProtocolError(f"evidence {what} must be {size} bytes")
    return x


def _want_signature(x: Any) -> bytes:
    """A plain 64-byte receipt signature, or the seal of a result signed in a batch
    (signature, leaf index and count, Merkle path): ``verify_receipt`` checks either."""
    sig = _want_bytes(x, "signature", MAX_SEAL_LEN)
    if not is_seal_shaped(sig):
        raise ProtocolError(
            f"evidence signature of {len(sig)} bytes is neither a signature ({SIGNATURE_LEN}) nor a receipt seal"
        )
    return sig


def _want_u63(x: Any, what: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < 2**63:
        raise ProtocolError(f"evidence {what} must be a non-negative 64-bit integer")
    return x


def _check_signed(ev: Evidence, res: SignedResult, params_digest: bytes, what: str) -> None:
    d = receipt_digest(
        res.task_id, ev.kind, params_digest, ev.input_digest, res.output_digest, res.worker, res.ts_ms
    )
    try:
        verify_receipt(res.worker, d, res.signature)
    except VerificationError as exc:
        raise InvalidEvidenceError(f"{what}: {exc}") from exc
    except Exception as exc:  # a malformed peer id makes py-libp2p raise foreign types
        raise InvalidEvidenceError(f"{what}: the worker peer id is not a valid key") from exc
    if res.output is not None and wire.digest(res.output) != res.output_digest:
        raise InvalidEvidenceError(f"{what}: the included output does not match its signed digest")


def verify_evidence(
    evidence: Evidence,
    registry: Registry,
    recompute: bool,
    *,
    max_recompute_bytes: int = MAX_EVIDENCE_BLOB,
    max_recompute_cost: float = 2000.0,
) -> Proof:
    """Check ``evidence`` independently; return how strongly it proves the output wrong.

    Signatures (accused, reference, reporter when present) are checked first. Then the
    strongest available proof wins: the kind's self-check on the accused output, then
    (only when ``recompute``, the input is included, at most ``max_recompute_bytes`` and
    its cost estimate at most ``max_recompute_cost`` work units) a re-run of the kernel,
    then a conflicting reference result. Raises ``InvalidEvidenceError`` otherwise, and
    also when a re-run shows the accused output is in fact right.
    """
    ev = evidence
    try:
        kind = registry.get(ev.kind)
        data_len = len(ev.input) if ev.input is not None else 0
        params = kind.validate_params(ev.params, data_len)
    except P2C2RError as exc:
        raise InvalidEvidenceError(f"evidence names an invalid task: {exc}") from exc
    if ev.input is not None and wire.digest(ev.input) != ev.input_digest:
        raise InvalidEvidenceError("the included input does not match its digest")
    try:
        pdig = wire.params_digest(ev.params)
    except (TypeError, ValueError) as exc:
        raise InvalidEvidenceError("evidence params cannot be digested") from exc
    _check_signed(ev, ev.bad, pdig, "accused result")
    if ev.reference is not None:
        if ev.reference.worker == ev.bad.worker:
            raise InvalidEvidenceError("the reference result is by the accused worker itself")
        _check_signed(ev, ev.reference, pdig, "reference result")
    if ev.reporter:
        from mesh import identity  # imports py-libp2p; only needed for signed evidence

        try:
            identity.verify(ev.reporter, evidence_digest(replace(ev, reporter_sig=b"")), ev.reporter_sig)
        except VerificationError as exc:
            raise InvalidEvidenceError(f"reporter signature: {exc}") from exc
        except Exception as exc:  # malformed reporter id: py-libp2p raises foreign types
            raise InvalidEvidenceError("reporter peer id is not a valid key") from exc

    bad_out = ev.bad.output
    if ev.input is not None and bad_out is not None and not _safe(kind.self_check, params, ev.input, bad_out):
        return Proof.SELF_CHECK
    if recompute and ev.input is not None and len(ev.input) <= max_recompute_bytes:
        if _safe_cost(kind.cost, params, len(ev.input)) <= max_recompute_cost:
            try:
                honest = kind.execute(params, ev.input)
            except P2C2RError as exc:
                raise InvalidEvidenceError(f"the kernel refuses the evidence input: {exc}") from exc
            if wire.digest(honest) == ev.bad.output_digest:
                raise InvalidEvidenceError("re-running the kernel gives the accused output: it is right")
            if bad_out is not None:
                if _safe(kind.equivalent, params, honest, bad_out):
                    raise InvalidEvidenceError("the accused output is equivalent to a re-run")
                return Proof.RECOMPUTED
            if kind.deterministic:
                return Proof.RECOMPUTED
    ref = ev.reference
    if ref is not None and ref.output_digest != ev.bad.output_digest:
        if ref.output is not None and bad_out is not None:
            if not _safe(kind.equivalent, params, ref.output, bad_out):
                return Proof.CONFLICT
        elif kind.deterministic:
            return Proof.CONFLICT
    raise InvalidEvidenceError("the evidence does not show that the accused output is wrong")


def _safe(check: Any, params: dict[str, Any], a: bytes, b: bytes) -> bool:
    """Run a kind's check on stranger bytes; a crash counts as 'does not pass'."""
    try:
        return bool(check(params, a, b))
    except Exception:  # a check crashing on hostile bytes is a failed check, not our crash
        return False


def _safe_cost(cost: Any, params: dict[str, Any], n: int) -> float:
    try:
        c = float(cost(params, n))
    except Exception:  # an estimate that cannot be made is treated as too expensive
        return math.inf
    return c if math.isfinite(c) else math.inf


# --------------------------------------------------------------------------- reputation


@dataclass(frozen=True)
class ReputationConfig:
    #: Score of a key never seen before (new identities get the most checking).
    initial: float = 0.0
    #: Scores decay toward this in virtual time.
    prior: float = 0.0
    #: Half-life of the decay toward ``prior``, in seconds of virtual time.
    half_life_s: float = 6 * 3600.0
    #: Fraction of the remaining distance to 1 gained per independently verified result.
    gain: float = 0.02
    #: Fraction of the score lost on a soft fault (bad signature, unprovable disagreement).
    soft_loss: float = 0.5
    ban_base_s: float = 3600.0
    ban_factor: float = 2.0
    ban_max_s: float = 7 * 24 * 3600.0
    #: CONFLICT evidence from gossip bans only when we trust the reference signer this much.
    conflict_trust: float = 0.5
    max_peers: int = 100_000
    #: Evidence kept per banned peer, to pass on to nodes that join later.
    max_evidence_per_peer: int = 2
    #: Digests of gossiped evidence already handled (so a flood is verified once).
    max_seen_evidence: int = 4096


@dataclass
class PeerRecord:
    score: float
    updated: float
    verified: int = 0
    offences: int = 0
    banned_until: float = -math.inf
    evidence: list[Evidence] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PeerState:
    """One peer's record as it survives a restart (``Reputation.export``/``restore``).

    Times are relative to the ``now`` of the export, so a shell can store them against
    any clock: ``age_s`` since the score was last updated (it keeps decaying across the
    downtime), ``ban_left_s`` until the ban ends (0: not banned). Evidence is not kept.
    """

    peer: bytes
    score: float
    age_s: float
    verified: int = 0
    offences: int = 0
    ban_left_s: float = 0.0


class Reputation:
    """Local trust scores, bans and evidence. Sans-IO: every call takes ``now``."""

    def __init__(self, config: ReputationConfig = ReputationConfig()) -> None:
        self.config = config
        self._peers: OrderedDict[bytes, PeerRecord] = OrderedDict()
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._rate = math.log(2) / config.half_life_s if config.half_life_s > 0 else 0.0
        #: Bumped by every change of a score, ban or offence count (persistence saves on change).
        self.changes = 0
        #: Bumped whenever a ban starts, is extended or its record is forgotten (not when a
        #: ban merely expires: that follows from ``ban_end``). A caller caching who is banned
        #: (``VerificationCore``'s eligible workers) rebuilds when it moves and otherwise only
        #: at the earliest ``ban_end`` it saw.
        self.ban_version = 0
        #: Every peer with a ban on record (active or expired) -> when it ends, so the queries
        #: over bans (``banned``, ``next_deadline``) scan the banned, not every peer seen.
        self._ban_ends: dict[bytes, float] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def record(self, peer: bytes) -> PeerRecord | None:
        return self._peers.get(peer)

    def _get(self, peer: bytes, now: float) -> PeerRecord:
        rec = self._peers.get(peer)
        if rec is None:
            if len(self._peers) >= self.config.max_peers:
                self._evict(now)
            rec = PeerRecord(score=self.config.initial, updated=now)
            self._peers[peer] = rec
        else:
            self._peers.move_to_end(peer)
            self._decay(rec, now)
        return rec

    def _decay(self, rec: PeerRecord, now: float) -> None:
        dt = now - rec.updated
        if dt > 0:
            p = self.config.prior
            rec.score = p + (rec.score - p) * math.exp(-self._rate * dt)
            rec.updated = now

    def _evict(self, now: float) -> None:
        # Least-recently-touched unbanned record goes first; bans are never forgotten early.
        for peer, rec in self._peers.items():
            if rec.banned_until <= now:
                del self._peers[peer]
                self._forget_ban(peer)
                return
        peer, _ = self._peers.popitem(last=False)
        self._forget_ban(peer)

    def _forget_ban(self, peer: bytes) -> None:
        if self._ban_ends.pop(peer, None) is not None:
            self.ban_version += 1

    def _set_ban(self, peer: bytes, rec: PeerRecord, until: float) -> None:
        if until > rec.banned_until:
            rec.banned_until = until
            self._ban_ends[peer] = until
            self.ban_version += 1

    def trust(self, peer: bytes, now: float) -> float:
        """The decayed score in ``[0, 1]``; 0 while banned."""
        rec = self._peers.get(peer)
        if rec is None:
            return self.config.initial
        if rec.banned_until > now:
            return 0.0
        dt = max(0.0, now - rec.updated)
        p = self.config.prior
        return p + (rec.score - p) * math.exp(-self._rate * dt)

    def is_banned(self, peer: bytes, now: float) -> bool:
        rec = self._peers.get(peer)
        return rec is not None and rec.banned_until > now

    def standing(self, peer: bytes, now: float) -> float | None:
        """``None`` while ``peer`` is banned, else ``trust(peer, now)``: the two questions a
        placement asks of every candidate, in one look-up."""
        rec = self._peers.get(peer)
        if rec is None:
            return self.config.initial
        if rec.banned_until > now:
            return None
        dt = max(0.0, now - rec.updated)
        p = self.config.prior
        return p + (rec.score - p) * math.exp(-self._rate * dt)

    def ban_end(self, peer: bytes) -> float:
        """When ``peer``'s ban ends (``-inf`` if it never had one); banned while ``now`` is before it."""
        return self._ban_ends.get(peer, -math.inf)

    def banned(self, now: float) -> list[tuple[bytes, float]]:
        """``(peer, banned_until)`` for every active ban, sorted by peer id."""
        return sorted((p, until) for p, until in self._ban_ends.items() if until > now)

    def record_verified(self, peer: bytes, now: float, weight: float = 1.0) -> float:
        """An independently verified good result from ``peer``; returns the new score."""
        rec = self._get(peer, now)
        if rec.banned_until > now:
            return 0.0
        g = 1.0 - (1.0 - self.config.gain) ** max(0.0, weight)
        rec.score = min(1.0, rec.score + g * (1.0 - rec.score))
        rec.verified += 1
        self.changes += 1
        return rec.score

    def record_fault(self, peer: bytes, now: float) -> float:
        """A soft fault (no transferable proof): cut the score, no ban."""
        rec = self._get(peer, now)
        rec.score *= 1.0 - self.config.soft_loss
        self.changes += 1
        return rec.score

    def ban(
        self, peer: bytes, now: float, evidence: Evidence | None = None, *, duration_s: float | None = None
    ) -> float:
        """Ban ``peer`` (doubling per offence); returns when the ban ends.

        ``duration_s`` replaces the doubling schedule for a lighter local ban (e.g. an
        unresponsive peer); it does not count as an offence.
        """
        c = self.config
        rec = self._get(peer, now)
        self.changes += 1
        if duration_s is not None:
            rec.score = 0.0
            self._set_ban(peer, rec, now + duration_s)
            return rec.banned_until
        if evidence is not None:
            rec.evidence = [*rec.evidence, evidence][-c.max_evidence_per_peer :]
        if rec.banned_until > now and evidence is not None and rec.offences > 0:
            return rec.banned_until  # one episode of cheating is one offence
        rec.offences += 1
        rec.score = 0.0
        duration = min(c.ban_max_s, c.ban_base_s * c.ban_factor ** (rec.offences - 1))
        self._set_ban(peer, rec, now + duration)
        return rec.banned_until

    def evidence_for(self, peer: bytes) -> list[Evidence]:
        rec = self._peers.get(peer)
        return list(rec.evidence) if rec else []

    def on_evidence(
        self, evidence: Evidence, registry: Registry, now: float, *, recompute: bool = True
    ) -> Proof | None:
        """Gossiped evidence: verify it ourselves and ban the accused if it holds.

        Returns the proof when a ban was applied, ``None`` when this evidence was already
        handled or is a CONFLICT whose reference signer we do not trust enough. Raises
        ``InvalidEvidenceError`` for evidence that proves nothing (the caller may then
        distrust whoever sent it).
        """
        if not self.first_sight(evidence):
            return None
        return self.apply_evidence(evidence, verify_evidence(evidence, registry, recompute), now)

    def first_sight(self, evidence: Evidence) -> bool:
        """Remember ``evidence``; False when it was seen before (verify it only once)."""
        key = evidence_digest(evidence)
        if key in self._seen:
            return False
        self._seen[key] = None
        while len(self._seen) > self.config.max_seen_evidence:
            self._seen.popitem(last=False)
        return True

    def apply_evidence(self, evidence: Evidence, proof: Proof, now: float) -> Proof | None:
        """Act on evidence already verified (``verify_evidence`` gave ``proof``), e.g. in
        a worker thread: ban the accused, or only cut its score for a CONFLICT whose
        reference signer is not trusted enough. Returns the proof when it banned."""
        if proof is Proof.CONFLICT:
            ref = evidence.reference
            assert ref is not None
            if self.trust(ref.worker, now) < self.config.conflict_trust:
                self.record_fault(evidence.accused, now)
                return None
        self.ban(evidence.accused, now, evidence)
        return proof

    def export(self, now: float, limit: int | None = None) -> list[PeerState]:
        """The records worth keeping across a restart: every active ban, every peer with
        an offence on file, every score away from ``prior``; bans first, then by score,
        at most ``limit`` (default ``max_peers``). Evidence is not exported."""
        c = self.config
        out: list[tuple[tuple[int, float, bytes], PeerState]] = []
        for peer, rec in self._peers.items():
            score = self.trust(peer, now) if rec.banned_until <= now else 0.0
            if rec.banned_until <= now and rec.offences == 0 and abs(score - c.prior) < 1e-4:
                continue
            left = max(0.0, rec.banned_until - now) if math.isfinite(rec.banned_until) else 0.0
            st = PeerState(peer, score, 0.0, rec.verified, rec.offences, left)
            out.append(((0 if left > 0 else 1, -score, peer), st))
        out.sort(key=lambda x: x[0])
        return [st for _, st in out[: c.max_peers if limit is None else limit]]

    def restore(self, states: list[PeerState], now: float) -> int:
        """Load exported records (e.g. read back from a file): returns how many were taken.

        Values are clamped, not trusted: scores to ``[0, 1]``, bans to ``ban_max_s`` from
        ``now``; a record already in the table keeps its score and gains the longer ban
        and the larger offence count. Records with non-finite numbers are skipped.
        """
        c = self.config
        taken = 0
        for st in states:
            nums = (st.score, st.age_s, st.ban_left_s)
            if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in nums):
                continue
            if not isinstance(st.peer, bytes) or not 0 < len(st.peer) <= MAX_PEER_ID_LEN:
                continue
            until = now + min(st.ban_left_s, c.ban_max_s) if st.ban_left_s > 0 else -math.inf
            existing = self._peers.get(st.peer)
            if existing is not None:
                self._set_ban(st.peer, existing, until)
                existing.offences = max(existing.offences, max(0, int(st.offences)))
            else:
                if len(self._peers) >= c.max_peers:
                    self._evict(now)
                rec = self._peers[st.peer] = PeerRecord(
                    score=min(1.0, max(0.0, float(st.score))),
                    updated=now - max(0.0, float(st.age_s)),
                    verified=max(0, int(st.verified)),
                    offences=max(0, int(st.offences)),
                )
                self._set_ban(st.peer, rec, until)
            taken += 1
        if taken:
            self.changes += 1
        return taken

    def next_deadline(self, now: float) -> float | None:
        """When the earliest active ban ends (a shell may re-admit the peer then)."""
        ends = [until for until in self._ban_ends.values() if until > now]
        return min(ends) if ends else None


class ReputationTrust:
    """A ``Reputation`` as the coordinator's ``nodes.scheduler.TrustView`` (peer ids as
    base58 strings, as the control plane names them).

    ``observed`` (a gamer verified a result of this worker) counts as ``observe_weight`` of
    an independently verified result, at most once per worker per ``observe_interval_s``:
    gamers are strangers too, so a flood of reports from one of them moves a score slowly.
    """

    def __init__(
        self,
        reputation: Reputation,
        *,
        observe_weight: float = 0.25,
        observe_interval_s: float = 5.0,
        max_ids: int = 65_536,
    ) -> None:
        self.reputation = reputation
        self.observe_weight = observe_weight
        self.observe_interval_s = observe_interval_s
        self._ids: OrderedDict[str, bytes | None] = OrderedDict()
        self._last_observed: OrderedDict[str, float] = OrderedDict()
        self._max_ids = max_ids

    def _peer(self, worker: str) -> bytes | None:
        pid = self._ids.get(worker)
        if pid is None and worker not in self._ids:
            from mesh.identity import peer_id_from_str  # py-libp2p: only where ids are strings

            try:
                pid = peer_id_from_str(worker)
            except Exception:  # a name that is no peer id has no reputation (trust 0)
                pid = None
            self._ids[worker] = pid
            if len(self._ids) > self._max_ids:
                self._ids.popitem(last=False)
        return pid

    def is_banned(self, worker: str, now: float) -> bool:
        pid = self._peer(worker)
        return pid is not None and self.reputation.is_banned(pid, now)

    def trust(self, worker: str, now: float) -> float:
        pid = self._peer(worker)
        return self.reputation.config.initial if pid is None else self.reputation.trust(pid, now)

    def standing(self, worker: str, now: float) -> float | None:
        pid = self._peer(worker)
        return self.reputation.config.initial if pid is None else self.reputation.standing(pid, now)

    def observed(self, worker: str, now: float) -> None:
        last = self._last_observed.get(worker)
        if last is not None and now - last < self.observe_interval_s:
            return
        pid = self._peer(worker)
        if pid is None:
            return
        self._last_observed[worker] = now
        self._last_observed.move_to_end(worker)
        if len(self._last_observed) > self._max_ids:
            self._last_observed.popitem(last=False)
        self.reputation.record_verified(pid, now, weight=self.observe_weight)


def make_evidence(
    *,
    kind: str,
    params: Mapping[str, Any],
    data: bytes,
    bad: SignedResult,
    reason: str,
    reference: SignedResult | None = None,
    created_ms: int = 0,
    max_blob: int = MAX_EVIDENCE_BLOB,
) -> Evidence:
    """Build evidence, shipping input and outputs only when each is at most ``max_blob``."""

    def trim(r: SignedResult | None) -> SignedResult | None:
        if r is None or r.output is None or len(r.output) <= max_blob:
            return r
        return replace(r, output=None)

    trimmed = trim(bad)
    assert trimmed is not None
    return Evidence(
        kind=kind,
        params=dict(params),
        input_digest=wire.digest(data),
        bad=trimmed,
        reason=reason[:MAX_REASON_LEN],
        input=data if len(data) <= max_blob else None,
        reference=trim(reference),
        created_ms=created_ms,
    )
