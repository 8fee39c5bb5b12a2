"""Cuts py-libp2p 0.8.1's per-message overhead on the connections of hosts we create.

Imported only by ``mesh.libp2p_host``, which calls :func:`tune_host` on a new host when
``HostConfig.libp2p_tuning`` is on (its default comes from ``P2C2R_LIBP2P_TUNING``, read
in :func:`tuning_from_env` and nowhere else). Nothing here patches a py-libp2p class:
:func:`tune_host` wraps one host's upgrader so that each connection it upgrades has its
objects switched (``__class__``) to the subclasses below. Hosts that are not tuned (and
py-libp2p peers in other processes) run the stock code, and the bytes on the wire are
valid yamux and Noise either way, so a tuned host talks to an untuned one (tested).

The py-libp2p 0.8.1 defects each subclass addresses (profiles in docs/PERFORMANCE.md,
"py-libp2p per-message overhead"):

- **A window update for every read** (``YamuxStream._auto_tune_and_send_window_update``:
  the ``PY_YAMUX_RELEASE_ON_READ`` branch, on by default, and the "partial slack" branch
  both answer every read with a WINDOW_UPDATE frame, so every small message costs two
  frames, each a Noise message and a ``send`` syscall). :class:`TunedYamuxStream` credits
  the window as go-yamux does (``sendWindowUpdate``: only once at least half the window
  is consumed, spec-conformant: the update says how much more may be sent) and grants a
  receive window of :data:`RECV_WINDOW` on the first credit so the sender does not stall.
- **A 10 ms sleep-poll on a zero send window** (``YamuxStream.write``): with credit
  coalesced by the peer the send window does reach zero; :class:`TunedYamuxStream` wakes
  the writer on the WINDOW_UPDATE itself (``send_window`` is a property whose setter sets
  an event), keeping the 10 ms poll only as the fallback for a close, and the 5 s limit.
- **One frame, one Noise message, one syscall at a time** (``YamuxStream.write`` builds
  one <= 64 KiB frame per write lock round trip; ``BaseNoiseMsgReadWriter.write_msg``
  sends a 64 KiB frame as two Noise messages in two ``send`` calls, 65,519 + 17 bytes):
  :class:`TunedYamuxStream` builds up to :data:`WRITE_BATCH` bytes of frames at once and
  :class:`TunedNoiseReadWriter` writes all the Noise messages of one write in one
  ``send_all``. The frames and Noise messages are exactly those the stock code would send.
- **Two ``recv`` syscalls per Noise message** (``NoisePacketReadWriter.read_msg`` reads
  the 2-byte length, then the body, each through ``read_exactly`` and the TCP stream's
  lock): :class:`TunedNoiseReadWriter` reads up to :data:`RECV_SIZE` bytes at a time into
  its own buffer and cuts whole Noise messages out of it.
- **Copies and a ``BytesIO`` round trip per frame** in ``SecureSession.read``:
  :class:`TunedSecureSession` keeps the decrypted bytes in one ``bytearray``.
- **Debug f-strings and an extra checkpoint on every frame** (``Yamux._write_frame``
  formats its debug line whether or not debug logging is on): :class:`TunedYamux` formats
  it only when the ``libp2p`` logger is at DEBUG.

Every switched object is one of the exact stock classes, checked by ``type(x) is``
before switching; anything else (another muxer, a newer py-libp2p that changed a class)
is left alone and logged once. The subclasses add behaviour only; they keep all stock
attributes, so stock code running on them (``handle_incoming``, ``read_stream``, close,
reset, the sweeper) is unaffected.
"""

from __future__ import annotations

import logging
import os
import struct
from typing import Any, cast

import trio
from libp2p.io.exceptions import ConnectionClosedError, IncompleteReadError
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH, NoiseTransportReadWriter
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.exceptions import MuxedStreamError
from libp2p.stream_muxer.yamux.yamux import (
    HEADER_SIZE,
    MAX_MESSAGE_SIZE,
    TYPE_DATA,
    YAMUX_HEADER_FORMAT,
    Yamux,
    YamuxStream,
)

log = logging.getLogger("p2c2r.mesh.libp2p_tuning")

#: Environment variable read by :func:`tuning_from_env` (``0``/``off``/``false`` turn it off).
ENV_VAR = "P2C2R_LIBP2P_TUNING"
#: Receive window granted to the peer on each stream of a tuned connection (credited when
#: half of it is consumed). go-yamux auto-tunes up to 16 MiB; py-libp2p's stock code too.
RECV_WINDOW = 2 * 1024 * 1024
#: Most bytes of DATA frames handed to the secure session in one write (fairness between
#: streams of one connection: the connection's write lock is held for one batch).
WRITE_BATCH = 256 * 1024
#: Bytes asked of the TCP socket per read by the Noise reader.
RECV_SIZE = 256 * 1024
_FRAME_PAYLOAD = MAX_MESSAGE_SIZE - HEADER_SIZE
_WINDOW_WAIT_LIMIT_S = 5.0
_ZERO_WINDOW_POLL_S = 0.01
_libp2p_log = logging.getLogger("libp2p")
_header = struct.Struct(YAMUX_HEADER_FORMAT)
_noise_len = struct.Struct(">H")


def tuning_from_env() -> bool:
    """``P2C2R_LIBP2P_TUNING`` (default on): the one place the variable is read."""
    raw = os.environ.get(ENV_VAR, "1").strip().lower()
    return raw not in ("0", "off", "false", "no")


class TunedNoiseReadWriter(NoiseTransportReadWriter):
    """Noise transport messages read from a buffer, written in one ``send_all``."""

    _p2c2r_rbuf: bytearray

    async def read_msg(self, prefix_encoded: bool = False) -> bytes:
        if prefix_encoded:  # handshake-only form; never seen after the handshake
            return await super().read_msg(prefix_encoded)
        buf = self._p2c2r_rbuf
        raw = self.read_writer.read_write_closer
        while True:
            have = len(buf)
            if have >= 2:
                end = 2 + ((buf[0] << 8) | buf[1])
                if have >= end:
                    with memoryview(buf) as view:
                        ciphertext = bytes(view[2:end])
                    del buf[:end]
                    return self.decrypt(ciphertext)
                want = end - have
            else:
                want = 2 - have
            chunk = await raw.read(max(want, RECV_SIZE))
            if not chunk:
                # What the stock read_exactly raises at end of stream (yamux and the
                # swarm tell a clean close by received_bytes == 0).
                raise IncompleteReadError(
                    f"Connection closed during read operation: expected {want} more bytes "
                    f"but received {have}",
                    expected_bytes=have + want,
                    received_bytes=have,
                )
            buf += chunk

    async def write_msg(self, msg: bytes, prefix_encoded: bool = False) -> None:
        if prefix_encoded or len(msg) <= MAX_PLAINTEXT_LENGTH:
            await super().write_msg(msg, prefix_encoded)
            return
        parts: list[bytes] = []
        view = memoryview(msg)
        for start in range(0, len(view), MAX_PLAINTEXT_LENGTH):
            ciphertext = self.encrypt(bytes(view[start : start + MAX_PLAINTEXT_LENGTH]))
            parts.append(_noise_len.pack(len(ciphertext)))
            parts.append(ciphertext)
        await self.read_writer.read_write_closer.write(b"".join(parts))


class TunedSecureSession(SecureSession):
    """Decrypted bytes kept in one ``bytearray`` instead of a ``BytesIO`` per message."""

    _p2c2r_buf: bytearray

    async def read(self, n: int | None = None) -> bytes:
        if n == 0:
            return b""
        buf = self._p2c2r_buf
        if n is None:
            if buf:
                out = bytes(buf)
                buf.clear()
                return out
            msg = await self.conn.read_msg()
            if msg == b"":
                raise ConnectionClosedError("Connection closed")
            return msg
        while len(buf) < n:
            msg = await self.conn.read_msg()
            if msg == b"":
                if buf:
                    out = bytes(buf)
                    buf.clear()
                    return out
                raise ConnectionClosedError("Connection closed")
            if not buf and len(msg) == n:
                return msg
            buf += msg
        if len(buf) == n:
            out = bytes(buf)
            buf.clear()
            return out
        with memoryview(buf) as view:
            out = bytes(view[:n])
        del buf[:n]
        return out


class TunedYamuxStream(YamuxStream):
    """Coalesced window updates, batched frames, a writer woken by the window update."""

    _p2c2r_send_window: int
    _p2c2r_window_open: trio.Event | None

    @property  # type: ignore[override]
    def send_window(self) -> int:
        return self._p2c2r_send_window

    @send_window.setter
    def send_window(self, value: int) -> None:
        self._p2c2r_send_window = value
        if value > 0:
            event = self._p2c2r_window_open
            if event is not None:
                self._p2c2r_window_open = None
                event.set()

    async def _p2c2r_wait_for_window(self) -> None:
        with trio.move_on_after(_WINDOW_WAIT_LIMIT_S) as scope:
            while self._p2c2r_send_window <= 0 and not self.closed:
                event = self._p2c2r_window_open = trio.Event()
                # The window update sets the event; a close does not, hence the poll.
                with trio.move_on_after(_ZERO_WINDOW_POLL_S):
                    await event.wait()
        if scope.cancelled_caught:
            raise MuxedStreamError("Timed out waiting for window update after 5 seconds.")

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        total = len(view)
        sent = 0
        while True:
            if self.send_closed:
                raise MuxedStreamError("Stream is closed for sending")
            if sent >= total:
                return
            if self.closed:
                raise MuxedStreamError("Stream is closed")
            window = self._p2c2r_send_window
            if window <= 0:
                self._zero_window_waits += 1
                await self._p2c2r_wait_for_window()
                continue
            take = min(window, total - sent, WRITE_BATCH)
            end = sent + take
            parts: list[bytes | memoryview] = []
            while sent < end:
                size = min(end - sent, _FRAME_PAYLOAD)
                parts.append(_header.pack(0, TYPE_DATA, 0, self.stream_id, size))
                parts.append(view[sent : sent + size])
                sent += size
            self.send_window = window - take
            await self.conn._write_frame(b"".join(parts))

    async def _auto_tune_and_send_window_update(self, *, bytes_read: int = 0) -> None:
        # go-yamux sendWindowUpdate: credit only when at least half the window is used.
        # No lock: nothing below awaits before the window is adjusted (trio is cooperative).
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        delta = self.target_recv_window - (self.recv_window + buffered)
        if delta < self.target_recv_window // 2:
            return
        self.recv_window += delta
        await self.send_window_update(delta)


class TunedYamux(Yamux):
    """Streams switched to :class:`TunedYamuxStream`; frames written without debug work."""

    async def _write_frame(self, data: bytes) -> None:
        if _libp2p_log.isEnabledFor(logging.DEBUG):
            await super()._write_frame(data)
            return
        async with self._write_lock:
            await self.secured_conn.write(data)

    async def open_stream(self) -> YamuxStream:
        stream = await super().open_stream()
        _tune_stream(stream)
        return stream

    async def accept_stream(self) -> Any:
        stream = await super().accept_stream()
        _tune_stream(stream)
        return stream


def _tune_stream(stream: Any) -> None:
    if type(stream) is not YamuxStream:
        return
    send_window = stream.__dict__.pop("send_window")
    stream.__class__ = TunedYamuxStream
    tuned = cast(TunedYamuxStream, stream)
    tuned._p2c2r_window_open = None
    tuned._p2c2r_send_window = send_window
    if tuned.target_recv_window < RECV_WINDOW:
        # The next read credits the peer up to RECV_WINDOW (delta >= half of it).
        tuned.target_recv_window = RECV_WINDOW


_warned: set[str] = set()


def _skip(what: str) -> None:
    if what not in _warned:
        _warned.add(what)
        log.warning("libp2p tuning not applied to %s (not the py-libp2p 0.8.1 class it expects)", what)


def tune_connection(muxed: Any) -> bool:
    """Switch one freshly upgraded connection (and its secure session) to the tuned classes."""
    if type(muxed) is not Yamux:
        _skip(type(muxed).__name__)
        return False
    session = muxed.secured_conn
    if type(session) is not SecureSession or type(session.conn) is not NoiseTransportReadWriter:
        _skip(f"{type(session).__name__}/{type(getattr(session, 'conn', None)).__name__}")
        return False
    # Bytes the muxer negotiation left in the stock buffer stay first in line.
    pending = bytes(session.buf.getbuffer()[session.low_watermark : session.high_watermark])
    session.__class__ = TunedSecureSession
    cast(TunedSecureSession, session)._p2c2r_buf = bytearray(pending)
    noise = session.conn
    noise.__class__ = TunedNoiseReadWriter
    cast(TunedNoiseReadWriter, noise)._p2c2r_rbuf = bytearray()
    muxed.__class__ = TunedYamux
    for stream in list(muxed.streams.values()):
        _tune_stream(stream)
    return True


def is_tuned(muxed: Any) -> bool:
    return isinstance(muxed, TunedYamux)


def tune_host(host: Any) -> None:
    """Make every connection ``host`` upgrades from now on a tuned one."""
    upgrader = host.get_network().upgrader
    upgrade = upgrader.upgrade_connection

    async def upgrade_connection(conn: Any, peer_id: Any) -> Any:
        muxed = await upgrade(conn, peer_id)
        tune_connection(muxed)
        return muxed

    upgrader.upgrade_connection = upgrade_connection
