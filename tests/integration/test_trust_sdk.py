"""The verification policy inside the SDK, over the in-memory backend in virtual time.

Workers run real ``Worker`` shells with ``nodes.misbehave`` behaviours; the gamer runs its
default policy (``VerificationConfig()``) unless a test says otherwise. ``reverse`` has no
self-check, so a wrong answer to it is plausible: only probes, redundancy and re-runs can
catch it (the hard case). Every assertion is about outcomes: what resolved, who is
banned, which typed error arrived.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace

import pytest
import trio

from mesh.errors import P2C2RError
from mesh.memory import LinkModel, MemoryHost, MemoryNetwork
from nodes.evidence import EvidenceBus
from nodes.gamer import GamerClient, GamerConfig
from nodes.misbehave import install
from nodes.verification import VerificationConfig, VerificationTimeoutError
from nodes.worker import Worker, WorkerConfig
from tasks.kernels.echo import ECHO
from tasks.registry import ParamSpec, Registry, TaskKind

REVERSE = TaskKind(
    name="reverse",
    description="test-only: reverses its input; no self-check, so wrong answers look plausible",
    params={"tag": ParamSpec(str, default="")},
    execute=lambda params, data: data[::-1],
    cost=lambda params, n: 1.0,
    inline=True,
)
REGISTRY = Registry([ECHO, REVERSE])


@dataclass
class Mesh:
    net: MemoryNetwork
    workers: list[Worker]
    hosts: list[MemoryHost]
    gamer: GamerClient
    nursery: trio.Nursery

    def peer(self, i: int) -> bytes:
        return self.hosts[i].peer_id


@asynccontextmanager
async def open_mesh(
    n: int,
    misbehave: dict[int, str] | None = None,
    *,
    config: GamerConfig = GamerConfig(seed=3),
    bus: EvidenceBus | None = None,
) -> AsyncIterator[Mesh]:
    net = MemoryNetwork(11, link=LinkModel(delay_s=0.01))
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)
        workers, hosts = [], []
        for i in range(n):
            host = await stack.enter_async_context(net.open_host())
            w = Worker(host, host.identity, REGISTRY, WorkerConfig(concurrency=2))
            if misbehave and i in misbehave:
                install(w, misbehave[i])
            await nursery.start(w.run)
            workers.append(w)
            hosts.append(host)
        gh = await stack.enter_async_context(net.open_host())
        gamer = await stack.enter_async_context(
            GamerClient.connect(host=gh, config=config, registry=REGISTRY, evidence_bus=bus)
        )
        # Anchor trust first: answers the gamer computed itself, as a game would at start.
        for k in range(8):
            data = b"anchor-%d" % k
            gamer.add_known_answer("reverse", {}, data, data[::-1])
        for h in hosts:
            await gamer.add_worker(h.listen_addrs()[0])
        yield Mesh(net, workers, hosts, gamer, nursery)


async def eventually(pred: Callable[[], bool], within_s: float = 30.0) -> None:
    """Poll ``pred`` in virtual time (evidence travels on its own streams, in the background)."""
    for _ in range(int(within_s / 0.1)):
        if pred():
            return
        await trio.sleep(0.1)
    raise AssertionError("condition not reached in time")


def inputs(n: int, tag: str = "t") -> list[bytes]:
    return [b"%s-%05d" % (tag.encode(), i) for i in range(n)]


async def run_paced(
    gamer: GamerClient, data: list[bytes], in_flight: int = 4, gap_s: float = 0.0
) -> list[bytes | P2C2RError]:
    """Submit with a bounded number in flight, task ``i`` no earlier than ``i * gap_s``
    (a game submits per frame, not all at once)."""
    out: list[bytes | P2C2RError] = [b""] * len(data)
    limit = trio.Semaphore(in_flight)
    t0 = trio.current_time()

    async def one(i: int) -> None:
        await trio.sleep_until(t0 + i * gap_s)
        async with limit:
            try:
                out[i] = await gamer.run("reverse", data[i], deadline=20)
            except P2C2RError as exc:
                out[i] = exc

    async with trio.open_nursery() as n:
        for i in range(len(data)):
            n.start_soon(one, i)
    return out


@pytest.mark.parametrize("mode", ["wrong", "wrong:after=5"])
async def test_wrong_answers_are_caught_banned_and_the_evidence_travels(
    autojump_clock: trio.abc.Clock, mode: str
) -> None:
    async with open_mesh(4, {0: mode}) as m:
        data = inputs(60)
        out = await run_paced(m.gamer, data)
        wrong = sum(1 for d, o in zip(data, out, strict=True) if isinstance(o, bytes) and o != d[::-1])
        errors = [o for o in out if not isinstance(o, bytes)]
        assert errors == [] and wrong <= 1  # the sleeper may slip one unduplicated answer through
        assert m.gamer.banned() == [m.peer(0)]
        (ev, *_) = m.gamer.evidence()
        assert ev.accused == m.peer(0) and ev.reporter == m.gamer.host.peer_id
        # The honest worker nodes got the evidence, checked it themselves and banned.
        await eventually(
            lambda: all(w.reputation.is_banned(m.peer(0), trio.current_time()) for w in m.workers[1:])
        )
        assert m.gamer.stats.evidence_shared >= 3
        assert not any(
            w.reputation.is_banned(m.peer(i), trio.current_time()) for i in (1, 2, 3) for w in m.workers
        )


@pytest.mark.parametrize("mode", ["forge", "replay"])
async def test_forged_and_replayed_results_are_never_accepted(
    autojump_clock: trio.abc.Clock, mode: str
) -> None:
    async with open_mesh(3, {0: mode}) as m:
        data = inputs(30)
        out = await run_paced(m.gamer, data)
        assert out == [d[::-1] for d in data]
        assert m.gamer.banned() == [m.peer(0)]
        assert m.gamer.stats.verification_failures >= 1
        assert m.gamer.evidence() == []  # a bad signature proves nothing to third parties


# delay=2: answers after every hedge yet well within the budget; once its own pace was
# learned such a worker was never struck again (the adversarial run's "slow" mode).
@pytest.mark.parametrize("mode", ["drop", "slow:delay=8", "slow:delay=2"])
async def test_silent_and_slow_workers_are_hedged_then_banned(
    autojump_clock: trio.abc.Clock, mode: str
) -> None:
    async with open_mesh(3, {0: mode}) as m:
        data = inputs(200)
        out = await run_paced(m.gamer, data, gap_s=0.05)  # 10 s of play at 20 tasks/s
        assert out == [d[::-1] for d in data]
        # Banned after sustained silence (strikes at least strike_interval_s apart).
        assert m.gamer.banned() == [m.peer(0)]
        assert m.gamer.verification_stats.hedges >= 5


async def test_a_single_worker_is_enough_at_lower_assurance(autojump_clock: trio.abc.Clock) -> None:
    async with open_mesh(1) as m:
        data = inputs(10)
        assert await run_paced(m.gamer, data) == [d[::-1] for d in data]
        assert m.gamer.stats.unconfirmed >= 1 and m.gamer.banned() == []


async def test_off_sends_one_copy_per_task(autojump_clock: trio.abc.Clock) -> None:
    # Hedging off too: it sends second copies of slow tasks, by design.
    cfg = GamerConfig(seed=3, verification=VerificationConfig.off(), hedge=False)
    async with open_mesh(3, config=cfg) as m:
        data = inputs(30)
        assert await run_paced(m.gamer, data) == [d[::-1] for d in data]
        assert sum(w.stats.received for w in m.workers) == 30
        assert m.gamer.stats.duplicates == 0 and m.gamer.stats.probes == 0


async def test_a_confirmation_that_misses_the_deadline_is_a_verification_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    always = GamerConfig(seed=3, verification=VerificationConfig(dup_floor=1.0, probe_floor=0, probe_max=0))
    async with open_mesh(2, {1: "slow:delay=100"}, config=always) as m:
        m.gamer.set_placement(lambda kind, cands: m.peer(0))  # the control plane's hook still decides
        t0 = trio.current_time()
        with pytest.raises(VerificationTimeoutError):
            await m.gamer.run("reverse", b"abc", deadline=0.9)  # too short to hedge
        assert trio.current_time() - t0 == pytest.approx(0.9)


async def test_the_lost_partner_of_a_duplicated_task_is_replaced(autojump_clock: trio.abc.Clock) -> None:
    async with open_mesh(3) as m:
        handles = await m.gamer.submit_many([("reverse", d, None) for d in inputs(12)])
        await trio.sleep(0.005)  # on the wire
        m.hosts[0].crash()
        assert [await h.result() for h in handles] == [d[::-1] for d in inputs(12)]
        assert m.gamer.stats.resubmitted >= 1 and m.gamer.workers() == [m.peer(1), m.peer(2)]


async def test_evidence_on_the_bus_is_verified_by_other_gamers(autojump_clock: trio.abc.Clock) -> None:
    bus = EvidenceBus()
    async with open_mesh(3, {0: "wrong"}, bus=bus) as m:
        async with _second(m, bus) as other:
            assert other.banned() == []
            await run_paced(m.gamer, inputs(30))
            assert m.peer(0) in m.gamer.banned()
            await eventually(lambda: m.peer(0) in other.banned())
            assert bus.published >= 1


@asynccontextmanager
async def _second(m: Mesh, bus: EvidenceBus) -> AsyncIterator[GamerClient]:
    async with (
        m.net.open_host() as gh,
        GamerClient.connect(
            host=gh, config=GamerConfig(seed=4), registry=REGISTRY, evidence_bus=bus
        ) as other,
    ):
        yield other


def test_config_replace_keeps_the_policy() -> None:
    cfg = replace(GamerConfig(), max_attempts=5)
    assert cfg.verification == VerificationConfig() and cfg.verification.enabled


async def test_a_node_refuses_evidence_that_proves_nothing(autojump_clock: trio.abc.Clock) -> None:
    async with open_mesh(2) as m:
        # Evidence accusing an honest worker of a right answer: signatures fine, claim false.
        honest = m.workers[1]
        data = b"framed"
        wid = b"\x07" * 16
        from mesh import wire
        from nodes.evidence import send_evidence
        from nodes.reputation import SignedResult, make_evidence
        from tasks.receipt import receipt_digest

        out = data[::-1]
        d = receipt_digest(
            wid, "reverse", wire.params_digest({}), wire.digest(data), wire.digest(out), m.peer(1), 1
        )
        sig = honest.identity.sign(d)
        ev = make_evidence(
            kind="reverse",
            params={},
            data=data,
            bad=SignedResult(wid, m.peer(1), wire.digest(out), 1, sig, out),
            reason="mismatch",
        )
        ok, code = await send_evidence(m.gamer.host, m.peer(0), ev)
        assert (ok, code) == (False, "invalid_evidence")
        assert not m.workers[0].reputation.is_banned(m.peer(1), trio.current_time())
        assert m.workers[0].evidence.stats.refused == 1
        # Not even msgpack: a typed refusal, and the node keeps serving.
        stream = await m.gamer.host.open_stream(m.peer(0), "/p2c2r/evidence/1.0.0")
        await stream.write(b"\x00\x00\x00\x03abc")
        await stream.close()
        assert await m.gamer.run("reverse", b"still fine") == b"enif llits"
