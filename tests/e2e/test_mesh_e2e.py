"""End to end: 12 real py-libp2p nodes in 12 processes on loopback, two regions.

Discovery from one bootstrap address, one coordinator per region, then the coordinator of
the gamer's region is killed (SIGKILL) while the gamer keeps submitting: a new coordinator
must take over within the bound and every submitted task must complete, none lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from mesh import control_wire as cw
from mesh.identity import load_or_create
from nodes.gamer import GamerClient
from nodes.mesh_client import fetch_status

pytestmark = pytest.mark.slow

REGIONS = ("eu", "us")
PER_REGION = 6
VOTERS = 3


@dataclass
class Proc:
    name: str
    region: str
    peer: str
    home: Path
    popen: subprocess.Popen[bytes]
    log: Path

    def addr(self) -> str | None:
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("listening on "):
                return line.split()[2]
        return None


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    peers: dict[str, list[str]] = {}
    homes: dict[str, Path] = {}
    for region in REGIONS:
        for i in range(PER_REGION):
            name = f"{region}{i}"
            home = tmp_path / name
            home.mkdir()
            ident = load_or_create(home / "node.key")
            peers.setdefault(region, []).append(ident.peer_id.to_base58())
            homes[name] = home
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def spawn(region: str, i: int, bootstrap: str | None) -> Proc:
        name = f"{region}{i}"
        home = homes[name]
        cmd = [
            sys.executable, "-m", "nodes.cli", "--log-level", "info", "node", "run",
            "--listen", "/ip4/127.0.0.1/tcp/0", "--key-file", str(home / "node.key"),
            "--region", region, "--concurrency", "1",
        ]  # fmt: skip
        for v in peers[region][:VOTERS]:
            cmd += ["--voter", v]
        if bootstrap:
            cmd += ["--bootstrap", bootstrap]
        log = home / "node.log"
        popen = subprocess.Popen(
            cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env={**env, "P2C2R_HOME": str(home)}
        )
        return Proc(name, region, peers[region][i], home, popen, log)

    try:
        first = spawn("eu", 0, None)
        procs.append(first)
        deadline = time.monotonic() + 30
        while first.addr() is None:
            assert first.popen.poll() is None, first.log.read_text()
            assert time.monotonic() < deadline, "bootstrap node did not start"
            time.sleep(0.1)
        boot = first.addr()
        for region in REGIONS:
            for i in range(PER_REGION):
                if (region, i) != ("eu", 0):
                    procs.append(spawn(region, i, boot))
        yield procs
    finally:
        for p in procs:
            if p.popen.poll() is None:
                p.popen.kill()
        for p in procs:
            try:
                p.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


async def _status(addr: str, host: object) -> cw.Snapshot | None:
    try:
        return await fetch_status(addr, host=host, timeout=2.0)  # type: ignore[arg-type]
    except Exception:
        return None


def _region(snap: cw.Snapshot, name: str) -> cw.RegionView | None:
    return next((r for r in snap.regions if r.region == name), None)


async def test_twelve_nodes_two_regions_failover_loses_nothing(cluster: list[Proc]) -> None:
    from mesh.identity import Identity
    from mesh.libp2p_host import open_host

    by_name = {p.name: p for p in cluster}
    async with open_host(Identity.generate()) as probe:
        # 1. everyone started; discovery from the single bootstrap address converges
        views: dict[str, cw.Snapshot | None] = {}

        def describe() -> str:
            return "\n".join(
                f"{n}: "
                + (
                    "no answer"
                    if s is None
                    else " ".join(
                        f"{r.region}:{len(r.members)}m,c={(r.coordinator or '-')[-6:]},e{r.epoch}"
                        for r in s.regions
                    )
                )
                for n, s in sorted(views.items())
            )

        async def ask_everyone() -> None:
            async def ask(p: Proc) -> None:
                views[p.name] = await _status(p.addr() or "", probe)

            async with trio.open_nursery() as sweep:
                for p in cluster:
                    sweep.start_soon(ask, p)

        t_start = trio.current_time()
        reached: dict[str, float] = {}
        with trio.move_on_after(150) as converge:
            while any(p.addr() is None for p in cluster):  # noqa: ASYNC110 - polling another process
                await trio.sleep(0.2)
            while True:
                await ask_everyone()
                stages = {
                    "answers": all(s is not None for s in views.values()),
                    "members": all(
                        s is not None
                        and (own := _region(s, by_name[n].region)) is not None
                        and len(own.members) == PER_REGION
                        for n, s in views.items()
                    ),
                    "coordinators": all(
                        s is not None
                        and (own := _region(s, by_name[n].region)) is not None
                        and own.coordinator is not None
                        for n, s in views.items()
                    ),
                    "regions": all(
                        s is not None and sorted(r.region for r in s.regions) == list(REGIONS)
                        for s in views.values()
                    ),
                }
                for stage, done in stages.items():
                    if done:
                        reached.setdefault(stage, round(trio.current_time() - t_start, 1))
                ok = all(stages.values())
                if ok:
                    break
                await trio.sleep(0.5)
        assert not converge.cancelled_caught, (
            f"no convergence in 150 s (stages reached: {reached}):\n" + describe()
        )
        converged_s = trio.current_time() - t_start
        # one coordinator per region, agreed by all its members. Views are sampled one by
        # one, so a member that has not yet heard the latest renew (same coordinator, newer
        # epoch) can lag for a moment: sample again until they agree (a few seconds at most).
        coords: dict[str, tuple[str | None, int]] = {}
        with trio.move_on_after(15):
            while True:
                for region in REGIONS:
                    seen = {
                        (_region(s, region).coordinator, _region(s, region).epoch)  # type: ignore[union-attr]
                        for n, s in views.items()
                        if s is not None and by_name[n].region == region and _region(s, region) is not None
                    }
                    if len(seen) == 1:
                        coords[region] = next(iter(seen))
                if len(coords) == len(REGIONS):
                    break
                coords.clear()
                await trio.sleep(0.5)
                await ask_everyone()
        assert len(coords) == len(REGIONS), "members disagree on their coordinator:\n" + describe()
        eu_coord, eu_epoch = coords["eu"]
        victim = next(p for p in cluster if p.peer == eu_coord)
        survivors = [p for p in cluster if p.region == "eu" and p is not victim]
        boot = next(p for p in cluster if p.name == "eu0")
        boot_addrs = [boot.addr() or ""] if boot is not victim else [survivors[0].addr() or ""]

        # 2. a gamer joins from one bootstrap address and keeps submitting
        async with GamerClient.connect(bootstrap=boot_addrs, region="eu") as gamer:
            assert gamer.mesh is not None and gamer.mesh.coordinator == eu_coord
            handles = []
            stop = trio.Event()

            async def submitter() -> None:
                i = 0
                while not stop.is_set():
                    handles.append(await gamer.submit("echo", b"task %d" % i, deadline=15.0))
                    i += 1
                    await trio.sleep(0.02)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(submitter)
                await trio.sleep(2.0)
                # 3. kill the coordinator of the gamer's region
                t_kill = trio.current_time()
                victim.popen.send_signal(signal.SIGKILL)
                took = None
                with trio.fail_after(15):
                    while took is None:
                        for p in survivors:
                            t_ask = trio.current_time()
                            snap = await _status(p.addr() or "", probe)
                            own = _region(snap, "eu") if snap else None
                            if own is not None and own.coordinator not in (None, eu_coord):
                                assert own.epoch > eu_epoch
                                took = (t_ask - own.age_s) - t_kill
                                break
                        await trio.sleep(0.05)
                await trio.sleep(3.0)
                stop.set()
            # 4. every task completed: none lost to the failover
            with trio.fail_after(30):
                outs = [await h.result() for h in handles]
            assert outs == [b"task %d" % i for i in range(len(handles))]
            assert len(handles) > 100
            print(
                f"mesh converged in {converged_s:.1f} s (first reached: {reached}); "
                f"failover took {took:.3f} s; {len(handles)} tasks, all verified; "
                f"resubmitted {gamer.stats.resubmitted}; coordinator changes seen by the gamer: "
                f"{gamer.mesh.stats.coordinator_changes}"
            )
        # A new coordinator took over (within fail_after's 15 s). How fast is a measurement,
        # printed above, not asserted: on 2 shared cores it moved from 1.2 s to 4.9 s with the
        # load of other jobs. The 2 s bound is asserted in virtual time by
        # tests/integration/test_control_election.py.
        assert took is not None and took > 0
        # survivors agree on one new coordinator
        final = {
            (_region(s, "eu").coordinator, _region(s, "eu").epoch)  # type: ignore[union-attr]
            for p in survivors
            if (s := await _status(p.addr() or "", probe)) is not None
        }
        assert len(final) == 1 and next(iter(final))[0] != eu_coord
