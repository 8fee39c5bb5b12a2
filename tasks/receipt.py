"""Signed results: the digest a worker signs and the gamer checks.

The signature covers a domain-separated SHA-256 digest of

    (task id, kind, parameters digest, input digest, output digest, worker peer id, time)

so a result cannot be replayed for another task, another input, other parameters (the
codec is a parameter, so it is covered too), or claimed by another worker. The gamer
recomputes every field from what it sent and what it received, and checks the signature
against the peer id the Noise handshake authenticated for the stream the result came on.
"""

from __future__ import annotations

import hashlib
import struct

from mesh import identity
from mesh.errors import VerificationError

DOMAIN = b"p2c2r/result/v1\x00"


def receipt_digest(
    task_id: bytes,
    kind: str,
    params_digest: bytes,
    input_digest: bytes,
    output_digest: bytes,
    worker_peer_id: bytes,
    ts_ms: int,
) -> bytes:
    h = hashlib.sha256(DOMAIN)
    for part in (task_id, kind.encode(), params_digest, input_digest, output_digest, worker_peer_id):
        h.update(struct.pack(">I", len(part)))
        h.update(part)
    h.update(struct.pack(">Q", ts_ms))
    return h.digest()


def sign_receipt(ident: identity.Identity, digest: bytes) -> bytes:
    return ident.sign(digest)


def verify_receipt(worker_peer_id: bytes, digest: bytes, signature: bytes) -> None:
    """Raise ``VerificationError`` unless ``signature`` is the worker's over ``digest``."""
    try:
        identity.verify(worker_peer_id, digest, signature)
    except VerificationError as exc:
        raise VerificationError(f"result signature rejected: {exc}") from exc
