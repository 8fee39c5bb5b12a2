"""A mesh node: identity + py-libp2p host + the roles it plays (worker, control plane).

``open_node(config)`` is the composite: an async context manager that yields a running
``Node`` and stops everything when the block exits (stopping is cancelling). The control
plane (``nodes.control``: membership, election, coordinator) runs on every node, with
GossipSub (``mesh.gossip``) and the Kademlia DHT (``mesh.discovery``) started on the host
*before* any peer is dialled, because py-libp2p's pubsub only learns of peers that connect
after it starts. mDNS is opt-in (``NodeConfig.mdns``).

Trust: the node's ``Reputation`` (``Worker.reputation``, fed by verified evidence) is kept
in ``<home>/reputation.json`` across restarts (``nodes.reputation_store``), shared with the
mesh over the GossipSub evidence topic (``nodes.evidence.EvidenceGossip``), and consulted by
this node's coordinator for every lease (``with_trust``: banned workers get none).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import trio

from mesh.discovery import Libp2pDiscovery, start_mdns
from mesh.gossip import Libp2pGossip
from mesh.identity import Identity, load_or_create
from mesh.libp2p_host import HostConfig, Libp2pHost, open_host
from nodes.control import ControlConfig, ControlService, FileVoteStore, LocalLoad
from nodes.evidence import EvidenceGossip
from nodes.metrics import serve_metrics
from nodes.reputation import Reputation, ReputationTrust
from nodes.reputation_store import persist_reputation
from nodes.worker import Worker, WorkerConfig
from tasks.registry import Registry, default_registry

log = logging.getLogger("p2c2r.node")

DEFAULT_HOME = Path("~/.p2c2r")


@dataclass(frozen=True)
class NodeConfig:
    key_file: Path = DEFAULT_HOME / "node.key"
    host: HostConfig = field(default_factory=lambda: HostConfig(listen=("/ip4/0.0.0.0/tcp/4001",)))
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    #: Peers to connect to at start (``/p2p/`` multiaddrs).
    peers: tuple[str, ...] = ()
    control: ControlConfig = field(default_factory=ControlConfig)
    #: Find peers on the LAN with mDNS (no address needed).
    mdns: bool = False
    #: Task slots advertised per core and kind (tasks pipelined per kernel slot).
    slots_per_core: int = 4
    #: Seconds between DHT record refreshes (node record; region record when coordinating).
    dht_refresh_s: float = 30.0
    #: Serve Prometheus metrics on 127.0.0.1 at this port (0: any free port; None: off).
    metrics_port: int | None = None
    #: Keep bans and scores in ``reputation.json`` beside the key file across restarts.
    persist_reputation: bool = True


@dataclass
class Node:
    identity: Identity
    host: Libp2pHost
    worker: Worker
    registry: Registry
    control: ControlService
    discovery: Libp2pDiscovery
    #: Port of the local ``/metrics`` endpoint, when enabled.
    metrics_port: int | None = None
    #: Evidence shared over GossipSub (``nodes.evidence``).
    evidence_gossip: EvidenceGossip | None = None

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id.to_base58()

    def dialable_addrs(self) -> list[str]:
        """Listen addresses with wildcard hosts replaced by loopback, so they can be dialled."""
        out = []
        for a in self.host.listen_addrs():
            out.append(a.replace("/ip4/0.0.0.0/", "/ip4/127.0.0.1/"))
        return out


@asynccontextmanager
async def open_node(config: NodeConfig, *, registry: Registry | None = None) -> AsyncIterator[Node]:
    identity = load_or_create(config.key_file)
    registry = registry or default_registry()
    async with open_host(identity, config.host) as host, trio.open_nursery() as nursery:
        worker = Worker(host, identity, registry, config.worker)
        await nursery.start(worker.run)
        if config.persist_reputation:
            home = config.key_file.expanduser().parent
            await nursery.start(persist_reputation, worker.reputation, home / "reputation.json")
        gossip = Libp2pGossip(host.raw)
        await nursery.start(gossip.run)
        evidence_gossip = EvidenceGossip(gossip, worker.evidence, identity.peer_id_bytes, identity.sign)
        await nursery.start(evidence_gossip.run)
        discovery = Libp2pDiscovery(host.raw, identity.sign)
        await nursery.start(discovery.run)

        def dialable() -> list[str]:
            return [a.replace("/ip4/0.0.0.0/", "/ip4/127.0.0.1/") for a in host.listen_addrs()]

        control = ControlService(
            host,
            identity,
            with_trust(config.control, worker.reputation),
            load_fn=worker_load(worker, registry, config.slots_per_core),
            gossip=gossip,
            votes=FileVoteStore(config.key_file.expanduser().parent),
            addrs_fn=dialable,
        )
        await nursery.start(control.run)
        for addr in config.peers:
            try:
                await host.connect(addr)
            except Exception as exc:
                log.warning("could not connect to %s: %s", addr, exc)
        node = Node(identity, host, worker, registry, control, discovery, evidence_gossip=evidence_gossip)
        if config.metrics_port is not None:
            node.metrics_port = await nursery.start(
                serve_metrics, worker.metrics, "127.0.0.1", config.metrics_port
            )
        nursery.start_soon(_dht_loop, node, config)
        stop_mdns = None
        if config.mdns:
            port = _first_tcp_port(host.listen_addrs())
            try:
                stop_mdns = start_mdns(host.raw, port, control.add_hint)
            except Exception as exc:  # no multicast on this machine: say so, keep running
                log.warning("mDNS is not available here: %s", exc)
        try:
            yield node
        finally:
            if stop_mdns is not None:
                stop_mdns()
            nursery.cancel_scope.cancel()


def with_trust(config: ControlConfig, reputation: Reputation) -> ControlConfig:
    """``config`` whose coordinator consults ``reputation`` (bans exclude, trust weighs)."""
    return replace(config, scheduler=replace(config.scheduler, trust=ReputationTrust(reputation)))


def worker_load(worker: Worker, registry: Registry, slots_per_core: int) -> Callable[[], LocalLoad]:
    """What the worker tells the control plane: slots per kind, load, cumulative completions."""
    names = registry.names()

    def load() -> LocalLoad:
        slots = max(1, worker.config.concurrency) * slots_per_core
        return LocalLoad(
            load=worker.load,
            queue_depth=max(0, round(worker.load * max(1, worker.config.concurrency))),
            capacity={k: slots for k in names},
            completed=dict(worker.stats.per_kind),
            busy_s=worker.stats.busy_s,
        )

    return load


def _first_tcp_port(addrs: list[str]) -> int:
    for a in addrs:
        parts = a.split("/")
        if "tcp" in parts:
            try:
                return int(parts[parts.index("tcp") + 1])
            except (IndexError, ValueError):
                continue
    return 4001


async def _dht_loop(node: Node, config: NodeConfig) -> None:
    """Seed the DHT from our links, publish our node record, and the region record while we
    coordinate; fall back to the region record when bootstrap gave us no coordinator."""
    control, dht = node.control, node.discovery
    await control.joined.wait()
    await dht.bootstrap(node.host.connected_peers())
    if control.coordinator_id is None and control.region is not None:
        with trio.move_on_after(config.control.election.lease_s * 2):
            await control.coordinator_changed.wait()
        if control.coordinator_id is None:
            rec = await dht.get_region(control.region)
            if rec is not None:
                for addr in rec.addrs:
                    control.add_hint(addr)
    gpu = _has_gpu()
    while True:
        local = control._load_fn()
        await dht.put_node(
            peer=control.self_id,
            region=control.region or "",
            capacity=local.capacity,
            cpus=node.worker.config.concurrency,
            gpu=gpu,
            addrs=node.dialable_addrs(),
        )
        if control.is_coordinator() and control.region is not None:
            await dht.put_region(
                region=control.region,
                coordinator=control.self_id,
                epoch=control.epoch,
                addrs=node.dialable_addrs(),
                voters=control.voters,
            )
        await trio.sleep(config.dht_refresh_s)


def _has_gpu() -> bool:
    # Importing torch only to advertise a GPU costs ~2 s of CPU per node: ask it only when a
    # kernel already loaded it, else look for the NVIDIA device nodes.
    import os
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            return bool(torch.cuda.is_available())
        except Exception:
            return False
    return os.path.exists("/dev/nvidiactl")
