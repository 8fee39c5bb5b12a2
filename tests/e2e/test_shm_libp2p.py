"""The same-host shared-memory path between real processes on real py-libp2p (loopback).

Worker nodes are ``p2c2r node run`` processes (``nodes.demo.start_worker``), always
stopped and reaped in ``finally``; the gamer runs in the test process. Every test checks
that neither the gamer nor any worker it started leaves a segment in ``/dev/shm``. No
timing is asserted: this is real time on a shared machine; waits are bounded by
``trio.fail_after``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
import trio

from mesh.errors import P2C2RError, TaskTimeoutError
from nodes import shm
from nodes.demo import WorkerProcess, _drain, start_worker, stop_workers
from nodes.gamer import GamerClient, GamerConfig
from nodes.verification import VerificationConfig
from tasks.registry import default_registry
from tests.integration.control_cluster import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not shm.SHM_DIR.is_dir(), reason="needs Linux /dev/shm")]

MIB = 1 << 20
RAW = GamerConfig(verification=VerificationConfig.off(), cache_entries=0, hedge=False)


def segments_of(pids: list[int]) -> list[str]:
    prefixes = tuple(f"{shm.PREFIX}{pid}_" for pid in pids)
    return sorted(n for n in os.listdir(shm.SHM_DIR) if n.startswith(prefixes))


@asynccontextmanager
async def workers(
    tmp: Path, n: int = 1, extra: list[str] | None = None
) -> AsyncIterator[list[WorkerProcess]]:
    procs: list[WorkerProcess] = []
    left: list[str] = []
    try:
        with trio.fail_after(90):
            for i in range(n):
                procs.append(await start_worker(tmp / f"w{i}.key", tmp / f"w{i}", 1, extra))
        async with trio.open_nursery() as nursery:
            for p in procs:
                nursery.start_soon(_drain, p.proc)
            yield procs
            nursery.cancel_scope.cancel()
    finally:
        await stop_workers(procs)
        left = segments_of([os.getpid(), *(p.proc.pid for p in procs)])
        for name in left:
            shm.unlink(name)
    assert left == [], f"segments left behind: {left}"


async def test_the_shared_memory_path_gives_the_stream_s_verified_results(tmp_path: Path) -> None:
    spec = default_registry().get("upscale")
    assert spec.example is not None
    params, frame = spec.example(np.random.default_rng(1), "large")  # 720p JPEG in, 1440p out
    blob = os.urandom(MIB)
    results: dict[bool, list[bytes]] = {}
    async with workers(tmp_path) as [w]:
        for on in (True, False):
            conf = GamerConfig(
                verification=VerificationConfig.off(), cache_entries=0, shm=on, shm_min_bytes=64 * 1024
            )
            with trio.fail_after(120):
                async with GamerClient.connect([w.addr], config=conf) as gamer:
                    first = await gamer.run("echo", blob)  # opens the path; travels on the stream
                    outs = [first, await gamer.run("echo", blob)]
                    outs.append(await gamer.run("upscale", frame, params, deadline=60))
                    results[on] = outs
                    peer = gamer.workers()[0]
                    assert gamer.same_host(peer) is on
                    assert gamer.stats.verified == 3 and gamer.stats.verification_failures == 0
                    if on:
                        assert gamer.stats.shm_out >= 2 and gamer.stats.shm_in >= 2  # both ways
                    else:
                        assert gamer.stats.shm_out == gamer.stats.shm_in == 0
                    assert segments_of([os.getpid(), w.proc.pid]) == []
    assert results[True][:2] == [blob, blob]
    assert results[True] == results[False]


async def test_a_timed_out_copy_and_a_killed_worker_leave_no_segment(tmp_path: Path) -> None:
    blob = os.urandom(MIB)
    async with workers(tmp_path, extra=["--misbehave", "slow:after=2:delay=3"]) as [w]:
        pids = [os.getpid(), w.proc.pid]
        with trio.fail_after(120):
            async with GamerClient.connect([w.addr], config=RAW) as gamer:
                await gamer.run("echo", blob, deadline=30)
                await gamer.run("echo", blob, deadline=30)
                assert gamer.same_host(gamer.workers()[0])
                with pytest.raises(TaskTimeoutError):
                    await gamer.run("echo", blob, deadline=0.5)  # the worker answers 3 s late
                # The late output comes in a segment nobody waits for: unlinked on arrival.
                await wait_for(lambda: gamer.stats.late_dropped == 1)
                await wait_for(lambda: segments_of(pids) == [])

                handle = await gamer.submit("echo", blob, deadline=8)
                await trio.sleep(1.0)  # the worker holds the task (and read its input)
                w.proc.send_signal(signal.SIGKILL)
                with pytest.raises(P2C2RError):
                    await handle.result()
                await wait_for(lambda: segments_of(pids) == [])


def _can_unshare() -> bool:
    try:
        probe = subprocess.run(
            ["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /dev/shm"], capture_output=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs unshare -m (root) to give a worker its own /dev/shm")
async def test_a_worker_that_does_not_share_dev_shm_gets_the_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker in its own mount namespace, with a private /dev/shm, on the same loopback:
    what another host looks like to the hello. Everything still works, on the stream."""
    wrapper = tmp_path / "python-own-shm"
    wrapper.write_text(
        "#!/bin/sh\n"
        'exec unshare -m sh -c \'mount -t tmpfs -o size=64m tmpfs /dev/shm && exec "$0" "$@"\' '
        f'{sys.executable} "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(wrapper))  # start_worker launches sys.executable
    blob = os.urandom(MIB)
    async with workers(tmp_path) as [w]:
        monkeypatch.undo()
        with trio.fail_after(120):
            async with GamerClient.connect([w.addr], config=RAW) as gamer:
                assert [await gamer.run("echo", blob) for _ in range(3)] == [blob] * 3
                assert not gamer.same_host(gamer.workers()[0])
                assert gamer.stats.shm_out == gamer.stats.shm_in == 0
                text = gamer.metrics.render().decode()
                assert 'p2c2r_shm_fallbacks_total{reason="not_same_host"} 1.0' in text


async def test_shared_memory_can_be_refused_by_the_worker_flag(tmp_path: Path) -> None:
    blob = os.urandom(MIB)
    async with workers(tmp_path, extra=["--no-shm"]) as [w]:
        with trio.fail_after(120):
            async with GamerClient.connect([w.addr], config=RAW) as gamer:
                assert [await gamer.run("echo", blob) for _ in range(2)] == [blob] * 2
                assert not gamer.same_host(gamer.workers()[0]) and gamer.stats.shm_in == 0
