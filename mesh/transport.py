"""The port between the node shells and the network.

Two backends implement it: ``mesh.libp2p_host`` (real py-libp2p: TCP, Noise, yamux) and
``mesh.memory`` (in-process, seeded link model, for tests and the simulator). Code in
``nodes`` talks only to these protocols, so the same worker and gamer run on either.

Streams are byte streams between two authenticated peers. ``remote_peer`` is the peer id
(bytes) the secure handshake proved, which is what result signatures are checked against.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

#: Largest single write handed to the backend: py-libp2p's yamux and secure session
#: handle big messages badly (see shared/notes), so big payloads go out in chunks.
WRITE_CHUNK = 1024 * 1024


class Stream(Protocol):
    @property
    def remote_peer(self) -> bytes: ...

    async def read(self, max_bytes: int = 65536) -> bytes:
        """Up to ``max_bytes``; ``b""`` at end of stream. Raises ``ConnectionLostError``."""
        ...

    async def write(self, data: bytes) -> None:
        """Write all of ``data``. Raises ``ConnectionLostError``."""
        ...

    async def close(self) -> None:
        """Half-close: no more writes from this side."""
        ...

    async def reset(self) -> None:
        """Abort the stream in both directions."""
        ...


StreamHandler = Callable[[Stream], Awaitable[None]]


class Host(Protocol):
    @property
    def peer_id(self) -> bytes: ...

    def listen_addrs(self) -> list[str]:
        """Full multiaddrs (with ``/p2p/<peer id>``) others can dial."""
        ...

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None: ...

    async def connect(self, addr: str) -> bytes:
        """Dial ``addr`` (a ``/p2p/`` multiaddr); return the authenticated peer id."""
        ...

    async def open_stream(self, peer: bytes, protocol: str) -> Stream: ...

    async def disconnect(self, peer: bytes) -> None: ...


async def write_chunked(stream: Stream, data: bytes) -> None:
    """Write ``data`` in chunks of at most ``WRITE_CHUNK`` bytes."""
    if len(data) <= WRITE_CHUNK:
        await stream.write(data)
        return
    view = memoryview(data)
    for start in range(0, len(data), WRITE_CHUNK):
        await stream.write(bytes(view[start : start + WRITE_CHUNK]))
