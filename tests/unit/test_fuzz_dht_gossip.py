"""Property fuzzing of the remaining decoders that take bytes from the network: DHT
records (``mesh.discovery.parse_record`` and the namespace validator py-libp2p calls on
every put and get) and signed gossip blobs (heartbeats, region summaries). Each may only
raise its typed errors; the validator only ``ValueError`` (what py-libp2p expects), and
``select`` never raises. Gossiped evidence is fuzzed in ``test_evidence_gossip``."""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh import control_wire as cw
from mesh.discovery import (
    NODE_PREFIX,
    RECORD_VERSION,
    REGION_PREFIX,
    NodeRecord,
    RecordValidator,
    parse_record,
    sign_record,
)
from mesh.errors import ProtocolError, VerificationError
from mesh.identity import Identity, peer_id_to_str
from tests.unit.test_fuzz_decoders import FUZZ, msgpack_values

A = Identity.from_seed(b"a" * 32)
PA = peer_id_to_str(A.peer_id_bytes)
keys = st.one_of(
    st.just(NODE_PREFIX + PA),
    st.just(REGION_PREFIX + "eu"),
    st.text(max_size=40),
    st.builds(lambda s: NODE_PREFIX + s, st.text(max_size=60)),
)


def _valid_node_value() -> bytes:
    rec = NodeRecord(PA, 5, 2**62, "eu", (("echo", 4),), 8, False, ("/ip4/1.2.3.4/tcp/1",))
    return sign_record(A.sign, rec)


@FUZZ
@given(keys, st.binary(max_size=600))
def test_parse_record_raw_bytes(key: str, value: bytes) -> None:
    try:
        parse_record(key, value, now_ms=0)
    except (ProtocolError, VerificationError):
        pass


@settings(FUZZ, max_examples=40)
@given(st.lists(msgpack_values, min_size=0, max_size=9), st.binary(min_size=64, max_size=64), keys)
def test_parse_record_structured(fields: list[Any], sig: bytes, key: str) -> None:
    """A well-formed signed envelope around hostile record fields."""
    payload = msgpack.packb([RECORD_VERSION, *fields], use_bin_type=True)
    value = cw.Signed(payload, sig).encode()
    try:
        parse_record(key, value, now_ms=0)
    except (ProtocolError, VerificationError):
        pass


@FUZZ
@given(keys, st.lists(st.one_of(st.binary(max_size=300), st.just(_valid_node_value())), max_size=5))
def test_record_validator_raises_only_value_error_and_select_never(key: str, values: list[bytes]) -> None:
    v = RecordValidator()
    for value in values:
        try:
            v.validate(key, value)
        except ValueError:
            pass
    if values:
        assert 0 <= v.select(key, values) < len(values)


@FUZZ
@given(st.binary(max_size=600))
def test_signed_gossip_blobs(data: bytes) -> None:
    try:
        blob = cw.Signed.decode(data)
    except ProtocolError:
        return
    for decode in (cw.decode_heartbeat_payload, cw.decode_summary_payload):
        try:
            decode(blob.payload)
        except ProtocolError:
            pass


@settings(FUZZ, max_examples=40)
@given(st.lists(msgpack_values, max_size=12))
def test_summary_and_heartbeat_payloads_structured(fields: list[Any]) -> None:
    payload = msgpack.packb(fields, use_bin_type=True)
    for decode in (cw.decode_heartbeat_payload, cw.decode_summary_payload):
        try:
            decode(payload)
        except ProtocolError:
            pass
