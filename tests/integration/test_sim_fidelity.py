"""Fidelity: the simulator against real control services on the in-memory backend.

The scenario ``simulations/scenarios/fidelity.toml`` (20 peers, one region, a fixed 10 ms
one-way delay, the coordinator killed at t = 4 s) runs twice:

* in the simulator (``simulations.sim``), with the world's peer ids replaced by the real
  members' ids, so that rank ties between equal candidate scores break the same way;
* as 20 real ``nodes.control.ControlService`` instances on ``mesh.memory`` under trio's
  ``MockClock`` (10 ms link delay, the same electorate, each member advertising the same
  capacity as its simulated peer), plus one gamer that keeps the scenario's 6 lanes of
  2-slot leases over a real control link (``LeaseRequest`` / ``LeaseGrant``), renewing 1 s
  before expiry with the current worker as affinity and re-finding the coordinator after a
  failed request, as the simulated gamer does.

Tolerances (what "agree" means here):
    * who: the same member is elected first, and the same member succeeds the killed one;
    * when: the first election within 1.0 s (the real members also join over the network
      first), the failover gap (kill to successor elected) within 0.5 s, both under 3 s;
    * placement: every lane holds a lease in both; the first round spreads the lanes over
      the same number of distinct workers (+-1); the share of renewals kept on the same
      worker differs by at most 0.25; no worker ever holds more slots than it advertises;
    * latency: the median lease-grant latency within 15 ms, the 90th percentile within 30 ms
      (one 20 ms round trip in both, plus a first-use stream open on the real side).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import trio
import trio.testing

from mesh import control_wire as cw
from mesh.errors import P2C2RError
from mesh.identity import Identity, peer_id_from_str, peer_id_to_str
from mesh.memory import LinkModel, MemoryNetwork
from nodes.control import ControlConfig, ControlService, LocalLoad
from nodes.mesh_client import ControlLink, open_control_link
from simulations.scenario import load_scenario
from simulations.sim import Simulation
from simulations.world import World, build_world

SCEN = Path(__file__).resolve().parents[2] / "simulations" / "scenarios" / "fidelity.toml"
SEED = 0
LANES = 6
SLOTS = 2
RENEW_MARGIN_S = 1.0


def ident(tag: str) -> Identity:
    return Identity.from_seed(hashlib.sha256(f"sim-fidelity/{tag}".encode()).digest())


@dataclass
class Outcome:
    elected: list[tuple[float, int]] = field(default_factory=list)  # (t, member index)
    leases: list[tuple[float, float, int]] = field(default_factory=list)  # (sent, granted, worker)
    kill_at: float = 0.0


def world_with_real_ids(
    scenario: Path, make_ident: Callable[[str], Identity]
) -> tuple[World, list[Identity]]:
    """The scenario's world (seed ``SEED``) with its peer ids replaced by real members' ids,
    so that rank ties between equal candidate scores break the same way on both sides."""
    scn = load_scenario(scenario)
    ids = [make_ident(str(i)) for i in range(scn.peers.count)]
    world = build_world(scn, SEED)
    world.peer_ids = [peer_id_to_str(i.peer_id_bytes) for i in ids]
    return world, ids


def simulate(world: World) -> Outcome:
    res = Simulation(world, "predicted").run()
    out = Outcome(kill_at=world.scenario.events[0].at_s)
    index = {pid: i for i, pid in enumerate(world.peer_ids)}
    out.elected = [(t, index[peer]) for t, _r, ev, peer, _e, _g in res.failovers if ev == "elected"]
    out.leases = list(res.leases)
    return out


async def run_real(world: World, ids: list[Identity]) -> Outcome:
    scn = world.scenario
    out = Outcome(kill_at=scn.events[0].at_s)
    net = MemoryNetwork(seed=SEED, link=LinkModel(delay_s=0.010))
    t0 = trio.current_time()
    peers = [peer_id_to_str(i.peer_id_bytes) for i in ids]
    index = {p: i for i, p in enumerate(peers)}
    voters = tuple(peers[p] for p in world.stewards_by_region[0])
    svcs: list[ControlService | None] = [None] * len(ids)
    scopes = [trio.CancelScope() for _ in ids]
    hosts: list[Any] = [None] * len(ids)
    kind = scn.workloads[0].kind

    async def member(i: int, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        cap = dict(world.capacity[i])

        def load() -> LocalLoad:
            return LocalLoad(load=0.0, queue_depth=0, capacity=cap)

        boot = (hosts[0].listen_addrs()[0],) if i > 0 else ()
        cfg = ControlConfig(
            region=scn.network.regions[0], voters=voters, bootstrap=boot, seed=SEED * 1000 + i
        )
        cfg = replace(cfg, scheduler=replace(cfg.scheduler, lease_s=scn.control.lease_s))
        with scopes[i]:
            async with net.open_host(ids[i]) as host, trio.open_nursery() as inner:
                hosts[i] = host
                svc = ControlService(host, ids[i], cfg, load_fn=load)
                svcs[i] = svc
                await inner.start(svc.run)
                task_status.started()
                await trio.sleep_forever()

    def alive() -> list[int]:
        return [i for i in range(len(ids)) if svcs[i] is not None and not scopes[i].cancel_called]

    def acting() -> int | None:
        for i in alive():
            svc = svcs[i]
            assert svc is not None
            if svc.is_coordinator():
                return i
        return None

    async def watch_elections() -> None:
        last: int | None = None
        while True:
            c = acting()
            if c is not None and c != last:
                out.elected.append((trio.current_time() - t0, c))
            last = c if c is not None else last
            await trio.sleep(0.005)

    async def killer() -> None:
        await trio.sleep_until(t0 + out.kill_at)
        c = acting()
        assert c is not None, "no coordinator to kill"
        hosts[c].crash()
        scopes[c].cancel()

    async def gamer(nursery: trio.Nursery) -> None:
        links: dict[str, ControlLink] = {}
        dial = trio.Lock()
        rid = 0
        async with net.open_host(ident("gamer")) as host:
            held: list[tuple[str | None, float]] = [(None, 0.0)] * LANES  # (worker, expires)

            async def coordinator() -> str:
                while True:  # the gamer follows the coordinator the members announce
                    views = {s.coordinator_id for s in (svcs[i] for i in alive()) if s is not None}
                    views.discard(None)
                    if len(views) == 1:
                        c = views.pop()
                        assert c is not None
                        if index[c] in alive():
                            return c
                    await trio.sleep(0.2)

            async def lane(k: int) -> None:
                nonlocal rid
                while True:
                    now = trio.current_time()
                    worker, exp = held[k]
                    if worker is not None and exp - now > RENEW_MARGIN_S:
                        await trio.sleep_until(exp - RENEW_MARGIN_S)
                        continue
                    coord = await coordinator()
                    try:
                        async with dial:  # one control link per peer, shared by the lanes
                            link = links.get(coord)
                            if link is None or not link.alive:
                                link = await open_control_link(host, nursery, peer_id_from_str(coord))
                                links[coord] = link
                        rid += 1
                        sent = trio.current_time()
                        req = cw.LeaseRequest(rid, kind, SLOTS, 1.0, 1, None, worker)
                        reply = await link.request(req, rid, 1.0)
                    except P2C2RError:
                        links.pop(coord, None)
                        continue
                    if isinstance(reply, cw.LeaseGrant):
                        got = trio.current_time()
                        out.leases.append((sent - t0, got - t0, index[reply.worker]))
                        held[k] = (reply.worker, got + reply.ttl_s)
                    else:
                        await trio.sleep(0.1)

            async with trio.open_nursery() as lanes:
                for k in range(LANES):
                    lanes.start_soon(lane, k)

    async with trio.open_nursery() as nursery:
        for i in range(len(ids)):
            await nursery.start(member, i)
        nursery.start_soon(watch_elections)
        nursery.start_soon(killer)
        nursery.start_soon(gamer, nursery)
        await trio.sleep_until(t0 + scn.duration_s)
        nursery.cancel_scope.cancel()
    return out


def _first_round(o: Outcome) -> list[int]:
    t = o.leases[0][1]
    return [w for _s, g, w in o.leases if g - t < 0.5][:LANES]


def _kept_share(o: Outcome) -> float:
    """Share of renewals granted on a worker that held a lease in the round before.

    Lanes are not labelled in the lease logs: leases granted within 2 s of each other form a
    round, and a renewal counts as kept while the previous round's worker multiset has it.
    """
    rounds: list[list[int]] = []
    start = -1e9
    for _s, g, w in sorted(o.leases, key=lambda x: x[1]):
        if g - start > 2.0:
            rounds.append([])
            start = g
        rounds[-1].append(w)
    kept = renewals = 0
    for prev, cur in itertools.pairwise(rounds):
        pool: dict[int, int] = {}
        for w in prev:
            pool[w] = pool.get(w, 0) + 1
        for w in cur:
            renewals += 1
            if pool.get(w, 0) > 0:
                pool[w] -= 1
                kept += 1
    return kept / renewals if renewals else 1.0


def _max_slots(o: Outcome, ttl: float) -> dict[int, int]:
    peak: dict[int, int] = {}
    for _s, g, w in o.leases:
        n = sum(SLOTS for _s2, g2, w2 in o.leases if w2 == w and g2 <= g < g2 + ttl)
        peak[w] = max(peak.get(w, 0), n)
    return peak


async def test_simulator_agrees_with_real_control_services(autojump_clock: trio.testing.MockClock) -> None:
    world, ids = world_with_real_ids(SCEN, ident)
    scn = world.scenario
    sim = simulate(world)
    real = await run_real(world, ids)
    report = {"sim": (sim.elected, sim.leases[:8]), "real": (real.elected, real.leases[:8])}

    # who, and when
    assert len(sim.elected) == 2 and len(real.elected) == 2, report
    assert sim.elected[0][1] == real.elected[0][1], report
    assert sim.elected[1][1] == real.elected[1][1], report
    assert abs(sim.elected[0][0] - real.elected[0][0]) <= 1.0, report
    gap_sim = sim.elected[1][0] - sim.kill_at
    gap_real = real.elected[1][0] - real.kill_at
    assert gap_sim < 3.0 and gap_real < 3.0 and abs(gap_sim - gap_real) <= 0.5, report

    # placement
    ttl = scn.control.lease_s
    for o in (sim, real):
        assert len(o.leases) >= LANES * 2, report
        for w, n in _max_slots(o, ttl).items():
            assert n <= sum(world.capacity[w].values()), (w, n, report)
    assert abs(len(set(_first_round(sim))) - len(set(_first_round(real)))) <= 1, report
    assert abs(_kept_share(sim) - _kept_share(real)) <= 0.25, (_kept_share(sim), _kept_share(real))

    # latency of lease grants
    lat_sim = np.asarray([g - s for s, g, _w in sim.leases])
    lat_real = np.asarray([g - s for s, g, _w in real.leases])
    p = {q: (float(np.percentile(lat_sim, q)), float(np.percentile(lat_real, q))) for q in (50, 90)}
    assert abs(p[50][0] - p[50][1]) <= 0.015, p
    assert abs(p[90][0] - p[90][1]) <= 0.030, p
