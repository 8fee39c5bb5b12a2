"""The task-protocol codec (``mesh.wire``) and the validation of what a peer sends in it.

Properties: every record round-trips through encode -> ``FrameDecoder`` -> ``decode_frame``
however the byte stream is split; no input (arbitrary bytes, arbitrary msgpack objects,
well-formed frames with arbitrary fields) makes the decoder raise anything but a
``ProtocolError`` subclass; payload (zstd) decoding refuses bombs before allocating; and
parameters decoded from a peer's task are either normalised by the registry or refused
with a ``ValidationError``, never anything else.
"""

from __future__ import annotations

import itertools
import math
import struct
from typing import Any

import msgpack
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh import wire
from mesh.errors import (
    FrameTooLargeError,
    LimitExceededError,
    ProtocolError,
    UnknownKindError,
    UnsupportedVersionError,
    ValidationError,
)
from tasks.registry import ParamSpec, Registry, TaskKind, default_registry

# ---------------------------------------------------------------- strategies

task_ids = st.binary(min_size=wire.TASK_ID_LEN, max_size=wire.TASK_ID_LEN)
u63 = st.integers(min_value=0, max_value=2**63 - 1)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
# Values msgpack round-trips exactly (lists, not tuples; str map keys).
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
params_st = st.dictionaries(st.text(max_size=12), values, max_size=wire.MAX_PARAMS)

tasks_st = st.builds(
    wire.TaskRecord,
    task_id=task_ids,
    kind=st.text(max_size=wire.MAX_KIND_LEN),
    params=params_st,
    data=st.binary(max_size=256),
    enc=st.sampled_from([wire.ENC_RAW, wire.ENC_ZSTD]),
    budget_ms=u63,
    priority=st.integers(min_value=0, max_value=wire.MAX_PRIORITY),
)
results_st = st.builds(
    wire.ResultRecord,
    task_id=task_ids,
    output=st.binary(max_size=256),
    enc=st.sampled_from([wire.ENC_RAW, wire.ENC_ZSTD]),
    ts_ms=u63,
    signature=st.binary(min_size=64, max_size=64),
)
errors_st = st.builds(
    wire.ErrorRecord,
    task_id=task_ids,
    code=st.text(max_size=64),
    message=st.text(max_size=200),
)

# Arbitrary msgpack-representable objects, including the types the decoder must refuse.
any_obj = st.recursive(
    scalars | st.floats(),
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(st.text(max_size=6) | st.binary(max_size=6), inner, max_size=6)
    ),
    max_leaves=30,
)


def body_of(frame: bytes) -> bytes:
    (n,) = struct.unpack(">I", frame[:4])
    assert len(frame) == 4 + n
    return frame[4:]


def decode_all(stream: bytes, splits: list[int], max_frame: int = wire.DEFAULT_MAX_FRAME) -> list[wire.Frame]:
    """Feed ``stream`` cut at ``splits`` and decode every frame that comes out."""
    dec = wire.FrameDecoder(max_frame)
    cuts = sorted({0, len(stream), *(s % (len(stream) + 1) for s in splits)})
    out = []
    for a, b in itertools.pairwise(cuts):
        out += [wire.decode_frame(body) for body in dec.feed(stream[a:b])]
    assert dec.buffered == 0
    return out


# ---------------------------------------------------------------- round trips


@given(st.lists(tasks_st, max_size=5), st.lists(st.integers(min_value=0), max_size=8))
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
def test_tasks_round_trip_however_split(tasks: list[wire.TaskRecord], splits: list[int]) -> None:
    frames = decode_all(wire.encode_tasks(tasks), splits)
    assert frames == [wire.Frame("T", tasks=tuple(tasks))]


@given(st.lists(results_st | errors_st, max_size=5), st.lists(st.integers(min_value=0), max_size=8))
@settings(max_examples=200)
def test_results_round_trip_however_split(
    results: list[wire.ResultRecord | wire.ErrorRecord], splits: list[int]
) -> None:
    frames = decode_all(wire.encode_results(results), splits)
    assert frames == [wire.Frame("R", results=tuple(results))]


@given(st.lists(st.builds(wire.QueuedRecord, task_ids, st.integers(0, 2**63 - 1)), max_size=8))
def test_queued_frames_round_trip(records: list[wire.QueuedRecord]) -> None:
    assert decode_all(wire.encode_queued(records), [2, 9]) == [wire.Frame("Q", queued=tuple(records))]


@pytest.mark.parametrize(
    "item", [[b"\x01" * 15, 5], [b"\x01" * 16, -1], [b"\x01" * 16, 1.5], [b"\x01" * 16, True], [b"\x01" * 16]]
)
def test_a_malformed_queued_record_is_a_protocol_error(item: list[Any]) -> None:
    with pytest.raises(ProtocolError):
        wire.decode_frame(msgpack.packb([wire.VERSION, "Q", [item]], use_bin_type=True))


@given(st.lists(task_ids, max_size=10), st.text(max_size=64), st.text(max_size=300))
def test_cancel_and_error_frames_round_trip(ids: list[bytes], code: str, message: str) -> None:
    stream = wire.encode_cancels(ids) + wire.encode_error(code, message)
    assert decode_all(stream, [3, 7]) == [
        wire.Frame("C", cancels=tuple(ids)),
        wire.Frame("E", error=(code, message)),
    ]


@given(st.lists(tasks_st | st.builds(lambda r: r, results_st), min_size=1, max_size=6), st.data())
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
def test_many_frames_in_one_stream_come_out_in_order(
    records: list[wire.TaskRecord | wire.ResultRecord], data: st.DataObject
) -> None:
    frames = [
        wire.encode_tasks([r]) if isinstance(r, wire.TaskRecord) else wire.encode_results([r])
        for r in records
    ]
    stream = b"".join(frames)
    splits = data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=12))
    decoded = decode_all(stream, splits)
    assert [f.tasks[0] if f.type == "T" else f.results[0] for f in decoded] == records


def test_long_error_messages_are_truncated_on_encode() -> None:
    long = "x" * (wire.MAX_MESSAGE_LEN * 3)
    (frame,) = decode_all(wire.encode_error("limit", long), [])
    assert frame.error == ("limit", "x" * wire.MAX_MESSAGE_LEN)
    rec = wire.ErrorRecord(b"\x01" * 16, "failed", long)
    (frame,) = decode_all(wire.encode_results([rec]), [])
    assert frame.results == (wire.ErrorRecord(rec.task_id, "failed", "x" * wire.MAX_MESSAGE_LEN),)


# ---------------------------------------------------------------- frame decoder limits


def test_frame_at_the_limit_passes_and_one_byte_over_is_refused() -> None:
    body = msgpack.packb([1, "C", []])
    dec = wire.FrameDecoder(max_frame=len(body))
    assert list(dec.feed(struct.pack(">I", len(body)) + body)) == [body]
    dec = wire.FrameDecoder(max_frame=len(body) - 1)
    with pytest.raises(FrameTooLargeError):
        list(dec.feed(struct.pack(">I", len(body))))


def test_oversized_header_is_refused_before_the_body_arrives() -> None:
    dec = wire.FrameDecoder(max_frame=1024)
    # Only the 4-byte header: the decoder must refuse without waiting for 4 GiB.
    with pytest.raises(FrameTooLargeError) as info:
        list(dec.feed(b"\xff\xff\xff\xff"))
    assert info.value.code == "frame_too_large"
    assert isinstance(info.value, ProtocolError)


def test_partial_frames_are_held_until_complete() -> None:
    frame = wire.encode_cancels([b"\x07" * 16])
    dec = wire.FrameDecoder()
    for i in range(len(frame) - 1):
        assert list(dec.feed(frame[i : i + 1])) == []
    assert dec.buffered == len(frame) - 1
    (body,) = dec.feed(frame[-1:])
    assert wire.decode_frame(body).cancels == (b"\x07" * 16,)
    assert dec.buffered == 0


# ---------------------------------------------------------------- hostile input


@given(st.binary(max_size=2048))
@settings(max_examples=500)
def test_arbitrary_bytes_raise_only_protocol_errors(blob: bytes) -> None:
    dec = wire.FrameDecoder(max_frame=4096)
    try:
        for body in dec.feed(blob):
            wire.decode_frame(body, 4096)
    except ProtocolError:
        pass
    # A whole body of arbitrary bytes, too (not only what a header lets through).
    try:
        wire.decode_frame(blob, 4096)
    except ProtocolError:
        pass


@given(any_obj)
@settings(max_examples=300)
def test_arbitrary_msgpack_objects_raise_only_protocol_errors(obj: Any) -> None:
    try:
        frame = wire.decode_frame(msgpack.packb(obj, use_bin_type=True))
    except ProtocolError:
        return
    assert isinstance(frame, wire.Frame)


def _valid_items(ftype: str) -> list[Any]:
    tid = b"\x01" * 16
    return {
        "T": [tid, "echo", {"tag": "a"}, b"data", 0, 100],
        "R": [tid, 1, b"out", 0, 5, b"s" * 64],
        "E": ["code", "message"],
        "C": [tid, tid],
        "Q": [tid, 250],
    }[ftype]


@given(st.sampled_from(["T", "R", "C", "E", "Q"]), st.data())
@settings(max_examples=400)
def test_well_framed_bodies_with_arbitrary_items_raise_only_protocol_errors(
    ftype: str, data: st.DataObject
) -> None:
    # Start from a valid record and break one field (or append/drop one), so the fuzz
    # reaches every field check rather than failing at the first.
    fields = _valid_items(ftype)
    action = data.draw(st.sampled_from(["replace", "append", "drop", "nest"]))
    i = data.draw(st.integers(min_value=0, max_value=len(fields) - 1))
    junk = data.draw(any_obj | task_ids)
    if action == "replace":
        fields[i] = junk
    elif action == "append":
        fields.append(junk)
    elif action == "drop":
        del fields[i]
    else:
        fields[i] = [fields[i]]
    items = fields if ftype in ("C", "E") else [fields]
    body = msgpack.packb([wire.VERSION, ftype, items], use_bin_type=True)
    try:
        frame = wire.decode_frame(body)
    except ProtocolError:
        return
    # What gets through is well-typed, so the worker and gamer can trust its fields.
    for t in frame.tasks:
        assert len(t.task_id) == 16 and isinstance(t.kind, str) and isinstance(t.data, bytes)
        assert all(isinstance(k, str) for k in t.params) and t.enc in (0, 1) and t.budget_ms >= 0
    for r in frame.results:
        assert len(r.task_id) == 16
        if isinstance(r, wire.ResultRecord):
            assert isinstance(r.output, bytes) and len(r.signature) == 64 and r.ts_ms >= 0
        else:
            assert isinstance(r.code, str) and isinstance(r.message, str)
    assert all(isinstance(c, bytes) and len(c) == 16 for c in frame.cancels)
    assert all(len(q.task_id) == 16 and type(q.wait_ms) is int and q.wait_ms >= 0 for q in frame.queued)


@pytest.mark.parametrize("version", [0, 2, 255, True, "1", None, [1]])
def test_unknown_versions_are_a_typed_error(version: Any) -> None:
    body = msgpack.packb([version, "C", []])
    with pytest.raises(UnsupportedVersionError) as info:
        wire.decode_frame(body)
    assert info.value.code == "version"


@pytest.mark.parametrize(
    "body",
    [
        [1, "T", [[b"short", "echo", {}, b"", 0, 0]]],  # task id not 16 bytes
        [1, "T", [[b"\x00" * 16, "echo", {}, b"", 2, 0]]],  # unknown payload encoding
        [1, "T", [[b"\x00" * 16, "echo", {}, b"", True, 0]]],  # bool is not an encoding
        [1, "T", [[b"\x00" * 16, "echo", {}, b"", 0, -1]]],  # negative budget
        [1, "T", [[b"\x00" * 16, "echo", {}, "text", 0, 0]]],  # data must be bytes
        [1, "T", [[b"\x00" * 16, "e" * 65, {}, b"", 0, 0]]],  # kind too long
        [1, "T", [[b"\x00" * 16, "echo", {b"k": 1}, b"", 0, 0]]],  # non-str param name
        [1, "T", [[b"\x00" * 16, "echo", [], b"", 0, 0]]],  # params not a map
        [1, "T", [[b"\x00" * 16, "echo", {}, b"", 0]]],  # 5 fields
        [1, "T", [[b"\x00" * 16, "echo", {}, b"", 0, 0, 2, 0]]],  # 8 fields
        [1, "T", [[b"\x00" * 16, "echo", {}, b"", 0, 0, -1]]],  # negative priority
        [1, "T", [[b"\x00" * 16, "echo", {}, b"", 0, 0, wire.MAX_PRIORITY + 1]]],  # priority too high
        [1, "T", [[b"\x00" * 16, "echo", {}, b"", 0, 0, True]]],  # bool priority
        [1, "T", [[b"\x00" * 16, "echo", {}, b"", 0, 0, "batch"]]],  # priority not an integer
        [1, "R", [[b"\x00" * 16, 1, b"out", 0, 5, b"sig"]]],  # short signature
        [1, "R", [[b"\x00" * 16, True, b"out", 0, 5, b"s" * 64]]],  # bool status
        [1, "R", [[b"\x00" * 16, 2, "x", "y"]]],  # unknown status
        [1, "R", [[b"\x00" * 16, 0, "c" * 65, "m"]]],  # error code too long
        [1, "C", [b"\x00" * 15]],
        [1, "E", ["code"]],
        [1, "X", []],
        [1, "T", {}],
        [1, "T"],
        {"v": 1},
    ],
)
def test_malformed_records_are_protocol_errors(body: Any) -> None:
    with pytest.raises(ProtocolError):
        wire.decode_frame(msgpack.packb(body, use_bin_type=True))


def test_a_normal_task_keeps_the_six_field_record_and_others_carry_their_priority() -> None:
    """Workers that predate priorities read normal tasks; a 6-field record is normal."""
    for priority, fields in ((wire.PRIORITY_NORMAL, 6), (wire.PRIORITY_FRAME, 7), (wire.PRIORITY_BATCH, 7)):
        rec = wire.TaskRecord(b"\x00" * 16, "echo", {}, b"x", priority=priority)
        body = body_of(wire.encode_tasks([rec]))
        assert len(msgpack.unpackb(body)[2][0]) == fields
        assert wire.decode_frame(body).tasks == (rec,)


def test_too_many_params_is_a_protocol_error() -> None:
    params = {f"p{i}": i for i in range(wire.MAX_PARAMS + 1)}
    with pytest.raises(ProtocolError):
        wire.decode_frame(body_of(wire.encode_tasks([wire.TaskRecord(b"\x00" * 16, "echo", params, b"")])))


def test_trailing_garbage_and_ext_types_are_protocol_errors() -> None:
    good = body_of(wire.encode_cancels([]))
    with pytest.raises(ProtocolError):
        wire.decode_frame(good + b"\x00")
    with pytest.raises(ProtocolError):
        wire.decode_frame(msgpack.packb([1, "C", [msgpack.ExtType(5, b"x")]]))


def test_strings_longer_than_the_frame_limit_are_refused() -> None:
    body = msgpack.packb([1, "E", ["c", "m" * 100]])
    with pytest.raises(ProtocolError):
        wire.decode_frame(body, max_frame=50)


# ---------------------------------------------------------------- payload encoding


@given(st.binary(max_size=4096), st.integers(min_value=1, max_value=64))
def test_payload_round_trip(chunk: bytes, repeat: int) -> None:
    data = chunk * repeat
    packed, enc = wire.compress_payload(data, min_size=16)
    assert wire.decompress_payload(packed, enc, len(data)) == data
    if enc == wire.ENC_ZSTD:
        assert len(packed) < len(data)


def test_large_compressible_payloads_use_zstd_and_images_do_not() -> None:
    data = bytes(range(256)) * 1024
    packed, enc = wire.compress_payload(data)
    assert enc == wire.ENC_ZSTD and len(packed) < len(data) // 10
    jpeg_like = b"\xff\xd8\xff\xe0" + bytes(wire.ZSTD_MIN_SIZE)
    assert wire.compress_payload(jpeg_like) == (jpeg_like, wire.ENC_RAW)
    small = b"a" * 100
    assert wire.compress_payload(small) == (small, wire.ENC_RAW)


def test_zstd_bomb_is_refused_before_allocating() -> None:
    bomb = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(10 * 1024 * 1024))
    with pytest.raises(ProtocolError, match="over the limit"):
        wire.decompress_payload(bomb, wire.ENC_ZSTD, 1024 * 1024)


def test_zstd_without_declared_size_is_refused() -> None:
    packed = zstandard.ZstdCompressor(write_content_size=False).compress(b"a" * 1000)
    with pytest.raises(ProtocolError):
        wire.decompress_payload(packed, wire.ENC_ZSTD, 1 << 20)


@given(st.binary(max_size=512))
@settings(max_examples=300)
def test_arbitrary_zstd_payloads_raise_only_protocol_errors(blob: bytes) -> None:
    try:
        wire.decompress_payload(blob, wire.ENC_ZSTD, 1 << 16)
    except ProtocolError:
        pass


@given(st.binary(min_size=1, max_size=64), st.integers(min_value=0, max_value=200))
def test_corrupted_zstd_payloads_raise_only_protocol_errors(junk: bytes, where: int) -> None:
    packed = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(range(256)) * 8)
    where %= len(packed)
    broken = packed[:where] + junk + packed[where + len(junk) :]
    try:
        out = wire.decompress_payload(broken, wire.ENC_ZSTD, 1 << 16)
    except ProtocolError:
        return
    assert len(out) == zstandard.frame_content_size(broken)


def test_unknown_payload_encoding_is_refused() -> None:
    with pytest.raises(ProtocolError):
        wire.decompress_payload(b"x", 7, 100)


# ---------------------------------------------------------------- params digest


@given(params_st)
def test_params_digest_ignores_key_order(params: dict[str, Any]) -> None:
    reordered = dict(reversed(list(params.items())))
    assert wire.params_digest(reordered) == wire.params_digest(params)


def test_params_digest_tells_values_and_codecs_apart() -> None:
    base = {"scale": 2.0, "codec": "jpeg"}
    digests = {
        wire.params_digest(p)
        for p in (base, {**base, "codec": "webp"}, {**base, "scale": 3.0}, {"scale": 2.0}, {})
    }
    assert len(digests) == 5


# ---------------------------------------------------------------- parameter validation

SPEC_KIND = TaskKind(
    name="spec",
    description="schema-only kind for validation tests",
    params={
        "n": ParamSpec(int, default=4, minimum=1, maximum=16),
        "x": ParamSpec(float, default=0.5, minimum=0.0, maximum=1.0),
        "mode": ParamSpec(str, default="fast", choices=("fast", "quality")),
        "flag": ParamSpec(bool, default=False),
        "seed": ParamSpec(int, required=True),
    },
    execute=lambda params, data: data,
    cost=lambda params, n: 1.0,
    max_input_bytes=1000,
)


def test_defaults_are_filled_and_values_normalised() -> None:
    out = SPEC_KIND.validate_params({"seed": 7, "x": 1})
    assert out == {"n": 4, "x": 1.0, "mode": "fast", "flag": False, "seed": 7}
    assert isinstance(out["x"], float)


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({}, ValidationError),  # required seed missing
        ({"seed": 1, "bogus": 1}, ValidationError),
        ({"seed": 1.5}, ValidationError),
        ({"seed": True}, ValidationError),  # bool is not an int
        ({"seed": 1, "n": "4"}, ValidationError),
        ({"seed": 1, "x": math.nan}, ValidationError),
        ({"seed": 1, "x": math.inf}, ValidationError),
        ({"seed": 1, "x": True}, ValidationError),
        ({"seed": 1, "flag": 1}, ValidationError),
        ({"seed": 1, "mode": "slow"}, ValidationError),
        ({"seed": 1, "n": 0}, LimitExceededError),
        ({"seed": 1, "n": 17}, LimitExceededError),
        ({"seed": 1, "x": 1.0001}, LimitExceededError),
    ],
)
def test_bad_parameters_are_refused_with_typed_errors(params: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        SPEC_KIND.validate_params(params)


def test_input_size_limit_and_non_map_params() -> None:
    with pytest.raises(LimitExceededError):
        SPEC_KIND.validate_params({"seed": 1}, data_len=1001)
    assert SPEC_KIND.validate_params({"seed": 1}, data_len=1000)["seed"] == 1
    with pytest.raises(ValidationError):
        SPEC_KIND.validate_params([("seed", 1)])  # type: ignore[arg-type]


def test_unknown_kind_is_a_typed_error() -> None:
    reg = Registry([SPEC_KIND])
    with pytest.raises(UnknownKindError):
        reg.get("rm -rf")
    with pytest.raises(UnknownKindError):
        reg.get(["not", "hashable"])  # type: ignore[arg-type]


REGISTRY = default_registry()


@given(st.sampled_from(REGISTRY.names()), params_st)
@settings(max_examples=200)
def test_params_from_the_wire_are_validated_or_refused_with_validation_errors(
    kind: str, params: dict[str, Any]
) -> None:
    # Exactly what a worker does with a decoded task record before any work starts.
    (frame,) = decode_all(wire.encode_tasks([wire.TaskRecord(b"\x00" * 16, kind, params, b"")]), [])
    spec = REGISTRY.get(frame.tasks[0].kind)
    try:
        out = spec.validate_params(frame.tasks[0].params, 0)
    except ValidationError:
        return
    assert set(out) == set(spec.params)


@given(st.sampled_from(REGISTRY.names()), st.data())
@settings(max_examples=200)
def test_perturbing_one_valid_parameter_is_accepted_or_a_validation_error(
    kind: str, data: st.DataObject
) -> None:
    spec = REGISTRY.get(kind)
    base = spec.validate_params({}, 0) if not any(p.required for p in spec.params.values()) else None
    if base is None or not spec.params:
        return
    name = data.draw(st.sampled_from(sorted(spec.params)))
    value = data.draw(scalars | st.floats())
    try:
        out = spec.validate_params({**base, name: value}, 0)
    except ValidationError:
        return
    ps = spec.params[name]
    if ps.minimum is not None:
        assert out[name] >= ps.minimum
    if ps.maximum is not None:
        assert out[name] <= ps.maximum
    if ps.choices is not None:
        assert out[name] in ps.choices
