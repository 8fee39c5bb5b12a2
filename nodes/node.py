"""A mesh node: identity + py-libp2p host + the roles it plays (today: worker).

``open_node(config)`` is the composite: an async context manager that yields a running
``Node`` and stops everything when the block exits (stopping is cancelling).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from mesh.identity import Identity, load_or_create
from mesh.libp2p_host import HostConfig, Libp2pHost, open_host
from nodes.worker import Worker, WorkerConfig
from tasks.registry import Registry, default_registry

log = logging.getLogger("p2c2r.node")

DEFAULT_HOME = Path("~/.p2c2r")


@dataclass(frozen=True)
class NodeConfig:
    key_file: Path = DEFAULT_HOME / "node.key"
    host: HostConfig = HostConfig(listen=("/ip4/0.0.0.0/tcp/4001",))
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    #: Peers to connect to at start (``/p2p/`` multiaddrs).
    peers: tuple[str, ...] = ()


@dataclass
class Node:
    identity: Identity
    host: Libp2pHost
    worker: Worker
    registry: Registry

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
        for addr in config.peers:
            try:
                await host.connect(addr)
            except Exception as exc:
                log.warning("could not connect to %s: %s", addr, exc)
        try:
            yield Node(identity, host, worker, registry)
        finally:
            nursery.cancel_scope.cancel()
