"""``mesh.libp2p_tuning`` on real py-libp2p hosts: wire-compatible with stock peers, large
messages intact both ways, and really applied when switched on (frames counted)."""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import pytest
import trio

from mesh.identity import Identity
from mesh.libp2p_host import HostConfig, Libp2pHost, open_host
from mesh.libp2p_tuning import ENV_VAR, tuning_from_env
from mesh.transport import Stream, write_chunked

PROTO = "/test/tuning-echo/1"
MIB = 1024 * 1024


def config(tuned: bool) -> HostConfig:
    return HostConfig(listen=("/ip4/127.0.0.1/tcp/0",), libp2p_tuning=tuned)


async def read_exact(stream: Stream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = await stream.read(min(n - len(buf), 256 * 1024))
        assert data, f"stream ended after {len(buf)} of {n} bytes"
        buf += data
    return bytes(buf)


async def echo(stream: Stream) -> None:
    """Length-prefixed echo: 8-byte size, then the bytes, sent back the same way."""
    while True:
        head = await stream.read(8)
        if not head:
            await stream.close()
            return
        head += await read_exact(stream, 8 - len(head))
        body = await read_exact(stream, int.from_bytes(head, "big"))
        await write_chunked(stream, head + body)


async def round_trip(stream: Stream, payload: bytes) -> None:
    head = len(payload).to_bytes(8, "big")
    async with trio.open_nursery() as nursery:
        # write and read at once: the echo starts answering before the last byte is in
        nursery.start_soon(write_chunked, stream, head + payload)
        back = await read_exact(stream, 8 + len(payload))
    assert back[:8] == head
    assert hashlib.sha256(back[8:]).digest() == hashlib.sha256(payload).digest()


def count_frames(host: Libp2pHost, peer: bytes) -> Counter[tuple[str, int]]:
    """Count the yamux frames ``host`` writes on its connection to ``peer``, by kind
    (``data``, ``window_update``: a plain one, no SYN/ACK/FIN/RST) and stream id."""
    counts: Counter[tuple[str, int]] = Counter()
    (muxed,) = host.muxed_connections(peer)
    write = muxed._write_frame

    async def counting(data: bytes) -> None:
        pos = 0
        while pos < len(data):  # a tuned write may carry several frames
            typ, flags = data[pos + 1], int.from_bytes(data[pos + 2 : pos + 4], "big")
            sid, length = (
                int.from_bytes(data[pos + 4 : pos + 8], "big"),
                int.from_bytes(data[pos + 8 : pos + 12], "big"),
            )
            kind = "data" if typ == 0 else "window_update" if typ == 1 and flags == 0 else f"{typ}/{flags}"
            counts[kind, sid] += 1
            pos += 12 + (length if typ == 0 else 0)
        await write(data)

    muxed._write_frame = counting
    return counts


@pytest.mark.parametrize("dialer_tuned", [True, False])
async def test_tuned_and_stock_hosts_move_8_mib_both_ways(dialer_tuned: bool) -> None:
    async with (
        open_host(Identity.generate(), config(dialer_tuned)) as dialer,
        open_host(Identity.generate(), config(not dialer_tuned)) as listener,
    ):
        dialer.set_stream_handler(PROTO, echo)
        listener.set_stream_handler(PROTO, echo)
        await dialer.connect(listener.listen_addrs()[0])
        assert dialer.tuned(listener.peer_id) is dialer_tuned
        assert listener.tuned(dialer.peer_id) is (not dialer_tuned)
        payload = random.Random(7).randbytes(8 * MIB)
        with trio.fail_after(120):
            for opener, other in ((dialer, listener), (listener, dialer)):
                stream = await opener.open_stream(other.peer_id, PROTO)
                await round_trip(stream, payload)  # 8 MiB there and 8 MiB back
                await round_trip(stream, b"x")
                await stream.close()


async def test_random_sizes_up_to_8_mib_intact_between_tuned_hosts() -> None:
    rng = random.Random(2024)
    sizes = [0, 1, 11, 65_507, 65_519, 65_520, 65_524, 65_536, 262_144, 262_145, MIB + 3]
    sizes += [rng.randrange(8 * MIB) for _ in range(4)] + [8 * MIB]
    async with (
        open_host(Identity.generate(), config(True)) as a,
        open_host(Identity.generate(), config(True)) as b,
    ):
        a.set_stream_handler(PROTO, echo)
        b.set_stream_handler(PROTO, echo)
        await a.connect(b.listen_addrs()[0])
        assert a.tuned(b.peer_id) and b.tuned(a.peer_id)
        with trio.fail_after(180):
            streams = [await a.open_stream(b.peer_id, PROTO), await b.open_stream(a.peer_id, PROTO)]
            for size in sizes:
                payload = rng.randbytes(size)
                async with trio.open_nursery() as nursery:  # both directions at once
                    for stream in streams:
                        nursery.start_soon(round_trip, stream, payload)
            for stream in streams:
                await stream.close()


async def window_updates_for_one_mib(tuned: bool) -> int:
    async with (
        open_host(Identity.generate(), config(tuned)) as sender,
        open_host(Identity.generate(), config(tuned)) as receiver,
    ):
        got = trio.Event()
        stream_ids: list[int] = []

        async def sink(stream: Stream) -> None:
            stream_ids.append(stream._s.muxed_stream.stream_id)  # type: ignore[attr-defined]
            await read_exact(stream, MIB)
            got.set()
            await stream.close()

        receiver.set_stream_handler(PROTO, sink)
        await sender.connect(receiver.listen_addrs()[0])
        assert receiver.tuned(sender.peer_id) is tuned
        counts = count_frames(receiver, sender.peer_id)
        with trio.fail_after(30):
            stream = await sender.open_stream(receiver.peer_id, PROTO)
            await write_chunked(stream, bytes(MIB))
            await got.wait()
        await stream.close()
        (sid,) = stream_ids
        return counts["window_update", sid]


async def test_tuning_on_coalesces_window_updates_and_off_does_not() -> None:
    # Stock py-libp2p 0.8.1 answers every read (~one per 64 KiB frame) with a window
    # update; tuned, the receiver credits once per half window (RECV_WINDOW = 2 MiB).
    on = await window_updates_for_one_mib(True)
    off = await window_updates_for_one_mib(False)
    assert on <= 2  # the first read's grant up to RECV_WINDOW, then one at half of it
    assert off >= 8


def test_switch_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert tuning_from_env() is True
    assert HostConfig().libp2p_tuning is True
    for off in ("0", "off", "false", "No"):
        monkeypatch.setenv(ENV_VAR, off)
        assert tuning_from_env() is False
        assert HostConfig().libp2p_tuning is False
    monkeypatch.setenv(ENV_VAR, "1")
    assert HostConfig().libp2p_tuning is True
