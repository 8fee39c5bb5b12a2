"""The same-host shared-memory path (``nodes.shm``) through the worker and the gamer SDK,
over the in-memory backend in virtual time (``MockClock(autojump_threshold=0)``).

Both ends run in this process, so they share this host and its ``/dev/shm``: segments
are real. Kernels are ``inline`` and the gamer hashes on the loop
(``offload_hash_bytes`` is raised), because a thread hop lets an autojumping clock race
ahead. Every test checks that no segment of this process is left in ``/dev/shm``.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace

import pytest
import trio

from mesh import wire
from mesh.errors import CancelledTaskError, P2C2RError, TaskTimeoutError
from mesh.memory import LinkModel, MemoryHost, MemoryNetwork
from mesh.transport import Stream
from nodes import shm
from nodes.gamer import GamerClient, GamerConfig
from nodes.verification import VerificationConfig
from nodes.worker import Worker, WorkerConfig
from tasks.kernels.echo import ECHO
from tasks.registry import Registry
from tests.integration.test_sdk_features_memory import REVERSE, prefer
from tests.integration.test_sdk_features_memory import Hold as _Hold
from tests.integration.test_task_path_memory import read_frame

pytestmark = pytest.mark.skipif(not shm.SHM_DIR.is_dir(), reason="needs Linux /dev/shm")

REGISTRY = Registry([ECHO, REVERSE])
BIG = 300 * 1024  # over the default 256 KiB threshold
RAW = GamerConfig(verification=VerificationConfig.off(), offload_hash_bytes=1 << 30, hedge=False)


def ours() -> list[str]:
    """Segments in /dev/shm created by this process (gamer and worker both run here)."""
    prefix = f"{shm.PREFIX}{os.getpid()}_"
    return sorted(n for n in os.listdir(shm.SHM_DIR) if n.startswith(prefix))


@pytest.fixture(autouse=True)
def no_segments_left() -> object:
    assert ours() == [], "a segment of this process was already there"
    yield
    left = ours()
    for name in left:
        shm.unlink(name)
    assert left == [], "segments left behind"


def big(i: int, n: int = BIG) -> bytes:
    """The ``i``-th incompressible input (the same bytes each call)."""
    return i.to_bytes(4, "big") + random.Random(i).randbytes(n - 4)


class Hold(_Hold):
    """Replies held back by ``rule(task)`` seconds (None: never), results rewritten by ``rewrite``."""

    def __init__(
        self,
        rule: Callable[[wire.TaskRecord], float | None] = lambda t: 0.0,
        rewrite: Callable[[wire.ResultRecord], wire.ResultRecord] = lambda r: r,
    ) -> None:
        super().__init__(rule)
        self.rewrite = rewrite

    def after(self, task: wire.TaskRecord, result: wire.ResultRecord) -> wire.ResultRecord:
        return self.rewrite(result)


@dataclass
class Mesh:
    net: MemoryNetwork
    worker: Worker
    host: MemoryHost
    gamer: GamerClient
    gamer_host: MemoryHost
    #: Further (honest) workers, when asked for.
    others: list[MemoryHost]

    @property
    def peer(self) -> bytes:
        return self.host.peer_id


@asynccontextmanager
async def open_mesh(
    config: GamerConfig = RAW,
    worker_config: WorkerConfig = WorkerConfig(concurrency=2),
    hold: Hold | None = None,
    extra_workers: int = 0,
) -> AsyncIterator[Mesh]:
    net = MemoryNetwork(3, link=LinkModel(delay_s=0.01), stream_buffer=8 << 20)
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)
        host = await stack.enter_async_context(net.open_host())
        worker = Worker(host, host.identity, REGISTRY, worker_config)
        worker.behaviour = hold
        await nursery.start(worker.run)
        gh = await stack.enter_async_context(net.open_host())
        gamer = await stack.enter_async_context(
            GamerClient.connect(host=gh, config=config, registry=REGISTRY)
        )
        await gamer.add_worker(host.listen_addrs()[0])
        others = []
        for _ in range(extra_workers):
            other = await stack.enter_async_context(net.open_host())
            await nursery.start(Worker(other, other.identity, REGISTRY, worker_config).run)
            await gamer.add_worker(other.listen_addrs()[0])
            others.append(other)
        yield Mesh(net, worker, host, gamer, gh, others)


async def open_path(m: Mesh) -> None:
    """Send the first big payload: it says hello (and itself takes the stream)."""
    assert await m.gamer.run("echo", big(0)) == big(0)
    await trio.sleep(0.1)
    assert m.gamer.same_host(m.peer)


def exported(m: Mesh) -> str:
    return m.gamer.metrics.render().decode() + m.worker.metrics.render().decode()


# ---------------------------------------------------------------- the path


async def test_big_payloads_go_through_shared_memory_with_the_same_verified_results(
    autojump_clock: trio.abc.Clock,
) -> None:
    inputs = [big(i) for i in range(4)]
    outputs = {}
    for on in (True, False):
        async with open_mesh(replace(RAW, shm=on)) as m:
            first = await m.gamer.run("reverse", inputs[0])  # says hello; travels on the stream
            before = m.net.link_stats(m.gamer_host.peer_id, m.peer).bytes
            rest = [await m.gamer.run("reverse", d) for d in inputs[1:]]
            sent = m.net.link_stats(m.gamer_host.peer_id, m.peer).bytes - before
            outputs[on] = [first, *rest]
            assert m.gamer.stats.verified == 4 and m.gamer.stats.verification_failures == 0
            if on:
                assert m.gamer.same_host(m.peer)
                assert m.gamer.stats.shm_out == 3 and m.worker.stats.shm_in == 3
                assert m.gamer.stats.shm_in >= 3 and m.gamer.stats.shm_in == m.worker.stats.shm_out
                assert sent < 3 * 1024  # three tasks: names and sizes, not 900 KiB
                assert 'p2c2r_shm_payloads_total{direction="out"} 3.0' in exported(m)
            else:
                assert not m.gamer.same_host(m.peer)
                assert m.gamer.stats.shm_out == m.gamer.stats.shm_in == 0
                assert sent > 3 * BIG
            assert ours() == []  # every segment unlinked once its copy ended
    assert outputs[True] == outputs[False] == [d[::-1] for d in inputs]


async def test_small_payloads_never_open_the_path(autojump_clock: trio.abc.Clock) -> None:
    async with open_mesh() as m:
        handles = await m.gamer.submit_many([("echo", b"x" * 1000, None)] * 50)
        assert [await h.result() for h in handles] == [b"x" * 1000] * 50
        assert not m.gamer.same_host(m.peer) and m.worker.stats.shm_in == 0
        assert m.gamer.stats.shm_fallbacks == 0 and "p2c2r_shm_fallbacks_total{" not in exported(m)


# ---------------------------------------------------------------- falling back


async def test_a_worker_that_cannot_read_our_segments_gets_the_stream(autojump_clock: trio.abc.Clock) -> None:
    """Shared memory off at the worker stands in for another host: the hello fails."""
    async with open_mesh(worker_config=WorkerConfig(concurrency=2, shm=False)) as m:
        data = [big(i) for i in range(3)]
        assert [await m.gamer.run("reverse", d) for d in data] == [d[::-1] for d in data]
        assert not m.gamer.same_host(m.peer)
        assert m.worker.stats.shm_in == 0 and m.gamer.stats.shm_in == 0
        assert 'p2c2r_shm_fallbacks_total{reason="not_same_host"} 1.0' in exported(m)


async def test_a_segment_gone_before_the_worker_reads_it_is_sent_again_on_the_stream(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_mesh() as m:
        await open_path(m)
        handle = await m.gamer.submit("reverse", big(1))
        await trio.sleep(0.001)  # written, not yet at the worker (the link takes 10 ms)
        [name] = ours()
        shm.unlink(name)
        assert await handle.result() == big(1)[::-1]
        assert m.gamer.stats.shm_fallbacks == 1 and m.gamer.stats.verified == 2
        assert 'p2c2r_shm_fallbacks_total{reason="read_failed"} 1.0' in exported(m)
        assert not m.gamer.same_host(m.peer)  # this link keeps the stream from now on, both ways
        sent_by_worker = m.worker.stats.shm_out
        assert await m.gamer.run("reverse", big(2)) == big(2)[::-1]
        assert m.worker.stats.shm_out == sent_by_worker and m.gamer.stats.shm_fallbacks == 1


# ---------------------------------------------------------------- cleanup on every path


def slow_if_tagged(task: wire.TaskRecord) -> float | None:
    return 5.0 if task.data[:4] == b"slow" else 0.0


async def test_timed_out_cancelled_and_abandoned_copies_leave_no_segment(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_mesh(hold=Hold(slow_if_tagged)) as m:
        await open_path(m)
        with pytest.raises(TaskTimeoutError):
            await m.gamer.run("echo", b"slow" + big(1)[4:], deadline=1.0)
        assert ours() == []  # the input went with its copy; the output is not made yet
        cancelled = await m.gamer.submit("echo", b"slow" + big(2)[4:])
        await trio.sleep(0.05)
        assert cancelled.cancel()
        with pytest.raises(CancelledTaskError):
            await cancelled.result()
        # The gamer's inputs went with their copies; the late outputs arrive after 5 s
        # and are unlinked as they come, though nobody waits for them any more.
        await trio.sleep(6)
        assert m.gamer.stats.late_dropped == 2
        assert ours() == []
        # A copy still in flight when the client closes: released on the way out.
        await m.gamer.submit("echo", b"slow" + big(3)[4:])
        await trio.sleep(0.05)
        assert ours() != []
    # The worker's output for it came after the gamer left: the worker's stream cleanup
    # (or the fixture) must find nothing.


async def test_a_hedge_loser_leaves_no_segment(autojump_clock: trio.abc.Clock) -> None:
    async with open_mesh(replace(RAW, hedge=True), hold=Hold(slow_if_tagged), extra_workers=1) as m:
        m.gamer.set_placement(prefer(m.peer))  # primaries to the (sometimes slow) first worker
        await open_path(m)
        for i in range(12):  # learn echo's pace: the hedge delay
            await m.gamer.run("echo", b"tiny %d" % i)
        handle = await m.gamer.submit("echo", b"slow" + big(1)[4:])
        assert await handle.result() == b"slow" + big(1)[4:]
        assert handle.worker == m.others[0].peer_id and m.gamer.stats.hedges_won == 1
        # The primary, on the slow worker, is not cancelled when its hedge wins (only
        # the reverse is; see the report on GamerClient._finish): its input segment goes
        # when that copy ends. Its late answer is dropped, and its output unlinked.
        await trio.sleep(6)
        assert m.gamer.stats.late_dropped == 1 and ours() == []


async def test_a_worker_unlinks_what_a_vanished_gamer_left_on_its_stream(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_mesh() as m:
        await open_path(m)
        stream, token = await raw_hello(m)
        name = shm.segment_name(token)
        shm.write_segment(name, b"q" * BIG)
        await stream.write(wire.encode_tasks([shm_task(name, BIG)]))
        frame = await read_frame(stream, wire.FrameDecoder())
        [rec] = frame.results
        assert isinstance(rec, wire.ResultRecord) and rec.shm is not None
        assert shm.check_name(rec.shm.name, _OUT_TOKEN)
        assert shm.exists(name) and shm.exists(rec.shm.name)  # we "crash" without unlinking
        await stream.reset()
        await trio.sleep(0.1)
        assert not shm.exists(name) and not shm.exists(rec.shm.name)


# ---------------------------------------------------------------- hostile peers

_OUT_TOKEN = "00112233445566ff"


def shm_task(name: str, size: int, kind: str = "echo") -> wire.TaskRecord:
    return wire.TaskRecord(os.urandom(16), kind, {}, b"", wire.ENC_SHM, 0, wire.ShmRef(name, size))


async def raw_hello(m: Mesh) -> tuple[Stream, str]:
    """A raw task stream to the worker whose hello succeeded; returns the input token."""
    stream = await m.gamer_host.open_stream(m.peer, wire.PROTOCOL_ID)
    nonce = os.urandom(shm.NONCE_LEN)
    hello_name = shm.segment_name(_OUT_TOKEN)
    shm.write_segment(hello_name, nonce)
    try:
        await stream.write(wire.encode_hello(wire.ShmHello(hello_name, shm.NONCE_LEN, _OUT_TOKEN, 4096)))
        frame = await read_frame(stream, wire.FrameDecoder())
    finally:
        shm.unlink(hello_name)
    reply = frame.hello_reply
    assert reply is not None and reply.ok and reply.nonce == nonce
    return stream, reply.token


async def test_a_gamer_naming_segments_outside_its_stream_is_refused_and_the_worker_serves_on(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_mesh() as m:
        # Before any hello, a segment reference is refused outright.
        early = await m.gamer_host.open_stream(m.peer, wire.PROTOCOL_ID)
        await early.write(wire.encode_tasks([shm_task(shm.segment_name(shm.new_token()), 10)]))
        [rec] = (await read_frame(early, wire.FrameDecoder())).results
        assert isinstance(rec, wire.ErrorRecord) and rec.code == "shm_refused"

        stream, token = await raw_hello(m)
        dec = wire.FrameDecoder()
        other = shm.segment_name(shm.new_token())  # someone else's segment, on this host
        shm.write_segment(other, b"not yours" * 1000)
        mine = shm.segment_name(token)
        shm.write_segment(mine, b"m" * 5000)
        try:
            hostile = [
                shm_task(other, 9000),  # exists, right size, another stream's token
                shm_task("psm_deadbeef", 10),  # outside the prefix
                shm_task("../../etc/passwd", 10),
                shm_task(mine, 4999),  # ours, but a size other than the segment's
                shm_task(mine, wire.DEFAULT_MAX_FRAME + 1),  # over the limit
            ]
            for task in hostile:
                await stream.write(wire.encode_tasks([task]))
                [rec] = (await read_frame(stream, dec)).results
                assert isinstance(rec, wire.ErrorRecord), task
                assert rec.code == "shm_refused" and rec.task_id == task.task_id
            assert m.worker.stats.shm_refused == 6
            # The same stream still serves, through shared memory and not.
            ok = shm_task(mine, 5000)
            await stream.write(wire.encode_tasks([ok]))
            [rec] = (await read_frame(stream, dec)).results  # 5000 bytes >= the 4096 we asked for
            assert isinstance(rec, wire.ResultRecord) and rec.shm is not None
            assert shm.read_segment(rec.shm.name, rec.shm.size, remove=True) == b"m" * 5000
            assert shm.exists(other)  # never touched
        finally:
            shm.unlink(other)
            shm.unlink(mine)
        assert await m.gamer.run("reverse", big(5)) == big(5)[::-1]


async def test_a_worker_naming_a_foreign_segment_in_its_result_is_rejected(
    autojump_clock: trio.abc.Clock,
) -> None:
    other = shm.segment_name(shm.new_token())
    shm.write_segment(other, b"someone else's" * 100)

    def point_elsewhere(r: wire.ResultRecord) -> wire.ResultRecord:
        return replace(r, output=b"", enc=wire.ENC_SHM, shm=wire.ShmRef(other, 1400))

    hold = Hold()
    try:
        async with open_mesh(hold=hold) as m:
            await open_path(m)
            hold.rewrite = point_elsewhere
            handle = await m.gamer.submit("echo", big(1), deadline=2.0)
            with pytest.raises(P2C2RError):  # rejected, and no other worker to ask
                await handle.result()
            assert m.gamer.stats.verification_failures >= 1
            assert shm.exists(other)  # the gamer neither read nor unlinked it
            assert not m.gamer.same_host(m.peer)
    finally:
        shm.unlink(other)
