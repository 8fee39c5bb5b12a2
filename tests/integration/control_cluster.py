"""A cluster of control-plane nodes on the in-memory backend, for the control-plane tests."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import trio

from mesh.identity import Identity, peer_id_to_str
from mesh.memory import MemoryHost, MemoryNetwork
from nodes.control import ControlConfig, ControlService, LocalLoad
from nodes.worker import Worker, WorkerConfig
from tasks.kernels.echo import ECHO
from tasks.registry import Registry

#: Workers in these tests run only ``echo`` (inline: it takes no virtual time).
REGISTRY = Registry([ECHO])


def ident(tag: str) -> Identity:
    return Identity.from_seed(hashlib.sha256(f"control-test/{tag}".encode()).digest())


@dataclass
class Member:
    name: str
    identity: Identity
    host: MemoryHost | None = None
    svc: ControlService | None = None
    worker: Worker | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def peer(self) -> str:
        return peer_id_to_str(self.identity.peer_id_bytes)

    def kill(self) -> None:
        if self.host is not None:
            self.host.crash()
        self.scope.cancel()


def load_fn() -> LocalLoad:
    return LocalLoad(load=0.0, queue_depth=0, capacity={"echo": 4})


async def start_member(
    net: MemoryNetwork, nursery: trio.Nursery, m: Member, config: ControlConfig, *, worker: bool = False
) -> Member:
    """Start ``m``'s control service; with ``worker``, also a task worker on the same host whose
    load and capacity feed the control plane (as ``nodes.node`` composes them)."""

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with m.scope:
            async with net.open_host(m.identity) as host, trio.open_nursery() as inner:
                m.host = host
                load = load_fn
                if worker:
                    from nodes.node import worker_load

                    m.worker = Worker(host, m.identity, REGISTRY, WorkerConfig(concurrency=1))
                    await inner.start(m.worker.run)
                    load = worker_load(m.worker, REGISTRY, slots_per_core=4)
                m.svc = ControlService(host, m.identity, config, load_fn=load)
                await inner.start(m.svc.run)
                task_status.started()
                await trio.sleep_forever()

    await nursery.start(run)
    return m


async def start_region(
    net: MemoryNetwork,
    nursery: trio.Nursery,
    region: str,
    n: int,
    *,
    n_voters: int = 3,
    bootstrap: tuple[str, ...] = (),
    base: ControlConfig = ControlConfig(),
    seed: int = 0,
    workers: bool = False,
    tag: str | None = None,
) -> list[Member]:
    """``n`` members of ``region``; ``tag`` (default: the region) names their identities."""
    members = [Member(f"{tag or region}{i}", ident(f"{tag or region}/{i}")) for i in range(n)]
    voters = tuple(m.peer for m in members[:n_voters])
    out = []
    for i, m in enumerate(members):
        boot = bootstrap or ((out[0].host.listen_addrs()[0],) if out and out[0].host else ())
        cfg = replace(base, region=region, voters=voters, bootstrap=boot, seed=seed * 1000 + i)
        out.append(await start_member(net, nursery, m, cfg, worker=workers))
    return out


def coordinators(members: list[Member]) -> set[tuple[str | None, int]]:
    """What each live member believes: (coordinator, epoch)."""
    return {
        (m.svc.coordinator_id, m.svc.election.known_epoch if m.svc.election else 0)
        for m in members
        if m.svc is not None and not m.scope.cancel_called
    }


async def wait_for(pred, timeout: float = 30.0, step: float = 0.05) -> float:  # type: ignore[no-untyped-def]
    """Wait (virtual time) until ``pred()``; return the time it took."""
    t0 = trio.current_time()
    with trio.fail_after(timeout):
        while not pred():  # noqa: ASYNC110 - polling state owned by other tasks
            await trio.sleep(step)
    return trio.current_time() - t0
