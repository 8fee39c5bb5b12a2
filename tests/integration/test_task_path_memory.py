"""The task path (worker + gamer SDK) over the in-memory backend, in virtual time.

Every test runs under ``MockClock(autojump_threshold=0)`` (pytest-trio's ``autojump_clock``):
time passes only through link delays and deadlines, so timings asserted here are exact
virtual times, not wall-clock measurements. Kernels are ``inline`` (they run on the loop
and take no virtual time); anything that must "take a while" does so through link delay.

The last section tests the backend itself (``mesh.memory``): delay, bounded buffers,
EOF, resets, seeded loss, partitions.

The gamer runs its default verification policy unless a test measures the raw transport
(exact dispatch counts, frames, spread): those pass ``RAW`` (``VerificationConfig.off()``),
because the default policy duplicates every task of a new, untrusted worker. The policy
itself is tested end to end in ``test_trust_*.py``.
"""

from __future__ import annotations

import math
import os
import random
import threading
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace

import msgpack
import pytest
import trio
import trio.testing

from mesh import wire
from mesh.errors import (
    CancelledTaskError,
    ConfigError,
    ConnectionLostError,
    LimitExceededError,
    RejectedError,
    TaskFailedError,
    TaskTimeoutError,
    UnavailableError,
    UnknownKindError,
    ValidationError,
    VerificationError,
)
from mesh.identity import Identity
from mesh.memory import LinkModel, MemoryHost, MemoryNetwork, MemoryStream
from mesh.transport import Stream
from nodes.gamer import GamerClient, GamerConfig, TaskHandle
from nodes.metrics import parse_prometheus
from nodes.verification import VerificationConfig
from nodes.worker import Worker, WorkerConfig
from tasks.kernels.echo import ECHO
from tasks.registry import ParamSpec, Registry, TaskKind


def _boom(params: dict[str, object], data: bytes) -> bytes:
    raise RuntimeError("kernel exploded")


BOOM = TaskKind(
    name="boom",
    description="test-only: a kernel with a bug",
    params={},
    execute=_boom,
    cost=lambda params, n: 1.0,
    inline=True,
)
REVERSE = TaskKind(
    name="reverse",
    description="test-only: reverses its input, deterministic",
    params={"times": ParamSpec(int, default=1, minimum=1, maximum=3)},
    execute=lambda params, data: data[::-1],
    cost=lambda params, n: 1.0,
    inline=True,
)
GROW = TaskKind(
    name="grow",
    description="test-only: output three times the input",
    params={},
    execute=lambda params, data: data * 3,
    cost=lambda params, n: 1.0,
    inline=True,
)
REGISTRY = Registry([ECHO, BOOM, REVERSE, GROW])
WORKER_CONFIG = WorkerConfig(concurrency=2)
RAW = GamerConfig(verification=VerificationConfig.off())


@dataclass
class Mesh:
    net: MemoryNetwork
    workers: list[Worker]
    hosts: list[MemoryHost]
    gamer: GamerClient
    gamer_host: MemoryHost

    def worker_of(self, peer: bytes | None) -> int:
        return [h.peer_id for h in self.hosts].index(peer) if peer is not None else -1


@asynccontextmanager
async def open_mesh(
    n_workers: int = 1,
    *,
    delay: float = 0.01,
    seed: int = 1,
    worker_configs: list[WorkerConfig] | None = None,
    gamer_config: GamerConfig = GamerConfig(),
    stream_buffer: int = 4 << 20,
    registry: Registry = REGISTRY,
    links: dict[int, LinkModel] | None = None,
) -> AsyncIterator[Mesh]:
    """``links``: the gamer's link to worker i, where it is not the default (``delay``)."""
    net = MemoryNetwork(seed, link=LinkModel(delay_s=delay), stream_buffer=stream_buffer)
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)
        workers, hosts = [], []
        for i in range(n_workers):
            host = await stack.enter_async_context(net.open_host())
            worker = Worker(
                host, host.identity, registry, worker_configs[i] if worker_configs else WORKER_CONFIG
            )
            await nursery.start(worker.run)
            workers.append(worker)
            hosts.append(host)
        gamer_host = await stack.enter_async_context(net.open_host())
        gamer = await stack.enter_async_context(
            GamerClient.connect(host=gamer_host, config=gamer_config, registry=registry)
        )
        for i, model in (links or {}).items():
            net.set_link(gamer_host.peer_id, hosts[i].peer_id, model)
        for host in hosts:
            await gamer.add_worker(host.listen_addrs()[0])
        yield Mesh(net, workers, hosts, gamer, gamer_host)


def payloads(n: int) -> list[bytes]:
    return [b"task-%04d" % i for i in range(n)]


# ---------------------------------------------------------------- happy path


async def test_submit_returns_the_verified_output_after_one_round_trip(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_mesh(delay=0.02) as m:
        handle = await m.gamer.submit("reverse", b"abcdef", {"times": 2})
        assert await handle.result() == b"fedcba"
        assert handle.worker == m.hosts[0].peer_id
        assert handle.latency_s == pytest.approx(0.04)  # one round trip, inline kernel
        assert await m.gamer.run("echo", b"x" * 100) == b"x" * 100
        assert m.gamer.stats.verified == 2 and m.gamer.stats.failed == 0
        assert m.workers[0].stats.completed == 2


async def test_large_compressible_payloads_travel_as_zstd_and_arrive_intact(
    autojump_clock: trio.abc.Clock,
) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB, compresses well
    # Shared memory off: both ends are in this process, so it would carry the payload.
    async with open_mesh(gamer_config=GamerConfig(shm=False)) as m:
        out = await m.gamer.run("echo", data)
        assert out == data
        sent = m.net.link_stats(m.gamer_host.peer_id, m.hosts[0].peer_id).bytes
        returned = m.net.link_stats(m.hosts[0].peer_id, m.gamer_host.peer_id).bytes
        assert sent < len(data) // 10 and returned < len(data) // 10


async def test_duplicates_go_to_workers_near_enough_by_the_stream_open_round_trip(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Worker 2 is 200 ms away; tasks have 150 ms. The core knows no worker's pace yet, so it
    # needs the link's round trip (measured as the task stream opened) to keep every
    # duplicate of a new, untrusted worker's task on worker 1, which can answer in time.
    async with open_mesh(3, links={2: LinkModel(delay_s=0.1)}) as m:
        m.gamer.set_placement(lambda kind, cands: m.hosts[0].peer_id)
        handles = [await m.gamer.submit("echo", b"t%d" % i, deadline=0.15) for i in range(20)]
        assert [await h.result() for h in handles] == [b"t%d" % i for i in range(20)]
        assert m.workers[1].stats.received >= 10 and m.workers[2].stats.received == 0


async def test_a_copys_hedge_clock_starts_when_its_frame_leaves_the_gamer(
    autojump_clock: trio.abc.Clock,
) -> None:
    # A slow uplink (100 kB/s, a 32 KiB window): the big task's frame takes seconds to leave,
    # and the small one queued behind it leaves after it. The core hears of each departure.
    # (Under 256 KiB: a bigger output is hashed in a thread, and the autojump clock would
    # jump past the deadline while it runs.)
    async with open_mesh(gamer_config=replace(RAW, shm=False), stream_buffer=32 << 10) as m:
        m.net.set_link(m.gamer_host.peer_id, m.hosts[0].peer_id, LinkModel(delay_s=0.01, bandwidth_Bps=100e3))
        core = m.gamer._core
        sent: list[tuple[bytes, float]] = []
        on_sent = core.on_sent

        def record(wire_id: bytes, now: float) -> None:
            sent.append((wire_id, now))
            on_sent(wire_id, now)

        core.on_sent = record  # type: ignore[method-assign]
        big = random.Random(1).randbytes(200_000)  # incompressible
        t0 = trio.current_time()
        h1 = await m.gamer.submit("echo", big, deadline=30.0)
        h2 = await m.gamer.submit("echo", b"small", deadline=30.0)
        assert await h1.result() == big and await h2.result() == b"small"
        (w1, left1), (w2, left2) = sent  # one call per copy (verification off: one copy each)
        assert w1 != w2
        # The big frame left once all but the window's worth was through: ~(200 - 33) kB / 100 kB/s.
        assert left1 - t0 > 1.5 and left2 >= left1


async def test_worker_errors_arrive_typed_and_the_worker_keeps_serving(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_mesh() as m:
        with pytest.raises(UnknownKindError):
            await m.gamer.run("mine_bitcoin", b"")
        with pytest.raises(ValidationError):
            await m.gamer.run("echo", b"", {"tag": 5})
        with pytest.raises(ValidationError):
            await m.gamer.run("reverse", b"", {"times": 99})
        with pytest.raises(TaskFailedError, match="kernel exploded"):
            await m.gamer.run("boom", b"")
        assert await m.gamer.run("echo", b"still here") == b"still here"
        # Unknown kinds and invalid parameters are refused by the client before sending
        # (it verifies against the same registry); the kernel failure comes from the worker.
        assert m.workers[0].stats.failed == 1
        assert m.gamer.stats.failed == 4 and m.gamer.stats.verified == 1


# ---------------------------------------------------------------- pipelining and batching


async def test_pipelined_tasks_share_one_round_trip(autojump_clock: trio.abc.Clock) -> None:
    delay = 0.05
    async with open_mesh(delay=delay) as m:
        t0 = trio.current_time()
        handles = [await m.gamer.submit("echo", p) for p in payloads(1000)]
        outs = [await h.result() for h in handles]
        assert outs == payloads(1000)
        # 1000 tasks in flight at once on one stream: one round trip in total, not 1000.
        assert trio.current_time() - t0 == pytest.approx(2 * delay)
        assert m.gamer.stats.verified == 1000


async def test_submit_many_sends_one_frame_and_results_come_back_batched(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_mesh(delay=0.01) as m:
        g, w = m.gamer_host.peer_id, m.hosts[0].peer_id
        before_out, before_back = m.net.link_stats(g, w).writes, m.net.link_stats(w, g).writes
        handles = await m.gamer.submit_many([("echo", p, None) for p in payloads(100)])
        assert [await h.result() for h in handles] == payloads(100)
        assert m.net.link_stats(g, w).writes - before_out == 1
        assert m.net.link_stats(w, g).writes - before_back <= 2
        assert await m.gamer.map("reverse", [b"ab", b"cd"]) == [b"ba", b"dc"]


async def test_tasks_spread_over_workers(autojump_clock: trio.abc.Clock) -> None:
    async with open_mesh(3, gamer_config=RAW) as m:
        handles = await m.gamer.submit_many([("echo", p, None) for p in payloads(30)])
        for h in handles:
            await h.result()
        per_worker = [w.stats.completed for w in m.workers]
        assert sum(per_worker) == 30 and min(per_worker) >= 5


# ---------------------------------------------------------------- frame limits

SMALL_FRAMES = replace(WORKER_CONFIG, max_frame=100_000, max_batch_bytes=50_000)
SMALL_GAMER = GamerConfig(max_frame=100_000, max_batch_bytes=50_000)


async def test_a_task_too_big_for_a_frame_is_refused_at_submit(autojump_clock: trio.abc.Clock) -> None:
    async with open_mesh(2, worker_configs=[SMALL_FRAMES] * 2, gamer_config=SMALL_GAMER) as m:
        with pytest.raises(LimitExceededError):
            await m.gamer.submit("echo", random.Random(1).randbytes(100_000))
        with pytest.raises(LimitExceededError):  # compresses well, but the worker could not expand it
            await m.gamer.submit("echo", bytes(200_000))
        assert await m.gamer.run("echo", b"links intact") == b"links intact"
        assert len(m.gamer.workers()) == 2 and m.gamer.stats.resubmitted == 0
        assert sum(w.stats.protocol_errors for w in m.workers) == 0


async def test_batches_never_grow_past_the_frame_limit(autojump_clock: trio.abc.Clock) -> None:
    rnd = random.Random(2)
    items = [("echo", rnd.randbytes(n), None) for n in (40_000, 90_000, 30_000, 95_000, 10, 20)]
    async with open_mesh(1, worker_configs=[SMALL_FRAMES], gamer_config=SMALL_GAMER) as m:
        handles = await m.gamer.submit_many(items)
        assert [await h.result() for h in handles] == [d for _, d, _ in items]
        assert m.workers[0].stats.protocol_errors == 0 and m.gamer.stats.resubmitted == 0


async def test_an_output_too_big_for_a_frame_is_a_typed_error(autojump_clock: trio.abc.Clock) -> None:
    async with open_mesh(1, worker_configs=[SMALL_FRAMES], gamer_config=SMALL_GAMER) as m:
        with pytest.raises(LimitExceededError):
            await m.gamer.run("grow", random.Random(3).randbytes(40_000))
        assert await m.gamer.run("grow", b"ab") == b"ababab"
        assert m.gamer.stats.resubmitted == 0 and m.gamer.workers() == [m.hosts[0].peer_id]


# ---------------------------------------------------------------- deadlines


async def test_deadline_expiry_raises_at_the_deadline_and_the_late_result_is_dropped(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_mesh(delay=1.0) as m:
        t0 = trio.current_time()
        handle = await m.gamer.submit("echo", b"slow link", deadline=0.5)
        with pytest.raises(TaskTimeoutError):
            await handle.result()
        assert trio.current_time() - t0 == pytest.approx(0.5)
        assert m.gamer.stats.timeouts == 1 and m.gamer.stats.late_dropped == 0
        await trio.sleep(2.0)  # the worker's answer arrives at t0 + 2 s
        assert m.workers[0].stats.completed == 1
        assert m.gamer.stats.late_dropped == 1
        assert m.gamer.stats.verified == 0
        with pytest.raises(TaskTimeoutError):
            await handle.result()  # still the timeout, never overwritten by the late result


async def test_each_task_times_out_at_its_own_deadline(autojump_clock: trio.abc.Clock) -> None:
    async with open_mesh(delay=10.0) as m:
        t0 = trio.current_time()
        deadlines = [3.0, 0.25, 1.5, 0.75]
        handles = [await m.gamer.submit("echo", b"x", deadline=d) for d in deadlines]
        seen: list[tuple[float, float]] = []

        async def wait(h_index: int) -> None:
            with pytest.raises(TaskTimeoutError):
                await handles[h_index].result()
            seen.append((deadlines[h_index], trio.current_time() - t0))

        async with trio.open_nursery() as n:
            for i in range(len(handles)):
                n.start_soon(wait, i)
        assert sorted(seen) == sorted((d, pytest.approx(d)) for d in deadlines)


# ---------------------------------------------------------------- failures


@pytest.mark.parametrize("how", ["reset_link", "crash", "disconnect"])
async def test_tasks_on_a_lost_worker_are_resubmitted_and_nothing_is_lost(
    autojump_clock: trio.abc.Clock, how: str
) -> None:
    async with open_mesh(2, delay=0.1, gamer_config=RAW) as m:
        handles = await m.gamer.submit_many([("echo", p, None) for p in payloads(20)])
        await trio.sleep(0.15)  # the first worker has computed; its results are on the wire
        on_first = m.workers[0].stats.completed
        assert 0 < on_first < 20 and not any(h.done() for h in handles)
        if how == "reset_link":
            assert m.net.reset_link(m.gamer_host.peer_id, m.hosts[0].peer_id)
        elif how == "crash":
            m.hosts[0].crash()
        else:
            await m.hosts[0].disconnect(m.gamer_host.peer_id)
        outs = [await h.result() for h in handles]
        assert outs == payloads(20)
        assert all(h.worker == m.hosts[1].peer_id for h in handles)
        assert m.gamer.stats.resubmitted == on_first
        assert m.gamer.stats.verified == 20 and m.gamer.stats.failed == 0
        assert m.workers[1].stats.completed == 20
        assert m.gamer.workers() == [m.hosts[1].peer_id]


async def test_failover_while_submits_wait_on_a_full_send_queue(autojump_clock: trio.abc.Clock) -> None:
    # Tiny queues and stream buffers: submit_many blocks on a full queue while the link
    # it waits on dies; every task must still run exactly once elsewhere.
    items = [("echo", b"%04d" % i, None) for i in range(40)]
    raw_tiny = replace(RAW, send_queue=1)
    async with open_mesh(2, delay=0.1, gamer_config=raw_tiny, stream_buffer=300) as m:
        handles: list[TaskHandle] = []

        async def submit_all() -> None:
            handles.extend(await m.gamer.submit_many(items))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(submit_all)
            await trio.sleep(0.05)
            assert m.net.reset_link(m.gamer_host.peer_id, m.hosts[0].peer_id)
        assert [await h.result() for h in handles] == [d for _, d, _ in items]
        assert m.workers[0].stats.completed == 0
        assert m.workers[1].stats.received == 40  # no task dispatched twice
        assert m.gamer.stats.verified == 40


async def test_the_only_worker_dying_fails_its_tasks_as_unavailable_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_mesh(1, delay=0.1) as m:
        handles = await m.gamer.submit_many([("echo", p, None) for p in payloads(5)], deadline=60)
        await trio.sleep(0.05)
        t_crash = trio.current_time()
        m.hosts[0].crash()
        for h in handles:
            with pytest.raises(UnavailableError):
                await h.result()
        assert trio.current_time() == pytest.approx(t_crash)  # typed error at once, not at the deadline
        with pytest.raises(UnavailableError):
            await m.gamer.run("echo", b"after")


async def test_no_worker_is_unavailable(autojump_clock: trio.abc.Clock) -> None:
    net = MemoryNetwork(3)
    async with net.open_host() as gh, GamerClient.connect(host=gh) as gamer:
        handle = await gamer.submit("echo", b"x")
        with pytest.raises(UnavailableError):
            await handle.result()
        with pytest.raises(UnavailableError):
            await gamer.add_worker("/memory/99/p2p/" + Identity.from_seed(b"\x09" * 32).peer_id.to_base58())


async def test_a_worker_over_capacity_rejects_and_the_task_runs_elsewhere(
    autojump_clock: trio.abc.Clock,
) -> None:
    configs = [replace(WORKER_CONFIG, max_queued=0), WORKER_CONFIG]
    async with open_mesh(2, worker_configs=configs, gamer_config=RAW) as m:
        handles = await m.gamer.submit_many([("echo", p, None) for p in payloads(10)])
        assert [await h.result() for h in handles] == payloads(10)
        assert m.workers[0].stats.rejected >= 1
        assert m.gamer.stats.resubmitted == m.workers[0].stats.rejected
        assert all(h.worker == m.hosts[1].peer_id for h in handles)


async def test_everyone_rejecting_gives_up_after_max_attempts(autojump_clock: trio.abc.Clock) -> None:
    # Copies of one task go to distinct workers: with two workers both refusing, the
    # task ends after two attempts with the last typed refusal.
    full = replace(WORKER_CONFIG, max_queued=0)
    async with open_mesh(2, worker_configs=[full, full], gamer_config=RAW) as m:
        with pytest.raises(RejectedError):
            await m.gamer.run("echo", b"x")
        assert sum(w.stats.rejected for w in m.workers) == 2
    # With more workers than attempts, max_attempts bounds the tries.
    async with open_mesh(4, worker_configs=[full] * 4, gamer_config=replace(RAW, max_attempts=3)) as m:
        with pytest.raises(RejectedError):
            await m.gamer.run("echo", b"x")
        assert sum(w.stats.rejected for w in m.workers) == 3


async def test_cancel_raises_cancelled_and_the_late_result_is_dropped(autojump_clock: trio.abc.Clock) -> None:
    async with open_mesh(delay=0.1) as m:
        handle = await m.gamer.submit("echo", b"never mind")
        await trio.sleep(0.05)  # on the wire: the worker will still run it
        assert handle.cancel() is True
        assert handle.done()
        with pytest.raises(CancelledTaskError):
            await handle.result()
        assert handle.cancel() is False
        await trio.sleep(1.0)
        assert m.workers[0].stats.completed == 1
        assert m.gamer.stats.late_dropped == 1 and m.gamer.stats.verified == 0
        done = await m.gamer.submit("echo", b"ok")
        assert await done.result() == b"ok"
        assert done.cancel() is False


SLOW = TaskKind(
    name="slow",
    description="test-only: runs off the loop (queues for a slot); 1 s of virtual time here",
    params={},
    execute=lambda params, data: data,
    cost=lambda params, n: 1000.0,
    inline=False,
)


def open_slow_worker() -> AbstractAsyncContextManager[Mesh]:
    """One worker with one slot that runs ``slow`` off the loop (its tasks queue for the
    slot), and a gamer without verification: one copy per task."""
    return open_mesh(
        worker_configs=[WorkerConfig(concurrency=1)], gamer_config=RAW, registry=Registry([ECHO, SLOW])
    )


async def test_a_cancelled_task_still_queued_on_the_worker_gives_up_its_slot(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def one_second(
        self: Worker, kind: TaskKind, task: wire.TaskRecord, params: dict[str, object]
    ) -> tuple[bytes, bytes, bytes]:
        await trio.sleep(1.0)  # the kernel's run time, in virtual time
        return wire.digest(task.data), wire.digest(task.data), task.data

    monkeypatch.setattr(Worker, "_offload", one_second)
    async with open_slow_worker() as m:
        worker, gamer = m.workers[0], m.gamer
        t0 = trio.current_time()
        first = await gamer.submit("slow", b"a", deadline=10.0)
        await trio.sleep(0.1)  # running (trio starts a frame's tasks in no set order)
        second = await gamer.submit("slow", b"b", deadline=10.0)  # both queued behind it
        third = await gamer.submit("slow", b"c", deadline=10.0)
        await trio.sleep(0.4)
        assert second.cancel() is True
        assert await first.result() == b"a" and await third.result() == b"c"
        # The third ran right after the first: the second gave its slot up unrun.
        assert trio.current_time() - t0 == pytest.approx(2.02)
        assert worker.stats.cancelled == 1 and worker.stats.per_kind == {"slow": 2}


async def test_a_cancel_read_with_its_task_stops_it_before_it_runs(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[bytes] = []

    async def instant(
        self: Worker, kind: TaskKind, task: wire.TaskRecord, params: dict[str, object]
    ) -> tuple[bytes, bytes, bytes]:
        ran.append(task.data)
        return wire.digest(task.data), wire.digest(task.data), task.data

    monkeypatch.setattr(Worker, "_offload", instant)
    async with open_slow_worker() as m:
        worker, gamer = m.workers[0], m.gamer
        handles: list[TaskHandle] = []
        core = gamer._core
        on_sent = core.on_sent

        def cancel_once_written(wire_id: bytes, now: float) -> None:
            on_sent(wire_id, now)
            handles[0].cancel()  # the cancel frame goes right behind the task's, same instant

        core.on_sent = cancel_once_written  # type: ignore[method-assign]
        handles.append(gamer._submit("slow", b"x", None, 10.0))
        await trio.sleep(1.0)
        assert handles[0].done()
        # The idle worker read both at once: the task never ran.
        assert worker.stats.cancelled == 1 and ran == [] and worker.stats.received == 1


async def _one_second(
    self: Worker, kind: TaskKind, task: wire.TaskRecord, params: dict[str, object]
) -> tuple[bytes, bytes, bytes]:
    await trio.sleep(1.0)  # the kernel's run time, in virtual time
    return wire.digest(task.data), wire.digest(task.data), task.data


async def test_a_worker_announces_the_wait_of_tasks_queued_behind_others(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Worker, "_offload", _one_second)
    async with open_slow_worker() as m:
        worker, core = m.workers[0], m.gamer._core
        notices: list[tuple[bytes, float, float]] = []
        on_queued = core.on_queued

        def record(wire_id: bytes, peer: bytes, wait_s: float, now: float) -> None:
            notices.append((wire_id, wait_s, now))
            on_queued(wire_id, peer, wait_s, now)

        core.on_queued = record  # type: ignore[method-assign]
        assert await m.gamer.run("slow", b"first", deadline=10.0) == b"first"
        assert notices == []  # an idle worker announces nothing (nor does one of unknown pace)
        t0 = trio.current_time()
        handles = [await m.gamer.submit("slow", b"t%d" % i, deadline=10.0) for i in range(3)]
        assert [await h.result() for h in handles] == [b"t0", b"t1", b"t2"]
        # The second and third waited 1 s and 2 s behind the first; the worker's estimates
        # (its queue's work at its measured 1 s pace) say so, within the half-run slack.
        assert worker.stats.queue_notices == 2 == len(notices)

        def exported(text: bytes) -> dict[str, float]:
            return {
                labels["direction"]: value
                for name, labels, value in parse_prometheus(text.decode())
                if name == "p2c2r_queue_notices_total"
            }

        assert exported(worker.metrics.render())["sent"] == 2
        assert exported(m.gamer.metrics.render())["received"] == 2
        waits = sorted(w for _, w, _ in notices)
        assert 0.5 <= waits[0] <= 1.0 and 1.5 <= waits[1] <= 2.0
        assert all(now - t0 == pytest.approx(0.02) for _, _, now in notices)  # one round trip


async def test_a_worker_busy_with_another_gamers_tasks_is_not_struck_as_silent(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 12 of the simulator, end to end: a task queued behind another gamer's work
    is hedged from the start its worker announces, instead of being taken for silence."""
    monkeypatch.setattr(Worker, "_offload", _one_second)
    # Hedging and strikes only: no self-check (``slow`` is checked in a thread, and the
    # autojump clock would run past the deadline meanwhile), no duplicates, no probes.
    trust = replace(VerificationConfig.off(), hedge=True, strikes_to_ban=1, strike_interval_s=0.0)

    async def run(notice_s: float) -> tuple[bool, int, int, bool]:
        cfg = replace(WORKER_CONFIG, concurrency=1, queue_notice_s=notice_s)
        gamer_cfg = GamerConfig(verification=trust)
        registry = Registry([ECHO, SLOW])
        async with open_mesh(2, worker_configs=[cfg, cfg], gamer_config=gamer_cfg, registry=registry) as m:
            busy = m.hosts[0]
            async with (
                m.net.open_host() as other_host,
                GamerClient.connect(host=other_host, config=gamer_cfg, registry=registry) as other,
            ):
                await other.add_worker(busy.listen_addrs()[0])
                await other.run("slow", b"warm", deadline=10.0)  # the worker learns its pace
                theirs = [await other.submit("slow", b"o%d" % i, deadline=20.0) for i in range(4)]
                await trio.sleep(0.1)
                m.gamer.set_placement(lambda kind, cands: busy.peer_id)
                mine = await m.gamer.submit("slow", b"mine", deadline=10.0)
                assert await mine.result() == b"mine"
                for h in theirs:
                    await h.result()
            st = m.gamer._core.stats
            banned = m.gamer.reputation.is_banned(busy.peer_id, trio.current_time())
            return mine.worker == busy.peer_id, st.queued, st.strikes, banned

    from_busy, queued, strikes, banned = await run(0.25)
    assert from_busy and queued == 1 and strikes == 0 and not banned
    # Without the notice, its hedge (4 x the kind's 1 s estimate) fires while it still waits.
    _, queued, strikes, banned = await run(math.inf)
    assert queued == 0 and strikes == 1 and banned


async def test_a_frame_never_waits_for_a_slot_behind_batch_tiles(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-slot worker runs batch tasks in a lane of their own: a frame sent behind two
    1 s tiles runs at once, while the second tile waits behind the first (and is announced).
    Sent as normal tasks, the same tiles hold the frame back for 2 s."""
    monkeypatch.setattr(Worker, "_offload", _one_second)

    async def frame_and_tiles(tile_priority: int) -> tuple[float, float, int]:
        async with open_slow_worker() as m:
            for priority in (wire.PRIORITY_NORMAL, wire.PRIORITY_BATCH):  # each lane learns the pace
                await m.gamer.run("slow", b"warm%d" % priority, deadline=10.0, priority=priority)
            t0 = trio.current_time()
            tiles = [
                await m.gamer.submit("slow", b"tile%d" % i, deadline=10.0, priority=tile_priority)
                for i in range(2)
            ]
            await trio.sleep(0.005)  # strictly after the tiles (trio may start same-tick tasks in any order)
            frame = await m.gamer.submit("slow", b"frame", deadline=10.0, priority=wire.PRIORITY_FRAME)
            assert await frame.result() == b"frame"
            frame_s = trio.current_time() - t0
            assert [await t.result() for t in tiles] == [b"tile0", b"tile1"]
            return frame_s, trio.current_time() - t0, m.workers[0].stats.queue_notices

    frame_s, tiles_s, notices = await frame_and_tiles(wire.PRIORITY_BATCH)
    assert frame_s == pytest.approx(1.025)  # sent 5 ms later: one round trip and its own 1 s
    assert tiles_s == pytest.approx(2.02) and notices == 1  # the tiles, one after the other
    frame_s, tiles_s, notices = await frame_and_tiles(wire.PRIORITY_NORMAL)
    assert frame_s == pytest.approx(3.02) and notices == 2  # behind both tiles in one FIFO


async def test_batch_kernels_run_in_niced_threads() -> None:
    """Real threads and the real clock: the OS sees the batch lane's kernels as nicer."""
    if not hasattr(os, "setpriority"):
        pytest.skip("no per-thread nice values on this OS")
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    if base + 5 > 19:
        pytest.skip("this process already runs at the nicest level")

    def nice_of_this_thread(params: dict[str, object], data: bytes) -> bytes:
        return b"%d" % os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    nice = TaskKind(
        "nice", "test-only: the nice value its kernel ran at", {}, nice_of_this_thread, lambda p, n: 1.0
    )
    cfg = WorkerConfig(concurrency=1, batch_nice=5)
    async with open_mesh(worker_configs=[cfg], gamer_config=RAW, registry=Registry([ECHO, nice])) as m:
        # (distinct inputs: the result cache would answer a repeated task itself)
        batch = [
            await m.gamer.run("nice", b"%d" % i, priority=wire.PRIORITY_BATCH, deadline=30.0)
            for i in range(3)
        ]
        frame = await m.gamer.run("nice", b"frame", priority=wire.PRIORITY_FRAME, deadline=30.0)
    assert batch == [b"%d" % (base + 5)] * 3 and frame == b"%d" % base


def test_priorities_out_of_range_are_refused_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match="priority of 'tile'"):
        GamerConfig(priorities={"tile": wire.MAX_PRIORITY + 1})
    with pytest.raises(ValueError, match="priority"):
        GamerConfig().priority_of("echo", -1)
    assert GamerConfig(priorities={"tile": wire.PRIORITY_BATCH}).priority_of("tile") == wire.PRIORITY_BATCH
    assert GamerConfig().priority_of("echo") == wire.PRIORITY_NORMAL


async def test_partition_shorter_than_the_deadline_only_delays(autojump_clock: trio.abc.Clock) -> None:
    async with open_mesh(delay=0.01) as m:
        m.net.partition([m.gamer_host.peer_id])
        t0 = trio.current_time()
        handle = await m.gamer.submit("echo", b"held", deadline=5.0)
        await trio.sleep(1.0)
        assert not handle.done()
        m.net.heal()
        assert await handle.result() == b"held"
        assert trio.current_time() - t0 == pytest.approx(1.01)


async def test_partition_longer_than_the_deadline_times_out(autojump_clock: trio.abc.Clock) -> None:
    async with open_mesh(2, delay=0.01) as m:
        m.net.partition([m.gamer_host.peer_id], [h.peer_id for h in m.hosts])
        t0 = trio.current_time()
        with pytest.raises(TaskTimeoutError):
            await m.gamer.run("echo", b"x", deadline=2.0)
        assert trio.current_time() - t0 == pytest.approx(2.0)
        async with m.net.open_host() as outside:  # in neither group
            t1 = trio.current_time()
            with pytest.raises(UnavailableError, match="timed out"):
                await m.gamer.add_worker(outside.listen_addrs()[0])
            assert trio.current_time() - t1 == pytest.approx(m.net.dial_timeout_s)


# ---------------------------------------------------------------- hostile workers


async def test_tampered_output_is_rejected(autojump_clock: trio.abc.Clock) -> None:
    async with open_mesh() as m:

        def flip(task: wire.TaskRecord, payload: bytes, sig: bytes) -> tuple[bytes, bytes]:
            return payload[:-1] + bytes([payload[-1] ^ 1]), sig

        m.workers[0].tamper = flip
        with pytest.raises(VerificationError):
            await m.gamer.run("echo", b"honest input")
        assert m.gamer.stats.verification_failures == 1 and m.gamer.stats.verified == 0


async def test_forged_signature_is_rejected(autojump_clock: trio.abc.Clock) -> None:
    forger = Identity.from_seed(b"\x66" * 32)
    async with open_mesh() as m:
        # Any signature that is not the stream's authenticated peer's fails, whatever it signs.
        m.workers[0].tamper = lambda task, payload, sig: (payload, forger.sign(b"anything"))
        with pytest.raises(VerificationError):
            await m.gamer.run("echo", b"x")


async def test_result_replayed_from_another_task_is_rejected(autojump_clock: trio.abc.Clock) -> None:
    # Without the result cache, which would answer the repeated task without the network.
    async with open_mesh(gamer_config=GamerConfig(cache_entries=0)) as m:
        first: list[tuple[bytes, bytes]] = []

        def replay(task: wire.TaskRecord, payload: bytes, sig: bytes) -> tuple[bytes, bytes]:
            if not first:
                first.append((payload, sig))
            return first[0]

        m.workers[0].tamper = replay
        # Same kind, params and input: the output is identical; only the binding differs.
        assert await m.gamer.run("echo", b"same") == b"same"
        with pytest.raises(VerificationError):
            await m.gamer.run("echo", b"same")
        # The replay fails the task (and a known-answer probe that went with it, same
        # worker); the worker is banned on the first bad signature.
        assert m.gamer.stats.verification_failures >= 1
        assert m.gamer.banned() == [m.hosts[0].peer_id]


async def test_a_tampering_worker_does_not_hurt_tasks_on_honest_ones(autojump_clock: trio.abc.Clock) -> None:
    async with open_mesh(2) as m:
        m.workers[0].tamper = lambda task, payload, sig: (b"lies", sig)
        handles = await m.gamer.submit_many([("echo", p, None) for p in payloads(10)])
        # New workers are untrusted, so each task also went to the honest one; the first
        # bad signature bans the tamperer and every task still ends verified.
        with trio.fail_after(5):
            assert [await h.result() for h in handles] == payloads(10)
        assert all(h.worker == m.hosts[1].peer_id for h in handles)
        assert m.gamer.stats.verification_failures >= 1
        assert m.gamer.banned() == [m.hosts[0].peer_id]
        assert m.gamer.stats.unconfirmed >= 1  # nobody left to confirm against: recorded


async def _settled(handle: TaskHandle) -> None:
    try:
        await handle.result()
    except VerificationError:
        pass


# ---------------------------------------------------------------- malformed frames


async def read_frame(stream: MemoryStream, dec: wire.FrameDecoder) -> wire.Frame:
    while True:
        data = await stream.read()
        assert data, "stream ended before a frame arrived"
        bodies = list(dec.feed(data))
        if bodies:
            assert len(bodies) == 1
            return wire.decode_frame(bodies[0])


async def test_malformed_frames_get_typed_errors_and_the_worker_keeps_serving(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_mesh() as m, m.net.open_host() as rogue:
        worker_peer = m.hosts[0].peer_id
        await rogue.connect(m.hosts[0].listen_addrs()[0])
        stream = await rogue.open_stream(worker_peer, wire.PROTOCOL_ID)
        dec = wire.FrameDecoder()

        await stream.write(b"\x00\x00\x00\x05hello")  # not msgpack of the right shape
        frame = await read_frame(stream, dec)
        assert frame.type == "E" and frame.error is not None and frame.error[0] == "protocol"

        body = msgpack.packb([2, "T", []])
        await stream.write(len(body).to_bytes(4, "big") + body)  # a future version
        frame = await read_frame(stream, dec)
        assert frame.error is not None and frame.error[0] == "version"

        # The same stream still works after decodable-but-bad frames.
        task = wire.TaskRecord(b"\x01" * 16, "echo", {}, b"still ok")
        await stream.write(wire.encode_tasks([task]))
        frame = await read_frame(stream, dec)
        assert frame.type == "R" and isinstance(frame.results[0], wire.ResultRecord)
        assert frame.results[0].output == b"still ok"

        await stream.write(b"\xff\xff\xff\xff")  # 4 GiB declared: cannot resync
        frame = await read_frame(stream, dec)
        assert frame.error is not None and frame.error[0] == "frame_too_large"
        with pytest.raises(ConnectionLostError):
            while await stream.read():
                pass
        assert m.workers[0].stats.protocol_errors == 3

        # The node still serves: the regular client and a fresh stream.
        assert await m.gamer.run("echo", b"served") == b"served"
        again = await rogue.open_stream(worker_peer, wire.PROTOCOL_ID)
        await again.write(wire.encode_tasks([task]))
        frame = await read_frame(again, wire.FrameDecoder())
        assert frame.results[0].task_id == task.task_id


async def test_a_worker_sending_garbage_is_dropped_and_its_tasks_move(autojump_clock: trio.abc.Clock) -> None:
    async with open_mesh(1, delay=0.05) as m, m.net.open_host() as liar:

        async def garbage(stream: Stream) -> None:
            await stream.read()
            await stream.write(b"\x00\x00\x00\x03abc")

        liar.set_stream_handler(wire.PROTOCOL_ID, garbage)
        await m.gamer.add_worker(liar.listen_addrs()[0])
        handles = await m.gamer.submit_many([("echo", p, None) for p in payloads(6)])
        assert [await h.result() for h in handles] == payloads(6)
        assert all(h.worker == m.hosts[0].peer_id for h in handles)
        assert m.gamer.workers() == [m.hosts[0].peer_id]


# ---------------------------------------------------------------- the memory backend itself


@asynccontextmanager
async def pair(
    link: LinkModel = LinkModel(), seed: int = 0, stream_buffer: int = 1 << 20
) -> AsyncIterator[tuple[MemoryNetwork, MemoryStream, MemoryStream]]:
    net = MemoryNetwork(seed, link=link, stream_buffer=stream_buffer)
    accepted: list[MemoryStream] = []
    got = trio.Event()

    async def handler(stream: Stream) -> None:
        assert isinstance(stream, MemoryStream)
        accepted.append(stream)
        got.set()
        await trio.sleep_forever()

    async with net.open_host() as a, net.open_host() as b:
        b.set_stream_handler("/t", handler)
        assert await a.connect(b.listen_addrs()[0]) == b.peer_id
        s = await a.open_stream(b.peer_id, "/t")
        await got.wait()
        assert s.remote_peer == b.peer_id and accepted[0].remote_peer == a.peer_id
        yield net, s, accepted[0]


async def test_memory_bytes_arrive_after_the_delay_in_order(autojump_clock: trio.abc.Clock) -> None:
    async with pair(LinkModel(delay_s=0.3, jitter_s=0.2), seed=4) as (_, s, r):
        t0 = trio.current_time()
        for i in range(50):
            await s.write(b"%03d," % i)
        await s.close()
        got = b""
        first_at = None
        while chunk := await r.read(7):
            first_at = first_at if first_at is not None else trio.current_time() - t0
            got += chunk
        assert got == b"".join(b"%03d," % i for i in range(50))
        assert first_at is not None and 0.3 <= first_at < 0.5
        assert await r.read() == b""  # EOF stays EOF
        with pytest.raises(ConnectionLostError):
            await s.write(b"after close")
        await r.write(b"other direction still open")
        assert await s.read() == b"other direction still open"


async def test_memory_writer_blocks_while_the_reader_does_not_read(autojump_clock: trio.abc.Clock) -> None:
    async with pair(stream_buffer=1000) as (_, s, r):
        await s.write(b"a" * 1000)
        with trio.move_on_after(60) as scope:
            await s.write(b"b")
        assert scope.cancelled_caught  # bounded: no room until the reader reads
        assert await r.read(10) == b"a" * 10
        await s.write(b"c" * 10)
        rest = b""
        while len(rest) < 1000:
            rest += await r.read()
        assert rest == b"a" * 990 + b"c" * 10


async def test_memory_big_writes_pass_a_small_buffer(autojump_clock: trio.abc.Clock) -> None:
    async with pair(stream_buffer=4096) as (_, s, r):
        data = bytes(range(256)) * 1000
        got = bytearray()

        async def drain() -> None:
            while len(got) < len(data):
                got.extend(await r.read(3000))

        async with trio.open_nursery() as n:
            n.start_soon(drain)
            await s.write(data)
        assert bytes(got) == data


async def test_memory_reset_delivers_earlier_bytes_then_fails_both_ways(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with pair(LinkModel(delay_s=0.1)) as (_, s, r):
        await s.write(b"last words")
        await s.reset()
        with pytest.raises(ConnectionLostError):
            await s.read()
        with pytest.raises(ConnectionLostError):
            await s.write(b"x")
        assert await r.read() == b"last words"
        with pytest.raises(ConnectionLostError, match="reset"):
            await r.read()
        with pytest.raises(ConnectionLostError):
            await r.write(b"x")


async def test_memory_loss_drops_the_connection_deterministically(autojump_clock: trio.abc.Clock) -> None:
    async def writes_until_drop(seed: int) -> int:
        async with pair(LinkModel(loss=0.05), seed=seed) as (net, s, r):
            n = 0
            with pytest.raises(ConnectionLostError, match="loss"):
                while True:
                    await s.write(b"x")
                    n += 1
            with pytest.raises(ConnectionLostError):
                await r.read()
            assert net.link_stats(s.remote_peer, r.remote_peer).drops == 1
            return n

    counts = [await writes_until_drop(seed) for seed in (7, 7, 8)]
    assert counts[0] == counts[1]
    assert all(c < 1000 for c in counts)


async def test_memory_hosts_refuse_what_real_hosts_refuse(autojump_clock: trio.abc.Clock) -> None:
    net = MemoryNetwork(5)
    async with net.open_host() as a, net.open_host() as b:
        other = Identity.from_seed(b"\x11" * 32).peer_id.to_base58()
        with pytest.raises(UnavailableError, match="another peer id"):
            await a.connect(f"{b.addr}/p2p/{other}")
        with pytest.raises(ConfigError):
            await a.connect(b.addr)
        with pytest.raises(UnavailableError, match="does not speak"):
            await a.open_stream(b.peer_id, "/nobody/1")
        assert a.connected_peers() == [b.peer_id]
        b.crash()
        assert a.connected_peers() == []
        with pytest.raises(UnavailableError):
            await a.connect(b.listen_addrs()[0])
        with pytest.raises(UnavailableError):
            await a.open_stream(b.peer_id, "/nobody/1")


async def test_memory_peer_ids_follow_the_seed(autojump_clock: trio.abc.Clock) -> None:
    ids = []
    for _ in range(2):
        net = MemoryNetwork(42)
        async with net.open_host() as a, net.open_host() as b:
            ids.append((a.peer_id, b.peer_id))
    assert ids[0] == ids[1] and ids[0][0] != ids[0][1]
    with pytest.raises(ConfigError):
        LinkModel(loss=1.5)
    with pytest.raises(ConfigError):
        LinkModel(delay_s=math.inf)


async def test_memory_host_restarts_with_its_identity_and_streams_are_forgotten(
    autojump_clock: trio.abc.Clock,
) -> None:
    net = MemoryNetwork(6)
    ident = Identity.from_seed(b"\x21" * 32)

    async def echo_once(stream: Stream) -> None:
        await stream.write(await stream.read())
        await stream.close()

    async with net.open_host() as client:
        for _ in range(2):  # the same peer, started twice
            async with net.open_host(ident) as server:
                with pytest.raises(ConfigError):
                    net.new_host(ident)  # but never twice at once
                server.set_stream_handler("/echo", echo_once)
                assert await client.connect(server.listen_addrs()[0]) == ident.peer_id_bytes
                for i in range(20):
                    s = await client.open_stream(ident.peer_id_bytes, "/echo")
                    await s.write(b"%d" % i)
                    assert await s.read() == b"%d" % i
                    assert await s.read() == b""
                    await s.close()
                conn = client.conns[ident.peer_id_bytes]
                assert len(conn.pipes) <= 4  # finished streams do not pile up
        assert client.connected_peers() == []


async def test_a_dropped_worker_is_redialled_with_backoff(autojump_clock: trio.abc.Clock) -> None:
    async with open_mesh(gamer_config=GamerConfig(verification=VerificationConfig.off())) as m:
        worker = m.hosts[0].peer_id
        assert await m.gamer.run("echo", b"before") == b"before"
        assert m.net.reset_link(m.gamer_host.peer_id, worker)
        with trio.fail_after(1):
            while m.gamer.workers():  # noqa: ASYNC110 - observing the client from outside
                await trio.sleep(0.01)
        dropped_at = trio.current_time()
        with trio.fail_after(5):
            while worker not in m.gamer.workers():  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert trio.current_time() - dropped_at < 1.0  # first retries come fast
        assert await m.gamer.run("echo", b"after") == b"after"


async def test_reconnection_can_be_turned_off(autojump_clock: trio.abc.Clock) -> None:
    config = GamerConfig(verification=VerificationConfig.off(), reconnect_max_backoff_s=0)
    async with open_mesh(gamer_config=config) as m:
        assert m.net.reset_link(m.gamer_host.peer_id, m.hosts[0].peer_id)
        await trio.sleep(30)
        assert m.gamer.workers() == []
        with pytest.raises(UnavailableError):
            await m.gamer.run("echo", b"x")
