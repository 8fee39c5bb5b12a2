"""Evidence gossiped mesh-wide on the in-memory backend, in virtual time.

Each node is composed as ``nodes.node.open_node`` composes it: a ``Worker`` (whose
``EvidenceService`` verifies evidence handed to it), an ``EvidenceGossip`` on the
evidence topic (here on ``mesh.memory_gossip`` instead of GossipSub) and a
``ControlService`` whose coordinator consults the worker's ``Reputation``
(``nodes.node.with_trust``). A gamer joined by bootstrap holds leases from the
coordinator. Evidence handed to one node reaches every node, each verifies it itself
and bans the cheater, and the coordinator stops leasing it; the ban expires. Forged
evidence bans no one and stops at the first hop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import trio
import trio.testing

from mesh import wire
from mesh.gossip import EVIDENCE_MAX_BYTES, EVIDENCE_TOPIC
from mesh.identity import Identity, peer_id_to_str
from mesh.memory import LinkModel, MemoryHost, MemoryNetwork
from mesh.memory_gossip import MemoryGossip, MemoryGossipNet
from nodes.control import ControlConfig, ControlService
from nodes.evidence import EvidenceGossip, EvidenceService, send_evidence
from nodes.gamer import GamerClient, TaskHandle
from nodes.node import with_trust, worker_load
from nodes.reputation import Evidence, Reputation, ReputationConfig, SignedResult, make_evidence
from nodes.worker import Worker, WorkerConfig
from tasks.kernels.echo import ECHO
from tasks.receipt import receipt_digest
from tasks.registry import Registry
from tests.integration.control_cluster import wait_for

REGISTRY = Registry([ECHO])
BAN_S = 30.0


def ident(tag: str) -> Identity:
    return Identity.from_seed(hashlib.sha256(f"evidence-gossip/{tag}".encode()).digest())


def virtual_wall_ms() -> int:
    return 1_700_000_000_000 + int(trio.current_time() * 1000)


@dataclass
class TNode:
    identity: Identity
    host: MemoryHost | None = None
    worker: Worker | None = None
    svc: ControlService | None = None
    gossip: EvidenceGossip | None = None
    port: MemoryGossip | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def peer(self) -> str:
        return peer_id_to_str(self.identity.peer_id_bytes)

    def banned(self, peer: bytes) -> bool:
        assert self.worker is not None
        return self.worker.reputation.is_banned(peer, trio.current_time())


async def start_node(
    net: MemoryNetwork, gnet: MemoryGossipNet, nursery: trio.Nursery, n: TNode, config: ControlConfig
) -> TNode:
    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with n.scope:
            async with net.open_host(n.identity) as host, trio.open_nursery() as inner:
                n.host = host
                w = Worker(host, n.identity, REGISTRY, WorkerConfig(concurrency=1))
                # short bans so that expiry fits the test
                w.reputation = Reputation(ReputationConfig(ban_base_s=BAN_S))
                w.evidence = EvidenceService(REGISTRY, w.reputation)
                await inner.start(w.run)
                n.worker = w
                n.port = gnet.port(host)
                await inner.start(n.port.run)
                n.gossip = EvidenceGossip(
                    n.port, w.evidence, n.identity.peer_id_bytes, n.identity.sign, wall_ms=virtual_wall_ms
                )
                await inner.start(n.gossip.run)
                n.svc = ControlService(
                    host,
                    n.identity,
                    with_trust(config, w.reputation),
                    load_fn=worker_load(w, REGISTRY, slots_per_core=4),
                )
                await inner.start(n.svc.run)
                task_status.started()
                await trio.sleep_forever()

    await nursery.start(run)
    return n


async def start_region(
    net: MemoryNetwork, gnet: MemoryGossipNet, nursery: trio.Nursery, n: int
) -> list[TNode]:
    nodes = [TNode(ident(f"n{i}")) for i in range(n)]
    voters = tuple(m.peer for m in nodes[:3])
    for i, m in enumerate(nodes):
        assert i == 0 or nodes[0].host is not None
        boot = (nodes[0].host.listen_addrs()[0],) if i and nodes[0].host else ()
        cfg = ControlConfig(region="eu", voters=voters, bootstrap=boot, seed=i)
        await start_node(net, gnet, nursery, m, cfg)
    return nodes


def coordinator(nodes: list[TNode]) -> TNode | None:
    for m in nodes:
        if m.svc is not None and m.svc.coordinator is not None:
            return m
    return None


def signed(ident: Identity, tid: bytes, data: bytes, out: bytes) -> SignedResult:
    od = wire.digest(out)
    d = receipt_digest(tid, "echo", wire.params_digest({}), wire.digest(data), od, ident.peer_id_bytes, 1)
    return SignedResult(tid, ident.peer_id_bytes, od, 1, ident.sign(d), out)


def echo_evidence(accused: Identity, *, forged: bool = False) -> Evidence:
    """``accused`` signed an echo result that is not its input (``forged``: that is its
    input, so the accusation is false)."""
    data = b"frame 42"
    out = data if forged else b"frame 43"
    return make_evidence(
        kind="echo", params={}, data=data, bad=signed(accused, b"\x07" * 16, data, out), reason="self_check"
    )


async def submit_steadily(gamer: GamerClient, handles: list[TaskHandle], stop: trio.Event) -> None:
    i = 0
    while not stop.is_set():
        handles.append(await gamer.submit("echo", b"task %d" % i, deadline=20.0))
        i += 1
        await trio.sleep(0.02)


async def leased_during(gamer: GamerClient, seconds: float) -> set[str]:
    """Workers the gamer holds a lease on at any point during the next ``seconds``."""
    mesh = gamer.mesh
    assert mesh is not None
    seen: set[str] = set()
    end = trio.current_time() + seconds
    while trio.current_time() < end:
        seen |= {w for _, w, _, _ in mesh.leases()}
        await trio.sleep(0.1)
    return seen


async def test_evidence_handed_to_one_node_bans_everywhere_and_the_coordinator_stops_leasing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork(seed=5, link=LinkModel(delay_s=0.005, jitter_s=0.001))
    gnet = MemoryGossipNet(net)
    async with trio.open_nursery() as nursery:
        nodes = await start_region(net, gnet, nursery, 5)
        await wait_for(lambda: coordinator(nodes) is not None, timeout=30)
        coord = coordinator(nodes)
        assert coord is not None
        handles: list[TaskHandle] = []
        stop = trio.Event()
        async with (
            net.open_host() as gamer_host,
            GamerClient.connect(
                host=gamer_host, bootstrap=[nodes[1].host.listen_addrs()[0]], region="eu"
            ) as gamer,  # type: ignore[union-attr]
            trio.open_nursery() as load,
        ):
            load.start_soon(submit_steadily, gamer, handles, stop)
            before = await leased_during(gamer, 10.0)
            # the cheater: a worker the gamer was being leased (so the test means something)
            cheater = next(m for m in nodes if m.peer in before and m is not coord)
            cheat_pid = cheater.identity.peer_id_bytes

            # An outside gamer caught the cheater and hands the evidence to ONE node only.
            async with net.open_host() as outsider:
                target = next(m for m in nodes if m is not cheater and m is not coord)
                assert target.host is not None
                await outsider.connect(target.host.listen_addrs()[0])
                ok, code = await send_evidence(
                    outsider, target.identity.peer_id_bytes, echo_evidence(cheater.identity)
                )
                assert ok and code == "self_check"
            t_ban = trio.current_time()
            await wait_for(lambda: all(m.banned(cheat_pid) for m in nodes), timeout=5)
            spread_s = trio.current_time() - t_ban
            # one node published, every other one verified it itself
            assert sum(m.gossip.stats.published for m in nodes) == 1  # type: ignore[union-attr]
            assert target.gossip is not None and target.gossip.stats.published == 1
            assert all(m.gossip.stats.accepted == 1 for m in nodes if m is not target)  # type: ignore[union-attr]

            await trio.sleep(6.0)  # leases granted before the ban run out (5 s)
            after = await leased_during(gamer, 15.0)
            assert cheater.peer not in after and len(after) >= 2
            n_done = sum(1 for h in handles if h.done())
            assert n_done > 500  # the gamer kept working on the others

            # The ban expires (BAN_S from when each node verified it): leases may return.
            await trio.sleep(max(0.0, t_ban + BAN_S + 1.0 - trio.current_time()))
            assert not any(m.banned(cheat_pid) for m in nodes)
            stop.set()
        nursery.cancel_scope.cancel()
    assert spread_s <= 2.0  # publish jitter (<= 1 s) plus a few hops


async def test_forged_evidence_bans_no_one_and_stops_at_the_first_hop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork(seed=6, link=LinkModel(delay_s=0.005))
    gnet = MemoryGossipNet(net)
    async with trio.open_nursery() as nursery:
        nodes = await start_region(net, gnet, nursery, 4)
        await wait_for(lambda: coordinator(nodes) is not None, timeout=30)
        victim = nodes[3]
        victim_pid = victim.identity.peer_id_bytes
        # A hostile node on the topic that validates nothing, linked to node 1 only.
        bad = ident("hostile")
        async with net.open_host(bad) as hh:
            hostile = gnet.port(hh)
            await nursery.start(hostile.run)

            async def accept_all(origin: str, data: bytes) -> str | None:
                return None

            await hostile.subscribe_async(
                EVIDENCE_TOPIC, accept_all, lambda o, d: None, max_bytes=EVIDENCE_MAX_BYTES
            )
            assert nodes[1].host is not None
            await hh.connect(nodes[1].host.listen_addrs()[0])

            def publish(
                ev: Evidence, signer: Identity = bad, *, sig: Callable[[bytes], bytes] | None = None
            ) -> bytes:
                stamped = replace(ev, created_ms=virtual_wall_ms())
                out = stamped.signed_by(signer.peer_id_bytes, sig or signer.sign)
                return out.to_wire()

            forgeries = [
                publish(echo_evidence(victim.identity, forged=True)),  # the "wrong" output is right
                publish(echo_evidence(victim.identity), sig=lambda d: bytes(64)),  # bad reporter signature
                replace(echo_evidence(victim.identity), created_ms=virtual_wall_ms()).to_wire(),  # unsigned
                publish(echo_evidence(victim.identity), signer=victim.identity),  # reporter is not the origin
                b"\x9b" + b"garbage" * 10,  # malformed
            ]
            for data in forgeries:
                await hostile.publish(EVIDENCE_TOPIC, data)
            await trio.sleep(3.0)
            assert not any(m.banned(victim_pid) for m in nodes)
            first_hop = nodes[1].gossip
            assert first_hop is not None
            assert first_hop.stats.dropped == {
                "invalid_evidence": 1,
                "bad_signature": 1,
                "unsigned": 1,
                "reporter_not_origin": 1,
                "malformed": 1,
            }
            for m in nodes:
                if m is not nodes[1]:
                    assert m.gossip is not None and not m.gossip.stats.dropped  # never reached them
                    assert m.gossip.stats.accepted == 0
            # the coordinator still leases the falsely accused worker
            coord = coordinator(nodes)
            assert coord is not None and coord.svc is not None and coord.svc.coordinator is not None
            trust = coord.svc.coordinator.config.trust
            assert trust is not None and not trust.is_banned(victim.peer, trio.current_time())
        nursery.cancel_scope.cancel()
