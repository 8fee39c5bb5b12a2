"""Election and membership over the control plane, on the in-memory backend in virtual time."""

from __future__ import annotations

import trio
import trio.testing

from mesh.memory import LinkModel, MemoryNetwork
from nodes.control import ControlConfig
from tests.integration.control_cluster import (
    Member,
    coordinators,
    ident,
    start_member,
    start_region,
    wait_for,
)


def one_coordinator(members):  # type: ignore[no-untyped-def]
    views = coordinators(members)
    return len(views) == 1 and next(iter(views))[0] is not None


async def test_region_elects_one_coordinator_and_fails_over_within_2s(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork(seed=1, link=LinkModel(delay_s=0.005, jitter_s=0.002))
    async with trio.open_nursery() as nursery:
        members = await start_region(net, nursery, "eu", 6)
        await wait_for(lambda: one_coordinator(members), timeout=20)
        coord, epoch = next(iter(coordinators(members)))
        # everybody sees everybody through gossip
        await wait_for(lambda: all(len(m.svc.membership) == 5 for m in members), timeout=10)
        old = next(m for m in members if m.peer == coord)
        await trio.sleep(3.0)
        t_kill = trio.current_time()
        old.kill()
        survivors = [m for m in members if m is not old]

        def replaced() -> bool:
            views = coordinators(survivors)
            return len(views) == 1 and next(iter(views))[0] not in (None, coord)

        took = await wait_for(replaced, timeout=10, step=0.01)
        _new_coord, new_epoch = next(iter(coordinators(survivors)))
        assert new_epoch > epoch
        assert took < 2.0, f"failover took {took:.2f} s"
        assert trio.current_time() - t_kill < 2.0
        nursery.cancel_scope.cancel()


async def test_returning_partitioned_node_does_not_depose_coordinator(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork(seed=2, link=LinkModel(delay_s=0.005))
    async with trio.open_nursery() as nursery:
        members = await start_region(net, nursery, "eu", 5)
        await wait_for(lambda: one_coordinator(members), timeout=20)
        coord, epoch = next(iter(coordinators(members)))
        loner = next(m for m in members[:3] if m.peer != coord)  # a voter: only voters claim
        others = [m.identity.peer_id_bytes for m in members if m is not loner]
        net.partition([loner.identity.peer_id_bytes], others)
        await trio.sleep(20.0)  # the loner's claims fail again and again; its epoch grows
        assert loner.svc is not None and loner.svc.election is not None
        assert loner.svc.election.term > epoch
        assert not loner.svc.is_coordinator()
        net.heal()
        await trio.sleep(5.0)
        # everyone, the loner included, follows the same, unchanged coordinator
        assert coordinators(members) == {(coord, epoch)}
        nursery.cancel_scope.cancel()


async def test_two_regions_converge_and_exchange_summaries(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork(seed=3, link=LinkModel(delay_s=0.01, jitter_s=0.005))
    async with trio.open_nursery() as nursery:
        eu = await start_region(net, nursery, "eu", 5)
        boot = (eu[0].host.listen_addrs()[0],)
        us = await start_region(net, nursery, "us", 5, bootstrap=boot)
        everyone = eu + us
        took = await wait_for(
            lambda: (
                one_coordinator(eu)
                and one_coordinator(us)
                and all(len(m.svc.membership) == 4 for m in everyone)
                and all(
                    sorted((r.region, len(r.members)) for r in m.svc.snapshot().regions)
                    == [("eu", 5), ("us", 5)]
                    for m in everyone
                )
            ),
            timeout=30,
        )
        assert took < 10.0
        snap = eu[0].svc.snapshot()
        us_view = next(r for r in snap.regions if r.region == "us")
        assert us_view.coordinator == next(iter(coordinators(us)))[0]
        assert len(us_view.members) == 5
        assert dict(us_view.free).get("echo", 0) > 0
        nursery.cancel_scope.cancel()


async def test_founders_that_meet_later_converge_on_one_electorate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two groups of one region start apart (as with mDNS: no bootstrap address) and each
    founds its own single-voter electorate; once they find each other, the region ends with
    one electorate (the lower founder) and one coordinator that everybody follows."""
    net = MemoryNetwork(seed=5, link=LinkModel(delay_s=0.005))
    async with trio.open_nursery() as nursery:
        a = await start_region(net, nursery, "eu", 2, n_voters=0, tag="a")
        b = await start_region(net, nursery, "eu", 2, n_voters=0, tag="b", seed=1)
        everyone = a + b
        await wait_for(
            lambda: all(m.svc.voters for m in everyone) and one_coordinator(a) and one_coordinator(b)
        )
        founders = {m.svc.voters for m in everyone}
        assert len(founders) == 2  # two electorates in one region: the situation to repair
        lowest = min(f[0] for f in founders)
        # they meet: one hint from a member of one group to the other (what mDNS does)
        b[1].svc.add_hint(a[1].host.listen_addrs()[0])
        await wait_for(lambda: {m.svc.voters for m in everyone} == {(lowest,)}, timeout=20)
        await wait_for(lambda: one_coordinator(everyone), timeout=20)
        assert next(iter(coordinators(everyone)))[0] == lowest
        await trio.sleep(5.0)  # and it stays that way
        assert {m.svc.voters for m in everyone} == {(lowest,)}
        assert len(coordinators(everyone)) == 1
        nursery.cancel_scope.cancel()


async def test_election_ranks_a_voter_far_from_its_region_last(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Candidates are ranked by capacity, uptime and latency to the region: after the
    coordinator dies, a voter 40 ms (RTT) from everyone else must not take over while voters
    next to the region can, even though its peer id would win every tie."""
    from nodes.control import ControlConfig
    from tests.integration.control_cluster import Member, ident, start_member

    near = [Member(f"near{i}", ident(f"rank/near/{i}")) for i in range(4)]
    # the far voter's identity is chosen to sort first: without the latency term it would win
    far = next(
        m
        for m in (Member("far", ident(f"rank/far/{k}")) for k in range(64))
        if m.peer < min(n.peer for n in near[:3])
    )
    net = MemoryNetwork(seed=9, link=LinkModel(delay_s=0.001))
    for n in near:
        net.set_link(far.identity.peer_id_bytes, n.identity.peer_id_bytes, LinkModel(delay_s=0.020))
    voters = (far.peer, near[0].peer, near[1].peer, near[2].peer)
    async with trio.open_nursery() as nursery:
        for i, m in enumerate(near):
            boot = (near[0].host.listen_addrs()[0],) if i else ()  # type: ignore[union-attr]
            cfg = ControlConfig(region="eu", voters=voters, bootstrap=boot, seed=i)
            await start_member(net, nursery, m, cfg)
        await wait_for(lambda: one_coordinator(near), timeout=20)
        await start_member(
            net,
            nursery,
            far,
            ControlConfig(region="eu", voters=voters, bootstrap=(near[3].host.listen_addrs()[0],), seed=9),  # type: ignore[union-attr]
        )
        everyone = [*near, far]
        await trio.sleep(30.0)  # coordinates converge from sampled pings
        assert far.svc is not None and far.svc._published_coord is not None
        old_coord, _ = next(iter(coordinators(everyone)))
        assert old_coord != far.peer
        victim = next(m for m in near if m.peer == old_coord)
        victim.kill()
        survivors = [m for m in everyone if m is not victim]
        await wait_for(
            lambda: one_coordinator(survivors) and next(iter(coordinators(survivors)))[0] != old_coord
        )
        new_coord, _ = next(iter(coordinators(survivors)))
        assert new_coord != far.peer, "the voter 40 ms from its region took over"
        nursery.cancel_scope.cancel()


async def test_the_status_snapshot_says_why_a_region_elects_nobody(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two configured voters, the second started late: until it comes, the first one's
    status says it has no link to the other voter and its claims go unanswered (backing
    off); once both are up one is elected, linked to the other, and the back-off is gone."""
    net = MemoryNetwork(seed=3, link=LinkModel(delay_s=0.002))
    a, b = Member("a", ident("late/a")), Member("b", ident("late/b"))
    voters = (a.peer, b.peer)
    async with trio.open_nursery() as nursery:
        await start_member(net, nursery, a, ControlConfig(region="eu", voters=voters, seed=1))
        await trio.sleep(6.0)
        assert a.svc is not None and a.host is not None
        alone = a.svc.snapshot().election
        assert alone is not None and alone.voters == 1 and alone.voters_linked == 0
        assert alone.failed_claims >= 2 and alone.state in ("follower", "candidate")
        assert alone.term >= alone.failed_claims  # a new epoch for every claim
        boot = (a.host.listen_addrs()[0],)
        await start_member(net, nursery, b, ControlConfig(region="eu", voters=voters, bootstrap=boot, seed=2))
        await wait_for(lambda: one_coordinator([a, b]), timeout=20)
        views = {m.name: m.svc.snapshot().election for m in (a, b) if m.svc is not None}
        assert sorted(v.state for v in views.values() if v is not None) == ["coordinator", "follower"]
        for v in views.values():
            assert v is not None and v.voters == 1 and v.voters_linked == 1
        leader = next(v for v in views.values() if v is not None and v.state == "coordinator")
        assert leader.failed_claims == 0 and leader.next_claim_s is None
        nursery.cancel_scope.cancel()
