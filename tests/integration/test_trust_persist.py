"""The gamer's reputation survives a restart (``GamerConfig.reputation_file``): a worker
it caught cheating is still banned by the next client that opens the same file, and gets
none of its work, without having to be caught again."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path

import trio
import trio.testing

from mesh.memory import LinkModel, MemoryNetwork
from nodes.gamer import GamerClient, GamerConfig
from nodes.misbehave import install
from nodes.worker import Worker, WorkerConfig
from tests.integration.test_trust_sdk import REGISTRY, inputs, run_paced


async def test_bans_survive_a_gamer_restart(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    file = tmp_path / "home" / "gamer-reputation.json"
    net = MemoryNetwork(7, link=LinkModel(delay_s=0.01))
    async with trio.open_nursery() as nursery:
        hosts = []
        for i in range(3):
            host = await nursery.start(_host, net)
            w = Worker(host, host.identity, REGISTRY, WorkerConfig(concurrency=2))
            if i == 0:
                install(w, "wrong")
            await nursery.start(w.run)
            hosts.append(host)
        cheater = hosts[0].peer_id

        async def session(seed: int) -> AbstractAsyncContextManager[GamerClient]:
            return GamerClient.connect(
                host=await nursery.start(_host, net),
                config=GamerConfig(seed=seed, reputation_file=file),
                registry=REGISTRY,
            )

        async with await session(3) as gamer:
            for k in range(8):
                gamer.add_known_answer("reverse", {}, b"anchor-%d" % k, (b"anchor-%d" % k)[::-1])
            for h in hosts:
                await gamer.add_worker(h.listen_addrs()[0])
            out = await run_paced(gamer, inputs(30))
            assert all(isinstance(o, bytes) for o in out)
            assert gamer.banned() == [cheater]
        assert file.exists()  # saved as the client closed

        # The restarted game: a new client on the same file, before it sees any result.
        async with await session(4) as again:
            assert again.banned() == [cheater]
            for h in hosts:
                await again.add_worker(h.listen_addrs()[0])
            handles = [await again.submit("reverse", d, deadline=20) for d in inputs(20, "r")]
            for h in handles:
                assert await h.result() is not None
            assert cheater not in {h.worker for h in handles}
            assert again.verification_stats.bans == 0  # not caught again: it got no work
        nursery.cancel_scope.cancel()


async def _host(net: MemoryNetwork, task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
    async with net.open_host() as host:
        task_status.started(host)
        await trio.sleep_forever()
