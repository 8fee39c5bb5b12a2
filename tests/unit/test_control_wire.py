"""Control protocol wire format: round trips, strict rejection, signatures, fuzzing."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import replace

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh import control_wire as cw
from mesh.discovery import NodeRecord, RecordValidator, RegionRecord, parse_record, sign_record
from mesh.election import Claim, Release, Renew, RenewAck, Vote
from mesh.errors import FrameTooLargeError, ProtocolError, UnsupportedVersionError, VerificationError
from mesh.identity import Identity, peer_id_to_str
from mesh.membership import Heartbeat
from mesh.vivaldi import Coord


def ident(tag: str) -> Identity:
    return Identity.from_seed(hashlib.sha256(tag.encode()).digest())


A = ident("a")
B = ident("b")
PA = A.peer_id.to_base58()
PB = B.peer_id.to_base58()

MEMBER = cw.MemberView(
    PA,
    "eu",
    "alive",
    0.5,
    3,
    (("echo", 4),),
    Coord(0.01, 0.02, 0.001),
    0.004,
    ("/ip4/1.2.3.4/tcp/1",),
    "0.1.0",
)
REGION = cw.RegionView(
    "eu", PA, 7, (PA, PB), ("/ip4/1.2.3.4/tcp/1",), (("echo", 8),), Coord(), (MEMBER,), 1.5
)

SNAP = cw.Snapshot(PA, "eu", "member", "0.1.0", (), None, (), ())
SNAP_WIRE = cw.snapshot_to_wire(SNAP)

SAMPLES: list[cw.ControlMessage] = [
    cw.Hello(("/ip4/127.0.0.1/tcp/1/p2p/x",), "eu", "0.1.0", "node"),
    cw.SignedHeartbeat(cw.Signed(b"payload", b"s" * 64)),
    cw.GossipRelay("/p2c2r/summaries", b"data", PA),
    Claim("eu", 3, PA, 5.5),
    Vote("eu", 3, PB, PA, True, 3, None, 0),
    Vote("eu", 3, PB, PA, False, 4, PB, 2),
    Renew("eu", 3, PA, 17),
    RenewAck("eu", 3, PB, 17),
    Release("eu", 3, PA),
    cw.LoadReport(9, 0.25, 2, (("echo", 4), ("upscale", 2)), (("echo", 10, 0.003),)),
    cw.LeaseRequest(1, "echo", 2, 0.5, 0, Coord(0.1, 0.2, 0.01), PB, (4, 5), ((PB, "echo", 0.01),)),
    cw.LeaseRequest(2, "echo", 1, 1.0, 1, None, None),
    cw.LeaseRequest(3, "echo", 1, 1.0, 1, None, None, exclude=(PB, PB[::-1])),
    cw.LeaseGrant(1, 42, PB, ("/ip4/1.2.3.4/tcp/1",), "echo", 2, 5.0, 0.02, 7),
    cw.LeaseRefused(1, "unavailable", "no live worker runs 'x'"),
    cw.LeaseRedirect(1, "us", PB, ("/ip4/5.6.7.8/tcp/2",)),
    cw.StatusQuery(5),
    cw.StatusReply(
        5, cw.Snapshot(PA, "eu", "coordinator", "0.1.0", ("/a",), Coord(), (REGION,), (("malformed", 2),))
    ),
    cw.StatusReply(6, replace(SNAP, election=cw.ElectionView("candidate", 7, 7, 3, None, 2, 1))),
    cw.StatusReply(7, replace(SNAP, election=cw.ElectionView("follower", 2, 1, 0, 0.25, 1, 1))),
    cw.Ping(99),
    cw.Pong(99, Coord(0.1, 0.1, 0.001), 0.4),
    cw.Bye("shutting down"),
]


def body(frame: bytes) -> bytes:
    (n,) = struct.unpack(">I", frame[:4])
    assert n == len(frame) - 4
    return frame[4:]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: cw.ControlMessage) -> None:
    assert cw.decode(body(cw.encode(msg))) == msg


def test_frames_stream_through_the_decoder_in_pieces() -> None:
    data = b"".join(cw.encode(m) for m in SAMPLES)
    dec = cw.decoder()
    out = []
    for i in range(0, len(data), 7):
        out.extend(cw.decode(b) for b in dec.feed(data[i : i + 7]))
    assert out == SAMPLES


def raw(mtype: object, fields: object, version: object = cw.VERSION) -> bytes:
    out: bytes = msgpack.packb([version, mtype, fields], use_bin_type=True)
    return out


@pytest.mark.parametrize(
    "bad",
    [
        raw("claim", ["eu", -1, PA, 1.0]),  # negative epoch
        raw("claim", ["eu", True, PA, 1.0]),  # bool is not an int
        raw("claim", ["eu", 1, PA]),  # missing field
        raw("vote", ["eu", 1, PB, PA, 1, 1, None, 0]),  # granted must be a bool
        raw("renew", ["x" * 65, 1, PA, 1]),  # region too long
        raw("lreq", [1, "echo", 0, 1.0, 0, None, None, [], []]),  # zero slots
        raw("lreq", [1, "echo", 1, float("nan"), 0, None, None, [], []]),  # NaN deadline
        raw("pong", [1, [0.0, 0.0, -1.0], 0.1]),  # negative height
        raw("hello", [["/a"] * 9, "eu", "v", "node"]),  # too many addrs
        raw("load", [1, 0.0, 0, {"echo": -1}, []]),  # negative capacity
        raw("sr", [1, [*SNAP_WIRE, ["leader", 1, 1, 0, None, 1, 1]]]),  # unknown election state
        raw("sr", [1, [*SNAP_WIRE, ["follower", 1, 1, 0, None, 1, 2]]]),  # more links than voters
        raw("sr", [1, [*SNAP_WIRE, ["follower", 1, 1, 0, -1.0, 1, 1]]]),  # negative time
        raw("sr", [1, [*SNAP_WIRE, ["follower", 1, 1, 0, None, 1]]]),  # missing field
        raw("sr", [1, [*SNAP_WIRE, None, None]]),  # ten fields
        raw("zzz", []),  # unknown type
        raw(5, []),  # type not a string
        b"\xc1",  # not msgpack
        msgpack.packb({"v": 1}),  # not a list
    ],
)
def test_malformed_messages_are_protocol_errors(bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        cw.decode(bad)


def test_unknown_version_is_typed() -> None:
    with pytest.raises(UnsupportedVersionError):
        cw.decode(raw("ping", [1], version=2))


def test_oversized_frame_is_refused_by_the_decoder() -> None:
    dec = cw.decoder()
    with pytest.raises(FrameTooLargeError):
        list(dec.feed(struct.pack(">I", cw.MAX_CONTROL_FRAME + 1)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_decode_never_raises_anything_but_protocol_errors(data: bytes) -> None:
    try:
        cw.decode(data)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        ["hello", "hb", "gsp", "claim", "vote", "renew", "ack", "rel", "load", "lreq", "lgrant", "sr", "pong"]
    ),
    st.lists(
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-(2**63), 2**64 - 1),
            st.floats(allow_nan=True),
            st.text(max_size=8),
            st.binary(max_size=8),
            st.lists(st.integers(0, 5), max_size=3),
            st.dictionaries(st.text(max_size=3), st.integers(-2, 2), max_size=2),
        ),
        max_size=10,
    ),
)
def test_typed_garbage_fields_are_protocol_errors(mtype: str, fields: list[object]) -> None:
    try:
        cw.decode(raw(mtype, fields))
    except ProtocolError:
        pass


def heartbeat(peer: str) -> Heartbeat:
    return Heartbeat(peer, 1, 1, "eu", "0.1.0", 0.0, 0, (("echo", 4),), Coord(), 0.5, 1.0)


def test_signed_heartbeat_envelope_verifies_only_for_its_author() -> None:
    payload = cw.encode_heartbeat_payload(heartbeat(PA).encode(), ("/ip4/1.2.3.4/tcp/1",))
    blob = cw.sign_blob(A.sign, cw.DOMAIN_HEARTBEAT, payload)
    decoded = cw.Signed.decode(blob.encode())
    raw_hb, addrs = cw.decode_heartbeat_payload(decoded.payload)
    assert Heartbeat.decode(raw_hb).peer == PA and addrs == ("/ip4/1.2.3.4/tcp/1",)
    cw.verify_blob(decoded, cw.DOMAIN_HEARTBEAT, PA)
    with pytest.raises(VerificationError):
        cw.verify_blob(decoded, cw.DOMAIN_HEARTBEAT, PB)  # someone else's name on it
    with pytest.raises(VerificationError):
        cw.verify_blob(decoded, cw.DOMAIN_SUMMARY, PA)  # replayed as another kind of blob
    tampered = cw.Signed(decoded.payload[:-1] + b"x", decoded.signature)
    with pytest.raises(VerificationError):
        cw.verify_blob(tampered, cw.DOMAIN_HEARTBEAT, PA)


def test_summary_payload_round_trip_and_requires_a_coordinator() -> None:
    payload = cw.encode_summary_payload(REGION, 3)
    assert cw.decode_summary_payload(payload) == (REGION, 3)
    nobody = cw.RegionView("eu", None, 0, (), (), (), None, (), 0.0)
    with pytest.raises(ProtocolError):
        cw.decode_summary_payload(cw.encode_summary_payload(nobody, 1))


def test_dht_records_are_bound_signed_unexpired_and_newest_wins() -> None:
    now = 1_000_000
    node = NodeRecord(PA, 5, now + 60_000, "eu", (("echo", 4),), 8, False, ("/ip4/1.2.3.4/tcp/1",))
    value = sign_record(A.sign, node)
    assert parse_record(f"/p2c2r/node/{PA}", value, now_ms=now) == node
    with pytest.raises(ProtocolError):
        parse_record(f"/p2c2r/node/{PB}", value, now_ms=now)  # stored under another peer's key
    with pytest.raises(VerificationError):
        parse_record(f"/p2c2r/node/{PA}", sign_record(B.sign, node), now_ms=now)  # signed by B
    with pytest.raises(ProtocolError):
        parse_record(f"/p2c2r/node/{PA}", value, now_ms=now + 60_001)  # expired
    key = "/p2c2r/region/eu"
    old = sign_record(A.sign, RegionRecord("eu", PA, 3, 9, now + 60_000, (), (PA,)))
    new = sign_record(B.sign, RegionRecord("eu", PB, 4, 1, now + 60_000, (), (PA,)))
    forged = sign_record(A.sign, RegionRecord("eu", PB, 9, 9, now + 60_000, (), (PA,)))
    validator = RecordValidator()
    import time

    if now < time.time() * 1000:  # the live validator reads the wall clock: use fresh records
        fresh = int(time.time() * 1000) + 60_000
        old = sign_record(A.sign, RegionRecord("eu", PA, 3, 9, fresh, (), (PA,)))
        new = sign_record(B.sign, RegionRecord("eu", PB, 4, 1, fresh, (), (PA,)))
        forged = sign_record(A.sign, RegionRecord("eu", PB, 9, 9, fresh, (), (PA,)))
    assert validator.select(key, [old, new]) == 1  # higher epoch wins over higher seq
    assert validator.select(key, [new, old]) == 0
    assert validator.select(key, [old, forged]) == 0  # a forged record never wins
    with pytest.raises(ValueError):
        validator.validate(key, forged)


def test_lease_request_without_exclude_field_from_older_clients_still_decodes() -> None:
    req = cw.LeaseRequest(7, "echo", 1, 1.0, 1, None, None)
    body = cw.encode(req)[4:]
    mtype_fields = msgpack.unpackb(body, raw=False)
    mtype_fields[2] = mtype_fields[2][:9]  # what a client before ``exclude`` sends
    assert cw.decode(msgpack.packb(mtype_fields, use_bin_type=True)) == req


def test_lease_exclusions_list_the_asked_regions_bans_first_within_the_cap() -> None:
    def pid(i: int) -> bytes:
        return ident(f"mc/{i}").peer_id_bytes

    banned = [pid(i) for i in range(cw.MAX_EXCLUDE + 20)]
    # the region's banned members come last in the gamer's list (e.g. sorted by peer id)
    members = {peer_id_to_str(w) for w in banned[-5:]} | {peer_id_to_str(pid(999))}
    out = cw.lease_exclusions(banned, members)
    assert len(out) == cw.MAX_EXCLUDE
    assert set(out[:5]) == {peer_id_to_str(w) for w in banned[-5:]}
    assert peer_id_to_str(pid(999)) not in out  # a member the gamer did not ban
    assert set(out[5:]) <= {peer_id_to_str(w) for w in banned[:-5]}
    assert cw.lease_exclusions([], members) == ()
    assert cw.lease_exclusions(banned[:3], set()) == tuple(peer_id_to_str(w) for w in banned[:3])
