"""Membership and failure suspicion from signed heartbeats: who is out there, and are they alive.

Every node publishes a ``Heartbeat`` on its region's gossip topic every ``heartbeat_interval_s``
(the shell signs it; this module never sees keys). ``MembershipCore`` merges the heartbeats it
receives into one bounded table of peers and turns silence into suspicion.

Per-peer states and transitions (timeout-based suspicion, SWIM/Serf style)::

    (unknown) --heartbeat--> ALIVE --silence >= suspect_after_s--> SUSPECT
    SUSPECT --silence >= dead_after_s--> DEAD --silence >= forget_after_s--> (forgotten)
    SUSPECT/DEAD --newer heartbeat--> ALIVE          ALIVE/SUSPECT --on_peer_left--> DEAD

Timeouts are used rather than phi-accrual because heartbeats are periodic and gossiped, so
inter-arrival jitter is dominated by the gossip fan-out, not by the sender; a fixed multiple
of the interval is predictable, cheap, and easy to reason about in the simulator.

Merge rules
    * A heartbeat is ordered by ``(incarnation, seqno)``. ``incarnation`` is chosen by the
      sender at boot (e.g. boot time in ms or a persisted counter) so that a restarted peer,
      whose seqno restarts at 0, is still "newer". Only a strictly newer heartbeat replaces the
      stored one and refreshes liveness; an equal or older one (gossip duplicates, reordering,
      replays) is dropped and counted in ``stats.stale``.
    * Our own heartbeats echoed back are ignored (``stats.own``).
    * The table holds at most ``max_peers``. A new peer arriving when full evicts the peer
      that has been dead the longest; if no peer is dead it is refused (``stats.refused_full``)
      — a flood of fresh identities cannot push out live members.
    * Every field of a heartbeat is bounded and validated by ``Heartbeat.from_wire``.

Effects (drain with ``poll_effects``): ``PeerJoined``, ``PeerAlive`` (back from suspect/dead),
``PeerSuspected``, ``PeerDead``, ``PeerForgotten``, and ``HeartbeatDue`` when the shell should
build (``local_heartbeat``) and publish our own heartbeat.

Invariants: every stored peer has exactly one state; its liveness deadline is in the timer heap;
``len(peers) <= max_peers``; effects are produced in input order, and ``on_tick`` handles
expiries in (deadline, peer id) order, so equal inputs give equal outputs. Each event is
O(log n) (a heap of deadlines with lazy deletion, compacted when it grows past 4·n).
"""

from __future__ import annotations

import enum
import heapq
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from mesh.errors import FrameTooLargeError, ProtocolError, UnsupportedVersionError
from mesh.vivaldi import Coord

__all__ = [
    "HEARTBEAT_WIRE_VERSION",
    "Heartbeat",
    "HeartbeatDue",
    "MembershipConfig",
    "MembershipCore",
    "MembershipEffect",
    "MembershipStats",
    "PeerAlive",
    "PeerDead",
    "PeerForgotten",
    "PeerInfo",
    "PeerJoined",
    "PeerState",
    "PeerSuspected",
]

HEARTBEAT_WIRE_VERSION = 1

MAX_PEER_ID_LEN = 128
MAX_REGION_LEN = 64
MAX_VERSION_LEN = 32
MAX_KIND_LEN = 64
MAX_KINDS = 32
MAX_COUNT = 1 << 31
MAX_HEARTBEAT_BYTES = 4096

_WIRE_KEYS = frozenset(
    {"v", "peer", "inc", "seq", "region", "ver", "load", "queue", "cap", "coord", "cerr", "up"}
)


def _want_str(obj: Mapping[str, Any], key: str, max_len: int, *, allow_empty: bool = False) -> str:
    v = obj[key]
    if not isinstance(v, str):
        raise ProtocolError(f"heartbeat field {key!r} must be a string")
    if len(v) > max_len or (not v and not allow_empty):
        raise ProtocolError(f"heartbeat field {key!r} has a bad length")
    return v


def _want_int(obj: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError(f"heartbeat field {key!r} must be an integer")
    if not lo <= v <= hi:
        raise ProtocolError(f"heartbeat field {key!r} out of range")
    return v


def _want_float(obj: Mapping[str, Any], key: str, lo: float, hi: float) -> float:
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ProtocolError(f"heartbeat field {key!r} must be a number")
    f = float(v)
    if not math.isfinite(f) or not lo <= f <= hi:
        raise ProtocolError(f"heartbeat field {key!r} out of range")
    return f


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What a peer says about itself, every heartbeat interval.

    ``capacity`` is the number of task slots per task kind, kept as a tuple of
    ``(kind, slots)`` sorted by kind so the dataclass stays hashable and its order canonical.
    """

    peer: str
    incarnation: int
    seqno: int
    region: str
    version: str
    load: float
    queue_depth: int
    capacity: tuple[tuple[str, int], ...]
    coord: Coord
    coord_error: float
    uptime_s: float

    @property
    def order(self) -> tuple[int, int]:
        """The merge order: higher wins."""
        return (self.incarnation, self.seqno)

    def capacity_for(self, kind: str) -> int:
        """Slots offered for ``kind`` (0 when the peer does not run it)."""
        for k, n in self.capacity:
            if k == kind:
                return n
        return 0

    @staticmethod
    def make_capacity(capacity: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
        """Canonical ``capacity`` tuple from a mapping."""
        return tuple(sorted((str(k), int(v)) for k, v in capacity.items()))

    def to_wire(self) -> dict[str, Any]:
        """Msgpack-able dict; ``from_wire(to_wire(hb)) == hb``."""
        return {
            "v": HEARTBEAT_WIRE_VERSION,
            "peer": self.peer,
            "inc": self.incarnation,
            "seq": self.seqno,
            "region": self.region,
            "ver": self.version,
            "load": self.load,
            "queue": self.queue_depth,
            "cap": {k: n for k, n in self.capacity},
            "coord": self.coord.to_wire(),
            "cerr": self.coord_error,
            "up": self.uptime_s,
        }

    @classmethod
    def from_wire(cls, obj: object) -> Heartbeat:
        """Validate a decoded heartbeat strictly; anything malformed is a ``ProtocolError``."""
        if not isinstance(obj, dict):
            raise ProtocolError("heartbeat must be a map")
        if "v" not in obj:
            raise ProtocolError("heartbeat has no version")
        v = obj["v"]
        if isinstance(v, bool) or not isinstance(v, int):
            raise ProtocolError("heartbeat version must be an integer")
        if v != HEARTBEAT_WIRE_VERSION:
            raise UnsupportedVersionError(f"heartbeat version {v} not supported")
        keys = set(obj)
        if keys != _WIRE_KEYS:
            missing = sorted(str(k) for k in _WIRE_KEYS - keys)
            extra = sorted(str(k) for k in keys - _WIRE_KEYS)
            raise ProtocolError(f"heartbeat fields wrong (missing {missing}, unexpected {extra})")
        cap_obj = obj["cap"]
        if not isinstance(cap_obj, dict) or len(cap_obj) > MAX_KINDS:
            raise ProtocolError("heartbeat capacity must be a map of at most 32 kinds")
        cap: list[tuple[str, int]] = []
        for k, n in cap_obj.items():
            if not isinstance(k, str) or not 0 < len(k) <= MAX_KIND_LEN:
                raise ProtocolError("heartbeat capacity kind must be a short string")
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < MAX_COUNT:
                raise ProtocolError("heartbeat capacity slots must be a non-negative integer")
            cap.append((k, n))
        return cls(
            peer=_want_str(obj, "peer", MAX_PEER_ID_LEN),
            incarnation=_want_int(obj, "inc", 0, (1 << 63) - 1),
            seqno=_want_int(obj, "seq", 0, (1 << 63) - 1),
            region=_want_str(obj, "region", MAX_REGION_LEN),
            version=_want_str(obj, "ver", MAX_VERSION_LEN, allow_empty=True),
            load=_want_float(obj, "load", 0.0, 1e6),
            queue_depth=_want_int(obj, "queue", 0, MAX_COUNT - 1),
            capacity=tuple(sorted(cap)),
            coord=Coord.from_wire(obj["coord"]),
            coord_error=_want_float(obj, "cerr", 0.0, 1e3),
            uptime_s=_want_float(obj, "up", 0.0, 1e10),
        )

    def encode(self) -> bytes:
        """Msgpack bytes of ``to_wire()`` (what the shell signs and publishes)."""
        data: bytes = msgpack.packb(self.to_wire(), use_bin_type=True)
        return data

    @classmethod
    def decode(cls, data: bytes, *, max_bytes: int = MAX_HEARTBEAT_BYTES) -> Heartbeat:
        """Parse msgpack bytes; oversized or malformed input is a typed ``ProtocolError``."""
        if len(data) > max_bytes:
            raise FrameTooLargeError(f"heartbeat of {len(data)} bytes exceeds {max_bytes}")
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
            raise ProtocolError(f"heartbeat is not valid msgpack: {e}") from e
        return cls.from_wire(obj)


class PeerState(enum.Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class PeerJoined:
    peer: str
    heartbeat: Heartbeat


@dataclass(frozen=True, slots=True)
class PeerAlive:
    """A suspect or dead peer was heard from again."""

    peer: str
    heartbeat: Heartbeat


@dataclass(frozen=True, slots=True)
class PeerSuspected:
    peer: str


@dataclass(frozen=True, slots=True)
class PeerDead:
    peer: str
    left: bool = False


@dataclass(frozen=True, slots=True)
class PeerForgotten:
    peer: str


@dataclass(frozen=True, slots=True)
class HeartbeatDue:
    """Time to build our heartbeat with ``local_heartbeat`` and publish it."""


MembershipEffect = PeerJoined | PeerAlive | PeerSuspected | PeerDead | PeerForgotten | HeartbeatDue


@dataclass(frozen=True)
class MembershipConfig:
    heartbeat_interval_s: float = 0.5
    suspect_after_s: float = 1.5
    dead_after_s: float = 3.0
    forget_after_s: float = 30.0
    max_peers: int = 20_000


@dataclass
class MembershipStats:
    accepted: int = 0
    stale: int = 0
    own: int = 0
    refused_full: int = 0


@dataclass
class PeerInfo:
    """The table row for one peer (read-only for callers)."""

    heartbeat: Heartbeat
    state: PeerState
    last_heard: float
    #: The time at which the next state change is due (suspect, dead or forget).
    deadline: float


@dataclass
class MembershipCore:
    """Bounded peer table with timeout-based suspicion; see the module docstring."""

    self_id: str
    config: MembershipConfig = field(default_factory=MembershipConfig)
    now: float = 0.0
    incarnation: int = 0
    stats: MembershipStats = field(default_factory=MembershipStats)
    _peers: dict[str, PeerInfo] = field(default_factory=dict, repr=False)
    _timers: list[tuple[float, str]] = field(default_factory=list, repr=False)
    _dead_order: OrderedDict[str, None] = field(default_factory=OrderedDict, repr=False)
    _effects: list[MembershipEffect] = field(default_factory=list, repr=False)
    _seqno: int = 0
    _next_heartbeat: float = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        if not 0 < cfg.suspect_after_s < cfg.dead_after_s < cfg.forget_after_s:
            raise ValueError("need 0 < suspect_after_s < dead_after_s < forget_after_s")
        self._next_heartbeat = self.now

    # -- queries -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, peer: str) -> PeerInfo | None:
        return self._peers.get(peer)

    def state(self, peer: str) -> PeerState | None:
        info = self._peers.get(peer)
        return None if info is None else info.state

    def peers(
        self, *, state: PeerState | None = PeerState.ALIVE, region: str | None = None
    ) -> list[PeerInfo]:
        """Rows sorted by peer id, filtered by state (``None`` = any) and region. O(n log n)."""
        return [
            self._peers[p]
            for p in sorted(self._peers)
            if (state is None or self._peers[p].state is state)
            and (region is None or self._peers[p].heartbeat.region == region)
        ]

    # -- inputs --------------------------------------------------------------------------

    def on_heartbeat(self, hb: Heartbeat, now: float) -> bool:
        """Merge a validated heartbeat; True when it was newer and was stored."""
        self.now = max(self.now, now)
        if hb.peer == self.self_id:
            self.stats.own += 1
            return False
        info = self._peers.get(hb.peer)
        if info is None:
            if len(self._peers) >= self.config.max_peers and not self._evict_one():
                self.stats.refused_full += 1
                return False
            info = PeerInfo(hb, PeerState.ALIVE, now, now + self.config.suspect_after_s)
            self._peers[hb.peer] = info
            self._push(info.deadline, hb.peer)
            self.stats.accepted += 1
            self._effects.append(PeerJoined(hb.peer, hb))
            return True
        if hb.order <= info.heartbeat.order:
            self.stats.stale += 1
            return False
        was = info.state
        info.heartbeat = hb
        info.last_heard = now
        info.state = PeerState.ALIVE
        info.deadline = now + self.config.suspect_after_s
        self._push(info.deadline, hb.peer)
        self._dead_order.pop(hb.peer, None)
        self.stats.accepted += 1
        if was is not PeerState.ALIVE:
            self._effects.append(PeerAlive(hb.peer, hb))
        return True

    def on_peer_left(self, peer: str, now: float) -> None:
        """A peer said goodbye (authenticated by the shell): mark it dead at once."""
        self.now = max(self.now, now)
        info = self._peers.get(peer)
        if info is None or info.state is PeerState.DEAD:
            return
        self._mark_dead(peer, info, now, left=True)

    def on_tick(self, now: float) -> None:
        """Apply every state change due at or before ``now``, in (deadline, peer) order."""
        self.now = max(self.now, now)
        if now >= self._next_heartbeat:
            self._effects.append(HeartbeatDue())
            interval = self.config.heartbeat_interval_s
            # Skip missed beats instead of bursting them.
            self._next_heartbeat += interval * max(1, math.floor((now - self._next_heartbeat) / interval) + 1)
        cfg = self.config
        while self._timers and self._timers[0][0] <= now:
            due, peer = heapq.heappop(self._timers)
            info = self._peers.get(peer)
            if info is None or info.deadline != due:
                continue  # superseded entry (lazy deletion)
            if info.state is PeerState.ALIVE:
                info.state = PeerState.SUSPECT
                info.deadline = info.last_heard + cfg.dead_after_s
                self._push(info.deadline, peer)
                self._effects.append(PeerSuspected(peer))
            elif info.state is PeerState.SUSPECT:
                self._mark_dead(peer, info, info.last_heard, left=False)
            else:
                del self._peers[peer]
                self._dead_order.pop(peer, None)
                self._effects.append(PeerForgotten(peer))

    def local_heartbeat(
        self,
        *,
        region: str,
        version: str,
        load: float,
        queue_depth: int,
        capacity: Mapping[str, int],
        coord: Coord,
        coord_error: float,
        uptime_s: float,
    ) -> Heartbeat:
        """Our next heartbeat, with the next sequence number of this incarnation."""
        self._seqno += 1
        return Heartbeat(
            peer=self.self_id,
            incarnation=self.incarnation,
            seqno=self._seqno,
            region=region,
            version=version,
            load=load,
            queue_depth=queue_depth,
            capacity=Heartbeat.make_capacity(capacity),
            coord=coord,
            coord_error=coord_error,
            uptime_s=uptime_s,
        )

    # -- outputs -------------------------------------------------------------------------

    def poll_effects(self) -> list[MembershipEffect]:
        out, self._effects = self._effects, []
        return out

    def next_deadline(self) -> float | None:
        peer_due = self._timers[0][0] if self._timers else None
        return self._next_heartbeat if peer_due is None else min(peer_due, self._next_heartbeat)

    # -- internals -----------------------------------------------------------------------

    def _mark_dead(self, peer: str, info: PeerInfo, since: float, *, left: bool) -> None:
        info.state = PeerState.DEAD
        info.deadline = max(since + self.config.forget_after_s, self.now)
        self._push(info.deadline, peer)
        self._dead_order[peer] = None
        self._effects.append(PeerDead(peer, left=left))

    def _evict_one(self) -> bool:
        if not self._dead_order:
            return False
        peer, _ = self._dead_order.popitem(last=False)
        del self._peers[peer]
        self._effects.append(PeerForgotten(peer))
        return True

    def _push(self, due: float, peer: str) -> None:
        heapq.heappush(self._timers, (due, peer))
        if len(self._timers) > 4 * len(self._peers) + 64:
            self._timers = [(i.deadline, p) for p, i in self._peers.items()]
            heapq.heapify(self._timers)
