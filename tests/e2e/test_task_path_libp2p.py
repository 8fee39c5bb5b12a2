"""The task path on real py-libp2p over loopback, with workers in separate processes.

Worker nodes are started as ``python -m nodes.cli node run`` processes (the ``listening on``
line of their stdout gives the address); a fixture always kills and reaps them, even when a
test fails. Hostile peers (a tampering worker, a raw-frame sender, a plaintext-only host)
run inside the test process on py-libp2p. Every wait is bounded with ``trio.fail_after``
so a bug shows up as a failure, never as a hung run. No timing is asserted: this is real
time on a shared machine.
"""

from __future__ import annotations

import os
import queue
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np
import pytest
import trio

from mesh import wire
from mesh.errors import (
    CancelledTaskError,
    ConnectionLostError,
    P2C2RError,
    TaskTimeoutError,
    UnknownKindError,
    ValidationError,
    VerificationError,
)
from mesh.identity import Identity, peer_id_from_str
from mesh.libp2p_host import Libp2pStream, open_host
from nodes.gamer import GamerClient, GamerConfig, SyncGamerClient
from nodes.verification import VerificationConfig
from nodes.worker import Worker, WorkerConfig
from tasks.registry import default_registry

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
REGISTRY = default_registry()


@dataclass
class NodeProcess:
    name: str
    key_file: Path
    proc: subprocess.Popen[str]
    addr: str = ""
    lines: list[str] = field(default_factory=list)

    @property
    def peer_id(self) -> str:
        return self.addr.rsplit("/p2p/", 1)[1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class NodeFactory:
    """Starts worker node processes; ``close`` kills and reaps every one of them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.nodes: list[NodeProcess] = []

    def start(self, *names: str, key_files: dict[str, Path] | None = None) -> list[NodeProcess]:
        started = []
        for name in names:  # spawn all first: they start up in parallel
            home = self.tmp / name
            home.mkdir(exist_ok=True)
            key = (key_files or {}).get(name, home / "node.key")
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "nodes.cli",
                    "node",
                    "run",
                    "--listen",
                    "/ip4/127.0.0.1/tcp/0",
                    "--key-file",
                    str(key),
                    "--concurrency",
                    "2",
                ],
                cwd=REPO,
                env={**os.environ, "P2C2R_HOME": str(home), "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=(home / "stderr.log").open("w"),
                text=True,
            )
            node = NodeProcess(name, key, proc)
            self.nodes.append(node)
            started.append(node)
        for node in started:
            self._await_listening(node)
        return started

    def _await_listening(self, node: NodeProcess) -> None:
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:  # keeps draining stdout so the node never blocks on a full pipe
            assert node.proc.stdout is not None
            for line in node.proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"node {node.name} printed no address in {START_TIMEOUT_S:g} s"
                ) from None
            if line is None:
                err = (self.tmp / node.name / "stderr.log").read_text()[-2000:]
                raise AssertionError(f"node {node.name} exited ({node.proc.poll()}): {err}")
            node.lines.append(line)
            if line.startswith("listening on "):
                node.addr = line.removeprefix("listening on ").strip()
                return

    def close(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nodes")


@pytest.fixture(scope="module")
def workers(module_tmp: Path) -> Iterator[list[NodeProcess]]:
    factory = NodeFactory(module_tmp)
    try:
        yield factory.start("w1", "w2")
    finally:
        factory.close()


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[NodeFactory]:
    factory = NodeFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


def example(kind: str, size: str = "small", seed: int = 0) -> tuple[dict[str, object], bytes]:
    spec = REGISTRY.get(kind)
    assert spec.example is not None
    return spec.example(np.random.default_rng(seed), size)


def peer_bytes(node: NodeProcess) -> bytes:
    return peer_id_from_str(node.peer_id)


def check_output(kind: str, params: dict[str, object], data: bytes, out: bytes) -> None:
    """The output a worker returned agrees with running the kernel here."""
    spec = REGISTRY.get(kind)
    norm = spec.validate_params(params, len(data))
    assert spec.equivalent(norm, out, spec.execute(norm, data)), kind


# ---------------------------------------------------------------- submit, batch, pipeline


async def test_real_kernels_return_verified_results(workers: list[NodeProcess]) -> None:
    with trio.fail_after(60):
        async with GamerClient.connect([w.addr for w in workers]) as gamer:
            assert await gamer.run("echo", b"hello mesh") == b"hello mesh"

            params, data = example("raytrace")
            handle = await gamer.submit("raytrace", data, params)
            check_output("raytrace", params, data, await handle.result())
            assert handle.worker in {peer_bytes(w) for w in workers}

            params, data = example("upscale")
            out = await gamer.run("upscale", data, params, deadline=30)
            up = REGISTRY.get("upscale")
            assert up.self_check(up.validate_params(params, len(data)), data, out)

            with pytest.raises(UnknownKindError):
                await gamer.run("format_disk", b"")
            with pytest.raises(ValidationError):
                await gamer.run("raytrace", data, {"spp": -1})
            assert gamer.stats.verification_failures == 0


async def test_submit_many_batch_of_mixed_kinds(workers: list[NodeProcess]) -> None:
    items = []
    for i in range(12):
        kind = ["echo", "pathfind", "physics_step"][i % 3]
        params, data = example(kind, seed=i)
        items.append((kind, data, params))
    with trio.fail_after(60):
        # Raw transport (no redundancy): the batch is spread over both workers.
        async with GamerClient.connect(
            [w.addr for w in workers], verification=VerificationConfig.off()
        ) as gamer:
            handles = await gamer.submit_many(items)
            outs = [await h.result() for h in handles]
    for (kind, data, params), out in zip(items, outs, strict=True):
        check_output(kind, params, data, out)
    assert {h.worker for h in handles} == {peer_bytes(w) for w in workers}


async def test_a_thousand_pipelined_echo_tasks(workers: list[NodeProcess]) -> None:
    inputs = [b"pipelined-%05d" % i for i in range(1000)]
    with trio.fail_after(60):
        async with GamerClient.connect([w.addr for w in workers]) as gamer:
            handles = [await gamer.submit("echo", d, deadline=50) for d in inputs]
            assert [await h.result() for h in handles] == inputs
            assert gamer.stats.verified == 1000 and gamer.stats.failed == 0
            assert gamer.stats.resubmitted == 0


async def test_payloads_up_to_40_mib_arrive_intact_and_zstd_travels(workers: list[NodeProcess]) -> None:
    big = os.urandom(40 * 1024 * 1024)  # incompressible: travels raw, 40 frames of 1 MiB writes
    squeezable = bytes(range(256)) * (16 * 1024)  # 4 MiB that travels as zstd both ways
    assert wire.compress_payload(squeezable)[1] == wire.ENC_ZSTD
    with trio.fail_after(90):
        async with GamerClient.connect([workers[0].addr]) as gamer:
            out = await gamer.run("echo", big, deadline=80)
            assert len(out) == len(big) and wire.digest(out) == wire.digest(big)
            assert await gamer.run("echo", squeezable, deadline=30) == squeezable


# ---------------------------------------------------------------- deadlines and dying workers


async def test_deadline_expiry_and_cancel_raise_typed_errors(workers: list[NodeProcess]) -> None:
    params, data = example("raytrace", "large")
    with trio.fail_after(30):
        async with GamerClient.connect([workers[0].addr]) as gamer:
            handle = await gamer.submit("raytrace", data, params, deadline=0.05)
            with pytest.raises(TaskTimeoutError):
                await handle.result()
            assert gamer.stats.timeouts == 1
            cancelled = await gamer.submit("echo", b"never mind")
            assert cancelled.cancel()
            with pytest.raises(CancelledTaskError):
                await cancelled.result()
            # The worker is still healthy for the next task.
            assert await gamer.run("echo", b"after the timeout") == b"after the timeout"


async def test_a_worker_killed_mid_task_loses_nothing(
    workers: list[NodeProcess], node_factory: NodeFactory
) -> None:
    (victim,) = node_factory.start("victim")
    items = []
    for i in range(4):
        params, data = example("physics_step", "medium", seed=i)
        items.append(("physics_step", data, params))
    with trio.fail_after(90):
        # Raw transport: each task on one worker, so the kill forces resubmissions.
        # (Failover under the default policy: tests/integration/test_trust_sdk.py.)
        raw = VerificationConfig.off()
        async with GamerClient.connect([victim.addr, workers[0].addr], verification=raw) as gamer:
            handles = await gamer.submit_many(items, deadline=60)
            await trio.sleep(0.2)  # the victim has started on its share
            victim.proc.send_signal(signal.SIGKILL)
            for h, (kind, data, params) in zip(handles, items, strict=True):
                try:
                    out = await h.result()
                except P2C2RError:
                    continue  # a typed error is allowed; a hang or a foreign exception is not
                check_output(kind, params, data, out)
            assert gamer.stats.resubmitted >= 1
            assert gamer.stats.verified == 4
            assert all(h.worker == peer_bytes(workers[0]) for h in handles)
    victim.stop()

    # Restarted on the same key file, the node comes back as the same peer.
    (again,) = node_factory.start("victim", key_files={"victim": victim.key_file})
    assert again.peer_id == victim.peer_id
    with trio.fail_after(30):
        async with GamerClient.connect([again.addr]) as gamer:
            assert await gamer.run("echo", b"back") == b"back"


# ---------------------------------------------------------------- hostile peers


async def test_forged_and_replayed_results_are_rejected(workers: list[NodeProcess]) -> None:
    ident = Identity.generate()
    replayed: list[tuple[bytes, bytes]] = []

    def forge(task: wire.TaskRecord, payload: bytes, sig: bytes) -> tuple[bytes, bytes]:
        if task.params.get("tag") == "replay":
            if not replayed:
                replayed.append((payload, sig))
            return replayed[0]
        return payload + b"!", sig

    with trio.fail_after(60):
        async with open_host(ident) as host, trio.open_nursery() as nursery:
            liar = Worker(host, ident, REGISTRY, WorkerConfig(concurrency=1))
            liar.tamper = forge
            await nursery.start(liar.run)
            async with GamerClient.connect([host.listen_addrs()[0]]) as gamer:
                with pytest.raises(VerificationError):
                    await gamer.run("echo", b"forged")
                # A bad signature on an authenticated stream bans its sender at once.
                assert gamer.stats.verification_failures == 1
                assert gamer.banned() == [ident.peer_id_bytes]
            # Fresh reputation, and no result cache: it would answer the repeat itself.
            async with GamerClient.connect(
                [host.listen_addrs()[0]], config=GamerConfig(cache_entries=0)
            ) as gamer:
                assert await gamer.run("echo", b"same", {"tag": "replay"}) == b"same"
                with pytest.raises(VerificationError):
                    await gamer.run("echo", b"same", {"tag": "replay"})
                assert gamer.stats.verification_failures >= 1  # a probe beside it may fail too
                # Honest process workers next to the liar still give verified results.
                for w in workers:
                    await gamer.add_worker(w.addr)
                handles = await gamer.submit_many([("echo", b"%d" % i, None) for i in range(9)])
                for i, h in enumerate(handles):
                    try:
                        assert await h.result() == b"%d" % i
                        assert h.worker != ident.peer_id_bytes
                    except VerificationError:
                        assert h.worker == ident.peer_id_bytes
            nursery.cancel_scope.cancel()


async def read_frame(stream: Libp2pStream, dec: wire.FrameDecoder) -> wire.Frame:
    while True:
        data = await stream.read()
        assert data, "stream ended before a frame arrived"
        bodies = list(dec.feed(data))
        if bodies:
            return wire.decode_frame(bodies[0])


async def test_malformed_frames_get_typed_errors_and_the_node_serves_on(workers: list[NodeProcess]) -> None:
    target = workers[1]
    with trio.fail_after(60):
        async with open_host(Identity.generate()) as host:
            peer = await host.connect(target.addr)
            stream = await host.open_stream(peer, wire.PROTOCOL_ID)
            dec = wire.FrameDecoder()

            await stream.write(b"\x00\x00\x00\x04\xc1\xc1\xc1\xc1")  # 0xc1 is never valid msgpack
            frame = await read_frame(stream, dec)
            assert frame.type == "E" and frame.error is not None and frame.error[0] == "protocol"

            body = msgpack.packb([99, "T", []])
            await stream.write(len(body).to_bytes(4, "big") + body)
            frame = await read_frame(stream, dec)
            assert frame.error is not None and frame.error[0] == "version"

            task = wire.TaskRecord(os.urandom(16), "echo", {}, b"same stream still works")
            await stream.write(wire.encode_tasks([task]))
            frame = await read_frame(stream, dec)
            assert frame.type == "R" and isinstance(frame.results[0], wire.ResultRecord)
            assert frame.results[0].output == b"same stream still works"

            await stream.write((wire.DEFAULT_MAX_FRAME + 1).to_bytes(4, "big"))
            frame = await read_frame(stream, dec)
            assert frame.error is not None and frame.error[0] == "frame_too_large"
            with pytest.raises(ConnectionLostError):  # then the stream is reset
                while await stream.read():
                    pass

        # A second client is served as if nothing happened.
        async with GamerClient.connect([target.addr]) as gamer:
            assert await gamer.run("echo", b"second client") == b"second client"


async def test_a_plaintext_only_peer_is_refused(workers: list[NodeProcess]) -> None:
    from libp2p import new_host
    from libp2p.custom_types import TProtocol
    from libp2p.network.config import ConnectionConfig
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
    from multiaddr import Multiaddr

    def plaintext_host(ident: Identity, plaintext_only: bool) -> object:
        kp = ident.libp2p_keypair()
        sec = {TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(kp)} if plaintext_only else None
        return new_host(
            key_pair=kp, sec_opt=sec, connection_config=ConnectionConfig(max_connections_per_peer=1)
        )

    listen = [Multiaddr("/ip4/127.0.0.1/tcp/0")]
    plain = plaintext_host(Identity.generate(), True)
    lax = plaintext_host(Identity.generate(), False)  # py-libp2p's defaults accept plaintext
    with trio.fail_after(60):
        async with plain.run(listen_addrs=listen), lax.run(listen_addrs=listen):  # type: ignore[attr-defined]
            with pytest.raises(Exception):  # noqa: B017  (whatever py-libp2p raises: it must not connect)
                await plain.connect(info_from_p2p_addr(Multiaddr(workers[0].addr)))  # type: ignore[attr-defined]
            assert plain.get_network().connections.get(  # type: ignore[attr-defined]
                info_from_p2p_addr(Multiaddr(workers[0].addr)).peer_id
            ) in (None, [])
            # Control: the same plaintext-only host does connect to a host that allows
            # plaintext, so the refusal above is our node's Noise-only policy at work.
            lax_addr = f"{lax.get_addrs()[0]}"  # type: ignore[attr-defined]
            if "/p2p/" not in lax_addr:
                lax_addr += f"/p2p/{lax.get_id().to_base58()}"  # type: ignore[attr-defined]
            await plain.connect(info_from_p2p_addr(Multiaddr(lax_addr)))  # type: ignore[attr-defined]


# ---------------------------------------------------------------- CLI identity and the sync facade


def test_p2c2r_id_is_stable_and_matches_the_running_node(workers: list[NodeProcess], tmp_path: Path) -> None:
    def p2c2r_id(key: Path) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "nodes.cli", "id", "--key-file", str(key)],
            cwd=REPO,
            env={**os.environ, "P2C2R_HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return out.stdout.strip()

    fresh = tmp_path / "fresh.key"
    first = p2c2r_id(fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    assert p2c2r_id(fresh) == first and first.startswith("12D3KooW")
    # The key file of a running node gives that node's peer id.
    assert p2c2r_id(workers[0].key_file) == workers[0].peer_id
    assert stat.S_IMODE(workers[0].key_file.stat().st_mode) == 0o600


def test_sync_client_from_plain_python(workers: list[NodeProcess]) -> None:
    with SyncGamerClient([w.addr for w in workers]) as gamer:
        assert gamer.run("echo", b"no trio here", deadline=30) == b"no trio here"
        futures = [gamer.submit("echo", b"%d" % i, deadline=30) for i in range(20)]
        assert [f.result(timeout=60) for f in futures] == [b"%d" % i for i in range(20)]
        assert gamer.map("echo", [b"a", b"b"], deadline=30) == [b"a", b"b"]
        with pytest.raises(UnknownKindError):
            gamer.run("nope", b"", deadline=30)
        with pytest.raises(TaskTimeoutError):
            params, data = example("raytrace", "large")
            gamer.run("raytrace", data, params, deadline=0.05)
        assert gamer.stats.verified == 23
    late = gamer.submit("echo", b"after close")
    with pytest.raises(P2C2RError):
        late.result(timeout=10)
