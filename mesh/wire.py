"""Wire format of the task protocol ``/p2c2r/task/1.0.0``: frames, records, payload encoding.

A frame is a 4-byte big-endian body length followed by a msgpack body::

    body = [version, type, items]

``type`` is one of

- ``"T"`` tasks:   items = [[task_id(16 bytes), kind, params(map), data, enc, budget_ms(, priority)], ...]
- ``"R"`` results: items = [[task_id, 1, output, enc, ts_ms, signature], ...]  (success)
                          or [[task_id, 0, error_code, message], ...]        (typed failure)
- ``"S"`` results signed as one batch:
                   items = [signature, [receipt digest, ...], records], where success
                   records are [task_id, 1, output, enc, ts_ms] (no signature of their
                   own: the n-th success record is the n-th digest, a leaf of the Merkle
                   tree whose root the signature covers, see ``tasks.receipt``) and
                   failures are as in ``"R"``
- ``"C"`` cancel:  items = [task_id, ...]
- ``"Q"`` queued (worker to gamer): items = [[task_id, wait_ms], ...]: these tasks wait
  for a slot behind other work, about ``wait_ms`` before they start (the worker's estimate
  from its queue); sent only for tasks whose wait is long enough to matter, so a gamer
  hedging a copy can tell a worker busy with others' work from a silent one
- ``"E"`` error:   items = [error_code, message]   (a frame-level error: the frame the peer
  sent could not be decoded, so no task id can be named)
- ``"H"`` shared-memory hello (gamer to worker): items = [segment name, size, token, min_bytes];
  an empty name (``SHM_OFF``) turns the path off for the stream, both ways
- ``"HA"`` its answer (worker to gamer): items = [ok, nonce, token, message]

A payload (task ``data`` or result ``output``) with ``enc`` 2 (``ENC_SHM``) is not bytes but
``[segment name, size]``: the bytes lie in a shared-memory segment on the same host
(``nodes.shm``, which checks names and sizes; this module only checks their shape). The
hello proves the two peers share one host: the worker reads a nonce from the segment the
gamer named and returns it on the authenticated stream.

The task id doubles as the request id: many tasks are in flight on one stream and results
come back in any order. Several tasks (or results) in one frame is batching; the sender
packs whatever is queued when it writes. ``enc`` is 0 for raw bytes, 1 for zstd; zstd is
used only for large payloads that are not already compressed images, and the decoder
checks the declared decompressed size against the limit before allocating anything.

``FrameDecoder`` is sans-IO: feed it bytes as they arrive, get frame bodies out. A frame
whose declared length exceeds the maximum raises ``FrameTooLargeError``: the stream
cannot be re-synchronised after that, so the shell replies with an error frame and
resets. A body that does not decode raises another ``ProtocolError``; the shell replies
with an error frame and keeps the stream.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import zstandard

from mesh.errors import FrameTooLargeError, ProtocolError, UnsupportedVersionError

PROTOCOL_ID = "/p2c2r/task/1.0.0"
VERSION = 1
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
TASK_ID_LEN = 16
ENC_RAW = 0
ENC_ZSTD = 1
#: The payload is in a shared-memory segment: ``[name, size]`` instead of bytes.
ENC_SHM = 2
MAX_SHM_NAME = 64
#: Payloads at least this large are worth trying to compress.
ZSTD_MIN_SIZE = 64 * 1024
MAX_ITEMS_PER_FRAME = 65536
MAX_KIND_LEN = 64
MAX_PARAMS = 64
MAX_MESSAGE_LEN = 4096
SIGNATURE_LEN = 64
DIGEST_LEN = 32
#: Priority classes of a task, as the coordinator's scheduler orders them (strict, lowest
#: first): frame-critical work, normal interactive work, and batch work, which a worker
#: runs in a niced background lane so that it never holds a slot an interactive task needs.
PRIORITY_FRAME = 0
PRIORITY_NORMAL = 1
PRIORITY_BATCH = 2
MAX_PRIORITY = 15


def is_priority(x: Any) -> bool:
    """Whether ``x`` is a priority class (an integer from 0 to ``MAX_PRIORITY``)."""
    return not isinstance(x, bool) and isinstance(x, int) and 0 <= x <= MAX_PRIORITY


#: Bytes a record adds to its frame besides payload, kind and parameters (generous), so
#: senders can refuse a record that could never fit in a peer's ``max_frame``.
RECORD_OVERHEAD = 256

_HEADER = struct.Struct(">I")

#: What msgpack raises on malformed input: ExtraData, FormatError and StackError are
#: ValueErrors, OutOfData is an UnpackException, unhashable map keys are TypeErrors.
MSGPACK_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, OverflowError, msgpack.UnpackException)


@dataclass(frozen=True, slots=True)
class ShmRef:
    """A payload in a shared-memory segment: its name and exact size in bytes."""

    name: str
    size: int


@dataclass(frozen=True, slots=True)
class ShmHello:
    """``"H"``: the gamer's segment holding a nonce, the token the worker's output names
    must carry, and the smallest output worth a segment."""

    name: str
    size: int
    token: str
    min_bytes: int


#: The hello that turns shared memory off for a stream (after a failure on it).
SHM_OFF = ShmHello("", 0, "", 0)


@dataclass(frozen=True, slots=True)
class ShmHelloReply:
    """``"HA"``: ok with the nonce read and the token the gamer's input names must carry,
    or not ok with why (remote host, shared memory off)."""

    ok: bool
    nonce: bytes
    token: str
    message: str


@dataclass(frozen=True, slots=True)
class TaskRecord:
    task_id: bytes
    kind: str
    params: dict[str, Any]
    data: bytes
    enc: int = ENC_RAW
    #: Milliseconds the worker may spend before the gamer stops waiting; 0 means no limit.
    budget_ms: int = 0
    #: Set (with ``enc`` ``ENC_SHM`` and empty ``data``) when the input is in shared memory.
    shm: ShmRef | None = None
    #: The task's priority class (``PRIORITY_FRAME`` .. ``MAX_PRIORITY``): a worker runs
    #: ``PRIORITY_BATCH`` and above in its niced background lane, behind interactive work.
    priority: int = PRIORITY_NORMAL


@dataclass(frozen=True, slots=True)
class ResultRecord:
    task_id: bytes
    output: bytes
    enc: int
    ts_ms: int
    #: The worker's signature; empty in an ``"S"`` frame, whose batch signs for it.
    signature: bytes
    #: In an ``"S"`` frame: this record's index among the batch's receipt digests.
    leaf: int = -1
    #: Set (with ``enc`` ``ENC_SHM`` and empty ``output``) when the output is in shared memory.
    shm: ShmRef | None = None


@dataclass(frozen=True, slots=True)
class SignedBatch:
    """The one signature of an ``"S"`` frame and the receipt digests it covers, in order."""

    signature: bytes
    leaves: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    task_id: bytes
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class QueuedRecord:
    """A task the worker accepted that waits about ``wait_ms`` for a slot."""

    task_id: bytes
    wait_ms: int


@dataclass(frozen=True, slots=True)
class Frame:
    type: str
    tasks: tuple[TaskRecord, ...] = ()
    results: tuple[ResultRecord | ErrorRecord, ...] = ()
    cancels: tuple[bytes, ...] = ()
    queued: tuple[QueuedRecord, ...] = ()
    error: tuple[str, str] | None = None
    batch: SignedBatch | None = None
    hello: ShmHello | None = None
    hello_reply: ShmHelloReply | None = None


# ---------------------------------------------------------------- encoding


def _frame(body: list[Any]) -> bytes:
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return _HEADER.pack(len(packed)) + packed


def _payload(data: bytes, shm: ShmRef | None) -> bytes | list[Any]:
    return data if shm is None else [shm.name, shm.size]


def encode_tasks(tasks: list[TaskRecord]) -> bytes:
    items: list[list[Any]] = []
    for t in tasks:
        item = [t.task_id, t.kind, t.params, _payload(t.data, t.shm), t.enc, t.budget_ms]
        if t.priority != PRIORITY_NORMAL:
            item.append(t.priority)  # a normal task keeps the 6-field record older workers read
        items.append(item)
    return _frame([VERSION, "T", items])


def encode_results(results: list[ResultRecord | ErrorRecord]) -> bytes:
    items: list[list[Any]] = []
    for r in results:
        if isinstance(r, ResultRecord):
            items.append([r.task_id, 1, _payload(r.output, r.shm), r.enc, r.ts_ms, r.signature])
        else:
            items.append([r.task_id, 0, r.code, r.message[:MAX_MESSAGE_LEN]])
    return _frame([VERSION, "R", items])


def encode_signed_results(
    results: list[ResultRecord | ErrorRecord], signature: bytes, leaves: list[bytes]
) -> bytes:
    """An ``"S"`` frame: the success records of ``results`` are covered, in order, by
    ``leaves`` (their receipt digests) and ``signature`` (over the digests' Merkle root)."""
    items: list[list[Any]] = []
    for r in results:
        if isinstance(r, ResultRecord):
            items.append([r.task_id, 1, _payload(r.output, r.shm), r.enc, r.ts_ms])
        else:
            items.append([r.task_id, 0, r.code, r.message[:MAX_MESSAGE_LEN]])
    return _frame([VERSION, "S", [signature, leaves, items]])


def encode_cancels(task_ids: list[bytes]) -> bytes:
    return _frame([VERSION, "C", list(task_ids)])


def encode_queued(records: list[QueuedRecord]) -> bytes:
    return _frame([VERSION, "Q", [[r.task_id, r.wait_ms] for r in records]])


def encode_error(code: str, message: str) -> bytes:
    return _frame([VERSION, "E", [code, message[:MAX_MESSAGE_LEN]]])


def encode_hello(hello: ShmHello) -> bytes:
    return _frame([VERSION, "H", [hello.name, hello.size, hello.token, hello.min_bytes]])


def encode_hello_reply(reply: ShmHelloReply) -> bytes:
    return _frame([VERSION, "HA", [reply.ok, reply.nonce, reply.token, reply.message[:MAX_MESSAGE_LEN]]])


# ---------------------------------------------------------------- payloads

_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"RIFF", b"GIF8")


def compress_payload(data: bytes, min_size: int = ZSTD_MIN_SIZE) -> tuple[bytes, int]:
    """zstd-compress ``data`` when it is large, not an already-compressed image, and shrinks."""
    if len(data) < min_size or data[:4].startswith(_IMAGE_MAGIC):
        return data, ENC_RAW
    # Probe a 16 KiB sample first: high-entropy payloads (noise, encrypted or already
    # compressed data) would cost a full compression pass for nothing.
    probe = zstandard.ZstdCompressor(level=1).compress(data[:16384])
    if len(probe) > 16384 * 0.9:
        return data, ENC_RAW
    packed = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(data)
    if len(packed) > len(data) * 0.9:
        return data, ENC_RAW
    return packed, ENC_ZSTD


def decompress_payload(data: bytes, enc: int, limit: int) -> bytes:
    """Undo ``compress_payload``; refuses payloads that would expand past ``limit`` bytes."""
    if enc == ENC_RAW:
        return data
    if enc != ENC_ZSTD:
        raise ProtocolError(f"payload encoding {enc} has no bytes to decompress")
    try:
        size = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise ProtocolError("zstd payload has no valid frame header") from exc
    if size < 0 or size > limit:
        raise ProtocolError(f"zstd payload declares {size} bytes, over the limit of {limit}")
    try:
        out: bytes = zstandard.ZstdDecompressor().decompress(data, max_output_size=limit)
    except zstandard.ZstdError as exc:
        raise ProtocolError(f"corrupt zstd payload: {exc}") from exc
    if len(out) != size:
        raise ProtocolError("zstd payload size does not match its header")
    return out


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def packed_params(params: dict[str, Any]) -> bytes:
    """Parameters as they travel in a task record (msgpack)."""
    packed: bytes = msgpack.packb(params, use_bin_type=True)
    return packed


def params_digest(params: dict[str, Any]) -> bytes:
    """A canonical digest of task parameters (keys sorted, msgpack)."""
    canon = msgpack.packb(sorted(params.items()), use_bin_type=True)
    return hashlib.sha256(canon).digest()


# ---------------------------------------------------------------- decoding


class FrameDecoder:
    """Reassembles frames from a byte stream. Sans-IO: ``feed`` bytes, iterate bodies."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need: int | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Add ``data``; yield every complete frame body. Raises ``FrameTooLargeError``."""
        self._buf += data
        while True:
            if self._need is None:
                if len(self._buf) < 4:
                    return
                (n,) = _HEADER.unpack_from(self._buf)
                if n > self.max_frame:
                    raise FrameTooLargeError(f"frame of {n} bytes exceeds the maximum of {self.max_frame}")
                self._need = n
            if len(self._buf) < 4 + self._need:
                return
            body = bytes(self._buf[4 : 4 + self._need])
            del self._buf[: 4 + self._need]
            self._need = None
            yield body


def _check_id(x: Any) -> bytes:
    if not isinstance(x, bytes) or len(x) != TASK_ID_LEN:
        raise ProtocolError("task id must be 16 bytes")
    return x


def _check_enc(x: Any) -> int:
    if x not in (ENC_RAW, ENC_ZSTD, ENC_SHM) or isinstance(x, bool):
        raise ProtocolError(f"unknown payload encoding {x!r}")
    return int(x)


def _check_payload(data: Any, enc: Any, what: str) -> tuple[bytes, int, ShmRef | None]:
    """A payload field: bytes, or with ``ENC_SHM`` a ``[name, size]`` segment reference."""
    code = _check_enc(enc)
    if code != ENC_SHM:
        if not isinstance(data, bytes):
            raise ProtocolError(f"{what} must be bytes")
        return data, code, None
    if not isinstance(data, list) or len(data) != 2:
        raise ProtocolError(f"{what} in shared memory must be [segment name, size]")
    name = _check_str(data[0], "segment name", MAX_SHM_NAME)
    size = _check_int(data[1], "segment size")
    return b"", code, ShmRef(name, size)


def _check_int(x: Any, what: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < 2**63:
        raise ProtocolError(f"{what} must be a non-negative 64-bit integer")
    return x


def _check_str(x: Any, what: str, limit: int) -> str:
    if not isinstance(x, str) or len(x) > limit:
        raise ProtocolError(f"{what} must be a string of at most {limit} characters")
    return x


def _decode_task(item: Any) -> TaskRecord:
    if not isinstance(item, list) or len(item) not in (6, 7):
        raise ProtocolError("task record must be a list of 6 fields (7 with a priority)")
    tid, kind, params, data, enc, budget = item[:6]
    priority = item[6] if len(item) == 7 else PRIORITY_NORMAL
    if not is_priority(priority):
        raise ProtocolError(f"task priority must be an integer from 0 to {MAX_PRIORITY}")
    if not isinstance(params, dict) or len(params) > MAX_PARAMS:
        raise ProtocolError(f"task params must be a map of at most {MAX_PARAMS} entries")
    if not all(isinstance(k, str) for k in params):
        raise ProtocolError("task parameter names must be strings")
    payload, code, shm = _check_payload(data, enc, "task data")
    return TaskRecord(
        task_id=_check_id(tid),
        kind=_check_str(kind, "task kind", MAX_KIND_LEN),
        params=params,
        data=payload,
        enc=code,
        budget_ms=_check_int(budget, "task budget"),
        shm=shm,
        priority=priority,
    )


def _decode_result(item: Any) -> ResultRecord | ErrorRecord:
    if not isinstance(item, list) or len(item) < 2:
        raise ProtocolError("result record must be a list")
    tid = _check_id(item[0])
    if item[1] == 1 and not isinstance(item[1], bool) and len(item) == 6:
        _, _, output, enc, ts, sig = item
        if not isinstance(sig, bytes) or len(sig) != SIGNATURE_LEN:
            raise ProtocolError(f"result signature must be {SIGNATURE_LEN} bytes")
        payload, code, shm = _check_payload(output, enc, "result output")
        return ResultRecord(tid, payload, code, _check_int(ts, "timestamp"), sig, shm=shm)
    if item[1] == 0 and not isinstance(item[1], bool) and len(item) == 4:
        return ErrorRecord(
            tid,
            _check_str(item[2], "error code", 64),
            _check_str(item[3], "error message", MAX_MESSAGE_LEN),
        )
    raise ProtocolError("result record has an unknown shape")


def _decode_queued(item: Any) -> QueuedRecord:
    if not isinstance(item, list) or len(item) != 2:
        raise ProtocolError("queued record must be [task_id, wait_ms]")
    return QueuedRecord(_check_id(item[0]), _check_int(item[1], "queue wait"))


def _decode_batch(items: list[Any]) -> Frame:
    if len(items) != 3:
        raise ProtocolError("signed batch must be [signature, digests, records]")
    sig, leaves, records = items
    if not isinstance(sig, bytes) or len(sig) != SIGNATURE_LEN:
        raise ProtocolError(f"batch signature must be {SIGNATURE_LEN} bytes")
    if not isinstance(leaves, list) or not isinstance(records, list):
        raise ProtocolError("batch digests and records must be lists")
    if not all(isinstance(d, bytes) and len(d) == DIGEST_LEN for d in leaves):
        raise ProtocolError(f"batch digests must be {DIGEST_LEN} bytes each")
    out: list[ResultRecord | ErrorRecord] = []
    n = 0
    for item in records:
        if isinstance(item, list) and len(item) == 5 and item[1] == 1 and not isinstance(item[1], bool):
            tid, _, output, enc, ts = item
            payload, code, shm = _check_payload(output, enc, "result output")
            out.append(ResultRecord(_check_id(tid), payload, code, _check_int(ts, "timestamp"), b"", n, shm))
            n += 1
        else:
            rec = _decode_result(item)
            if isinstance(rec, ResultRecord):
                raise ProtocolError("a record in a signed batch carries a signature of its own")
            out.append(rec)
    if n != len(leaves):
        raise ProtocolError(f"signed batch has {n} results but {len(leaves)} digests")
    return Frame("S", results=tuple(out), batch=SignedBatch(sig, tuple(leaves)))


def decode_frame(body: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> Frame:
    """Decode one frame body; any problem raises a ``ProtocolError`` subclass."""
    try:
        obj = msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_array_len=MAX_ITEMS_PER_FRAME,
            max_map_len=MAX_PARAMS,
            max_str_len=max_frame,
            max_bin_len=max_frame,
            max_ext_len=0,
        )
    except MSGPACK_ERRORS as exc:
        raise ProtocolError(f"frame is not valid msgpack: {type(exc).__name__}") from exc
    if not isinstance(obj, list) or len(obj) != 3:
        raise ProtocolError("frame body must be [version, type, items]")
    version, ftype, items = obj
    if version != VERSION or isinstance(version, bool):
        raise UnsupportedVersionError(
            f"protocol version {version!r} is not supported (this node speaks {VERSION})"
        )
    if not isinstance(items, list):
        raise ProtocolError("frame items must be a list")
    if ftype == "T":
        return Frame("T", tasks=tuple(_decode_task(i) for i in items))
    if ftype == "R":
        return Frame("R", results=tuple(_decode_result(i) for i in items))
    if ftype == "S":
        return _decode_batch(items)
    if ftype == "C":
        return Frame("C", cancels=tuple(_check_id(i) for i in items))
    if ftype == "Q":
        return Frame("Q", queued=tuple(_decode_queued(i) for i in items))
    if ftype == "E":
        if len(items) != 2:
            raise ProtocolError("error frame must be [code, message]")
        return Frame(
            "E",
            error=(
                _check_str(items[0], "error code", 64),
                _check_str(items[1], "error message", MAX_MESSAGE_LEN),
            ),
        )
    if ftype == "H":
        if len(items) != 4:
            raise ProtocolError("hello frame must be [segment name, size, token, min_bytes]")
        return Frame(
            "H",
            hello=ShmHello(
                _check_str(items[0], "segment name", MAX_SHM_NAME),
                _check_int(items[1], "segment size"),
                _check_str(items[2], "token", 64),
                _check_int(items[3], "min_bytes"),
            ),
        )
    if ftype == "HA":
        if len(items) != 4 or not isinstance(items[0], bool) or not isinstance(items[1], bytes):
            raise ProtocolError("hello answer must be [ok, nonce, token, message]")
        if len(items[1]) > 64:
            raise ProtocolError("hello nonce is too long")
        return Frame(
            "HA",
            hello_reply=ShmHelloReply(
                items[0],
                items[1],
                _check_str(items[2], "token", 64),
                _check_str(items[3], "message", MAX_MESSAGE_LEN),
            ),
        )
    raise ProtocolError(f"unknown frame type {ftype!r}")
