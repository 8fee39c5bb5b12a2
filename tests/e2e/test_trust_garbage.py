"""Garbage on a real node's TCP port, before and during the handshake (py-libp2p, loopback).

A worker node (py-libp2p host: TCP, Noise, yamux, plus ``Worker``) runs in this process;
raw sockets throw bytes at its port: random noise, a valid multistream header followed by
noise, an absurd length prefix, a silent connection that never speaks, a burst of short
ones. After each, an honest gamer must still get verified results, and the node's nursery
must not have died (any crash would fail the test through trio). Every wait is bounded.
"""

from __future__ import annotations

import os
import socket

import pytest
import trio

from mesh.identity import Identity
from mesh.libp2p_host import open_host
from nodes.gamer import GamerClient
from nodes.worker import Worker, WorkerConfig
from tasks.registry import default_registry

pytestmark = pytest.mark.slow

MULTISTREAM = b"\x13/multistream/1.0.0\n"
NOISE = b"\x0d/noise/1.0.0\n"  # wrong length prefix on purpose: the id is 9 bytes


def _port(addr: str) -> int:
    parts = addr.split("/")
    return int(parts[parts.index("tcp") + 1])


async def _throw(port: int, payload: bytes, hold_s: float = 0.0) -> None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        await sock.connect(("127.0.0.1", port))
        try:
            if payload:
                await sock.send(payload)
            with trio.move_on_after(hold_s):
                while await sock.recv(4096):
                    pass
        except OSError:
            pass  # the node hung up on us: exactly what it should do


async def test_garbage_before_and_during_the_handshake_does_not_take_the_node_down() -> None:
    ident = Identity.generate()
    with trio.fail_after(90):
        async with open_host(ident) as host, trio.open_nursery() as nursery:
            worker = Worker(host, ident, default_registry(), WorkerConfig(concurrency=1))
            await nursery.start(worker.run)
            addr = host.listen_addrs()[0]
            port = _port(addr)
            async with GamerClient.connect([addr]) as gamer:
                assert await gamer.run("echo", b"before") == b"before"
            cases = [
                os.urandom(65536),  # noise before any handshake
                MULTISTREAM + os.urandom(4096),  # a valid header, then noise mid-negotiation
                MULTISTREAM + NOISE + os.urandom(1024),  # a malformed protocol proposal
                MULTISTREAM + b"\x0a/noise\n\xff\xff\xff\xff" + os.urandom(64),  # then an absurd length
                b"\xff" * 16,  # a varint that never ends
            ]
            for payload in cases:
                await _throw(port, payload, hold_s=0.5)
            async with trio.open_nursery() as burst:  # a burst, and one that never speaks
                burst.start_soon(lambda: _throw(port, b"", hold_s=3.0))
                for _ in range(30):
                    burst.start_soon(_throw, port, os.urandom(512), 0.2)
                # Served while the silent connection is still open.
                async with GamerClient.connect([addr]) as gamer:
                    assert await gamer.run("echo", b"during", deadline=20) == b"during"
            async with GamerClient.connect([addr]) as gamer:
                outs = await gamer.map("echo", [b"%d" % i for i in range(20)], deadline=20)
                assert outs == [b"%d" % i for i in range(20)]
            assert worker.stats.completed >= 22
            nursery.cancel_scope.cancel()
