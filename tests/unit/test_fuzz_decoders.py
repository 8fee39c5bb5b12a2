"""Property fuzzing of every decoder that reads bytes from the network.

Each decoder may only raise its module's typed error (``ProtocolError`` for the wire and
gossip, ``ValidationError`` for codecs and task parameters); any other exception is a
bug. Inputs are both raw bytes and structure-aware msgpack objects (a valid envelope with
hostile fields reaches deeper than random bytes). Integers are bounded to 64 bits, as
msgpack is. Deterministic (``derandomize=True``) and fast.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh import wire
from mesh.errors import ProtocolError, ValidationError
from mesh.membership import Heartbeat
from mesh.vivaldi import Coord
from nodes.reputation import Evidence
from tasks import codecs
from tasks.registry import default_registry

FUZZ = settings(
    max_examples=80,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

ints64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    ints64,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=40),
)
msgpack_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(st.text(max_size=10), inner, max_size=6),
    ),
    max_leaves=10,
)
task_ids = st.one_of(st.binary(min_size=16, max_size=16), msgpack_values)


def pack(obj: Any) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


# --------------------------------------------------------------------------- mesh.wire


@FUZZ
@given(st.binary(max_size=512))
def test_decode_frame_raw_bytes(body: bytes) -> None:
    try:
        wire.decode_frame(body)
    except ProtocolError:
        pass


@FUZZ
@given(
    st.one_of(st.just(1), msgpack_values),
    st.sampled_from(["T", "R", "C", "E", "X"]),
    st.lists(
        st.one_of(
            st.tuples(
                task_ids, msgpack_values, msgpack_values, msgpack_values, msgpack_values, msgpack_values
            ).map(list),
            st.tuples(task_ids, st.sampled_from([0, 1, True]), msgpack_values, msgpack_values).map(list),
            st.tuples(
                task_ids,
                st.just(1),
                st.binary(max_size=8),
                st.sampled_from([0, 1, 2]),
                ints64,
                st.binary(min_size=64, max_size=64),
            ).map(list),
            msgpack_values,
        ),
        max_size=4,
    ),
)
def test_decode_frame_structured(version: Any, ftype: str, items: list[Any]) -> None:
    try:
        frame = wire.decode_frame(pack([version, ftype, items]))
    except ProtocolError:
        return
    for t in frame.tasks:
        assert len(t.task_id) == 16 and isinstance(t.params, dict) and isinstance(t.data, bytes)


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=8), st.integers(0, 256))
def test_frame_decoder_never_raises_foreign(chunks: list[bytes], max_frame: int) -> None:
    dec = wire.FrameDecoder(max_frame)
    try:
        for chunk in chunks:
            for body in dec.feed(chunk):
                assert len(body) <= max_frame
                try:
                    wire.decode_frame(body, max_frame)
                except ProtocolError:
                    pass
    except ProtocolError:
        pass


@FUZZ
@given(st.binary(max_size=256), st.sampled_from([0, 1, 2, -1]))
def test_decompress_payload(data: bytes, enc: int) -> None:
    try:
        out = wire.decompress_payload(data, enc, 4096)
    except ProtocolError:
        return
    assert len(out) <= 4096 or enc == wire.ENC_RAW


# --------------------------------------------------------------------------- heartbeats


def _heartbeat() -> Heartbeat:
    return Heartbeat(
        peer="12D3KooPeer",
        incarnation=1,
        seqno=2,
        region="eu",
        version="0.1",
        load=0.5,
        queue_depth=3,
        capacity=Heartbeat.make_capacity({"upscale": 2}),
        coord=Coord(0.01, 0.02, 0.001),
        coord_error=1.0,
        uptime_s=10.0,
    )


@FUZZ
@given(st.binary(max_size=512))
def test_heartbeat_decode_raw(data: bytes) -> None:
    try:
        Heartbeat.decode(data)
    except ProtocolError:
        pass


@FUZZ
@given(
    st.dictionaries(st.sampled_from(sorted(_heartbeat().to_wire())), msgpack_values, max_size=12),
    st.booleans(),
)
def test_heartbeat_from_wire_mutated(changes: dict[str, Any], drop: bool) -> None:
    obj = _heartbeat().to_wire()
    obj.update(changes)
    if drop and changes:
        del obj[sorted(changes)[0]]
    try:
        hb = Heartbeat.from_wire(obj)
    except ProtocolError:
        return
    assert Heartbeat.from_wire(hb.to_wire()) == hb


@FUZZ
@given(msgpack_values)
def test_heartbeat_from_wire_anything(obj: Any) -> None:
    try:
        Heartbeat.from_wire(obj)
    except ProtocolError:
        pass


# --------------------------------------------------------------------------- tasks.codecs

_CODEC_SEEDS = [
    codecs.encode_array(np.zeros((2, 3), dtype="<f4"), "raw"),
    codecs.encode_array(np.arange(6, dtype="<i2").reshape(2, 3), "zstd"),
    codecs.encode_image(np.zeros((4, 4, 3), dtype="uint8"), "png"),
    codecs.encode_image(np.zeros((8, 8, 3), dtype="uint8"), "jpeg"),
    codecs.encode_image(np.zeros((4, 4, 3), dtype="uint8"), "webp"),
]


def _mutate(seed: bytes, pos: int, val: int, cut: int) -> bytes:
    b = bytearray(seed)
    if b:
        b[pos % len(b)] = val
    return bytes(b[: max(0, len(b) - cut)])


codec_inputs = st.one_of(
    st.binary(max_size=256),
    st.builds(
        _mutate, st.sampled_from(_CODEC_SEEDS), st.integers(0, 10_000), st.integers(0, 255), st.integers(0, 8)
    ),
)


@FUZZ
@given(codec_inputs)
def test_codec_array_decoders(data: bytes) -> None:
    try:
        codecs.array_header(data)
    except ValidationError:
        pass
    try:
        arr = codecs.decode_array(data, max_elements=1 << 16, max_bytes=1 << 20)
    except ValidationError:
        return
    assert arr.size <= 1 << 16


@FUZZ
@given(codec_inputs)
def test_codec_image_decoders(data: bytes) -> None:
    for fn in (codecs.sniff_image_codec, codecs.image_size):
        try:
            fn(data)
        except ValidationError:
            pass
    try:
        img = codecs.decode_image(data, max_pixels=4096, max_side=256)
    except ValidationError:
        return
    assert img.ndim == 3 and img.shape[2] == 3


@FUZZ
@given(st.one_of(st.binary(max_size=256), msgpack_values.map(pack)))
def test_codec_msgpack_map(data: bytes) -> None:
    try:
        obj = codecs.decode_msgpack_map(data, max_bytes=1 << 16)
    except ValidationError:
        return
    assert isinstance(obj, dict)


# --------------------------------------------------------------------------- task parameters

_REGISTRY = default_registry()


@pytest.mark.parametrize("kind", _REGISTRY.names())
def test_validate_params_arbitrary_maps(kind: str) -> None:
    spec = _REGISTRY.get(kind)
    names = sorted(spec.params) or ["x"]

    @FUZZ
    @given(
        st.one_of(
            st.dictionaries(st.sampled_from(names), msgpack_values, max_size=len(names)),
            st.dictionaries(st.text(max_size=8), msgpack_values, max_size=4),
            msgpack_values,
        ),
        st.integers(0, 2**40),
    )
    def check(params: Any, data_len: int) -> None:
        try:
            out = spec.validate_params(params, data_len)
        except ValidationError:
            return
        assert sorted(out) == sorted(spec.params)
        for v in out.values():
            assert not (isinstance(v, float) and not math.isfinite(v))

    check()


# --------------------------------------------------------------------------- evidence


@FUZZ
@given(st.one_of(st.binary(max_size=512), msgpack_values.map(pack)))
def test_evidence_from_wire(data: bytes) -> None:
    try:
        ev = Evidence.from_wire(data)
    except ProtocolError:
        return
    assert Evidence.from_wire(ev.to_wire()) == ev


@settings(FUZZ, max_examples=40)
@given(
    st.lists(scalars, min_size=11, max_size=11),
    st.lists(scalars, min_size=6, max_size=6),
)
def test_evidence_from_wire_structured(fields: list[Any], signed: list[Any]) -> None:
    fields[0] = 1
    fields[5] = [b"\x01" * 16, b"peer", b"\x02" * 32, 5, b"\x03" * 64, None] if fields[1] == "" else signed
    try:
        Evidence.from_wire(pack(fields))
    except ProtocolError:
        pass


def test_decode_array_zero_dim_with_huge_shape_is_a_validation_error() -> None:
    """Found by scripts/fuzz/fuzz_codec_array.py: a shape with a 0 dimension passes the
    element/byte limits (count == 0) but numpy's reshape refuses the other dimensions."""
    import struct

    data = b"P2CA" + bytes([1, 0, 8, 4]) + struct.pack("<4I", 0, 2**32 - 1, 2**32 - 1, 2**32 - 1)
    with pytest.raises(ValidationError):
        codecs.decode_array(data)
