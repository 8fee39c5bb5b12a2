"""The SDK on the control plane: ``GamerClient.connect(bootstrap=...)`` on the in-memory
backend, in virtual time. Join from one address, leases enforced at dispatch, latencies
piggybacked to the coordinator, failover to a new coordinator and to another region, and
no submitted task lost on the way."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from mesh import control_wire as cw
from mesh import wire
from mesh.errors import TaskTimeoutError, UnavailableError
from mesh.identity import peer_id_to_str
from mesh.memory import LinkModel, MemoryNetwork
from nodes.gamer import GamerClient, GamerConfig, TaskHandle
from nodes.mesh_client import ControlLink, MeshClient, MeshClientConfig, fetch_status, join_mesh
from nodes.misbehave import MisbehaveSpec, Misbehaviour
from nodes.sdk_cores import MissConfig
from nodes.verification import VerificationConfig
from tests.integration.control_cluster import Member, coordinators, start_region, wait_for


@asynccontextmanager
async def joined_gamer(net: MemoryNetwork, via: Member) -> AsyncIterator[tuple[GamerClient, MeshClient]]:
    """A gamer joined to region ``eu`` by bootstrapping from ``via`` alone."""
    assert via.host is not None
    async with (
        net.open_host() as gamer_host,
        GamerClient.connect(host=gamer_host, bootstrap=[via.host.listen_addrs()[0]], region="eu") as gamer,
    ):
        assert gamer.mesh is not None
        yield gamer, gamer.mesh


def one_coordinator(members: list[Member]) -> bool:
    views = coordinators(members)
    return len(views) == 1 and next(iter(views))[0] is not None


def coordinator_of(members: list[Member]) -> Member:
    coord = next(iter(coordinators(members)))[0]
    return next(m for m in members if m.peer == coord)


@asynccontextmanager
async def mesh_gamer(
    net: MemoryNetwork, via: Member, config: MeshClientConfig, gamer_config: GamerConfig = GamerConfig()
) -> AsyncIterator[tuple[GamerClient, MeshClient]]:
    """A gamer joined through ``join_mesh`` with ``config``, bootstrapping from ``via`` alone;
    its mesh client is stopped on the way out."""
    assert via.host is not None
    async with (
        net.open_host() as gamer_host,
        GamerClient.connect(host=gamer_host, config=gamer_config) as gamer,
        trio.open_nursery() as mesh_nursery,
    ):
        mesh = await join_mesh(gamer, mesh_nursery, [via.host.listen_addrs()[0]], config=config)
        yield gamer, mesh
        mesh_nursery.cancel_scope.cancel()


def spy_on_lease_requests(monkeypatch: pytest.MonkeyPatch) -> list[cw.LeaseRequest]:
    """From now on, every lease request a gamer sends is also appended to the list returned."""
    seen: list[cw.LeaseRequest] = []
    request = ControlLink.request

    async def spy(self: ControlLink, msg: object, rid: int, timeout: float) -> object:
        if isinstance(msg, cw.LeaseRequest):
            seen.append(msg)
        return await request(self, msg, rid, timeout)  # type: ignore[arg-type]

    monkeypatch.setattr(ControlLink, "request", spy)
    return seen


async def submit_steadily(gamer: GamerClient, handles: list[TaskHandle], stop: trio.Event) -> None:
    i = 0
    while not stop.is_set():
        handles.append(await gamer.submit("echo", b"task %d" % i, deadline=20.0))
        i += 1
        await trio.sleep(0.02)


async def test_gamer_joins_by_bootstrap_uses_leases_and_survives_coordinator_death(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork(seed=11, link=LinkModel(delay_s=0.005, jitter_s=0.001))
    async with trio.open_nursery() as nursery:
        eu = await start_region(net, nursery, "eu", 5, workers=True, seed=1)
        us = await start_region(
            net, nursery, "us", 4, workers=True, seed=2, bootstrap=(eu[0].host.listen_addrs()[0],)
        )
        await wait_for(lambda: one_coordinator(eu) and one_coordinator(us), timeout=30)
        old = coordinator_of(eu)
        async with joined_gamer(net, eu[1]) as (gamer, mesh):
            # 1. joined: the region's coordinator found, both regions known, leases held
            assert mesh.region == "eu" and mesh.coordinator == old.peer
            assert set(mesh.regions()) == {"eu", "us"}
            await wait_for(lambda: len({w for _, w, k, _ in mesh.leases() if k == "echo"}) >= 2, 5)
            eu_peers = {m.peer for m in eu}
            assert {w for _, w, _, _ in mesh.leases()} <= eu_peers

            handles: list[TaskHandle] = []
            stop = trio.Event()
            leased: set[str] = set()  # every worker leased to the gamer so far

            async def watch_leases() -> None:
                while not stop.is_set():
                    leased.update(w for _, w, _, _ in mesh.leases())
                    await trio.sleep(0.01)

            async with trio.open_nursery() as load:
                load.start_soon(watch_leases)
                load.start_soon(submit_steadily, gamer, handles, stop)
                await trio.sleep(4.0)
                # 2. leases enforced at dispatch: every task so far went to a worker leased
                # to the gamer (a lease may have lapsed and been replaced since: the set is
                # every lease seen, not only the current ones)
                done = [h for h in handles if h.done()]
                assert len(done) > 100
                assert {peer_id_to_str(h.worker) for h in done if h.worker} <= leased | {old.peer}
                assert mesh.stats.placed_leased > 100 and mesh.stats.placed_unleased == 0
                # 3. completions flowed back: latencies piggybacked on the lease renewals
                assert old.svc is not None and old.svc.coordinator is not None
                assert old.svc.coordinator.observed_samples > 0
                assert mesh.stats.observed_sent > 0

                # 4. the coordinator dies (it is also a worker, maybe a leased one)
                t_kill = trio.current_time()
                old.kill()
                survivors = [m for m in eu if m is not old]
                took = await wait_for(
                    lambda: (
                        mesh.coordinator not in (None, old.peer)
                        and one_coordinator(survivors)
                        and mesh.coordinator == coordinator_of(survivors).peer
                    ),
                    timeout=10,
                    step=0.01,
                )
                assert took < 3.0, f"the gamer found the new coordinator after {took:.2f} s"
                assert trio.current_time() - t_kill < 3.0
                assert mesh.region == "eu"
                # the client holds fresh leases from the new coordinator, on live workers
                await wait_for(
                    lambda: (
                        len({w for _, w, k, _ in mesh.leases() if k == "echo"}) >= 2
                        and old.peer not in {w for _, w, _, _ in mesh.leases()}
                    ),
                    timeout=5,
                )
                await trio.sleep(2.0)
                stop.set()
            # 5. nothing lost: every task ends verified, with its own output
            with trio.fail_after(30):
                outs = [await h.result() for h in handles]
            assert outs == [b"task %d" % i for i in range(len(handles))]
            assert gamer.stats.failed == 0 and gamer.stats.verified == len(handles)
            assert mesh.stats.coordinator_changes >= 2  # the first one, then its successor
        nursery.cancel_scope.cancel()


async def test_gamer_moves_to_another_region_when_its_region_cannot_elect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork(seed=12, link=LinkModel(delay_s=0.005))
    async with trio.open_nursery() as nursery:
        eu = await start_region(net, nursery, "eu", 5, workers=True, seed=3)
        us = await start_region(
            net, nursery, "us", 4, workers=True, seed=4, bootstrap=(eu[0].host.listen_addrs()[0],)
        )
        await wait_for(lambda: one_coordinator(eu) and one_coordinator(us), timeout=30)
        async with joined_gamer(net, eu[4]) as (gamer, mesh):
            assert mesh.region == "eu"
            handles: list[TaskHandle] = []
            stop = trio.Event()
            async with trio.open_nursery() as load:
                load.start_soon(submit_steadily, gamer, handles, stop)
                await trio.sleep(2.0)
                # the three voters die: eu keeps two workers but can never elect again
                t_kill = trio.current_time()
                for m in eu[:3]:
                    m.kill()
                took = await wait_for(lambda: mesh.region == "us", timeout=15, step=0.05)
                assert took < 8.0, f"moved region after {took:.2f} s"
                assert mesh.coordinator == coordinator_of(us).peer
                await wait_for(
                    lambda: any(w in {m.peer for m in us} for _, w, _, _ in mesh.leases()), timeout=5
                )
                t_moved = trio.current_time()
                await trio.sleep(2.0)
                stop.set()
            with trio.fail_after(30):
                outs = [await h.result() for h in handles]
            assert outs == [b"task %d" % i for i in range(len(handles))]
            assert gamer.stats.failed == 0
            # after the move, tasks run on the new region's leased workers (or eu's survivors)
            late = [h for h in handles if h.submitted_at > t_moved + 0.5]
            us_peers = {m.peer for m in us}
            assert (
                late and sum(peer_id_to_str(h.worker) in us_peers for h in late if h.worker) > len(late) // 2
            )
            assert mesh.stats.region_changes == 1
            assert t_kill < t_moved
        nursery.cancel_scope.cancel()


async def test_joining_waits_out_a_slow_bootstrap_and_says_why_when_it_gives_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A bootstrap node that is not up yet is retried with backoff (the gamer joins once it
    answers); a bootstrap that never answers ends in a typed error that says so."""
    import pytest

    from mesh.errors import UnavailableError
    from nodes.mesh_client import MeshClientConfig, join_mesh

    net = MemoryNetwork(seed=12, link=LinkModel(delay_s=0.005))
    async with trio.open_nursery() as nursery:
        eu = await start_region(net, nursery, "eu", 3, workers=True, seed=3)
        await wait_for(lambda: one_coordinator(eu), timeout=30)
        addr = eu[1].host.listen_addrs()[0]
        peers = [m.identity.peer_id_bytes for m in eu]
        async with net.open_host() as gamer_host:
            # cut off from the region for the first 3 s, as if the node were still starting
            net.partition([gamer_host.peer_id], peers)

            async def heal_later() -> None:
                await trio.sleep(3.0)
                net.heal()

            nursery.start_soon(heal_later)
            t0 = trio.current_time()
            async with GamerClient.connect(host=gamer_host, bootstrap=[addr], region="eu") as gamer:
                assert trio.current_time() - t0 >= 3.0
                assert gamer.mesh is not None and gamer.mesh.coordinator is not None
                assert await (await gamer.submit("echo", b"late but fine")).result() == b"late but fine"
        async with net.open_host() as lonely, trio.open_nursery() as inner:
            net.partition([lonely.peer_id], peers)
            async with GamerClient.connect(host=lonely) as gamer:
                with pytest.raises(UnavailableError, match="no bootstrap peer answered within 5 s"):
                    await join_mesh(
                        gamer, inner, [addr], config=MeshClientConfig(region="eu", join_timeout_s=5.0)
                    )
        nursery.cancel_scope.cancel()


async def test_workers_the_gamer_banned_itself_get_no_more_leases(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A local ban (no proof to gossip, e.g. an unresponsive worker) stays the gamer's own:
    its lease requests list the banned workers, and the coordinator leases others."""
    net = MemoryNetwork(seed=13, link=LinkModel(delay_s=0.005))
    async with trio.open_nursery() as nursery:
        eu = await start_region(net, nursery, "eu", 4, workers=True, seed=4)
        await wait_for(lambda: one_coordinator(eu), timeout=30)
        async with joined_gamer(net, eu[1]) as (gamer, mesh):
            await wait_for(lambda: len(mesh.leases()) >= 2, 5)
            victim = mesh.leases()[0][1]
            gamer.reputation.ban(
                next(m.identity.peer_id_bytes for m in eu if m.peer == victim), trio.current_time()
            )
            handles = [await gamer.submit("echo", b"x%d" % i, deadline=20.0) for i in range(40)]
            await trio.sleep(15.0)  # leases on the victim lapse; renewals and new requests exclude it
            assert all(w != victim for _, w, _, _ in mesh.leases())
            assert [await h.result() for h in handles] == [b"x%d" % i for i in range(40)]
        nursery.cancel_scope.cancel()


async def test_gamer_closes_links_to_workers_it_no_longer_leases_or_uses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork(seed=13, link=LinkModel(delay_s=0.005))
    config = MeshClientConfig(
        region="eu", kinds=("echo",), workers_per_kind=1, max_workers_per_kind=1, idle_link_s=5.0
    )
    async with trio.open_nursery() as nursery:
        eu = await start_region(net, nursery, "eu", 5, workers=True, seed=5)
        await wait_for(lambda: one_coordinator(eu), timeout=30)
        async with mesh_gamer(net, eu[1], config) as (gamer, mesh):
            leased = {w for _, w, _, _ in mesh.leases()}
            assert len(leased) == 1
            # a worker connected but never leased (e.g. left over from an earlier lease)
            spare = next(
                m for m in eu if m.peer not in leased and m.svc is not None and not m.svc.is_coordinator()
            )
            spare_id = spare.identity.peer_id_bytes
            assert spare.host is not None
            await gamer.add_worker(spare.host.listen_addrs()[0])
            handles: list[TaskHandle] = []
            stop = trio.Event()
            async with trio.open_nursery() as load:
                load.start_soon(submit_steadily, gamer, handles, stop)
                await trio.sleep(8.0)
                # in use (duplicates and probes of the verification policy go to it): kept
                assert spare_id in gamer.workers()
                assert mesh.stats.idle_links_closed == 0
                stop.set()
            assert [await h.result() for h in handles] == [b"task %d" % i for i in range(len(handles))]
            # unused for idle_link_s and not leased: closed, and not re-dialled
            await wait_for(lambda: spare_id not in gamer.workers(), timeout=30)
            assert mesh.stats.idle_links_closed == 1
            assert {peer_id_to_str(w) for w in gamer.workers()} >= {w for _, w, _, _ in mesh.leases()}
            await trio.sleep(20.0)
            assert spare_id not in gamer.workers()
            # the leased worker stays connected while idle, and a task still runs
            assert await gamer.run("echo", b"after") == b"after"
        nursery.cancel_scope.cancel()


async def test_a_full_region_lends_the_gamer_a_lease_in_the_next_region(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """eu has 3 workers of 4 echo slots; the gamer wants 4 leases of 4 slots. eu's coordinator
    overflows the fourth request to us, whose summary shows room, and the gamer follows the
    redirect: one lease on a us worker, neither renewed nor released (its id is us's)."""
    net = MemoryNetwork(seed=14, link=LinkModel(delay_s=0.005))
    config = MeshClientConfig(
        region="eu", kinds=("echo",), workers_per_kind=4, max_workers_per_kind=4, slots=4
    )
    async with trio.open_nursery() as nursery:
        eu = await start_region(net, nursery, "eu", 3, workers=True, seed=6)
        us = await start_region(
            net, nursery, "us", 3, workers=True, seed=7, bootstrap=(eu[0].host.listen_addrs()[0],)
        )
        await wait_for(lambda: one_coordinator(eu) and one_coordinator(us), timeout=30)
        await trio.sleep(3.0)  # coordinators have each other's summaries
        us_peers = {m.peer for m in us}
        async with mesh_gamer(net, eu[1], config) as (gamer, mesh):
            await wait_for(lambda: mesh.stats.overflow_leases >= 1, timeout=20)
            lent = [(lid, w, ttl) for lid, w, _, ttl in mesh.leases() if w in us_peers]
            assert len(lent) == 1 and mesh.stats.redirects >= 1
            assert any(w not in us_peers for _, w, _, _ in mesh.leases())  # eu's own leases stay
            (lid, worker, _), until = lent[0], trio.current_time() + lent[0][2]
            handles = [await gamer.submit("echo", b"task %d" % i, deadline=10.0) for i in range(40)]
            assert [await h.result() for h in handles] == [b"task %d" % i for i in range(40)]
            # Its worker dies while the lease is live: the lease is dropped, and its id (us's)
            # is never released to eu's coordinator, where it would name another lease.
            requests = spy_on_lease_requests(monkeypatch)
            next(m for m in us if m.peer == worker).kill()
            await wait_for(lambda: all(w != worker for _, w, _, _ in mesh.leases()), timeout=10)
            await trio.sleep(max(0.0, until - trio.current_time()) + 2.0)  # renewals went out meanwhile
            releases = [released for r in requests for released in r.release]
            assert releases and lid not in releases and min(releases) >= 0  # ours only
        nursery.cancel_scope.cancel()


async def test_lease_requests_carry_the_kinds_priority_class(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coordinator's scheduler orders requests by class: a gamer whose ``echo`` is batch
    work asks for its leases in the batch class (until now every request said "normal")."""
    requests = spy_on_lease_requests(monkeypatch)
    net = MemoryNetwork(seed=15, link=LinkModel(delay_s=0.005))
    config = GamerConfig(priorities={"echo": wire.PRIORITY_BATCH})
    async with trio.open_nursery() as nursery:
        eu = await start_region(net, nursery, "eu", 3, workers=True, seed=8)
        await wait_for(lambda: one_coordinator(eu), timeout=30)
        async with (
            net.open_host() as gamer_host,
            GamerClient.connect(
                host=gamer_host, config=config, bootstrap=[eu[1].host.listen_addrs()[0]], region="eu"
            ) as gamer,
        ):
            assert gamer.mesh is not None
            mesh = gamer.mesh
            await wait_for(lambda: len(mesh.leases()) >= 1, 5)
            assert await gamer.run("echo", b"tile", deadline=10.0) == b"tile"
        nursery.cancel_scope.cancel()
    assert requests and {r.priority for r in requests} == {wire.PRIORITY_BATCH}


async def test_a_lease_whose_worker_keeps_missing_is_replaced(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leased worker answers every task 1 s late against a 0.5 s deadline: after three
    misses in a row its lease goes back (released on the next request) and the gamer gets
    on with another worker. With the rule off, every task misses."""

    async def run(misses: int) -> tuple[int, MeshClient, list[cw.LeaseRequest], str]:
        requests = spy_on_lease_requests(monkeypatch)
        net = MemoryNetwork(seed=16, link=LinkModel(delay_s=0.005))
        gamer_cfg = GamerConfig(verification=VerificationConfig.off(), hedge=False, adaptive_timeouts=None)
        mesh_cfg = MeshClientConfig(
            region="eu", kinds=("echo",), workers_per_kind=1, lease_misses=MissConfig(misses=misses)
        )
        async with trio.open_nursery() as nursery:
            eu = await start_region(net, nursery, "eu", 4, workers=True, seed=9)
            await wait_for(lambda: one_coordinator(eu), timeout=30)
            async with mesh_gamer(net, eu[1], mesh_cfg, gamer_cfg) as (gamer, mesh):
                bad = mesh.leases()[0][1]
                member = next(m for m in eu if m.peer == bad)
                assert member.worker is not None
                member.worker.behaviour = Misbehaviour(MisbehaveSpec("slow", delay_s=1.0))
                ok = 0
                for i in range(12):
                    try:
                        ok += await gamer.run("echo", b"tick %d" % i, deadline=0.5) == b"tick %d" % i
                    except TaskTimeoutError:
                        pass
            nursery.cancel_scope.cancel()
        return ok, mesh, requests, bad

    ok, mesh, requests, bad = await run(3)
    # three misses per replacement, and the task sent before the new lease is in
    assert mesh.stats.leases_replaced >= 1 and ok >= 12 - 4 * mesh.stats.leases_replaced
    assert all(w != bad for _, w, _, _ in mesh.leases())
    assert mesh.stats.leases_replaced <= len({lid for r in requests for lid in r.release})  # given back
    assert any(bad in r.exclude for r in requests)  # and not asked for again straight away
    ok, mesh, _, bad = await run(10**6)
    assert ok == 0 and mesh.stats.leases_replaced == 0 and [w for _, w, _, _ in mesh.leases()] == [bad]


async def test_placement_from_leases_asks_only_about_leased_workers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The SDK's placer is a lease placer: per task it looks at the leases held, not at
    every connected worker (it used to take the list of every live worker and encode each
    one's peer id, about 10 us apiece, for every task). A leased worker that is not a
    candidate (gone, banned) is passed over; with none left the SDK chooses."""
    net = MemoryNetwork(seed=17, link=LinkModel(delay_s=0.005))
    mesh_cfg = MeshClientConfig(region="eu", kinds=("echo",), workers_per_kind=2)
    async with trio.open_nursery() as nursery:
        eu = await start_region(net, nursery, "eu", 5, workers=True, seed=10)
        await wait_for(lambda: one_coordinator(eu), timeout=30)
        async with mesh_gamer(net, eu[1], mesh_cfg) as (gamer, mesh):
            await wait_for(lambda: len({w for _, w, _, _ in mesh.leases()}) >= 2, 5)
            for m in eu:  # connected to every worker of the region, leased on two of them
                await mesh._add_worker(m.peer)
            assert len(gamer.workers()) == 5
            leased = sorted({le.peer for le in mesh._leases.values()})
            asked: list[bytes] = []

            def in_flight(counts: dict[bytes, int]) -> Callable[[bytes], int | None]:
                def ask(peer: bytes) -> int | None:
                    asked.append(peer)
                    return counts.get(peer)

                return ask

            everyone = {p: 0 for p in gamer.workers()}
            assert mesh._place("echo", in_flight(everyone)) == leased[0]  # ties: lowest id
            assert sorted(asked) == leased
            before = mesh.stats.placed_leased
            busy = everyone | {leased[0]: 5}
            assert mesh._place("echo", in_flight(busy)) == leased[1]
            gone = {p: n for p, n in everyone.items() if p != leased[1]}
            assert mesh._place("echo", in_flight(gone | {leased[0]: 9})) == leased[0]
            assert mesh.stats.placed_leased == before + 1 and mesh.stats.placed_over_capacity == 1
            unleased = mesh.stats.placed_unleased
            assert mesh._place("echo", in_flight({p: 0 for p in everyone if p not in leased})) is None
            assert mesh._place("reverse", in_flight(everyone)) is None  # no lease of the kind
            assert mesh.stats.placed_unleased == unleased + 2
            # and a task's primary goes to a leased worker (duplicates are the policy's)
            placed = mesh.stats.placed_leased
            assert await gamer.run("echo", b"x", deadline=5.0) == b"x"
            assert mesh.stats.placed_leased == placed + 1
        nursery.cancel_scope.cancel()


async def test_a_status_query_to_a_node_that_is_gone_is_a_typed_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``fetch_status`` raises ``UnavailableError`` itself, not inside an exception group from
    its own nursery (the demo's mesh checks catch ``P2C2RError`` around it)."""
    net = MemoryNetwork(seed=18, link=LinkModel(delay_s=0.005))
    async with net.open_host() as gone:
        addr = gone.listen_addrs()[0]
    async with net.open_host() as probe:
        with pytest.raises(UnavailableError):
            await fetch_status(addr, host=probe, timeout=1.0)
