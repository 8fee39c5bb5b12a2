"""Worker input hardening over the in-memory backend, in virtual time (MockClock).

Each hostile behaviour gets a typed answer and the worker keeps serving honest peers:
per-peer request rate (token bucket -> ``rejected`` replies, never silent drops),
concurrent task streams per peer (``E`` frame + reset for the extra stream) and slow
senders (a frame that stalls or trickles -> ``frame_timeout`` + reset). Garbage sent to a
real TCP port before the handshake is covered in ``tests/e2e/test_trust_garbage.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import pytest
import trio

from mesh import wire
from mesh.errors import ConnectionLostError, RejectedError
from mesh.memory import LinkModel, MemoryHost, MemoryNetwork, MemoryStream
from nodes.gamer import GamerClient, GamerConfig
from nodes.verification import VerificationConfig
from nodes.worker import TokenBucket, Worker, WorkerConfig
from tasks.kernels.echo import ECHO
from tasks.registry import Registry

REGISTRY = Registry([ECHO])
RAW = GamerConfig(verification=VerificationConfig.off())


@dataclass
class One:
    net: MemoryNetwork
    worker: Worker
    host: MemoryHost
    gamer: GamerClient


@asynccontextmanager
async def one_worker(config: WorkerConfig) -> AsyncIterator[One]:
    net = MemoryNetwork(7, link=LinkModel(delay_s=0.01))
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)
        host = await stack.enter_async_context(net.open_host())
        worker = Worker(host, host.identity, REGISTRY, config)
        await nursery.start(worker.run)
        gh = await stack.enter_async_context(net.open_host())
        gamer = await stack.enter_async_context(
            GamerClient.connect([host.listen_addrs()[0]], host=gh, config=RAW, registry=REGISTRY)
        )
        yield One(net, worker, host, gamer)


async def read_frame(stream: MemoryStream, dec: wire.FrameDecoder) -> wire.Frame:
    while True:
        data = await stream.read()
        assert data, "stream ended before a frame arrived"
        bodies = list(dec.feed(data))
        if bodies:
            return wire.decode_frame(bodies[0])


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    b = TokenBucket(rate=2.0, burst=3.0, now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.take(0.5) and not b.take(0.5)  # one token back after half a second
    assert b.take(100.0) and b.tokens == pytest.approx(2.0)  # capped at the burst


async def test_over_the_rate_a_peer_gets_typed_rejections_and_others_are_served(
    autojump_clock: trio.abc.Clock,
) -> None:
    cfg = WorkerConfig(concurrency=2, rate_per_peer=10.0, burst_per_peer=5.0)
    async with one_worker(cfg) as m, m.net.open_host() as other_host:
        handles = await m.gamer.submit_many([("echo", b"%d" % i, None) for i in range(8)])
        ok, rejected = 0, 0
        for h in handles:
            try:
                await h.result()
                ok += 1
            except RejectedError as exc:
                assert "rate limit" in str(exc)
                rejected += 1
        assert (ok, rejected) == (5, 3) and m.worker.stats.rate_limited == 3
        # Another peer has its own bucket: served at once, while the first is still empty.
        async with GamerClient.connect(
            [m.host.listen_addrs()[0]], host=other_host, config=RAW, registry=REGISTRY
        ) as other:
            assert await other.run("echo", b"mine") == b"mine"
        await trio.sleep(1.0)  # the bucket refills: the first peer is served again
        assert await m.gamer.run("echo", b"later") == b"later"


async def test_too_many_streams_from_one_peer_are_refused_and_the_rest_work(
    autojump_clock: trio.abc.Clock,
) -> None:
    cfg = WorkerConfig(concurrency=2, max_streams_per_peer=3)
    async with one_worker(cfg) as m, m.net.open_host() as rogue:
        await rogue.connect(m.host.listen_addrs()[0])
        streams = [await rogue.open_stream(m.host.peer_id, wire.PROTOCOL_ID) for _ in range(3)]
        await trio.sleep(0.1)  # all three handlers are running
        extra = await rogue.open_stream(m.host.peer_id, wire.PROTOCOL_ID)
        frame = await read_frame(extra, wire.FrameDecoder())
        assert frame.type == "E" and frame.error is not None and frame.error[0] == "rejected"
        with pytest.raises(ConnectionLostError):
            while await extra.read():
                pass
        assert m.worker.stats.streams_refused == 1
        task = wire.TaskRecord(b"\x02" * 16, "echo", {}, b"first streams still work")
        await streams[0].write(wire.encode_tasks([task]))
        frame = await read_frame(streams[0], wire.FrameDecoder())
        assert frame.type == "R" and frame.results[0].task_id == task.task_id
        assert await m.gamer.run("echo", b"honest peer") == b"honest peer"
        # Closing one frees a slot for the same peer.
        await streams[1].reset()
        await trio.sleep(0.1)
        again = await rogue.open_stream(m.host.peer_id, wire.PROTOCOL_ID)
        await again.write(wire.encode_tasks([task]))
        assert (await read_frame(again, wire.FrameDecoder())).type == "R"


@pytest.mark.parametrize("how", ["stall", "trickle"])
async def test_a_slow_sender_times_out_with_an_error_frame_and_honest_peers_are_served(
    autojump_clock: trio.abc.Clock, how: str
) -> None:
    cfg = WorkerConfig(concurrency=2, frame_timeout_s=30.0, idle_timeout_s=10.0)
    async with one_worker(cfg) as m, m.net.open_host() as rogue:
        await rogue.connect(m.host.listen_addrs()[0])
        stream = await rogue.open_stream(m.host.peer_id, wire.PROTOCOL_ID)
        frame_bytes = wire.encode_tasks([wire.TaskRecord(b"\x03" * 16, "echo", {}, b"x" * 100)])
        t0 = trio.current_time()
        await stream.write(frame_bytes[:10])  # a frame begins ...
        got: list[wire.Frame] = []
        at: list[float] = []

        async def reader() -> None:
            got.append(await read_frame(stream, wire.FrameDecoder()))
            at.append(trio.current_time() - t0)

        async with trio.open_nursery() as n:
            n.start_soon(reader)
            if how == "trickle":  # ... and continues a byte every 5 s: never idle, never done
                for b in frame_bytes[10:20]:
                    if got:
                        break
                    await trio.sleep(5.0)
                    try:
                        await stream.write(bytes([b]))
                    except ConnectionLostError:
                        break
            # An idle stream *between* frames is fine; a stalled frame is not. Meanwhile
            # the honest client is served as usual.
            assert await m.gamer.run("echo", b"served meanwhile") == b"served meanwhile"
        elapsed = at[0]
        assert got[0].type == "E" and got[0].error is not None and got[0].error[0] == "frame_timeout"
        expected = 10.0 if how == "stall" else 30.0
        assert elapsed == pytest.approx(expected, abs=0.1)
        with pytest.raises(ConnectionLostError):
            while await stream.read():
                pass
        assert m.worker.stats.slow_senders == 1
        assert await m.gamer.run("echo", b"after") == b"after"


async def test_an_idle_stream_between_frames_is_never_timed_out(autojump_clock: trio.abc.Clock) -> None:
    async with one_worker(WorkerConfig(concurrency=2)) as m:
        await trio.sleep(120.0)  # far past every slow-sender limit, no frame in progress
        assert await m.gamer.run("echo", b"still open") == b"still open"
        assert m.worker.stats.slow_senders == 0 and m.worker.stats.streams == 1
