"""Wire format of the control protocol ``/p2c2r/control/1.0.0`` and of signed control blobs.

A control stream is a persistent, bidirectional stream between two peers; either side may
send any message at any time. A frame is a 4-byte big-endian body length followed by a
msgpack body ``[version, type, fields]`` (the framing of ``mesh.wire``, reused through its
``FrameDecoder``), one message per frame: control traffic is a few messages per second per
peer, so batching would buy nothing.

Messages (``type``: fields, all positional lists):

=========  ===========================================================================
hello      sent first by both sides: listen addrs, region, software version
hb         a ``Signed`` heartbeat (``mesh.membership.Heartbeat``), relayed over a stream
gsp        gossip relayed over streams (the in-memory / fallback fan-out): topic, data
claim ...  the election messages of ``mesh.election`` (claim, vote, renew, ack, rel)
load       member -> coordinator load report (high rate, not gossiped): load, queue,
           capacity, per-kind service-time samples from completed tasks
lreq       gamer -> coordinator: placement lease request (+ piggybacked releases and
           observed latencies); ``lgrant`` / ``lref`` / ``lredir`` answer it by request id
sq / sr    status query / reply: the answering node's view (its region, members, load,
           latency estimates, coordinators and epochs of every region it knows)
ping/pong  RTT samples for Vivaldi; the pong carries the responder's coordinate
bye        graceful goodbye
=========  ===========================================================================

No timestamp crosses the wire: durations are relative seconds, so peers' clocks never need
to agree (the election's safety argument depends on it).

Decoding is strict: every field is type- and range-checked, strings and lists are bounded,
unknown types and versions are ``ProtocolError``\\ s. ``decode`` never raises anything else,
whatever the bytes (a hypothesis test feeds it garbage).

Signed blobs (heartbeats, region summaries, DHT records) are ``[payload, signature]`` where
the signature is Ed25519 by the payload's author over ``domain || payload``; the domain
separates the kinds of blob, so a signature over one can never be replayed as another.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import astuple, dataclass, replace
from typing import Any

import msgpack

from mesh import identity
from mesh.election import Claim, ElectionMessage, Release, Renew, RenewAck, Vote
from mesh.errors import (
    ConfigError,
    FrameTooLargeError,
    ProtocolError,
    UnsupportedVersionError,
    VerificationError,
)
from mesh.vivaldi import Coord
from mesh.wire import MAX_PRIORITY, MSGPACK_ERRORS, FrameDecoder

__all__ = [
    "DOMAIN_HEARTBEAT",
    "DOMAIN_NODE_RECORD",
    "DOMAIN_REGION_RECORD",
    "DOMAIN_SUMMARY",
    "MAX_CONTROL_FRAME",
    "PROTOCOL_ID",
    "Bye",
    "ControlMessage",
    "ElectionView",
    "FrameDecoder",
    "GossipRelay",
    "Hello",
    "LeaseGrant",
    "LeaseRedirect",
    "LeaseRefused",
    "LeaseRequest",
    "LoadReport",
    "MemberView",
    "Ping",
    "Pong",
    "RegionView",
    "Signed",
    "SignedHeartbeat",
    "Snapshot",
    "StatusQuery",
    "StatusReply",
    "decode",
    "encode",
    "sign_blob",
    "verify_blob",
]

PROTOCOL_ID = "/p2c2r/control/1.0.0"
VERSION = 1
#: Control frames are small; a status reply of a big region is the largest (~100 KiB).
MAX_CONTROL_FRAME = 1024 * 1024
MAX_PEER = 128
MAX_REGION = 64
MAX_KIND = 64
MAX_KINDS = 32
MAX_ADDRS = 8
MAX_ADDR = 256
MAX_TEXT = 1024
MAX_TOPIC = 128
MAX_GOSSIP_DATA = 64 * 1024
MAX_MEMBERS = 1024
MAX_REGIONS = 256
MAX_VOTERS = 15
MAX_RELEASES = 256
#: Workers one lease request may exclude (the client's own bans).
MAX_EXCLUDE = 64
MAX_SAMPLES = 64
MAX_U63 = (1 << 63) - 1

DOMAIN_HEARTBEAT = b"p2c2r/heartbeat/v1\x00"
DOMAIN_SUMMARY = b"p2c2r/summary/v1\x00"
DOMAIN_NODE_RECORD = b"p2c2r/node-record/v1\x00"
DOMAIN_REGION_RECORD = b"p2c2r/region-record/v1\x00"

_HEADER = struct.Struct(">I")


def lease_exclusions(
    banned: Sequence[bytes],
    region_members: Collection[str],
    name: Callable[[bytes], str] = identity.peer_id_to_str,
) -> tuple[str, ...]:
    """The bans a ``LeaseRequest`` lists (at most ``MAX_EXCLUDE``): those of the asked
    region's members first, since only they can be leased there. A gamer holding more local
    bans than fit used to send the first ones by peer id, mostly workers of other regions,
    and the coordinator kept leasing it workers it had banned (the simulator counted 5,535
    such leases in 200 s at 1,000 peers). ``name`` turns a worker id into the wire's form."""
    ids = [name(w) for w in banned]
    ordered = [p for p in ids if p in region_members] + [p for p in ids if p not in region_members]
    return tuple(ordered[:MAX_EXCLUDE])


# ---------------------------------------------------------------- field checks


def _int(x: Any, what: str, lo: int = 0, hi: int = MAX_U63) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not lo <= x <= hi:
        raise ProtocolError(f"{what} must be an integer in [{lo}, {hi}]")
    return x


def _float(x: Any, what: str, lo: float = 0.0, hi: float = 1e9) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ProtocolError(f"{what} must be a number")
    f = float(x)
    if not math.isfinite(f) or not lo <= f <= hi:
        raise ProtocolError(f"{what} out of range")
    return f


def _str(x: Any, what: str, limit: int, *, empty: bool = False) -> str:
    if not isinstance(x, str) or len(x) > limit or (not x and not empty):
        raise ProtocolError(f"{what} must be a string of 1..{limit} characters")
    return x


def _opt_str(x: Any, what: str, limit: int) -> str | None:
    return None if x is None else _str(x, what, limit)


def _bytes(x: Any, what: str, limit: int) -> bytes:
    if not isinstance(x, bytes) or len(x) > limit:
        raise ProtocolError(f"{what} must be at most {limit} bytes")
    return x


def _list(x: Any, what: str, limit: int) -> list[Any]:
    if not isinstance(x, list) or len(x) > limit:
        raise ProtocolError(f"{what} must be a list of at most {limit} items")
    return x


def _fields(x: Any, n: int, what: str) -> list[Any]:
    if not isinstance(x, list) or len(x) != n:
        raise ProtocolError(f"{what} must have exactly {n} fields")
    return x


def _strs(x: Any, what: str, limit: int, item_limit: int) -> tuple[str, ...]:
    return tuple(_str(s, what, item_limit) for s in _list(x, what, limit))


def _caps(x: Any, what: str = "capacity") -> tuple[tuple[str, int], ...]:
    if not isinstance(x, dict) or len(x) > MAX_KINDS:
        raise ProtocolError(f"{what} must be a map of at most {MAX_KINDS} kinds")
    out = [(_str(k, f"{what} kind", MAX_KIND), _int(v, f"{what} slots", 0, 1 << 31)) for k, v in x.items()]
    return tuple(sorted(out))


def _coord(x: Any) -> Coord:
    return Coord.from_wire(x)


def _opt_coord(x: Any) -> Coord | None:
    return None if x is None else Coord.from_wire(x)


# ---------------------------------------------------------------- signed blobs


@dataclass(frozen=True, slots=True)
class Signed:
    """``payload`` signed by ``author`` (peer id bytes) under a domain; see the module doc."""

    payload: bytes
    signature: bytes

    def to_wire(self) -> list[Any]:
        return [self.payload, self.signature]

    @classmethod
    def from_wire(cls, x: Any, limit: int = MAX_GOSSIP_DATA) -> Signed:
        f = _fields(x, 2, "signed blob")
        sig = _bytes(f[1], "signature", 64)
        if len(sig) != 64:
            raise ProtocolError("signature must be 64 bytes")
        return cls(_bytes(f[0], "signed payload", limit), sig)

    def encode(self) -> bytes:
        out: bytes = msgpack.packb(self.to_wire(), use_bin_type=True)
        return out

    @classmethod
    def decode(cls, data: bytes, limit: int = MAX_GOSSIP_DATA) -> Signed:
        if len(data) > limit + 128:
            raise FrameTooLargeError(f"signed blob of {len(data)} bytes exceeds {limit}")
        return cls.from_wire(_unpack(data, limit + 128))


def sign_blob(sign: Callable[[bytes], bytes], domain: bytes, payload: bytes) -> Signed:
    """Sign ``payload`` under ``domain`` with a signing function (``Identity.sign``)."""
    return Signed(payload, sign(domain + payload))


def verify_blob(blob: Signed, domain: bytes, author: str) -> None:
    """Raise ``VerificationError`` unless ``author`` (base58 peer id) signed ``blob``."""
    try:
        pid = identity.peer_id_from_str(author)  # only well-formed Ed25519 ids get through
    except ConfigError as exc:
        raise VerificationError(f"{author!r} is not a peer id") from exc
    identity.verify(pid, domain + blob.payload, blob.signature)


# ---------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Hello:
    addrs: tuple[str, ...]
    region: str
    version: str
    #: "node" (a mesh member) or "client" (a gamer SDK or the status CLI).
    role: str


@dataclass(frozen=True, slots=True)
class SignedHeartbeat:
    blob: Signed


@dataclass(frozen=True, slots=True)
class GossipRelay:
    topic: str
    data: bytes
    #: The original publisher (base58); receivers check the embedded signature anyway.
    origin: str


@dataclass(frozen=True, slots=True)
class LoadReport:
    seq: int
    load: float
    queue_depth: int
    capacity: tuple[tuple[str, int], ...]
    #: (kind, completed since last report, mean service seconds)
    samples: tuple[tuple[str, int, float], ...]


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    request_id: int
    kind: str
    slots: int
    #: Seconds from now by which the work must be done (the EDF deadline).
    within_s: float
    priority: int
    coord: Coord | None
    affinity: str | None
    #: Leases the client is done with (piggybacked releases).
    release: tuple[int, ...] = ()
    #: (worker, kind, observed latency seconds) measured by the client since its last request.
    observed: tuple[tuple[str, str, float], ...] = ()
    #: Workers the client banned itself (it would refuse their results): never lease them.
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    request_id: int
    lease_id: int
    worker: str
    addrs: tuple[str, ...]
    kind: str
    slots: int
    ttl_s: float
    predicted_s: float
    epoch: int


@dataclass(frozen=True, slots=True)
class LeaseRefused:
    request_id: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class LeaseRedirect:
    """Ask that coordinator instead (overflow to another region, or we are not coordinator)."""

    request_id: int
    region: str
    coordinator: str
    addrs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MemberView:
    peer: str
    region: str
    state: str
    load: float
    queue_depth: int
    capacity: tuple[tuple[str, int], ...]
    coord: Coord | None
    #: The answering node's Vivaldi estimate of the RTT to this member (s), if it has one.
    rtt_s: float | None
    addrs: tuple[str, ...]
    version: str


@dataclass(frozen=True, slots=True)
class RegionView:
    region: str
    coordinator: str | None
    epoch: int
    voters: tuple[str, ...]
    coordinator_addrs: tuple[str, ...]
    free: tuple[tuple[str, int], ...]
    centroid: Coord | None
    members: tuple[MemberView, ...]
    #: Seconds since the answering node last heard about this region.
    age_s: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    peer: str
    region: str
    role: str
    version: str
    addrs: tuple[str, ...]
    coord: Coord | None
    regions: tuple[RegionView, ...]
    #: Dropped-message counters (unsigned, malformed, stale, ...), for operators.
    counters: tuple[tuple[str, int], ...]
    #: Its election state (None before it knows its region's electorate; optional on the
    #: wire, so older nodes' snapshots still decode).
    election: ElectionView | None = None


@dataclass(frozen=True, slots=True)
class ElectionView:
    """A member's side of its region's election, for operators (why no coordinator?)."""

    #: "follower", "candidate" or "coordinator".
    state: str
    #: The highest epoch it has claimed or seen, and the one it last voted in.
    term: int
    voted_epoch: int
    #: Claims in a row that too few voters answered (each doubles the claim timeout).
    failed_claims: int
    #: Seconds until it claims if no coordinator renews first (None: it will not).
    next_claim_s: float | None
    #: The other voters, and how many of them it holds a control link to that has said
    #: hello (election messages to a voter without one are dialled or dropped).
    voters: int
    voters_linked: int


@dataclass(frozen=True, slots=True)
class StatusQuery:
    request_id: int


@dataclass(frozen=True, slots=True)
class StatusReply:
    request_id: int
    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class Ping:
    nonce: int


@dataclass(frozen=True, slots=True)
class Pong:
    nonce: int
    coord: Coord
    error: float


@dataclass(frozen=True, slots=True)
class Bye:
    reason: str


ControlMessage = (
    Hello
    | SignedHeartbeat
    | GossipRelay
    | Claim
    | Vote
    | Renew
    | RenewAck
    | Release
    | LoadReport
    | LeaseRequest
    | LeaseGrant
    | LeaseRefused
    | LeaseRedirect
    | StatusQuery
    | StatusReply
    | Ping
    | Pong
    | Bye
)


# ---------------------------------------------------------------- encoding


def _member_to_wire(m: MemberView) -> list[Any]:
    return [
        m.peer,
        m.region,
        m.state,
        m.load,
        m.queue_depth,
        dict(m.capacity),
        None if m.coord is None else m.coord.to_wire(),
        m.rtt_s,
        list(m.addrs),
        m.version,
    ]


def _region_to_wire(r: RegionView) -> list[Any]:
    return [
        r.region,
        r.coordinator,
        r.epoch,
        list(r.voters),
        list(r.coordinator_addrs),
        dict(r.free),
        None if r.centroid is None else r.centroid.to_wire(),
        [_member_to_wire(m) for m in r.members],
        r.age_s,
    ]


def snapshot_to_wire(s: Snapshot) -> list[Any]:
    return [
        s.peer,
        s.region,
        s.role,
        s.version,
        list(s.addrs),
        None if s.coord is None else s.coord.to_wire(),
        [_region_to_wire(r) for r in s.regions],
        dict(s.counters),
        *([] if s.election is None else [list(astuple(s.election))]),
    ]


def _body(msg: ControlMessage) -> tuple[str, list[Any]]:
    if isinstance(msg, Hello):
        return "hello", [list(msg.addrs), msg.region, msg.version, msg.role]
    if isinstance(msg, SignedHeartbeat):
        return "hb", msg.blob.to_wire()
    if isinstance(msg, GossipRelay):
        return "gsp", [msg.topic, msg.data, msg.origin]
    if isinstance(msg, Claim):
        return "claim", [msg.region, msg.epoch, msg.candidate, msg.score]
    if isinstance(msg, Vote):
        return "vote", [
            msg.region,
            msg.epoch,
            msg.voter,
            msg.candidate,
            msg.granted,
            msg.voted_epoch,
            msg.coordinator,
            msg.coordinator_epoch,
        ]
    if isinstance(msg, Renew):
        return "renew", [msg.region, msg.epoch, msg.coordinator, msg.seq]
    if isinstance(msg, RenewAck):
        return "ack", [msg.region, msg.epoch, msg.voter, msg.seq]
    if isinstance(msg, Release):
        return "rel", [msg.region, msg.epoch, msg.candidate]
    if isinstance(msg, LoadReport):
        return "load", [
            msg.seq,
            msg.load,
            msg.queue_depth,
            dict(msg.capacity),
            [list(s) for s in msg.samples],
        ]
    if isinstance(msg, LeaseRequest):
        return "lreq", [
            msg.request_id,
            msg.kind,
            msg.slots,
            msg.within_s,
            msg.priority,
            None if msg.coord is None else msg.coord.to_wire(),
            msg.affinity,
            list(msg.release),
            [list(o) for o in msg.observed],
            list(msg.exclude),
        ]
    if isinstance(msg, LeaseGrant):
        return "lgrant", [
            msg.request_id,
            msg.lease_id,
            msg.worker,
            list(msg.addrs),
            msg.kind,
            msg.slots,
            msg.ttl_s,
            msg.predicted_s,
            msg.epoch,
        ]
    if isinstance(msg, LeaseRefused):
        return "lref", [msg.request_id, msg.code, msg.message[:MAX_TEXT]]
    if isinstance(msg, LeaseRedirect):
        return "lredir", [msg.request_id, msg.region, msg.coordinator, list(msg.addrs)]
    if isinstance(msg, StatusQuery):
        return "sq", [msg.request_id]
    if isinstance(msg, StatusReply):
        return "sr", [msg.request_id, snapshot_to_wire(msg.snapshot)]
    if isinstance(msg, Ping):
        return "ping", [msg.nonce]
    if isinstance(msg, Pong):
        return "pong", [msg.nonce, msg.coord.to_wire(), msg.error]
    if isinstance(msg, Bye):
        return "bye", [msg.reason[:MAX_TEXT]]
    raise TypeError(f"not a control message: {type(msg).__name__}")


def encode(msg: ControlMessage) -> bytes:
    """One framed control message (length prefix + msgpack body)."""
    mtype, fields = _body(msg)
    packed: bytes = msgpack.packb([VERSION, mtype, fields], use_bin_type=True)
    if len(packed) > MAX_CONTROL_FRAME:
        raise FrameTooLargeError(f"control message of {len(packed)} bytes exceeds {MAX_CONTROL_FRAME}")
    return _HEADER.pack(len(packed)) + packed


# ---------------------------------------------------------------- decoding


def _unpack(body: bytes, limit: int) -> Any:
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_array_len=max(MAX_MEMBERS, 4096),
            max_map_len=MAX_KINDS * 2,
            max_str_len=limit,
            max_bin_len=limit,
            max_ext_len=0,
        )
    except MSGPACK_ERRORS as exc:
        raise ProtocolError(f"control frame is not valid msgpack: {type(exc).__name__}") from exc


def _member(x: Any) -> MemberView:
    f = _fields(x, 10, "member")
    return MemberView(
        peer=_str(f[0], "member peer", MAX_PEER),
        region=_str(f[1], "member region", MAX_REGION, empty=True),
        state=_str(f[2], "member state", 16),
        load=_float(f[3], "member load", 0.0, 1e6),
        queue_depth=_int(f[4], "member queue", 0, 1 << 31),
        capacity=_caps(f[5]),
        coord=_opt_coord(f[6]),
        rtt_s=None if f[7] is None else _float(f[7], "member rtt", 0.0, 1e3),
        addrs=_strs(f[8], "member addrs", MAX_ADDRS, MAX_ADDR),
        version=_str(f[9], "member version", 32, empty=True),
    )


def _region(x: Any) -> RegionView:
    f = _fields(x, 9, "region")
    return RegionView(
        region=_str(f[0], "region name", MAX_REGION),
        coordinator=_opt_str(f[1], "region coordinator", MAX_PEER),
        epoch=_int(f[2], "region epoch"),
        voters=_strs(f[3], "region voters", MAX_VOTERS, MAX_PEER),
        coordinator_addrs=_strs(f[4], "coordinator addrs", MAX_ADDRS, MAX_ADDR),
        free=_caps(f[5], "free slots"),
        centroid=_opt_coord(f[6]),
        members=tuple(_member(m) for m in _list(f[7], "region members", MAX_MEMBERS)),
        age_s=_float(f[8], "region age", 0.0, 1e9),
    )


def _election_view(x: Any) -> ElectionView:
    f = _fields(x, 7, "snapshot election")
    state = _str(f[0], "election state", 16)
    if state not in ("follower", "candidate", "coordinator"):
        raise ProtocolError(f"unknown election state {state!r}")
    voters = _int(f[5], "election voters", 0, MAX_VOTERS)
    return ElectionView(
        state=state,
        term=_int(f[1], "election term"),
        voted_epoch=_int(f[2], "election voted epoch"),
        failed_claims=_int(f[3], "election failed claims"),
        next_claim_s=None if f[4] is None else _float(f[4], "election next claim", 0.0, 1e9),
        voters=voters,
        voters_linked=_int(f[6], "election voters linked", 0, voters),
    )


def snapshot_from_wire(x: Any) -> Snapshot:
    if isinstance(x, list) and len(x) == 9:
        return replace(snapshot_from_wire(x[:8]), election=_election_view(x[8]))
    f = _fields(x, 8, "snapshot")
    counters = f[7]
    if not isinstance(counters, dict) or len(counters) > MAX_KINDS * 2:
        raise ProtocolError("snapshot counters must be a small map")
    return Snapshot(
        peer=_str(f[0], "snapshot peer", MAX_PEER),
        region=_str(f[1], "snapshot region", MAX_REGION, empty=True),
        role=_str(f[2], "snapshot role", 16),
        version=_str(f[3], "snapshot version", 32, empty=True),
        addrs=_strs(f[4], "snapshot addrs", MAX_ADDRS, MAX_ADDR),
        coord=_opt_coord(f[5]),
        regions=tuple(_region(r) for r in _list(f[6], "snapshot regions", MAX_REGIONS)),
        counters=tuple(
            sorted((_str(k, "counter", 64), _int(v, "counter value")) for k, v in counters.items())
        ),
    )


def _bool(x: Any, what: str) -> bool:
    if not isinstance(x, bool):
        raise ProtocolError(f"{what} must be a boolean")
    return x


def _decode_election(mtype: str, f: Any) -> ElectionMessage:
    if mtype == "claim":
        f = _fields(f, 4, "claim")
        return Claim(
            _str(f[0], "region", MAX_REGION),
            _int(f[1], "epoch"),
            _str(f[2], "candidate", MAX_PEER),
            _float(f[3], "score", -1e9, 1e9),
        )
    if mtype == "vote":
        f = _fields(f, 8, "vote")
        return Vote(
            _str(f[0], "region", MAX_REGION),
            _int(f[1], "epoch"),
            _str(f[2], "voter", MAX_PEER),
            _str(f[3], "candidate", MAX_PEER),
            _bool(f[4], "granted"),
            _int(f[5], "voted epoch"),
            _opt_str(f[6], "coordinator", MAX_PEER),
            _int(f[7], "coordinator epoch"),
        )
    if mtype == "renew":
        f = _fields(f, 4, "renew")
        return Renew(
            _str(f[0], "region", MAX_REGION),
            _int(f[1], "epoch"),
            _str(f[2], "coordinator", MAX_PEER),
            _int(f[3], "seq"),
        )
    if mtype == "ack":
        f = _fields(f, 4, "renew ack")
        return RenewAck(
            _str(f[0], "region", MAX_REGION),
            _int(f[1], "epoch"),
            _str(f[2], "voter", MAX_PEER),
            _int(f[3], "seq"),
        )
    f = _fields(f, 3, "release")
    return Release(_str(f[0], "region", MAX_REGION), _int(f[1], "epoch"), _str(f[2], "candidate", MAX_PEER))


def _decode_rest(mtype: str, f: Any) -> ControlMessage:
    if mtype == "hello":
        f = _fields(f, 4, "hello")
        return Hello(
            _strs(f[0], "addrs", MAX_ADDRS, MAX_ADDR),
            _str(f[1], "region", MAX_REGION, empty=True),
            _str(f[2], "version", 32, empty=True),
            _str(f[3], "role", 16),
        )
    if mtype == "hb":
        return SignedHeartbeat(Signed.from_wire(f, 8192))
    if mtype == "gsp":
        f = _fields(f, 3, "gossip relay")
        return GossipRelay(
            _str(f[0], "topic", MAX_TOPIC),
            _bytes(f[1], "gossip data", MAX_GOSSIP_DATA),
            _str(f[2], "gossip origin", MAX_PEER),
        )
    if mtype == "load":
        f = _fields(f, 5, "load report")
        samples = []
        for s in _list(f[4], "load samples", MAX_SAMPLES):
            sf = _fields(s, 3, "load sample")
            samples.append(
                (
                    _str(sf[0], "sample kind", MAX_KIND),
                    _int(sf[1], "sample count"),
                    _float(sf[2], "sample s", 0.0, 3600.0),
                )
            )
        return LoadReport(
            _int(f[0], "seq"),
            _float(f[1], "load", 0.0, 1e6),
            _int(f[2], "queue depth", 0, 1 << 31),
            _caps(f[3]),
            tuple(samples),
        )
    if mtype == "lreq":
        # 9 fields before ``exclude`` was added: still accepted from older clients
        f = [*f, []] if isinstance(f, list) and len(f) == 9 else f
        f = _fields(f, 10, "lease request")
        observed = []
        for o in _list(f[8], "observed latencies", MAX_SAMPLES):
            of = _fields(o, 3, "observed latency")
            observed.append(
                (
                    _str(of[0], "worker", MAX_PEER),
                    _str(of[1], "kind", MAX_KIND),
                    _float(of[2], "latency", 0.0, 3600.0),
                )
            )
        return LeaseRequest(
            request_id=_int(f[0], "request id"),
            kind=_str(f[1], "kind", MAX_KIND),
            slots=_int(f[2], "slots", 1, 1 << 20),
            within_s=_float(f[3], "within", 0.0, 86400.0),
            priority=_int(f[4], "priority", 0, MAX_PRIORITY),
            coord=_opt_coord(f[5]),
            affinity=_opt_str(f[6], "affinity", MAX_PEER),
            release=tuple(_int(i, "lease id") for i in _list(f[7], "releases", MAX_RELEASES)),
            observed=tuple(observed),
            exclude=_strs(f[9], "excluded workers", MAX_EXCLUDE, MAX_PEER),
        )
    if mtype == "lgrant":
        f = _fields(f, 9, "lease grant")
        return LeaseGrant(
            request_id=_int(f[0], "request id"),
            lease_id=_int(f[1], "lease id"),
            worker=_str(f[2], "worker", MAX_PEER),
            addrs=_strs(f[3], "worker addrs", MAX_ADDRS, MAX_ADDR),
            kind=_str(f[4], "kind", MAX_KIND),
            slots=_int(f[5], "slots", 1, 1 << 20),
            ttl_s=_float(f[6], "ttl", 0.0, 86400.0),
            predicted_s=_float(f[7], "predicted", 0.0, 86400.0),
            epoch=_int(f[8], "epoch"),
        )
    if mtype == "lref":
        f = _fields(f, 3, "lease refusal")
        return LeaseRefused(
            _int(f[0], "request id"), _str(f[1], "code", 64), _str(f[2], "message", MAX_TEXT, empty=True)
        )
    if mtype == "lredir":
        f = _fields(f, 4, "lease redirect")
        return LeaseRedirect(
            _int(f[0], "request id"),
            _str(f[1], "region", MAX_REGION),
            _str(f[2], "coordinator", MAX_PEER),
            _strs(f[3], "addrs", MAX_ADDRS, MAX_ADDR),
        )
    if mtype == "sq":
        f = _fields(f, 1, "status query")
        return StatusQuery(_int(f[0], "request id"))
    if mtype == "sr":
        f = _fields(f, 2, "status reply")
        return StatusReply(_int(f[0], "request id"), snapshot_from_wire(f[1]))
    if mtype == "ping":
        f = _fields(f, 1, "ping")
        return Ping(_int(f[0], "nonce"))
    if mtype == "pong":
        f = _fields(f, 3, "pong")
        return Pong(_int(f[0], "nonce"), _coord(f[1]), _float(f[2], "error", 0.0, 1e3))
    if mtype == "bye":
        f = _fields(f, 1, "bye")
        return Bye(_str(f[0], "reason", MAX_TEXT, empty=True))
    raise ProtocolError(f"unknown control message type {mtype!r}")


_ELECTION_TYPES = frozenset({"claim", "vote", "renew", "ack", "rel"})


def decode(body: bytes) -> ControlMessage:
    """Decode one frame body; any problem raises a ``ProtocolError`` subclass (and nothing else)."""
    if len(body) > MAX_CONTROL_FRAME:
        raise FrameTooLargeError(f"control frame of {len(body)} bytes exceeds {MAX_CONTROL_FRAME}")
    obj = _unpack(body, MAX_CONTROL_FRAME)
    if not isinstance(obj, list) or len(obj) != 3:
        raise ProtocolError("control frame must be [version, type, fields]")
    version, mtype, fields = obj
    if isinstance(version, bool) or version != VERSION:
        raise UnsupportedVersionError(
            f"control protocol version {version!r} is not supported (we speak {VERSION})"
        )
    if not isinstance(mtype, str):
        raise ProtocolError("control message type must be a string")
    try:
        if mtype in _ELECTION_TYPES:
            return _decode_election(mtype, fields)
        return _decode_rest(mtype, fields)
    except ProtocolError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, OverflowError) as exc:  # belt and braces
        raise ProtocolError(f"malformed {mtype} message: {type(exc).__name__}") from exc


def decoder() -> FrameDecoder:
    """A frame decoder bounded to ``MAX_CONTROL_FRAME``."""
    return FrameDecoder(MAX_CONTROL_FRAME)


def caps_dict(caps: tuple[tuple[str, int], ...]) -> Mapping[str, int]:
    return dict(caps)


# ---------------------------------------------------------------- region summaries


def region_to_wire(r: RegionView) -> list[Any]:
    return _region_to_wire(r)


def region_from_wire(x: Any) -> RegionView:
    return _region(x)


def encode_summary_payload(view: RegionView, seq: int) -> bytes:
    """The payload a coordinator signs (``DOMAIN_SUMMARY``) and gossips on ``/p2c2r/summaries``."""
    out: bytes = msgpack.packb([VERSION, seq, _region_to_wire(view)], use_bin_type=True)
    return out


def decode_summary_payload(payload: bytes) -> tuple[RegionView, int]:
    """Strict inverse of ``encode_summary_payload``; the coordinator field names the signer."""
    f = _fields(_unpack(payload, MAX_GOSSIP_DATA), 3, "summary")
    if isinstance(f[0], bool) or f[0] != VERSION:
        raise UnsupportedVersionError(f"summary version {f[0]!r} is not supported")
    view = _region(f[2])
    if view.coordinator is None:
        raise ProtocolError("a summary must name its coordinator")
    return view, _int(f[1], "summary seq")


# ---------------------------------------------------------------- heartbeat envelopes


def encode_heartbeat_payload(heartbeat: bytes, addrs: tuple[str, ...]) -> bytes:
    """What a member signs (``DOMAIN_HEARTBEAT``): its heartbeat plus its dialable addresses.

    ``mesh.membership.Heartbeat`` has a fixed wire form without addresses; members learned
    through gossip must still be dialable for the election's direct messages, so the signed
    envelope carries them (signed, so a forwarder cannot redirect anyone).
    """
    out: bytes = msgpack.packb([VERSION, heartbeat, list(addrs[:MAX_ADDRS])], use_bin_type=True)
    return out


def decode_heartbeat_payload(payload: bytes) -> tuple[bytes, tuple[str, ...]]:
    f = _fields(_unpack(payload, 8192), 3, "heartbeat envelope")
    if isinstance(f[0], bool) or f[0] != VERSION:
        raise UnsupportedVersionError(f"heartbeat envelope version {f[0]!r} is not supported")
    return _bytes(f[1], "heartbeat", 4096), _strs(f[2], "heartbeat addrs", MAX_ADDRS, MAX_ADDR)
