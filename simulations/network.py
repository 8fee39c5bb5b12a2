"""The network model: who is how far from whom, how fast links are, what gets lost or cut.

Endpoints (worker peers first, then gamers) live in regions. The round-trip time between two
endpoints is::

    rtt(a, b) = base(region a, region b) + access(a) + access(b)

``base`` is the scenario's inter-region RTT matrix (public measurements, cited in each scenario
file) with the intra-region RTT on the diagonal; ``access`` is each endpoint's last-mile RTT
contribution, drawn once from a lognormal. A one-way delay is half the RTT plus exponential
jitter with the scenario's mean. Payloads also pay serialisation on the sender's uplink
(``bytes / uplink``), queued FIFO behind the sender's earlier payloads.

Loss: control messages (heartbeats, election, placement) are dropped with probability
``loss``; task and result streams run over a reliable transport, so a loss costs a
retransmission timeout instead (``max(0.2 s, 2 * rtt)``, Linux's minimum RTO).

Partitions cut every path between a set of endpoints and the rest while active; a message
is checked when it is sent.
"""

from __future__ import annotations

import math
import random

import numpy as np

from simulations.scenario import NetworkSpec

__all__ = ["NetworkModel"]

MIN_RTO_S = 0.2


class NetworkModel:
    """Delay, bandwidth, loss and partition queries for endpoint indices."""

    def __init__(
        self,
        spec: NetworkSpec,
        region_of: list[int],
        access_s: list[float],
        up_bps: list[float],
        rng: random.Random,
    ) -> None:
        self.spec = spec
        n = len(spec.regions)
        self.base_s = [
            [(spec.intra_rtt_ms[i] if i == j else spec.rtt_ms[i][j]) / 1000.0 for j in range(n)]
            for i in range(n)
        ]
        self.region_of = region_of
        self.access_s = access_s
        self.up_bps = up_bps
        self.link_free = [0.0] * len(region_of)
        self.rng = rng
        self.jitter_mean_s = spec.jitter_ms / 1000.0
        self.loss = spec.loss
        #: Active cuts: (region indices cut off, endpoint indices cut off).
        self._cuts: list[tuple[frozenset[int], frozenset[int]]] = []

    @staticmethod
    def draw_endpoints(
        spec: NetworkSpec, n: int, rng: np.random.Generator
    ) -> tuple[list[int], list[float], list[float]]:
        """Regions, access RTTs (s) and uplinks (bytes/s) for ``n`` new endpoints."""
        w = np.asarray(spec.region_weights, dtype=float)
        regions = rng.choice(len(spec.regions), size=n, p=w / w.sum())
        access = rng.lognormal(math.log(spec.access_rtt_median_ms / 1000.0), spec.access_rtt_sigma, size=n)
        mbps = np.asarray([b for b, _ in spec.bandwidth_mbps])
        share = np.asarray([s for _, s in spec.bandwidth_mbps])
        up = rng.choice(mbps, size=n, p=share / share.sum()) * 1e6 / 8.0
        return [int(r) for r in regions], [float(a) for a in access], [float(u) for u in up]

    # -- queries ---------------------------------------------------------------------------

    def rtt(self, a: int, b: int) -> float:
        """Mean round-trip time between two endpoints (no jitter), seconds."""
        return self.base_s[self.region_of[a]][self.region_of[b]] + self.access_s[a] + self.access_s[b]

    def one_way(self, a: int, b: int) -> float:
        """A sampled one-way delay: half the RTT plus exponential jitter."""
        ro = self.region_of
        half = 0.5 * (self.base_s[ro[a]][ro[b]] + self.access_s[a] + self.access_s[b])
        if self.jitter_mean_s > 0:
            # ``random.expovariate`` inlined (the same draw): this is the hottest call.
            return half - math.log(1.0 - self.rng.random()) * self.jitter_mean_s
        return half

    def blocked(self, a: int, b: int) -> bool:
        """True while a partition separates ``a`` and ``b``."""
        if not self._cuts:
            return False
        ra, rb = self.region_of[a], self.region_of[b]
        for regions, eps in self._cuts:
            if ((ra in regions) or (a in eps)) != ((rb in regions) or (b in eps)):
                return True
        return False

    def control_delay(self, a: int, b: int) -> float | None:
        """One-way delay of a control message, or ``None`` when it is dropped or cut."""
        if self.blocked(a, b) or (self.loss > 0 and self.rng.random() < self.loss):
            return None
        return self.one_way(a, b)

    def data_delay(self, a: int, b: int, nbytes: int, now: float) -> float | None:
        """Arrival time of a payload sent at ``now`` on a reliable stream; ``None`` when cut.

        Includes uplink serialisation queued behind the sender's earlier payloads and a
        retransmission timeout when the (first) transmission is lost.
        """
        if self.blocked(a, b):
            return None
        start = self.link_free[a]
        if start < now:
            start = now
        done = start + nbytes / self.up_bps[a]
        self.link_free[a] = done
        t = done + self.one_way(a, b)
        if self.loss > 0 and self.rng.random() < self.loss:
            t += max(MIN_RTO_S, 2.0 * self.rtt(a, b))
        return t

    # -- partitions ------------------------------------------------------------------------

    def add_cut(
        self, regions: frozenset[int], endpoints: frozenset[int]
    ) -> tuple[frozenset[int], frozenset[int]]:
        cut = (regions, endpoints)
        self._cuts.append(cut)
        return cut

    def remove_cut(self, cut: tuple[frozenset[int], frozenset[int]]) -> None:
        if cut in self._cuts:
            self._cuts.remove(cut)
