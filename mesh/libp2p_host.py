"""The py-libp2p adapter: the only module (with ``mesh.identity``) that touches libp2p hosts.

It builds a host with TCP + Noise + yamux and implements the ``mesh.transport`` port on
it. Every workaround for a py-libp2p 0.8.1 bug lives here, each named:

- **Plaintext accepted by default**: ``new_host`` offers ``/plaintext/2.0.0`` next to
  Noise unless ``sec_opt`` is given; we pass a Noise-only ``sec_opt``, so a peer that
  offers only plaintext fails negotiation.
- **Fixed 250 ms on every connect** (happy-eyeballs wait unless the connection count
  reaches ``max_connections_per_peer``): ``max_connections_per_peer=1``.
- **AutoConnector dials every peer it learns of** (and on every disconnect aims for the
  midpoint of the watermarks): we manage connections ourselves, so its ``start`` is
  replaced by a no-op, which leaves its periodic task and ``maybe_connect`` inert.
- **Listeners set SO_REUSEPORT** (for hole punching), so a second node on a port in use
  starts "fine" and the kernel splits incoming connections between the two. We probe
  each fixed TCP port with a plain bind first and refuse with a clear error.
- **Logging**: importing libp2p sets its logger to WARNING with propagation off, and the
  first connection installs a stderr handler on the root logger when the root has none.
  We turn propagation back on (our handlers decide what is shown) and make sure the root
  logger has a handler before the first host starts.
- **A reset reads as EOF**: yamux forgets a stream once its RST arrives, so the next
  read raises ``StreamEOF``, not ``StreamReset``; ``Libp2pStream.read`` checks the muxed
  stream's ``reset_received`` and raises ``ConnectionLostError``, as the port promises.
- **Large messages fail in library helpers** (``read_exactly`` gives up after 100 partial
  reads): we never use them; ``nodes`` frames its own stream with ``mesh.wire`` and writes
  in chunks of <= 1 MiB (``mesh.transport.write_chunked``).
- **Metrics server hunts for port 8000 and hangs without a consumer**: metrics stay off.
- **Per-message overhead** (a yamux window update for every read, one ``send`` per
  frame and per Noise message, two ``recv`` per Noise message, a 10 ms poll on a zero
  send window): ``mesh.libp2p_tuning`` switches this host's connections to subclasses
  that avoid them, wire-compatible with stock peers; ``HostConfig.libp2p_tuning`` /
  ``P2C2R_LIBP2P_TUNING`` turn it off.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamEOF, StreamError
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from mesh.errors import ConfigError, ConnectionLostError, UnavailableError
from mesh.identity import Identity
from mesh.libp2p_tuning import is_tuned, tune_host, tuning_from_env
from mesh.transport import StreamHandler

log = logging.getLogger("p2c2r.mesh.host")


def route_libp2p_logging(level: int | None = None) -> None:
    """Send py-libp2p's records through the standard logging tree (see module docstring).

    Without ``level``: py-libp2p's records are shown only when our own ``p2c2r`` logger is
    at DEBUG. Its ERROR records are about failures we translate into typed errors with
    an actionable message (a failed dial becomes ``UnavailableError``), so showing both
    would print every problem twice, the less useful way first.
    """
    lib = logging.getLogger("libp2p")
    lib.handlers.clear()
    lib.propagate = True
    if level is None:
        ours = logging.getLogger("p2c2r").getEffectiveLevel()
        level = logging.DEBUG if ours <= logging.DEBUG else logging.CRITICAL
    lib.setLevel(level)
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())


def parse_multiaddr(addr: str) -> multiaddr.Multiaddr:
    try:
        return multiaddr.Multiaddr(addr)
    except Exception as exc:
        raise ConfigError(
            f"{addr!r} is not a valid multiaddr (expected e.g. /ip4/127.0.0.1/tcp/4001/p2p/12D3Koo...)"
        ) from exc


@dataclass(frozen=True)
class HostConfig:
    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    dial_timeout_s: float = 5.0
    stream_open_timeout_s: float = 5.0
    max_connections: int = 512
    libp2p_log_level: int | None = None
    #: Cut py-libp2p's per-message overhead on this host's connections (``mesh.libp2p_tuning``:
    #: coalesced yamux window updates, batched frames and Noise messages, buffered reads).
    #: Default from ``P2C2R_LIBP2P_TUNING`` (on unless ``0``), so benchmarks can switch it
    #: for node processes; wire-compatible with untuned peers either way.
    libp2p_tuning: bool = field(default_factory=tuning_from_env)


class Libp2pStream:
    """``mesh.transport.Stream`` over a py-libp2p ``NetStream``."""

    __slots__ = ("_peer", "_s")

    def __init__(self, stream: Any) -> None:
        self._s = stream
        self._peer: bytes = stream.muxed_conn.peer_id.to_bytes()

    @property
    def remote_peer(self) -> bytes:
        return self._peer

    async def read(self, max_bytes: int = 65536) -> bytes:
        try:
            data: bytes = await self._s.read(max_bytes)
        except StreamEOF as exc:
            # yamux drops a stream's bookkeeping as soon as its RST arrives, so a later
            # read says EOF; the muxed stream still knows it was reset.
            if getattr(getattr(self._s, "muxed_stream", None), "reset_received", False) is True:
                raise ConnectionLostError(f"stream from {ID(self._peer)} lost: reset by peer") from exc
            return b""
        except (StreamError, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionLostError(
                f"stream from {ID(self._peer)} lost: {exc or type(exc).__name__}"
            ) from exc
        return data

    async def write(self, data: bytes) -> None:
        try:
            await self._s.write(data)
        except (StreamError, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionLostError(
                f"stream to {ID(self._peer)} lost: {exc or type(exc).__name__}"
            ) from exc
        except Exception as exc:  # yamux raises bare MuxedStreamError/RuntimeError variants on reset
            raise ConnectionLostError(
                f"stream to {ID(self._peer)} failed: {type(exc).__name__}: {exc}"
            ) from exc

    async def close(self) -> None:
        try:
            await self._s.close()
        except Exception as exc:  # closing a dead stream is not an error worth surfacing
            log.debug("close of stream to %s failed: %r", ID(self._peer), exc)

    async def reset(self) -> None:
        try:
            await self._s.reset()
        except Exception as exc:
            log.debug("reset of stream to %s failed: %r", ID(self._peer), exc)


class Libp2pHost:
    """``mesh.transport.Host`` over a running py-libp2p ``BasicHost``."""

    def __init__(self, host: Any, identity: Identity, config: HostConfig) -> None:
        self._host = host
        self._identity = identity
        self._config = config

    @property
    def peer_id(self) -> bytes:
        return self._identity.peer_id_bytes

    @property
    def raw(self) -> Any:
        """The underlying py-libp2p host, for adapters (DHT, pubsub) built on it."""
        return self._host

    def listen_addrs(self) -> list[str]:
        pid = self._host.get_id().to_base58()
        out = []
        for a in self._host.get_addrs():
            s = str(a)
            out.append(s if "/p2p/" in s else f"{s}/p2p/{pid}")
        return out

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        async def _handler(stream: Any) -> None:
            wrapped = Libp2pStream(stream)
            try:
                await handler(wrapped)
            except Exception as exc:
                # py-libp2p 0.8.1 bug: an exception escaping a stream handler wedges the whole
                # connection, not just the stream: it stays "connected" but every new stream
                # to or from that peer times out (reproduced: a reader that raised on its
                # peer's RST cut off all later streams, GossipSub included). A handler's
                # failure must stay that stream's failure.
                log.debug("%s handler for %s ended with %r", protocol, ID(wrapped.remote_peer), exc)
                await wrapped.reset()

        self._host.set_stream_handler(TProtocol(protocol), _handler)

    async def connect(self, addr: str) -> bytes:
        maddr = parse_multiaddr(addr)
        try:
            info = info_from_p2p_addr(maddr)
        except Exception as exc:
            raise ConfigError(
                f"{addr!r} has no /p2p/<peer id> part; copy the full address the node printed"
            ) from exc
        try:
            with trio.fail_after(self._config.dial_timeout_s):
                await self._host.connect(info)
        except trio.TooSlowError as exc:
            raise UnavailableError(
                f"peer at {addr} did not answer within {self._config.dial_timeout_s:g} s; is the node running and reachable?"
            ) from exc
        except Exception as exc:
            raise UnavailableError(f"cannot reach peer at {addr}: {type(exc).__name__}: {exc}") from exc
        peer: bytes = info.peer_id.to_bytes()
        return peer

    async def open_stream(self, peer: bytes, protocol: str) -> Libp2pStream:
        try:
            with trio.fail_after(self._config.stream_open_timeout_s):
                s = await self._host.new_stream(ID(peer), [TProtocol(protocol)])
        except trio.TooSlowError as exc:
            raise UnavailableError(f"peer {ID(peer)} did not open a {protocol} stream in time") from exc
        except Exception as exc:
            raise UnavailableError(
                f"cannot open {protocol} stream to {ID(peer)}: {type(exc).__name__}: {exc}"
            ) from exc
        return Libp2pStream(s)

    async def disconnect(self, peer: bytes) -> None:
        try:
            await self._host.disconnect(ID(peer))
        except Exception as exc:
            log.debug("disconnect from %s failed: %r", ID(peer), exc)

    def connected_peers(self) -> list[bytes]:
        return sorted(p.to_bytes() for p in self._host.get_connected_peers())

    def muxed_connections(self, peer: bytes) -> list[Any]:
        """py-libp2p's muxed connections to ``peer`` (tests and diagnostics)."""
        return [c.muxed_conn for c in self._host.get_network().get_connections(ID(peer))]

    def tuned(self, peer: bytes) -> bool:
        """Whether every connection to ``peer`` runs the per-message tuning."""
        conns = self.muxed_connections(peer)
        return bool(conns) and all(is_tuned(c) for c in conns)


def _port_in_use(exc: BaseException) -> bool:
    seen: list[BaseException] = [exc]
    while seen:
        e = seen.pop()
        if isinstance(e, OSError) and e.errno == errno.EADDRINUSE:
            return True
        if "address already in use" in str(e).lower():
            return True
        if isinstance(e, BaseExceptionGroup):
            seen.extend(e.exceptions)
        if e.__cause__ is not None:
            seen.append(e.__cause__)
        if e.__context__ is not None:
            seen.append(e.__context__)
    return False


def _check_ports_free(listen: list[multiaddr.Multiaddr]) -> None:
    for maddr in listen:
        try:
            port = int(maddr.value_for_protocol("tcp"))
        except Exception:
            continue
        if port == 0:
            continue
        family, ip = socket.AF_INET, "0.0.0.0"
        try:
            ip = maddr.value_for_protocol("ip4")
        except Exception:
            try:
                family, ip = socket.AF_INET6, maddr.value_for_protocol("ip6")
            except Exception:
                continue
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((ip, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigError(
                        f"cannot listen on {maddr}: port {port} is already in use (another node?); "
                        "pick another port, e.g. --listen /ip4/127.0.0.1/tcp/0 for any free one"
                    ) from exc
                raise ConfigError(f"cannot listen on {maddr}: {exc.strerror}") from exc


@asynccontextmanager
async def open_host(identity: Identity, config: HostConfig | None = None) -> AsyncIterator[Libp2pHost]:
    """Run a py-libp2p host (TCP, Noise, yamux) listening on ``config.listen``.

    Without ``config``, a default ``HostConfig()`` made now (so ``P2C2R_LIBP2P_TUNING`` is
    read when the host opens, not when this module was imported).
    """
    if config is None:
        config = HostConfig()
    route_libp2p_logging(config.libp2p_log_level)
    listen = [parse_multiaddr(a) for a in config.listen]
    keypair = identity.libp2p_keypair()
    noise = NoiseTransport(keypair, noise_privkey=create_x25519_key_pair().private_key)
    host = new_host(
        key_pair=keypair,
        sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
        connection_config=ConnectionConfig(
            max_connections_per_peer=1,
            max_connections=config.max_connections,
            min_connections=0,
            low_watermark=0,
            high_watermark=config.max_connections,
        ),
        listen_addrs=listen,
    )
    network = host.get_network()
    auto = getattr(network, "auto_connector", None)
    if auto is not None:

        async def _never_start() -> None:
            return None

        auto.start = _never_start
    if config.libp2p_tuning:
        tune_host(host)
    _check_ports_free(listen)
    try:
        async with host.run(listen_addrs=listen):
            yield Libp2pHost(host, identity, config)
    except BaseException as exc:
        if _port_in_use(exc):
            raise ConfigError(
                f"cannot listen on {', '.join(config.listen)}: address already in use; "
                "pick another port (e.g. --listen /ip4/127.0.0.1/tcp/0 for any free port)"
            ) from exc
        raise
