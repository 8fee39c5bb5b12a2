"""The SDK's performance features end to end on the in-memory backend, in virtual time.

Result cache, hedged requests, adaptive timeouts and the adaptive-quality helper, each
against real ``Worker``s over ``mesh.memory`` under ``MockClock(autojump_threshold=0)``:
times asserted here are exact virtual times (link delay plus held replies), never
wall-clock measurements. Kernels are ``inline``; a reply "takes a while" only through a
worker ``Behaviour`` that holds it back. Most tests run the raw policy
(``VerificationConfig.off()``) so copy counts are exact; the policy is tested in
``test_trust_*.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace

import pytest
import trio
import trio.testing

from mesh import wire
from mesh.errors import TaskTimeoutError, VerificationError
from mesh.memory import LinkModel, MemoryHost, MemoryNetwork
from nodes.gamer import GamerClient, GamerConfig
from nodes.sdk_cores import CachedResult, QualityLevel, TimeoutConfig
from nodes.verification import VerificationConfig
from nodes.worker import Worker, WorkerConfig
from tasks.registry import ParamSpec, Registry, TaskKind

REVERSE = TaskKind(
    name="reverse",
    description="test-only: reverses its input, deterministic",
    params={},
    execute=lambda params, data: data[::-1],
    cost=lambda params, n: 1.0,
    inline=True,
)
NOISY = TaskKind(
    name="noisy",
    description="test-only: declared non-deterministic",
    params={},
    execute=lambda params, data: data,
    cost=lambda params, n: 1.0,
    inline=True,
    deterministic=False,
)
FRAME = TaskKind(
    name="frame",
    description="test-only: stands in for upscale (mode and scale, no pixels)",
    params={
        "mode": ParamSpec(str, default="quality", choices=("fast", "quality")),
        "scale": ParamSpec(float, default=2.0, choices=(1.5, 2.0)),
        "quality": ParamSpec(int, default=85, minimum=1, maximum=100),
    },
    execute=lambda params, data: data,
    cost=lambda params, n: 1.0,
    inline=True,
)
REGISTRY = Registry([REVERSE, NOISY, FRAME])
RAW = GamerConfig(verification=VerificationConfig.off())
DELAY = 0.01  # one way: a round trip is 0.02 s


class Hold:
    """A worker ``Behaviour`` that holds replies back by ``rule(task)`` seconds (None: never)."""

    def __init__(self, rule: Callable[[wire.TaskRecord], float | None]) -> None:
        self.rule = rule

    def delay(self, task: wire.TaskRecord) -> float | None:
        return self.rule(task)

    def corrupt(self, task: wire.TaskRecord, output: bytes) -> bytes:
        return output

    def after(self, task: wire.TaskRecord, result: wire.ResultRecord) -> wire.ResultRecord:
        return result


def slow_if_tagged(task: wire.TaskRecord) -> float | None:
    if task.data.startswith(b"drop"):
        return None
    return 1.0 if task.data.startswith(b"slow") else 0.0


@dataclass
class Mesh:
    workers: list[Worker]
    hosts: list[MemoryHost]
    gamer: GamerClient

    def peer(self, i: int) -> bytes:
        return self.hosts[i].peer_id


@asynccontextmanager
async def open_mesh(
    n: int = 2, *, config: GamerConfig = RAW, delay: float = DELAY, hold: dict[int, Hold] | None = None
) -> AsyncIterator[Mesh]:
    net = MemoryNetwork(5, link=LinkModel(delay_s=delay))
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)
        workers, hosts = [], []
        for i in range(n):
            host = await stack.enter_async_context(net.open_host())
            w = Worker(host, host.identity, REGISTRY, WorkerConfig(concurrency=2))
            if hold and i in hold:
                w.behaviour = hold[i]
            await nursery.start(w.run)
            workers.append(w)
            hosts.append(host)
        gh = await stack.enter_async_context(net.open_host())
        gamer = await stack.enter_async_context(
            GamerClient.connect(host=gh, config=config, registry=REGISTRY)
        )
        for h in hosts:
            await gamer.add_worker(h.listen_addrs()[0])
        yield Mesh(workers, hosts, gamer)


def prefer(peer: bytes) -> Callable[[str, list[tuple[bytes, int]]], bytes | None]:
    """A placer that picks ``peer`` whenever it is a candidate, else the first one."""

    def placer(kind: str, cands: list[tuple[bytes, int]]) -> bytes | None:
        return peer if any(w == peer for w, _ in cands) else cands[0][0]

    return placer


def prefer_leased(*peers: bytes) -> Callable[[str, Callable[[bytes], int | None]], bytes | None]:
    """``prefer`` as a lease placer (``GamerClient.set_lease_placement``, which names no
    candidates): the first of ``peers`` that is a candidate (live, unbanned), else None."""

    def placer(kind: str, in_flight: Callable[[bytes], int | None]) -> bytes | None:
        return next((p for p in peers if in_flight(p) is not None), None)

    return placer


def place_on(m: Mesh, hook: str) -> None:
    """Primaries to worker 0 while it is a candidate, else to worker 1, through the SDK's
    placement hook ``hook`` ("placer" or "lease")."""
    if hook == "lease":
        m.gamer.set_lease_placement(prefer_leased(m.peer(0), m.peer(1)))
    else:
        m.gamer.set_placement(prefer(m.peer(0)))


def received(m: Mesh) -> int:
    return sum(w.stats.received for w in m.workers)


# ---------------------------------------------------------------- result cache


async def test_a_cache_hit_skips_the_network_and_is_reverified(autojump_clock: trio.abc.Clock) -> None:
    async with open_mesh(1) as m:
        assert await m.gamer.run("reverse", b"abc") == b"cba"
        assert received(m) == 1 and len(m.gamer.cache) == 1
        t0 = trio.current_time()
        handle = await m.gamer.submit("reverse", b"abc")
        assert handle.done()  # answered at submit, no round trip
        assert await handle.result() == b"cba"
        assert trio.current_time() == t0 and handle.worker == m.peer(0)
        assert received(m) == 1 and m.gamer.stats.cache_hits == 1

        # The entry keeps the worker's signed receipt and is checked again on every hit:
        # an entry whose output no longer matches what the worker signed is refused,
        # dropped, and the task goes to the network.
        (key,) = list(m.gamer.cache._entries)
        good = m.gamer.cache._entries[key]
        m.gamer.cache._entries[key] = replace(good, output=b"xyz")
        assert await m.gamer.run("reverse", b"abc") == b"cba"
        assert received(m) == 2 and m.gamer.stats.cache_hits == 1
        # ... and so is one under another key's signature.
        fresh = m.gamer.cache._entries[key]
        m.gamer.cache._entries[key] = replace(fresh, signature=bytes(64))
        assert await m.gamer.run("reverse", b"abc") == b"cba"
        assert received(m) == 3 and m.gamer.stats.cache_hits == 1
        # Other parameters or inputs are other keys.
        assert await m.gamer.run("reverse", b"abd") == b"dba"
        assert received(m) == 4


async def test_the_cache_entry_carries_the_original_signed_receipt(autojump_clock: trio.abc.Clock) -> None:
    from tasks.receipt import receipt_digest, verify_receipt

    async with open_mesh(1) as m:
        await m.gamer.run("reverse", b"hello")
        (entry,) = m.gamer.cache._entries.values()
        assert isinstance(entry, CachedResult) and entry.worker == m.peer(0)
        d = receipt_digest(
            entry.task_id,
            "reverse",
            wire.params_digest({}),
            wire.digest(b"hello"),
            wire.digest(entry.output),
            entry.worker,
            entry.ts_ms,
        )
        verify_receipt(entry.worker, d, entry.signature)  # anyone can check it


async def test_non_deterministic_kinds_and_a_disabled_cache_always_go_to_the_network(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_mesh(1) as m:
        for _ in range(3):
            assert await m.gamer.run("noisy", b"n") == b"n"
        assert received(m) == 3 and len(m.gamer.cache) == 0
    async with open_mesh(1, config=replace(RAW, cache_entries=0)) as m:
        for _ in range(3):
            assert await m.gamer.run("reverse", b"r") == b"r"
        assert received(m) == 3 and m.gamer.stats.cache_hits == 0


async def test_answers_of_a_banned_worker_are_not_served_from_the_cache(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_mesh(2) as m:
        m.gamer.set_placement(prefer(m.peer(0)))
        assert await m.gamer.run("reverse", b"ab") == b"ba"
        m.gamer.reputation.ban(m.peer(0), trio.current_time())
        handle = await m.gamer.submit("reverse", b"ab")
        assert await handle.result() == b"ba"
        assert handle.worker == m.peer(1) and m.gamer.stats.cache_hits == 0


async def test_the_policy_resolves_first_and_the_cache_keeps_the_verified_answer(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Default policy: new workers are untrusted, so the first answer is confirmed by a
    # second worker before it resolves, and only then is it cached.
    async with open_mesh(2, config=GamerConfig(seed=2)) as m:
        assert await m.gamer.run("reverse", b"policy") == b"ycilop"
        sent = received(m)
        assert sent >= 2 and len(m.gamer.cache) == 1
        assert await m.gamer.run("reverse", b"policy") == b"ycilop"
        assert received(m) == sent and m.gamer.stats.cache_hits == 1


# ---------------------------------------------------------------- hedged requests


async def train(m: Mesh, n: int = 10, kind: str = "reverse") -> None:
    """Sequential tasks, one in flight: the gamer learns the kind's round trip."""
    for i in range(n):
        await m.gamer.run(kind, b"train-%d" % i)


@pytest.mark.parametrize("hook", ["placer", "lease"])
async def test_a_slow_task_is_hedged_after_the_learned_delay_and_the_first_answer_wins(
    autojump_clock: trio.abc.Clock, hook: str
) -> None:
    async with open_mesh(2, hold={0: Hold(slow_if_tagged)}) as m:
        place_on(m, hook)  # primaries go to the slow one
        await train(m)
        assert m.gamer.timeouts is not None
        delay = m.gamer.timeouts.hedge_delay("reverse")
        assert delay is not None and 2 * DELAY <= delay < 3 * DELAY
        assert m.workers[1].stats.received == 0 and m.gamer.stats.hedges == 0

        t0 = trio.current_time()
        handle = await m.gamer.submit("reverse", b"slow-1")
        await trio.sleep(delay * 0.99)
        assert m.workers[1].stats.received == 0  # not before its delay
        assert await handle.result() == b"1-wols"
        # The hedge left at t0 + delay and took one round trip on the other worker.
        assert trio.current_time() - t0 == pytest.approx(delay + 2 * DELAY)
        assert handle.worker == m.peer(1)
        assert m.gamer.stats.hedges == 1 and m.gamer.stats.hedges_won == 1
        # The loser was cancelled: its late answer is dropped, nothing else happens.
        await trio.sleep(1.5)
        assert m.gamer.stats.late_dropped == 1 and m.gamer.stats.verified == 11
        assert m.gamer.stats.failed == 0


async def test_a_task_answered_in_time_is_not_hedged(autojump_clock: trio.abc.Clock) -> None:
    async with open_mesh(2, hold={0: Hold(slow_if_tagged)}) as m:
        m.gamer.set_placement(prefer(m.peer(0)))
        await train(m, 20)
        assert m.gamer.stats.hedges == 0 and m.workers[1].stats.received == 0


async def test_hedges_are_capped_by_the_budget(autojump_clock: trio.abc.Clock) -> None:
    cfg = replace(RAW, hedge_fraction=0.0, hedge_burst=2.0)
    async with open_mesh(2, config=cfg, hold={0: Hold(slow_if_tagged)}) as m:
        m.gamer.set_placement(prefer(m.peer(0)))
        await train(m)
        handles = await m.gamer.submit_many([("reverse", b"slow-%d" % i, None) for i in range(6)])
        outs = [await h.result() for h in handles]
        assert outs == [(b"slow-%d" % i)[::-1] for i in range(6)]
        assert m.gamer.stats.hedges == 2 and m.gamer.stats.hedges_denied == 4
        assert m.workers[1].stats.received == 2
        assert [h.worker == m.peer(1) for h in handles].count(True) == 2


@pytest.mark.parametrize("hook", ["placer", "lease"])
async def test_hedges_go_only_where_the_placer_allows(autojump_clock: trio.abc.Clock, hook: str) -> None:
    # A control plane that leases only worker 0: a hedge elsewhere would break the lease.
    async with open_mesh(2, hold={0: Hold(slow_if_tagged)}) as m:
        if hook == "lease":
            m.gamer.set_lease_placement(lambda kind, in_flight: m.peer(0))
        else:
            m.gamer.set_placement(lambda kind, cands: m.peer(0))
        await train(m)
        handle = await m.gamer.submit("reverse", b"slow-leased", deadline=5.0)
        assert await handle.result() == b"desael-wols"
        assert handle.worker == m.peer(0) and m.workers[1].stats.received == 0
        assert m.gamer.stats.hedges == 0 and m.gamer.hedge_budget.spent == 0


async def test_hedging_can_be_turned_off(autojump_clock: trio.abc.Clock) -> None:
    async with open_mesh(2, config=replace(RAW, hedge=False), hold={0: Hold(slow_if_tagged)}) as m:
        m.gamer.set_placement(prefer(m.peer(0)))
        await train(m)
        t0 = trio.current_time()
        assert await m.gamer.run("reverse", b"slow-x", deadline=5.0) == b"x-wols"
        assert trio.current_time() - t0 == pytest.approx(1.0 + 2 * DELAY)
        assert m.gamer.stats.hedges == 0 and m.workers[1].stats.received == 0


# ---------------------------------------------------------------- adaptive timeouts


async def test_the_learned_deadline_converges_and_is_used_when_none_is_given(
    autojump_clock: trio.abc.Clock,
) -> None:
    cfg = replace(RAW, adaptive_timeouts=TimeoutConfig(minimum_s=0.005), hedge=False)
    async with open_mesh(1, config=cfg, hold={0: Hold(slow_if_tagged)}) as m:
        t = m.gamer.timeouts
        assert t is not None and t.estimate("reverse") is None
        await train(m, 40)
        est = t.estimate("reverse")
        assert est is not None and est[0] == pytest.approx(2 * DELAY)
        learned = t.deadline("reverse")
        assert 2 * DELAY <= learned < 2.5 * DELAY  # converged to the round trip
        assert t.deadline("noisy") == cfg.adaptive_timeouts.initial_s if cfg.adaptive_timeouts else False

        # A task that never comes back fails at the learned deadline, not the default 30 s.
        t0 = trio.current_time()
        with pytest.raises(TaskTimeoutError):
            await m.gamer.run("reverse", b"drop-1")
        assert trio.current_time() - t0 == pytest.approx(learned)
        # ... and the timeout backs the estimate off, so a kind that became slower is not
        # failed forever: at least three times the deadline that expired.
        assert t.deadline("reverse") >= 3 * learned
        # A deadline the caller gives is always used as is.
        t0 = trio.current_time()
        with pytest.raises(TaskTimeoutError):
            await m.gamer.run("reverse", b"drop-2", deadline=0.5)
        assert trio.current_time() - t0 == pytest.approx(0.5)


async def test_a_burst_is_given_time_for_its_queue(autojump_clock: trio.abc.Clock) -> None:
    # Learned on lone tasks, the deadline of a task submitted behind others scales with
    # the queue it joins, so a burst does not fail for being a burst.
    cfg = replace(RAW, adaptive_timeouts=TimeoutConfig(minimum_s=0.005), hedge=False)
    queue = Hold(lambda task: 0.0)
    async with open_mesh(1, config=cfg, hold={0: queue}) as m:
        await train(m, 20)
        learned = m.gamer.timeouts.deadline("reverse") if m.gamer.timeouts else 0.0

        def in_turn(task: wire.TaskRecord) -> float:
            # A worker serving them one at a time in order, 5 ms each.
            return int(task.data.split(b"-")[1]) * 0.005

        queue.rule = in_turn
        handles = await m.gamer.submit_many([("reverse", b"burst-%d" % i, None) for i in range(20)])
        outs = [await h.result() for h in handles]
        assert outs == [(b"burst-%d" % i)[::-1] for i in range(20)]
        assert max(h.latency_s or 0 for h in handles) > 5 * learned  # the queue took time
        assert m.gamer.stats.timeouts == 0


async def test_adaptive_timeouts_can_be_turned_off(autojump_clock: trio.abc.Clock) -> None:
    cfg = replace(RAW, adaptive_timeouts=None, default_deadline_s=2.0)
    async with open_mesh(1, config=cfg, hold={0: Hold(slow_if_tagged)}) as m:
        await train(m)
        assert m.gamer.timeouts is None
        t0 = trio.current_time()
        with pytest.raises(TaskTimeoutError):
            await m.gamer.run("reverse", b"drop-1")
        assert trio.current_time() - t0 == pytest.approx(2.0)


# ---------------------------------------------------------------- adaptive quality

#: Seconds each level of the default ladder takes on the worker (before ``speed``), plus a
#: 2 ms round trip: (mode, scale, output quality).
COST = {
    ("quality", 2.0, 85): 0.040,
    ("fast", 2.0, 85): 0.025,
    ("fast", 2.0, 70): 0.015,
    ("fast", 2.0, 50): 0.008,
}


async def test_quality_steps_down_when_frames_run_late_and_back_up_with_hysteresis(
    autojump_clock: trio.abc.Clock,
) -> None:
    speed = [1.0]

    def cost(task: wire.TaskRecord) -> float:
        p = task.params
        return COST[(str(p["mode"]), float(p["scale"]), int(p.get("quality", 85)))] * speed[0]

    async with open_mesh(1, delay=0.001, hold={0: Hold(cost)}) as m:
        q = m.gamer.quality(target_fps=30, kind="frame")
        assert q.level == QualityLevel("quality", 2.0) and q.controller.budget_s == pytest.approx(1 / 30)
        n = 0

        async def frames(count: int) -> list[QualityLevel]:
            nonlocal n
            seen = []
            for _ in range(count):
                n += 1
                assert await q.upscale(b"frame-%d" % n) == b"frame-%d" % n
                seen.append(q.level)
            return seen

        # 42 ms > the 33 ms budget: one frame is enough to step down, to fast x2
        # (27 ms: within budget, though without the room to step back up).
        assert (await frames(1))[-1] == QualityLevel("fast", 2.0)
        assert set(await frames(100)) == {QualityLevel("fast", 2.0)}  # stable, no flapping
        assert q.controller.changes == 1

        # The mesh gets faster (the best level now takes 14 ms): the controller steps
        # back up, but only after a long run of frames with room to spare.
        speed[0] = 0.3
        seen = await frames(120)
        first_up = seen.index(QualityLevel("quality", 2.0))
        assert first_up >= q.controller.up_after - 1
        assert set(seen[first_up:]) == {QualityLevel("quality", 2.0)}
        assert q.controller.changes == 2

        # Much slower again: frames past twice their budget time out, count as missed,
        # and the level drops within a few frames (smoothed, so one blip does not).
        speed[0] = 2.0
        late = 0
        while q.level == QualityLevel("quality", 2.0):
            with pytest.raises(TaskTimeoutError):
                await q.upscale(b"late frame %d" % late)
            late += 1
        assert 1 < late <= 5 and q.missed >= late


async def test_quality_params_for_callers_that_submit_themselves(autojump_clock: trio.abc.Clock) -> None:
    async with open_mesh(1, delay=0.001) as m:
        q = m.gamer.quality(target_fps=60, kind="frame", frames_in_flight=2)
        assert q.params({"codec": "jpeg"}) == {"codec": "jpeg", "mode": "quality", "scale": 2.0}
        level = q.level
        assert q.observe(0.5, level) != level  # way over 2/60 s: one step down
        assert q.params()["mode"] == "fast"


# ---------------------------------------------------------------- batch signatures


async def test_results_flushed_together_share_one_signature_and_each_is_verified(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_mesh(1) as m:
        handles = await m.gamer.submit_many([("reverse", b"b-%d" % i, None) for i in range(10)])
        assert [await h.result() for h in handles] == [(b"b-%d" % i)[::-1] for i in range(10)]
        w = m.workers[0].stats
        assert w.batches_signed >= 1 and w.signatures < 10
        assert m.gamer.stats.verified == 10 and m.gamer.stats.verification_failures == 0
        # What each result is remembered with is its own seal, checkable alone.
        from tasks.receipt import receipt_digest, verify_receipt

        for entry in m.gamer.cache._entries.values():
            assert len(entry.signature) > 64  # a seal: the batch signature and a path
            d = receipt_digest(
                entry.task_id,
                "reverse",
                wire.params_digest({}),
                wire.digest(entry.output[::-1]),  # the input of a reverse
                wire.digest(entry.output),
                entry.worker,
                entry.ts_ms,
            )
            verify_receipt(entry.worker, d, entry.signature)


async def test_tampering_with_one_result_of_a_batch_fails_that_result_only(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_mesh(1) as m:

        def lie_about_the_last(records: list[wire.ResultRecord]) -> list[wire.ResultRecord]:
            return [*records[:-1], replace(records[-1], output=b"lies")]

        m.workers[0].tamper_batch = lie_about_the_last
        handles = await m.gamer.submit_many([("reverse", b"t-%d" % i, None) for i in range(6)])
        outcomes: list[bytes | str] = []
        for h in handles:
            try:
                outcomes.append(await h.result())
            except VerificationError:
                outcomes.append("rejected")
        assert m.workers[0].stats.batches_signed == 1
        assert outcomes.count("rejected") == 1  # only the tampered one
        assert [o for o in outcomes if o != "rejected"] == [
            (b"t-%d" % i)[::-1] for i in range(6) if outcomes[i] != "rejected"
        ]
        assert m.gamer.stats.verification_failures == 1


async def test_batch_signing_can_be_turned_off(autojump_clock: trio.abc.Clock) -> None:
    net = MemoryNetwork(5, link=LinkModel(delay_s=DELAY))
    async with net.open_host() as wh, net.open_host() as gh, trio.open_nursery() as nursery:
        worker = Worker(wh, wh.identity, REGISTRY, WorkerConfig(concurrency=2, batch_sign=False))
        await nursery.start(worker.run)
        async with GamerClient.connect(host=gh, config=RAW, registry=REGISTRY) as gamer:
            await gamer.add_worker(wh.listen_addrs()[0])
            assert await gamer.map("reverse", [b"o-%d" % i for i in range(8)]) == [
                (b"o-%d" % i)[::-1] for i in range(8)
            ]
        assert worker.stats.signatures == 8 and worker.stats.batches_signed == 0
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- Prometheus metrics


def exposed(text: bytes) -> dict[tuple[str, str], float]:
    """(metric sample name, outcome label) -> value, read back from the exposition text."""
    from nodes.metrics import parse_prometheus

    return {
        (name, labels["outcome"]): value
        for name, labels, value in parse_prometheus(text.decode())
        if "outcome" in labels and name.endswith("_total")
    }


async def test_cache_hedge_and_batch_counters_are_exported(autojump_clock: trio.abc.Clock) -> None:
    cfg = replace(RAW, hedge_fraction=0.0, hedge_burst=2.0)
    async with open_mesh(2, config=cfg, hold={0: Hold(slow_if_tagged)}) as m:
        m.gamer.set_placement(prefer(m.peer(0)))
        await train(m)  # 10 distinct inputs: 10 cache misses
        handles = await m.gamer.submit_many([("reverse", b"slow-%d" % i, None) for i in range(6)])
        for h in handles:
            await h.result()
        assert await m.gamer.run("reverse", b"train-0") == b"0-niart"  # a hit
        (key,) = [k for k, e in m.gamer.cache._entries.items() if e.output == b"1-niart"]
        m.gamer.cache._entries[key] = replace(m.gamer.cache._entries[key], output=b"forged")
        assert await m.gamer.run("reverse", b"train-1") == b"1-niart"  # refused, then the network
        m.gamer.set_placement(None)
        batch = await m.gamer.submit_many([("reverse", b"b-%d" % i, None) for i in range(12)])
        for h in batch:
            await h.result()

        g = exposed(m.gamer.metrics.render())
        st = m.gamer.stats
        assert g[("p2c2r_hedges_total", "sent")] == st.hedges == 2
        assert g[("p2c2r_hedges_total", "denied")] == st.hedges_denied == 4
        assert g[("p2c2r_hedges_total", "won")] == st.hedges_won == 2
        assert g[("p2c2r_result_cache_total", "hit")] == st.cache_hits == 1
        assert g[("p2c2r_result_cache_total", "refused")] == 1
        assert g[("p2c2r_result_cache_total", "miss")] == 10 + 6 + 12
        signed = [exposed(w.metrics.render()) for w in m.workers]
        frames = sum(s.get(("p2c2r_batch_signature_frames_total", "signed"), 0) for s in signed)
        results = sum(s.get(("p2c2r_batch_signature_results_total", "signed"), 0) for s in signed)
        assert frames == sum(w.stats.batches_signed for w in m.workers) >= 1
        assert g[("p2c2r_batch_signature_frames_total", "verified")] == frames
        assert g[("p2c2r_batch_signature_results_total", "verified")] == results >= 2
        assert g.get(("p2c2r_batch_signature_frames_total", "rejected"), 0) == 0
