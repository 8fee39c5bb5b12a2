"""Same-host fast path: big task payloads and results through POSIX shared memory.

When a gamer and a worker run on one host, a payload of ``min_bytes`` or more (256 KiB by
default) travels as a ``multiprocessing.shared_memory`` segment named in the task frame
(``wire.ShmRef``: name and exact size) instead of through the yamux stream, which moves
~30-40 MB/s here against ~1 GB/s for a segment copy (docs/PERFORMANCE.md).

Same host is proved on the authenticated stream, never taken from an address: the gamer
writes a random nonce into a segment and names it in an ``"H"`` frame; the worker reads it
and returns it in an ``"HA"`` frame on the same Noise-authenticated stream. Segments are
created with mode 0600, so a worker that can read it runs as the same user in the same
``/dev/shm``. A remote worker (or one in another mount namespace, or another user) cannot
open the segment and answers "off"; the link then keeps the stream, counted as a fallback.

Names are ``p2c2r_<owner pid>_<token>_<random>``:

- the *owner pid* is the creating process; ``sweep`` (run when a worker or gamer starts,
  and when a gamer loses a worker) unlinks segments of this prefix whose owner is dead;
- the *token* is assigned by the reader during the handshake, one per stream and
  direction (the worker tells the gamer what its inputs must carry, the gamer tells the
  worker what its outputs must carry). A peer can therefore only make the other side
  read or unlink segments created for that very stream, never another gamer's or the
  worker's own segments for someone else. Names outside the scheme, another token or a
  size other than the frame states are refused with ``ShmRefusedError``.

Who unlinks what: the creator of an input (the gamer) unlinks it when its copy ends on
any path (result, error, cancel, deadline, hedge loser, lost link, client closed); the
reader of an output (the gamer) unlinks it after reading it, late or not; the worker
unlinks at the end of a stream whatever it created or was named on it and still exists
(a gamer that crashed); ``sweep`` takes what a crashed process left behind.

Digests are untouched by the path: the worker hashes what it read and produced, the gamer
what it sent and what it read back, and the signed receipt binds both as on the stream.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import secrets
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from mesh.errors import ProtocolError, UnavailableError

log = logging.getLogger("p2c2r.shm")

PREFIX = "p2c2r_"
#: Bytes of the handshake nonce (the hello segment's exact size).
NONCE_LEN = 32
#: Payloads at least this large take the shared-memory path (``GamerConfig.shm_min_bytes``).
DEFAULT_MIN_BYTES = 256 * 1024
#: The smallest threshold a worker accepts from a gamer (one segment per tiny result would
#: cost more than the stream).
MIN_BYTES_FLOOR = 4096
TOKEN_HEX = 16
_NAME_RE = re.compile(rf"^{PREFIX}([0-9]{{1,10}})_([0-9a-f]{{{TOKEN_HEX}}})_([0-9a-f]{{16}})$")
_TOKEN_RE = re.compile(rf"^[0-9a-f]{{{TOKEN_HEX}}}$")
#: Where Linux shows POSIX shared memory; the sweeper and the existence check need it.
SHM_DIR = Path("/dev/shm")

# The function ``SharedMemory.unlink`` calls, without the resource tracker (see _untrack).
_posixshmem: Any
try:
    _posixshmem = importlib.import_module("_posixshmem")
except ImportError:  # Windows: no POSIX shared memory, the fast path stays off
    _posixshmem = None


class ShmRefusedError(ProtocolError):
    """A peer named a segment outside the agreed scheme (prefix, owner, this stream's
    token) or of another size than its frame states; nothing was read. A correct peer
    never does this: check that both sides run the same P2C2R version."""

    code = "shm_refused"


class ShmUnavailableError(UnavailableError):
    """A segment could not be created or opened (gone, /dev/shm full, not this host).
    The payload goes through the stream instead."""

    code = "shm_unavailable"


#: Error codes a worker answers for a payload it could not take through shared memory;
#: the gamer then sends that copy again through the stream.
ERROR_CODES = frozenset({ShmRefusedError.code, ShmUnavailableError.code})


def available() -> bool:
    """Whether this platform has POSIX shared memory (Linux, macOS, BSD)."""
    return _posixshmem is not None


def new_token() -> str:
    return secrets.token_hex(TOKEN_HEX // 2)


def valid_token(token: object) -> bool:
    return isinstance(token, str) and _TOKEN_RE.fullmatch(token) is not None


def segment_name(token: str) -> str:
    """A fresh name owned by this process, carrying the reader's ``token``."""
    return f"{PREFIX}{os.getpid()}_{token}_{secrets.token_hex(8)}"


def check_name(name: str, token: str | None) -> int:
    """The owner pid of ``name``; raises ``ShmRefusedError`` unless it follows the scheme
    and (when ``token`` is given) carries that token."""
    m = _NAME_RE.fullmatch(name)
    if m is None:
        raise ShmRefusedError(f"segment name {name[:80]!r} is outside the {PREFIX}<pid>_<token>_<id> scheme")
    if token is not None and m.group(2) != token:
        raise ShmRefusedError(f"segment {name!r} does not carry this stream's token")
    return int(m.group(1))


# ---------------------------------------------------------------- segments


def _untrack(shm: SharedMemory) -> None:
    """Keep Python's ``resource_tracker`` away from our segments.

    On Python < 3.13, creating *or merely attaching to* a ``SharedMemory`` registers it
    with the process's resource tracker, which unlinks every registered segment when the
    process exits: a worker that read a gamer's input would destroy it, and a worker's
    tracker would hold (and at exit warn about) every output the gamer already unlinked.
    Lifetimes here are explicit (see the module docstring), so every segment is
    unregistered at once; 3.13's ``track=False`` does the same without the round trip.
    ``unlink`` below therefore calls ``shm_unlink`` directly: ``SharedMemory.unlink``
    would send the tracker an unregister it cannot match. This is the only place that
    knows about the tracker.
    """
    if sys.version_info < (3, 13):
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]


def _open(name: str, *, create: bool = False, size: int = 0) -> SharedMemory:
    if sys.version_info >= (3, 13):
        return SharedMemory(name, create=create, size=size, track=False)  # type: ignore[call-arg,unused-ignore]
    shm = SharedMemory(name, create=create, size=size)
    _untrack(shm)
    return shm


def write_segment(name: str, data: bytes) -> None:
    """Create segment ``name`` (mode 0600, exactly ``len(data)`` bytes) holding ``data``."""
    try:
        shm = _open(name, create=True, size=len(data))
    except OSError as exc:
        raise ShmUnavailableError(f"cannot create shared memory segment {name}: {exc}") from exc
    try:
        buf = shm.buf
        assert buf is not None
        buf[: len(data)] = data
    finally:
        shm.close()


def read_segment(name: str, size: int, *, remove: bool = False) -> bytes:
    """The ``size`` bytes of segment ``name``; ``ShmRefusedError`` when the segment is of
    another size, ``ShmUnavailableError`` when it cannot be opened. ``remove``: unlink it
    after reading (also when its size was wrong: the reader owns it then)."""
    try:
        shm = _open(name)
    except OSError as exc:
        raise ShmUnavailableError(f"cannot open shared memory segment {name}: {exc}") from exc
    try:
        if shm.size != size:
            raise ShmRefusedError(f"segment {name} holds {shm.size} bytes, the frame states {size}")
        buf = shm.buf
        assert buf is not None
        return bytes(buf[:size])
    finally:
        shm.close()
        if remove:
            unlink(name)


def unlink(name: str) -> bool:
    """Remove segment ``name``; False when it was already gone (or not ours to remove)."""
    if _posixshmem is None:
        return False
    try:
        _posixshmem.shm_unlink("/" + name)
    except (FileNotFoundError, PermissionError):
        return False
    return True


def exists(name: str) -> bool | None:
    """Whether segment ``name`` still exists; None where the platform cannot tell cheaply."""
    if not SHM_DIR.is_dir():
        return None
    return (SHM_DIR / name).exists()


def owner_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def sweep() -> list[str]:
    """Unlink segments of the ``p2c2r_`` prefix whose owner process is dead; returns them.

    Only where ``/dev/shm`` lists segments (Linux). A segment whose dead owner's pid has
    been reused by a live process is kept until that process ends. (Processes that share
    ``/dev/shm`` but not a pid namespace would see each other as dead: do not run nodes
    that way.)
    """
    if not SHM_DIR.is_dir():
        return []
    swept = []
    try:
        names = sorted(os.listdir(SHM_DIR))
    except OSError:
        return []
    for name in names:
        if not name.startswith(PREFIX):
            continue
        try:
            pid = check_name(name, None)
        except ShmRefusedError:
            continue
        if not owner_alive(pid) and unlink(name):
            swept.append(name)
    if swept:
        log.info("swept %d shared memory segment(s) left by dead processes", len(swept))
    return swept


# ---------------------------------------------------------------- worker side of a stream


@dataclass
class StreamSegments:
    """A worker's shared-memory state for one gamer stream, after a good handshake."""

    #: What the gamer's input names must carry (assigned here).
    in_token: str
    #: What our output names must carry (assigned by the gamer).
    out_token: str
    #: Outputs at least this large go through shared memory ...
    min_bytes: int
    #: ... unless the gamer turned the path off for this stream.
    outputs_on: bool = True
    #: Outputs handed to the gamer and not yet seen gone: name -> size.
    outputs: OrderedDict[str, int] = field(default_factory=OrderedDict)
    #: Inputs named on this stream, not yet seen gone (the gamer unlinks them).
    inputs: OrderedDict[str, None] = field(default_factory=OrderedDict)
    max_outputs: int = 256
    max_output_bytes: int = 256 * 1024 * 1024
    max_inputs: int = 4096

    def _prune(self, names: OrderedDict[str, Any]) -> None:
        while names:
            name = next(iter(names))
            if exists(name) is not False:
                return
            names.popitem(last=False)

    def output_room(self, size: int) -> bool:
        """Whether another output of ``size`` bytes may be handed out (a gamer that never
        unlinks would otherwise fill /dev/shm)."""
        self._prune(self.outputs)
        held = sum(self.outputs.values())
        return len(self.outputs) < self.max_outputs and held + size <= self.max_output_bytes

    def handed_out(self, name: str, size: int) -> None:
        self.outputs[name] = size

    def named_input(self, name: str) -> None:
        self.inputs[name] = None
        self._prune(self.inputs)
        while len(self.inputs) > self.max_inputs:
            self.inputs.popitem(last=False)

    def close(self) -> int:
        """Unlink what is left (the stream ended: a gamer that crashed never will)."""
        n = sum(unlink(name) for name in [*self.outputs, *self.inputs])
        self.outputs.clear()
        self.inputs.clear()
        return n


# ---------------------------------------------------------------- metrics


class ShmMetrics:
    """Prometheus counters of the fast path, in a node's registry:
    ``p2c2r_shm_payloads_total{direction="in"|"out"}`` (payloads moved through shared
    memory) and ``p2c2r_shm_fallbacks_total{reason}`` (payloads or links that took the
    stream instead: ``not_same_host``, ``off``, ``create_failed``, ``read_failed``,
    ``refused``, ``full``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.payloads = Counter(
            "p2c2r_shm_payloads", "Payloads moved through shared memory", ["direction"], registry=registry
        )
        self.fallbacks = Counter(
            "p2c2r_shm_fallbacks",
            "Payloads or links that took the stream instead of shared memory, by reason",
            ["reason"],
            registry=registry,
        )

    def moved(self, direction: str) -> None:
        self.payloads.labels(direction).inc()

    def fallback(self, reason: str) -> None:
        self.fallbacks.labels(reason).inc()
