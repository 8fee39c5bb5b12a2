"""Batch receipts: one signature over a Merkle root, each result still checkable alone.

Property tests (hypothesis) of Merkle paths for every tree size and leaf, seals through
``verify_receipt`` exactly as evidence and the result cache check them, and the ``"S"``
frame of ``mesh.wire`` (round trip and typed errors on malformed batches).
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh import wire
from mesh.errors import ProtocolError, VerificationError
from mesh.identity import Identity
from tasks.receipt import (
    MerkleTree,
    batch_digest,
    make_seal,
    open_seal,
    receipt_digest,
    root_from_path,
    sign_batch,
    verify_receipt,
)

WORKER = Identity.from_seed(b"\x07" * 32)
OTHER = Identity.from_seed(b"\x08" * 32)
digests = st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=70)


def receipt(i: int, output: bytes = b"out") -> bytes:
    tid = hashlib.sha256(b"task %d" % i).digest()[:16]
    return receipt_digest(
        tid,
        "echo",
        wire.params_digest({}),
        wire.digest(b"in"),
        wire.digest(output),
        WORKER.peer_id_bytes,
        1000 + i,
    )


@settings(max_examples=150, derandomize=True, database=None)
@given(digests, st.data())
def test_every_leaf_path_leads_to_the_root_and_nothing_else_does(
    leaves: list[bytes], data: st.DataObject
) -> None:
    tree = MerkleTree(leaves)
    n = len(leaves)
    for i, leaf in enumerate(leaves):
        assert root_from_path(leaf, i, n, tree.path(i)) == tree.root
    i = data.draw(st.integers(0, n - 1))
    path = tree.path(i)
    # Another digest at this leaf leads elsewhere.
    other = hashlib.sha256(leaves[i]).digest()
    assert root_from_path(other, i, n, path) != tree.root
    if path:
        # A flipped sibling, a shorter or a longer path: never the root.
        k = data.draw(st.integers(0, len(path) - 1))
        bad = [*path[:k], bytes([path[k][0] ^ 1]) + path[k][1:], *path[k + 1 :]]
        assert root_from_path(leaves[i], i, n, bad) != tree.root
        with pytest.raises(VerificationError):
            root_from_path(leaves[i], i, n, path[:-1])
    with pytest.raises(VerificationError):
        root_from_path(leaves[i], i, n, [*path, bytes(32)])
    # The same leaf claimed at another position fails unless the digests repeat there.
    j = data.draw(st.integers(0, n - 1))
    if leaves[j] != leaves[i]:
        try:
            assert root_from_path(leaves[i], j, n, tree.path(j)) != tree.root
        except VerificationError:
            pass
    with pytest.raises(VerificationError):
        root_from_path(leaves[i], n, n, path)


@settings(max_examples=40, derandomize=True, database=None)
@given(digests)
def test_the_root_binds_the_leaf_count(leaves: list[bytes]) -> None:
    tree = MerkleTree(leaves)
    assert batch_digest(tree.root, tree.size) != batch_digest(tree.root, tree.size + 1)
    if len(leaves) > 1:
        # A leaf can never pass for an inner node (distinct hash prefixes).
        assert MerkleTree([tree.levels[1][0]]).root != tree.levels[1][0]


def test_a_single_results_seal_verifies_alone() -> None:
    ds = [receipt(i) for i in range(5)]
    sig, tree = sign_batch(WORKER, ds)
    for i, d in enumerate(ds):
        seal = make_seal(sig, i, tree.size, tree.path(i))
        assert open_seal(seal) == (sig, i, 5, tree.path(i))
        verify_receipt(WORKER.peer_id_bytes, d, seal)  # nothing but this result and its seal
        with pytest.raises(VerificationError):
            verify_receipt(OTHER.peer_id_bytes, d, seal)  # another worker's claim
    with pytest.raises(VerificationError):
        verify_receipt(WORKER.peer_id_bytes, ds[0], make_seal(sig, 1, 5, tree.path(1)))
    with pytest.raises(VerificationError):
        verify_receipt(WORKER.peer_id_bytes, ds[0], sig + b"\x00" * 7)  # malformed


def test_tampering_with_one_result_of_a_batch_fails_that_result_only() -> None:
    outputs = [b"out-%d" % i for i in range(6)]
    ds = [receipt(i, o) for i, o in enumerate(outputs)]
    sig, tree = sign_batch(WORKER, ds)
    seals = [make_seal(sig, i, tree.size, tree.path(i)) for i in range(6)]
    outputs[3] = b"lies"
    ok = []
    for i, out in enumerate(outputs):
        try:
            verify_receipt(WORKER.peer_id_bytes, receipt(i, out), seals[i])
            ok.append(i)
        except VerificationError:
            pass
    assert ok == [0, 1, 2, 4, 5]


def test_signed_batch_frames_round_trip() -> None:
    recs: list[wire.ResultRecord | wire.ErrorRecord] = [
        wire.ResultRecord(b"a" * 16, b"one", 0, 1, b""),
        wire.ErrorRecord(b"b" * 16, "failed", "kernel"),
        wire.ResultRecord(b"c" * 16, b"two", 0, 2, b""),
    ]
    leaves = [b"\x01" * 32, b"\x02" * 32]
    frame = wire.decode_frame(wire.encode_signed_results(recs, b"s" * 64, leaves)[4:])
    assert frame.type == "S" and frame.batch == wire.SignedBatch(b"s" * 64, tuple(leaves))
    a, b, c = frame.results
    assert isinstance(a, wire.ResultRecord) and (a.output, a.leaf, a.signature) == (b"one", 0, b"")
    assert b == recs[1]
    assert isinstance(c, wire.ResultRecord) and (c.output, c.leaf) == (b"two", 1)


@pytest.mark.parametrize(
    "items",
    [
        [b"s" * 63, [], []],  # short signature
        [b"s" * 64, [b"x" * 31], [[b"a" * 16, 1, b"o", 0, 1]]],  # short digest
        [b"s" * 64, [b"x" * 32, b"y" * 32], [[b"a" * 16, 1, b"o", 0, 1]]],  # count mismatch
        [b"s" * 64, [b"x" * 32], [[b"a" * 16, 1, b"o", 0, 1, b"z" * 64]]],  # its own signature
        [b"s" * 64, [b"x" * 32], [[b"a" * 16, 1, 5, 0, 1]]],  # output not bytes
        [b"s" * 64, "digests", []],
        [b"s" * 64, []],
    ],
)
def test_malformed_signed_batches_are_typed_protocol_errors(items: list[object]) -> None:
    import msgpack

    body = msgpack.packb([wire.VERSION, "S", items], use_bin_type=True)
    with pytest.raises(ProtocolError):
        wire.decode_frame(body)
