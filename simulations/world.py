"""The policy-independent part of a run: peers, their sessions, gamers, streams, coordinates.

Everything here is drawn from generators seeded by ``(seed, concern)`` only, so every placement
policy of a run sees the same world (common random numbers): the same peers with the same
capabilities and malice, the same churn, the same gamers and frame phases.

Churn follows Stutzbach & Rejaie, "Understanding Churn in Peer-to-Peer Networks" (IMC 2006):
session lengths are Weibull with shape 0.34-0.59 (heavy-tailed: many short sessions, a few
very long ones); the scenario gives the shape and the median. Downtimes are exponential.
Region stewards (the election's voters) do not churn; scenario events may still kill them.

Vivaldi coordinates are warmed up before t=0 by running each endpoint's real
``mesh.vivaldi.VivaldiCore`` on RTT samples to random other endpoints; they then travel in
heartbeats and placement requests.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mesh.vivaldi import Coord, VivaldiCore, centroid
from simulations.network import NetworkModel
from simulations.scenario import Scenario
from simulations.workload import TaskProfile, load_calibration, profile_for

__all__ = ["StreamDef", "World", "build_world", "concern_seed"]

_CONCERNS = {"peers": 1, "churn": 2, "gamers": 3, "vivaldi": 4, "net": 5, "service": 6, "sched": 7, "verify": 8,
             "election": 9, "cheat": 10}  # fmt: skip


def concern_seed(seed: int, concern: str, extra: int = 0) -> int:
    """A 64-bit seed for one concern of a run, independent of every other concern."""
    ss = np.random.SeedSequence([seed & 0xFFFFFFFF, _CONCERNS[concern], extra])
    return int(ss.generate_state(2, dtype=np.uint32).astype(np.uint64).dot([1 << 32, 1]))


@dataclass(frozen=True)
class StreamDef:
    """One workload instance on one gamer: periodic (``period_s``) or closed-loop (``lanes``)."""

    index: int
    gamer: int  # endpoint index
    workload: int
    period_s: float
    lanes: int
    phase_s: float


@dataclass
class World:
    scenario: Scenario
    seed: int
    n_peers: int
    peer_ids: list[str]
    peer_region: list[int]
    peer_cores: list[int]
    peer_speed: list[float]
    peer_gpu: list[bool]
    peer_class: list[int]
    malicious: list[bool]
    steward: list[bool]
    sessions: list[list[tuple[float, float]]]
    stewards_by_region: list[list[int]]
    gamer_ids: list[str]
    region_of: list[int]  # endpoints: peers then gamers
    access_s: list[float]
    up_bps: list[float]
    coords: list[Coord]
    coord_err: list[float]
    region_centroid: list[Coord]
    hb_phase: list[float]
    streams: list[StreamDef]
    profiles: list[TaskProfile]
    capacity: list[dict[str, int]]

    @property
    def n_endpoints(self) -> int:
        return len(self.region_of)


def _sessions(scn: Scenario, rng: np.random.Generator, duration: float) -> list[tuple[float, float]]:
    ch = scn.churn
    k = ch.session_shape
    lam = ch.session_median_s / math.log(2.0) ** (1.0 / k)
    mean_on = lam * math.gamma(1.0 + 1.0 / k)
    avail = mean_on / (mean_on + ch.offline_mean_s)
    out: list[tuple[float, float]] = []
    t = 0.0 if rng.random() < avail else float(rng.exponential(ch.offline_mean_s))
    while t < duration:
        end = t + float(lam * rng.weibull(k))
        out.append((t, end))
        t = end + float(rng.exponential(ch.offline_mean_s))
    return out


def build_world(scn: Scenario, seed: int) -> World:
    """Draw the world of ``scn`` for ``seed`` (deterministic)."""
    net = scn.network
    P = scn.peers.count
    R = len(net.regions)
    prng = np.random.default_rng(concern_seed(seed, "peers"))
    regions, access, up = NetworkModel.draw_endpoints(net, P, prng)
    # Every region gets at least its stewards: the first peers are assigned round-robin.
    n_st = min(scn.peers.stewards_per_region, max(1, P // R))
    stewards_by_region: list[list[int]] = [[] for _ in range(R)]
    steward = [False] * P
    for i in range(min(P, n_st * R)):
        regions[i] = i % R
        stewards_by_region[i % R].append(i)
        steward[i] = True
    classes = scn.peers.classes
    share = np.asarray([c.share for c in classes], dtype=float)
    cls = [int(c) for c in prng.choice(len(classes), size=P, p=share / share.sum())]
    mal_draw = prng.random(P)
    malicious = [bool(mal_draw[i] < scn.peers.malicious_fraction) and not steward[i] for i in range(P)]
    width = max(5, len(str(P - 1)))
    peer_ids = [f"p{i:0{width}d}" for i in range(P)]

    crng = np.random.default_rng(concern_seed(seed, "churn"))
    sessions: list[list[tuple[float, float]]] = []
    for i in range(P):
        if steward[i] or not scn.churn.enabled:
            sessions.append([(0.0, math.inf)])
        else:
            sessions.append(_sessions(scn, crng, scn.duration_s))

    grng = np.random.default_rng(concern_seed(seed, "gamers"))
    G = max(1, round(P * scn.gamers_per_100_peers / 100.0))
    g_regions, g_access, g_up = NetworkModel.draw_endpoints(net, G, grng)
    gamer_ids = [f"g{i:0{width}d}" for i in range(G)]
    streams: list[StreamDef] = []
    for gi in range(G):
        for wi, w in enumerate(scn.workloads):
            if grng.random() >= w.share:
                continue
            rate = float(w.rate_hz[int(grng.integers(len(w.rate_hz)))])
            period = 1.0 / rate
            streams.append(
                StreamDef(len(streams), P + gi, wi, period, w.lanes, float(grng.random()) * period)
            )

    region_of = regions + g_regions
    access_s = access + g_access
    up_bps = up + g_up
    coords, errs = _warm_vivaldi(scn, seed, region_of, access_s, up_bps)
    cents: list[Coord] = []
    for r in range(R):
        c = centroid(coords[i] for i in range(P) if region_of[i] == r)
        cents.append(c if c is not None else Coord())
    hrng = random.Random(concern_seed(seed, "peers", 1))
    hb_phase = [hrng.random() * scn.control.heartbeat_interval_s for _ in range(P)]

    cal = load_calibration(scn.calibration)
    profiles = [profile_for(w, cal, Path(scn.calibration).name) for w in scn.workloads]
    kinds = sorted({w.kind for w in scn.workloads})
    capacity = [{k: classes[cls[i]].cores for k in kinds} for i in range(P)]
    return World(
        scenario=scn,
        seed=seed,
        n_peers=P,
        peer_ids=peer_ids,
        peer_region=regions,
        peer_cores=[classes[c].cores for c in cls],
        peer_speed=[classes[c].speed for c in cls],
        peer_gpu=[classes[c].gpu for c in cls],
        peer_class=cls,
        malicious=malicious,
        steward=steward,
        sessions=sessions,
        stewards_by_region=stewards_by_region,
        gamer_ids=gamer_ids,
        region_of=region_of,
        access_s=access_s,
        up_bps=up_bps,
        coords=coords,
        coord_err=errs,
        region_centroid=cents,
        hb_phase=hb_phase,
        streams=streams,
        profiles=profiles,
        capacity=capacity,
    )


def _warm_vivaldi(
    scn: Scenario, seed: int, region_of: list[int], access_s: list[float], up_bps: list[float]
) -> tuple[list[Coord], list[float]]:
    n = len(region_of)
    rng = random.Random(concern_seed(seed, "vivaldi"))
    net = NetworkModel(scn.network, region_of, access_s, up_bps, rng)
    cores = [VivaldiCore(str(i), random.Random(rng.getrandbits(64))) for i in range(n)]
    for _ in range(scn.control.vivaldi_rounds):
        for i in range(n):
            me = cores[i]
            for _ in range(scn.control.vivaldi_samples):
                j = rng.randrange(n)
                if j == i:
                    continue
                other = cores[j]
                me.on_rtt_sample(str(j), other.coord, other.error, 2.0 * net.one_way(i, j))
    return [c.coord for c in cores], [c.error for c in cores]
