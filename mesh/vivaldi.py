"""Vivaldi network coordinates: estimate the RTT between any two peers without pinging them.

Each node keeps a coordinate in a 2-D Euclidean plane plus a non-negative *height* (Dabek et
al., "Vivaldi: A Decentralized Network Coordinate System", SIGCOMM 2004). The plane models the
core of the internet, the height the access link every packet crosses twice, so

    estimate_rtt(a, b) = |a.xy - b.xy| + a.height + b.height            (seconds)

Coordinates travel in heartbeats (see ``mesh.membership``); a node that measured an RTT to a
peer feeds the sample, the peer's coordinate and the peer's error estimate to
``VivaldiCore.on_rtt_sample``. That is the only input, and this core emits no effects: it is a
pure estimator that the shell reads (``coord``, ``error``) when it builds its next heartbeat.

State
    ``coord``  — the local coordinate; starts at the origin with ``min_height``.
    ``error``  — the local relative error estimate in [min_error, max_error]; starts at
                 ``initial_error`` (1.0 = "know nothing") and shrinks as predictions improve.
    a bounded per-peer filter of the last ``filter_size`` RTT samples (least recently used
    peer evicted first), whose median is used instead of the raw sample, because RTT samples
    have a heavy upper tail (queueing) that would otherwise jerk the coordinate around.

Transition (one accepted sample; the adaptive timestep of the paper):
    w      = e_local / (e_local + e_remote)         trust a sample more when we are less sure
    e_s    = |estimate - rtt| / rtt                 relative error of this sample
    error  = e_s * ce * w + error * (1 - ce * w)    EWMA of the relative error
    delta  = cc * w                                 adaptive timestep
    coord += delta * (rtt - estimate) * unit(coord - remote)   (height vector arithmetic)

Invariants
    * every coordinate component is finite, ``height >= min_height``;
    * ``min_error <= error <= max_error``;
    * a rejected sample (non-finite, non-positive or absurd RTT, non-finite remote coordinate,
      our own id) leaves the state untouched and is counted in ``rejected``;
    * deterministic: the only randomness (a direction when two coordinates coincide) comes
      from the ``random.Random`` passed in.

``choose_region`` picks the region whose centroid is nearest (by estimated RTT), with optional
hysteresis so a node does not flap between two nearly equidistant regions.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mesh.errors import ProtocolError

__all__ = [
    "Coord",
    "VivaldiConfig",
    "VivaldiCore",
    "centroid",
    "choose_region",
    "estimate_rtt",
]

#: Coordinates whose components exceed this (seconds) are treated as malformed: no real RTT
#: is anywhere near it, and it keeps every sum finite.
MAX_COMPONENT_S = 1_000.0


@dataclass(frozen=True, slots=True)
class Coord:
    """A Vivaldi coordinate: position in the plane and access-link height, all in seconds."""

    x: float = 0.0
    y: float = 0.0
    height: float = 0.0

    def is_valid(self) -> bool:
        """True when every component is finite and in range and the height is non-negative."""
        return (
            all(math.isfinite(v) and abs(v) <= MAX_COMPONENT_S for v in (self.x, self.y, self.height))
            and self.height >= 0.0
        )

    def to_wire(self) -> list[float]:
        """Msgpack-able form: ``[x, y, height]``."""
        return [self.x, self.y, self.height]

    @classmethod
    def from_wire(cls, obj: object) -> Coord:
        """Parse ``[x, y, height]``; anything else is a ``ProtocolError``."""
        if not isinstance(obj, (list, tuple)) or len(obj) != 3:
            raise ProtocolError("coordinate must be a list of 3 numbers")
        vals: list[float] = []
        for v in obj:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ProtocolError("coordinate components must be numbers")
            vals.append(float(v))
        c = cls(vals[0], vals[1], vals[2])
        if not c.is_valid():
            raise ProtocolError("coordinate out of range or not finite")
        return c


def estimate_rtt(a: Coord, b: Coord) -> float:
    """Predicted round-trip time between two coordinates, in seconds."""
    return math.hypot(a.x - b.x, a.y - b.y) + a.height + b.height


def centroid(coords: Iterable[Coord]) -> Coord | None:
    """Component-wise mean of some coordinates (a region's centroid); ``None`` when empty."""
    n = 0
    sx = sy = sh = 0.0
    for c in coords:
        n += 1
        sx += c.x
        sy += c.y
        sh += c.height
    if n == 0:
        return None
    return Coord(sx / n, sy / n, sh / n)


def choose_region(
    coord: Coord,
    centroids: Mapping[str, Coord],
    *,
    current: str | None = None,
    hysteresis_s: float = 0.0,
) -> str | None:
    """The region whose centroid is nearest to ``coord``; ties go to the smaller name.

    With ``current`` set and still present, the node only moves when another region is
    nearer by more than ``hysteresis_s`` — it keeps a node from flapping between two
    regions that are nearly equidistant. ``None`` when there are no regions.
    """
    best: tuple[float, str] | None = None
    for name in sorted(centroids):
        d = estimate_rtt(coord, centroids[name])
        if best is None or d < best[0]:
            best = (d, name)
    if best is None:
        return None
    if current is not None and current in centroids and current != best[1]:
        if estimate_rtt(coord, centroids[current]) - best[0] <= hysteresis_s:
            return current
    return best[1]


@dataclass(frozen=True)
class VivaldiConfig:
    """Tuning of the Vivaldi update (defaults follow the paper and Serf)."""

    #: Weight of a new sample in the error EWMA (paper: 0.25).
    ce: float = 0.25
    #: Coordinate timestep scale (paper: 0.25).
    cc: float = 0.25
    initial_error: float = 1.0
    min_error: float = 0.01
    max_error: float = 1.5
    #: Smallest height (s); keeps the unit-vector computation away from 0/0.
    min_height: float = 1e-5
    #: Samples above this RTT (s) are considered broken and rejected.
    max_rtt_s: float = 10.0
    #: How many recent samples per peer go into the median filter.
    filter_size: int = 3
    #: How many peers the median filter remembers (LRU).
    max_filter_peers: int = 256


@dataclass
class VivaldiCore:
    """The local node's Vivaldi state; feed it RTT samples, read ``coord`` and ``error``."""

    self_id: str
    rng: random.Random
    config: VivaldiConfig = field(default_factory=VivaldiConfig)
    coord: Coord = field(init=False)
    error: float = field(init=False)
    accepted: int = field(init=False, default=0)
    rejected: int = field(init=False, default=0)
    _filters: OrderedDict[str, list[float]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.coord = Coord(0.0, 0.0, self.config.min_height)
        self.error = self.config.initial_error
        self._filters = OrderedDict()

    def estimate_rtt_to(self, other: Coord) -> float:
        """Predicted RTT from this node to a coordinate."""
        return estimate_rtt(self.coord, other)

    def on_rtt_sample(
        self, peer: str, their_coord: Coord, their_error: float, rtt_s: float, now: float = 0.0
    ) -> bool:
        """Fold one measured RTT to ``peer`` into the local coordinate; False if rejected.

        ``now`` is accepted for interface uniformity with the other cores; Vivaldi itself is
        time-free.
        """
        cfg = self.config
        if (
            peer == self.self_id
            or not math.isfinite(rtt_s)
            or rtt_s <= 0.0
            or rtt_s > cfg.max_rtt_s
            or not their_coord.is_valid()
            or not math.isfinite(their_error)
        ):
            self.rejected += 1
            return False
        rtt = self._filtered(peer, rtt_s)
        their_error = min(max(their_error, cfg.min_error), cfg.max_error)

        dist = estimate_rtt(self.coord, their_coord)
        w = self.error / (self.error + their_error)
        sample_err = abs(dist - rtt) / rtt
        self.error = min(
            max(sample_err * cfg.ce * w + self.error * (1.0 - cfg.ce * w), cfg.min_error), cfg.max_error
        )

        force = cfg.cc * w * (rtt - dist)
        ux, uy, uh = self._unit_away(their_coord)
        new = Coord(
            self.coord.x + force * ux,
            self.coord.y + force * uy,
            max(self.coord.height + force * uh, cfg.min_height),
        )
        if new.is_valid():
            self.coord = new
        self.accepted += 1
        return True

    def _filtered(self, peer: str, rtt_s: float) -> float:
        window = self._filters.get(peer)
        if window is None:
            window = []
            self._filters[peer] = window
            while len(self._filters) > self.config.max_filter_peers:
                self._filters.popitem(last=False)
        else:
            self._filters.move_to_end(peer)
        window.append(rtt_s)
        if len(window) > self.config.filter_size:
            del window[0]
        s = sorted(window)
        mid = len(s) // 2
        return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2.0

    def _unit_away(self, other: Coord) -> tuple[float, float, float]:
        """Unit vector pointing from ``other`` to us, in height-vector arithmetic.

        ``[x, h] - [y, g] = [x - y, h + g]`` and ``|[x, h]| = |x| + h``: moving "away" also
        grows both heights, which is how the model learns access-link latency.
        """
        dx = self.coord.x - other.x
        dy = self.coord.y - other.y
        dh = self.coord.height + other.height
        planar = math.hypot(dx, dy)
        norm = planar + dh
        if planar < 1e-9:
            # Coincident in the plane: push in a random (seeded) direction so that two nodes
            # starting at the origin can separate at all.
            angle = self.rng.uniform(0.0, 2.0 * math.pi)
            dx, dy = math.cos(angle), math.sin(angle)
            return (dx / 2.0, dy / 2.0, 0.5) if dh > 0 else (dx, dy, 0.0)
        return (dx / norm, dy / norm, dh / norm)
