"""Result receipts (``tasks.receipt``): a signature binds a result to one task, input and worker.

The gamer rebuilds the digest from what it sent and what it received; any single field
that differs from what the worker signed (task id, kind, parameters, input, output, worker,
time) must fail verification, as must a signature checked against another peer's key.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh import wire
from mesh.errors import VerificationError
from mesh.identity import Identity
from tasks.receipt import DOMAIN, receipt_digest, sign_receipt, verify_receipt

WORKER = Identity.from_seed(b"\x01" * 32)
OTHER = Identity.from_seed(b"\x02" * 32)


@dataclasses.dataclass(frozen=True)
class Fields:
    task_id: bytes
    kind: str
    params_digest: bytes
    input_digest: bytes
    output_digest: bytes
    worker_peer_id: bytes
    ts_ms: int

    def digest(self) -> bytes:
        return receipt_digest(
            self.task_id,
            self.kind,
            self.params_digest,
            self.input_digest,
            self.output_digest,
            self.worker_peer_id,
            self.ts_ms,
        )


BASE = Fields(
    task_id=b"\x10" * 16,
    kind="upscale",
    params_digest=wire.params_digest({"scale": 2.0, "codec": "jpeg"}),
    input_digest=wire.digest(b"input frame"),
    output_digest=wire.digest(b"output frame"),
    worker_peer_id=WORKER.peer_id_bytes,
    ts_ms=1_700_000_000_000,
)
FIELD_NAMES = [f.name for f in dataclasses.fields(Fields)]


def field_values(name: str) -> st.SearchStrategy[Any]:
    if name == "kind":
        return st.text(max_size=64)
    if name == "ts_ms":
        return st.integers(min_value=0, max_value=2**64 - 1)
    if name == "task_id":
        return st.binary(min_size=16, max_size=16)
    if name == "worker_peer_id":
        return st.just(OTHER.peer_id_bytes) | st.binary(max_size=64)
    return st.binary(min_size=32, max_size=32)


def test_an_honest_receipt_verifies() -> None:
    sig = sign_receipt(WORKER, BASE.digest())
    assert len(sig) == 64
    verify_receipt(WORKER.peer_id_bytes, BASE.digest(), sig)


@pytest.mark.parametrize("name", FIELD_NAMES)
@given(data=st.data())
@settings(max_examples=60)
def test_any_single_changed_field_fails_verification(name: str, data: st.DataObject) -> None:
    sig = sign_receipt(WORKER, BASE.digest())
    value = data.draw(field_values(name).filter(lambda v: v != getattr(BASE, name)))
    changed = dataclasses.replace(BASE, **{name: value})
    assert changed.digest() != BASE.digest()
    with pytest.raises(VerificationError):
        verify_receipt(WORKER.peer_id_bytes, changed.digest(), sig)


def test_a_result_signed_by_another_worker_fails() -> None:
    # Another peer signs a digest naming itself; checked against the stream's peer
    # (the worker we sent the task to), it is not that peer's signature.
    claimed = dataclasses.replace(BASE, worker_peer_id=OTHER.peer_id_bytes)
    sig = sign_receipt(OTHER, claimed.digest())
    verify_receipt(OTHER.peer_id_bytes, claimed.digest(), sig)  # it is OTHER's, honestly
    with pytest.raises(VerificationError):
        verify_receipt(WORKER.peer_id_bytes, claimed.digest(), sig)
    with pytest.raises(VerificationError):
        verify_receipt(WORKER.peer_id_bytes, BASE.digest(), sig)


@given(st.integers(min_value=0, max_value=63), st.integers(min_value=0, max_value=7))
def test_any_flipped_signature_bit_fails(byte: int, bit: int) -> None:
    sig = bytearray(sign_receipt(WORKER, BASE.digest()))
    sig[byte] ^= 1 << bit
    with pytest.raises(VerificationError):
        verify_receipt(WORKER.peer_id_bytes, BASE.digest(), bytes(sig))


@given(st.binary(max_size=80), st.binary(max_size=80))
@settings(max_examples=200)
def test_garbage_signatures_and_peer_ids_raise_only_verification_errors(sig: bytes, peer: bytes) -> None:
    with pytest.raises(VerificationError):
        verify_receipt(WORKER.peer_id_bytes, BASE.digest(), sig)
    try:
        verify_receipt(peer, BASE.digest(), sign_receipt(WORKER, BASE.digest()))
    except VerificationError:
        pass
    else:
        assert peer == WORKER.peer_id_bytes


def test_field_boundaries_are_unambiguous() -> None:
    # Length prefixes: moving a byte from one field to the next changes the digest.
    a = dataclasses.replace(BASE, task_id=b"\x10" * 16, kind="ab")
    b = dataclasses.replace(BASE, task_id=b"\x10" * 16 + b"a", kind="b")
    assert a.digest() != b.digest()
    c = dataclasses.replace(BASE, input_digest=b"xy", output_digest=b"z")
    d = dataclasses.replace(BASE, input_digest=b"x", output_digest=b"yz")
    assert c.digest() != d.digest()


def test_digest_is_domain_separated() -> None:
    # A signature made by the same key for another purpose (here: over the raw digest
    # material without the domain) must not pass as a receipt.
    assert DOMAIN.startswith(b"p2c2r/result/")
    sig = WORKER.sign(wire.digest(BASE.task_id))
    with pytest.raises(VerificationError):
        verify_receipt(WORKER.peer_id_bytes, BASE.digest(), sig)
    assert len(BASE.digest()) == 32
