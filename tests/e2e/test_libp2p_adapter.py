"""Workarounds in ``mesh.libp2p_host`` for py-libp2p 0.8.1 bugs, each on two real hosts."""

from __future__ import annotations

import trio

from mesh.errors import ConnectionLostError
from mesh.identity import Identity
from mesh.libp2p_host import HostConfig, open_host
from mesh.transport import Stream

LOOPBACK = HostConfig(listen=("/ip4/127.0.0.1/tcp/0",))


async def test_a_handler_that_raises_costs_its_stream_not_the_connection() -> None:
    """In 0.8.1 an exception escaping a stream handler wedged the whole connection: every
    later stream between the two peers timed out (GossipSub's too). The adapter contains it."""
    async with open_host(Identity.generate(), LOOPBACK) as a, open_host(Identity.generate(), LOOPBACK) as b:
        failures: list[str] = []
        echoed = trio.Event()

        async def raising(stream: Stream) -> None:
            while await stream.read(100):
                pass  # the peer's reset makes this read raise ConnectionLostError

        async def echo(stream: Stream) -> None:
            data = await stream.read(100)
            await stream.write(data)
            echoed.set()

        a.set_stream_handler("/test/raise/1", raising)
        a.set_stream_handler("/test/echo/1", echo)
        await b.connect(a.listen_addrs()[0])
        for _ in range(3):
            s = await b.open_stream(a.peer_id, "/test/raise/1")
            await s.write(b"hello")
            await trio.sleep(0.1)
            await s.reset()  # the handler on a raises ConnectionLostError out of its read
        await trio.sleep(0.2)
        with trio.fail_after(5):
            s = await b.open_stream(a.peer_id, "/test/echo/1")
            await s.write(b"still here")
            try:
                assert await s.read(100) == b"still here"
            except ConnectionLostError as exc:
                failures.append(str(exc))
            await echoed.wait()
        assert failures == []
        # and the other direction too
        b.set_stream_handler("/test/echo/1", echo)
        with trio.fail_after(5):
            s = await a.open_stream(b.peer_id, "/test/echo/1")
            await s.write(b"back")
            assert await s.read(100) == b"back"
