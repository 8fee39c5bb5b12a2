"""In-memory backend of the ``mesh.transport`` port, for tests and the simulator (never the demo).

A ``MemoryNetwork`` creates ``MemoryHost`` objects whose peer ids come from
``mesh.identity.Identity`` keys (derived from the network seed unless one is given), so
the worker and the gamer SDK run on it unchanged and result signatures verify exactly as
over py-libp2p. Everything is driven by trio time only (``trio.sleep``, cancel scopes and
parking lots, no threads, no wall clock), so it runs under
``trio.testing.MockClock(autojump_threshold=0)``: a test that waits out a 30 s deadline
finishes in milliseconds, at exactly the virtual time the code under test asked for.

Model
-----
- **Connections**: at most one per pair of hosts (like ``max_connections_per_peer=1``).
  ``connect`` costs one round trip; ``open_stream`` dials on demand (py-libp2p does the
  same from its peerstore), costs one round trip and fails with ``UnavailableError`` when
  the remote has no handler for the protocol.
- **Streams** are two pipes, one per direction. A pipe is a bounded byte channel:
  ``write`` waits while ``stream_buffer`` bytes are written but not yet read (a TCP window
  plus socket buffers), so a reader that stops reading stalls its writer.
- **Link model** (``LinkModel``, per unordered pair of hosts, ``set_link``): one-way
  ``delay_s`` plus uniform ``jitter_s`` per write, an optional ``bandwidth_Bps`` that
  serialises writes per direction, and ``loss``: the probability that a write drops the
  whole connection. A reliable byte stream cannot lose bytes and stay a byte stream, so
  loss is modelled as what TCP eventually turns it into: a dead connection, seen by both
  ends as ``ConnectionLostError`` (every stream on it breaks). Duplication is not
  modelled for the same reason (TCP removes it). Bytes arrive in the order written.
- **Partitions** (``partition``/``heal``): hosts in different groups cannot reach each
  other. Dials and stream opens across the cut fail with ``UnavailableError`` after the
  dial timeout; bytes already on existing connections are held, not lost, and arrive
  after ``heal`` (TCP retransmits), so a partition shorter than a task's deadline costs
  only latency, and a longer one is settled by the gamer's deadline.
- **Resets**: ``Stream.reset`` aborts one stream (the peer first reads what was sent
  before the reset, then gets ``ConnectionLostError``); ``reset_link`` and
  ``disconnect`` drop a whole connection (buffered bytes are lost); ``MemoryHost.crash``
  kills a host as ``kill -9`` would: every connection drops and its handlers are
  cancelled.

Determinism: each connection draws jitter and loss from its own ``random.Random`` seeded
from the network seed, the two peer ids and a connection counter, never from global
randomness. Given the same seed and the same order of writes, a run repeats exactly.
``link_stats`` counts writes, bytes and drops per direction, e.g. to check batching.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from mesh.errors import ConfigError, ConnectionLostError, UnavailableError
from mesh.identity import Identity, peer_id_from_str, peer_id_to_str
from mesh.transport import Host, Stream, StreamHandler

log = logging.getLogger("p2c2r.mesh.memory")

_ADDR_PREFIX = "/memory/"


@dataclass(frozen=True)
class LinkModel:
    """How one link behaves; see the module docstring."""

    #: One-way latency in seconds.
    delay_s: float = 0.0
    #: Extra latency per write, uniform in ``[0, jitter_s)``; order is still preserved.
    jitter_s: float = 0.0
    #: Probability in ``[0, 1]`` that one write drops the whole connection.
    loss: float = 0.0
    #: Bytes per second per direction; ``None`` is unlimited.
    bandwidth_Bps: float | None = None

    def __post_init__(self) -> None:
        if not (self.delay_s >= 0 and self.jitter_s >= 0 and math.isfinite(self.delay_s + self.jitter_s)):
            raise ConfigError("link delay and jitter must be finite and >= 0")
        if not 0.0 <= self.loss <= 1.0:
            raise ConfigError(f"link loss must be a probability in [0, 1], got {self.loss}")
        if self.bandwidth_Bps is not None and not self.bandwidth_Bps > 0:
            raise ConfigError("link bandwidth must be > 0 bytes per second (or None for unlimited)")


@dataclass
class LinkStats:
    """Counters for one direction of one pair of hosts, over all its connections."""

    writes: int = 0
    bytes: int = 0
    drops: int = 0


class _Pipe:
    """One direction of a stream: a bounded, delayed byte channel.

    Invariants: segments are in write order with non-decreasing delivery times;
    ``buffered`` is the number of bytes written and not yet read; once ``read_error`` is
    set nothing is appended and the reader raises after the segments that arrived before
    the error; once ``write_error`` is set the writer raises.
    """

    def __init__(self, conn: _Connection, src: bytes, dst: bytes, capacity: int) -> None:
        self.conn = conn
        self.src = src
        self.dst = dst
        self.capacity = capacity
        self.segments: deque[tuple[float, bytes]] = deque()
        self.buffered = 0
        self.last_delivery = -math.inf
        self.busy_until = -math.inf
        self.eof_at: float | None = None
        self.read_error: tuple[str, float] | None = None
        self.write_error: str | None = None
        self.lot = trio.lowlevel.ParkingLot()

    @property
    def finished(self) -> bool:
        """Nothing more will ever be read from this pipe (EOF or failure, nothing buffered)."""
        return (self.eof_at is not None or self.read_error is not None) and not self.segments

    def wake(self) -> None:
        self.lot.unpark_all()

    def fail(
        self, message: str, *, writer_message: str | None = None, keep_until: float | None = None
    ) -> None:
        """Break both ends; the reader still gets the segments delivered by ``keep_until``."""
        at = trio.current_time() if keep_until is None else keep_until
        if self.read_error is None or at < self.read_error[1]:
            self.read_error = (message, at)
        while self.segments and self.segments[-1][0] > at:
            self.buffered -= len(self.segments.pop()[1])
        if self.write_error is None:
            self.write_error = writer_message or message
        self.wake()

    async def _wait(self, until: float) -> None:
        with trio.move_on_at(until):
            await self.lot.park()

    async def read(self, max_bytes: int) -> bytes:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        while True:
            now = trio.current_time()
            if not self.conn.network.reachable(self.src, self.dst) and self.read_error is None:
                await self._wait(math.inf)  # held until heal (or a failure) wakes us
                continue
            if self.segments:
                at = self.segments[0][0]
                if at > now:
                    await self._wait(at)
                    continue
                chunks: list[bytes] = []
                size = 0
                while self.segments and self.segments[0][0] <= now and size < max_bytes:
                    at, data = self.segments.popleft()
                    take = min(len(data), max_bytes - size)
                    if take < len(data):
                        self.segments.appendleft((at, data[take:]))
                        data = data[:take]
                    chunks.append(data)
                    size += take
                self.buffered -= size
                self.wake()  # writers waiting for space
                await trio.lowlevel.checkpoint()
                return b"".join(chunks)
            if self.read_error is not None:
                message, at = self.read_error
                if at <= now:
                    await trio.lowlevel.checkpoint()
                    raise ConnectionLostError(message)
                await self._wait(at)
                continue
            if self.eof_at is not None:
                if self.eof_at <= now:
                    await trio.lowlevel.checkpoint()
                    return b""
                await self._wait(self.eof_at)
                continue
            await self._wait(math.inf)

    def _delivery_time(self, n: int) -> float:
        now = trio.current_time()
        model = self.conn.model
        start = now
        if model.bandwidth_Bps is not None:
            start = max(now, self.busy_until) + n / model.bandwidth_Bps
            self.busy_until = start
        jitter = self.conn.rng.random() * model.jitter_s if model.jitter_s > 0 else 0.0
        at = max(self.last_delivery, start + model.delay_s + jitter)
        self.last_delivery = at
        return at

    async def write(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        view = memoryview(bytes(data))
        while True:
            if self.write_error is not None:
                raise ConnectionLostError(self.write_error)
            if self.eof_at is not None:
                raise ConnectionLostError("write on a stream this side has closed")
            if not view:
                break
            n = min(len(view), self.capacity)
            if self.buffered + n > self.capacity:
                await self.lot.park()
                continue
            model = self.conn.model
            if model.loss > 0 and self.conn.rng.random() < model.loss:
                self.conn.drop(f"connection {self.conn.name} dropped (simulated loss)")
                continue  # raises via write_error
            chunk = bytes(view[:n])
            view = view[n:]
            self.segments.append((self._delivery_time(n), chunk))
            self.buffered += n
            stats = self.conn.network.link_stats(self.src, self.dst)
            stats.writes += 1
            stats.bytes += n
            self.wake()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def close(self) -> None:
        if self.eof_at is None and self.write_error is None:
            self.eof_at = max(self.last_delivery, trio.current_time() + self.conn.model.delay_s)
            self.wake()


class MemoryStream:
    """One end of an in-memory stream; implements ``mesh.transport.Stream``."""

    def __init__(
        self, conn: _Connection, local: bytes, remote: bytes, inbound: _Pipe, outbound: _Pipe
    ) -> None:
        self._conn = conn
        self._local = local
        self._remote = remote
        self._in = inbound
        self._out = outbound
        self.protocol = ""

    @property
    def remote_peer(self) -> bytes:
        return self._remote

    async def read(self, max_bytes: int = 65536) -> bytes:
        return await self._in.read(max_bytes)

    async def write(self, data: bytes) -> None:
        await self._out.write(data)

    async def close(self) -> None:
        self._out.close()
        await trio.lowlevel.checkpoint()

    async def reset(self) -> None:
        # What we sent before the reset still reaches the peer, then the reset does.
        delay = self._conn.model.delay_s
        self._in.fail("stream reset", writer_message="stream reset by peer")
        self._out.fail(
            "stream reset by peer", writer_message="stream reset", keep_until=trio.current_time() + delay
        )
        await trio.lowlevel.checkpoint()


class _Connection:
    """The one connection between two hosts, and every pipe on it."""

    def __init__(self, network: MemoryNetwork, a: MemoryHost, b: MemoryHost, rng: random.Random) -> None:
        self.network = network
        self.a = a
        self.b = b
        self.rng = rng
        self.alive = True
        self.pipes: list[_Pipe] = []

    @property
    def model(self) -> LinkModel:
        return self.network.link(self.a.peer_id, self.b.peer_id)

    @property
    def name(self) -> str:
        return f"{self.a.name}<->{self.b.name}"

    def other(self, host: MemoryHost) -> MemoryHost:
        return self.b if host is self.a else self.a

    def new_stream(self, opener: MemoryHost, capacity: int) -> tuple[MemoryStream, MemoryStream]:
        remote = self.other(opener)
        out = _Pipe(self, opener.peer_id, remote.peer_id, capacity)
        back = _Pipe(self, remote.peer_id, opener.peer_id, capacity)
        # Forget finished streams, so a long simulation does not accumulate them.
        self.pipes = [p for p in self.pipes if not p.finished]
        self.pipes += [out, back]
        local_end = MemoryStream(self, opener.peer_id, remote.peer_id, back, out)
        remote_end = MemoryStream(self, remote.peer_id, opener.peer_id, out, back)
        return local_end, remote_end

    def drop(self, reason: str) -> None:
        if not self.alive:
            return
        self.alive = False
        for host in (self.a, self.b):
            if host.conns.get(self.other(host).peer_id) is self:
                del host.conns[self.other(host).peer_id]
        self.network.link_stats(self.a.peer_id, self.b.peer_id).drops += 1
        self.network.link_stats(self.b.peer_id, self.a.peer_id).drops += 1
        for pipe in self.pipes:
            pipe.fail(reason, keep_until=-math.inf)  # like a TCP RST: unread bytes are lost
        self.pipes.clear()


class MemoryHost:
    """A host on a ``MemoryNetwork``; implements ``mesh.transport.Host``.

    Create with ``async with network.open_host() as host``; stream handlers run in the
    host's own nursery until the block exits or ``crash`` is called.
    """

    def __init__(self, network: MemoryNetwork, identity: Identity, index: int) -> None:
        self.network = network
        self.identity = identity
        self.index = index
        self.conns: dict[bytes, _Connection] = {}
        self.running = False
        self._handlers: dict[str, StreamHandler] = {}
        self._nursery: trio.Nursery | None = None

    @property
    def peer_id(self) -> bytes:
        return self.identity.peer_id_bytes

    @property
    def name(self) -> str:
        return peer_id_to_str(self.peer_id)[-6:]

    @property
    def addr(self) -> str:
        return f"{_ADDR_PREFIX}{self.index}"

    def listen_addrs(self) -> list[str]:
        return [f"{self.addr}/p2p/{peer_id_to_str(self.peer_id)}"]

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        self._handlers[protocol] = handler

    def connected_peers(self) -> list[bytes]:
        return sorted(self.conns)

    async def connect(self, addr: str) -> bytes:
        if "/p2p/" not in addr:
            raise ConfigError(f"{addr!r} has no /p2p/<peer id> part")
        where, _, pid_text = addr.partition("/p2p/")
        peer = peer_id_from_str(pid_text)
        target = self.network.host_at(where)
        if target is None or not target.running:
            await trio.lowlevel.checkpoint()
            raise UnavailableError(f"cannot reach peer at {addr}: connection refused")
        if target.peer_id != peer:
            await trio.lowlevel.checkpoint()
            raise UnavailableError(f"cannot reach peer at {addr}: the peer there has another peer id")
        await self._dial(target)
        return peer

    async def _dial(self, target: MemoryHost) -> _Connection:
        self._check_running()
        if target is self:
            raise ConfigError("a host cannot connect to itself")
        conn = self.conns.get(target.peer_id)
        if conn is not None and conn.alive:
            await trio.lowlevel.checkpoint()
            return conn
        await self._cross(target, "dial")
        conn = self.conns.get(target.peer_id)  # the other side may have dialled meanwhile
        if conn is not None and conn.alive:
            return conn
        if not target.running or not self.running:
            raise UnavailableError(f"peer {target.name} went away while connecting")
        conn = self.network.new_connection(self, target)
        self.conns[target.peer_id] = conn
        target.conns[self.peer_id] = conn
        return conn

    async def _cross(self, target: MemoryHost, what: str) -> None:
        """Wait out one round trip to ``target``, or the dial timeout across a partition."""
        net = self.network
        if not net.reachable(self.peer_id, target.peer_id):
            await trio.sleep(net.dial_timeout_s)
            raise UnavailableError(f"{what} to peer {target.name} timed out after {net.dial_timeout_s:g} s")
        await trio.sleep(2 * net.link(self.peer_id, target.peer_id).delay_s)

    async def open_stream(self, peer: bytes, protocol: str) -> MemoryStream:
        self._check_running()
        conn = self.conns.get(peer)
        if conn is None or not conn.alive:
            target = self.network.host_by_peer(peer)
            if target is None or not target.running:
                await trio.lowlevel.checkpoint()
                raise UnavailableError(f"no known address for peer {peer_id_to_str(peer)}")
            conn = await self._dial(target)
        remote = conn.other(self)
        await self._cross(remote, f"opening a {protocol} stream")
        handler = remote._handlers.get(protocol)
        if not conn.alive or remote._nursery is None:
            raise UnavailableError(f"connection to peer {remote.name} lost while opening a stream")
        if handler is None:
            raise UnavailableError(f"peer {remote.name} does not speak {protocol}")
        local_end, remote_end = conn.new_stream(self, self.network.stream_buffer)
        local_end.protocol = remote_end.protocol = protocol
        remote._nursery.start_soon(remote._run_handler, handler, remote_end)
        return local_end

    async def _run_handler(self, handler: StreamHandler, stream: MemoryStream) -> None:
        try:
            await handler(stream)
        except Exception:  # like py-libp2p: a failing handler costs its stream, not the host
            log.exception("stream handler on %s failed", self.name)
            await stream.reset()

    async def disconnect(self, peer: bytes) -> None:
        conn = self.conns.get(peer)
        if conn is not None:
            conn.drop(f"peer {self.name} closed the connection")
        await trio.lowlevel.checkpoint()

    def crash(self) -> None:
        """Die as ``kill -9`` would: drop every connection, stop every handler, refuse dials."""
        self.running = False
        for peer in sorted(self.conns):
            self.conns[peer].drop(f"peer {self.name} vanished (connection reset)")
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _check_running(self) -> None:
        if not self.running:
            raise UnavailableError(f"host {self.name} is not running")


async def _handler_nursery(*, task_status: trio.TaskStatus[trio.Nursery] = trio.TASK_STATUS_IGNORED) -> None:
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()


class MemoryNetwork:
    """Hosts and the links between them. See the module docstring for the model."""

    def __init__(
        self,
        seed: int = 0,
        *,
        link: LinkModel = LinkModel(),
        stream_buffer: int = 4 * 1024 * 1024,
        dial_timeout_s: float = 5.0,
    ) -> None:
        if stream_buffer < 1:
            raise ConfigError("stream_buffer must be at least 1 byte")
        self.seed = seed
        self.default_link = link
        self.stream_buffer = stream_buffer
        self.dial_timeout_s = dial_timeout_s
        self._links: dict[tuple[bytes, bytes], LinkModel] = {}
        self._stats: dict[tuple[bytes, bytes], LinkStats] = {}
        self._hosts: list[MemoryHost] = []
        self._by_peer: dict[bytes, MemoryHost] = {}
        self._groups: dict[bytes, int] | None = None
        self._conn_count = 0

    # ------------------------------------------------------------------ hosts

    def new_host(self, identity: Identity | None = None) -> MemoryHost:
        """A host that is not running yet; prefer ``open_host``."""
        index = len(self._hosts)
        if identity is None:
            seed = hashlib.sha256(f"p2c2r-memory/{self.seed}/{index}".encode()).digest()
            identity = Identity.from_seed(seed)
        old = self._by_peer.get(identity.peer_id_bytes)
        if old is not None and old.running:  # a stopped one may restart, at a new address
            raise ConfigError(f"peer {peer_id_to_str(identity.peer_id_bytes)} is already on this network")
        host = MemoryHost(self, identity, index)
        self._hosts.append(host)
        self._by_peer[host.peer_id] = host
        return host

    @asynccontextmanager
    async def open_host(self, identity: Identity | None = None) -> AsyncIterator[MemoryHost]:
        """Run a host: stream handlers live in its nursery; on exit it crashes cleanly."""
        host = self.new_host(identity)
        async with trio.open_nursery() as outer:
            # Handlers get a nursery of their own, so ``crash`` stops them without
            # cancelling the caller's code inside this block.
            host._nursery = await outer.start(_handler_nursery)
            host.running = True
            try:
                yield host
            finally:
                host.crash()
                outer.cancel_scope.cancel()

    def host_at(self, addr: str) -> MemoryHost | None:
        if not addr.startswith(_ADDR_PREFIX):
            return None
        try:
            index = int(addr[len(_ADDR_PREFIX) :])
        except ValueError:
            return None
        return self._hosts[index] if 0 <= index < len(self._hosts) else None

    def host_by_peer(self, peer: bytes) -> MemoryHost | None:
        return self._by_peer.get(peer)

    def new_connection(self, a: MemoryHost, b: MemoryHost) -> _Connection:
        self._conn_count += 1
        lo, hi = sorted((a.peer_id, b.peer_id))
        material = hashlib.sha256(b"%d/" % self.seed + lo + b"/" + hi + b"/%d" % self._conn_count).digest()
        return _Connection(self, a, b, random.Random(int.from_bytes(material, "big")))

    # ------------------------------------------------------------------ links

    @staticmethod
    def _key(a: bytes, b: bytes) -> tuple[bytes, bytes]:
        return (a, b) if a <= b else (b, a)

    def set_link(self, a: bytes, b: bytes, model: LinkModel) -> None:
        """Set the model of the link between peers ``a`` and ``b`` (both directions)."""
        self._links[self._key(a, b)] = model

    def link(self, a: bytes, b: bytes) -> LinkModel:
        return self._links.get(self._key(a, b), self.default_link)

    def link_stats(self, src: bytes, dst: bytes) -> LinkStats:
        """Counters for bytes sent from ``src`` to ``dst`` (live object)."""
        stats = self._stats.get((src, dst))
        if stats is None:
            stats = self._stats[(src, dst)] = LinkStats()
        return stats

    def partition(self, *groups: Iterable[bytes]) -> None:
        """Split the network: peers reach each other only within their group.

        Peers not named in any group form one more group together. Replaces any
        previous partition.
        """
        assigned: dict[bytes, int] = {}
        for i, group in enumerate(groups):
            for peer in group:
                if peer in assigned:
                    raise ConfigError(f"peer {peer_id_to_str(peer)} is in two partition groups")
                assigned[peer] = i
        self._groups = assigned
        self._wake_all()

    def heal(self) -> None:
        """Remove the partition; held bytes flow again."""
        self._groups = None
        self._wake_all()

    def reachable(self, a: bytes, b: bytes) -> bool:
        if self._groups is None:
            return True
        return self._groups.get(a, -1) == self._groups.get(b, -1)

    def reset_link(self, a: bytes, b: bytes) -> bool:
        """Drop the connection between ``a`` and ``b`` (both see ``ConnectionLostError``).

        Returns whether there was a live connection to drop.
        """
        host = self._by_peer.get(a)
        conn = host.conns.get(b) if host is not None else None
        if conn is None or not conn.alive:
            return False
        conn.drop(f"connection {conn.name} reset")
        return True

    def _wake_all(self) -> None:
        for host in self._hosts:
            for conn in host.conns.values():
                for pipe in conn.pipes:
                    pipe.wake()


if TYPE_CHECKING:  # mypy proves the backend implements the port

    def _implements_port(host: MemoryHost, stream: MemoryStream) -> tuple[Host, Stream]:
        return host, stream
