"""Signed results: the digest a worker signs and the gamer checks.

The signature covers a domain-separated SHA-256 digest of

    (task id, kind, parameters digest, input digest, output digest, worker peer id, time)

so a result cannot be replayed for another task, another input, other parameters (the
codec is a parameter, so it is covered too), or claimed by another worker. The gamer
recomputes every field from what it sent and what it received, and checks the signature
against the peer id the Noise handshake authenticated for the stream the result came on.

Several results flushed in one frame share one signature over a Merkle root of their
digests; each keeps a seal (the signature and its Merkle path) that is checked alone.
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
    """Raise ``VerificationError`` unless ``signature`` is the worker's over ``digest``.

    ``signature`` is a plain signature or the seal of a result signed in a batch.
    """
    try:
        message, sig = signed_digest(digest, signature)
        identity.verify(worker_peer_id, message, sig)
    except VerificationError as exc:
        raise VerificationError(f"result signature rejected: {exc}") from exc


# ---------------------------------------------------------------- batches (one signature per frame)
#
# A worker that flushes several results in one frame signs once: a Merkle root over
# their receipt digests. Each result then carries a *seal* instead of a signature:
#
#     seal = signature (64) || leaf index (u32) || leaf count (u32) || path (32 bytes each)
#
# which anyone can check for that result alone (``verify_receipt`` takes either form).
# Leaves and inner nodes are hashed with distinct prefixes (as in RFC 6962), so a leaf
# can never pass for an inner node; an odd node at the end of a level is promoted as is;
# the signed digest is domain-separated from single receipts and binds the leaf count.

BATCH_DOMAIN = b"p2c2r/batch/v1\x00"
SIGNATURE_LEN = 64
DIGEST_LEN = 32
#: Longest path accepted: trees of up to 2**32 leaves.
MAX_PATH = 32
_SEAL_HEAD = struct.Struct(">II")
#: Longest seal: signature, leaf index and count, and a path of ``MAX_PATH`` digests.
MAX_SEAL_LEN = SIGNATURE_LEN + _SEAL_HEAD.size + MAX_PATH * DIGEST_LEN


def is_seal_shaped(signature: bytes) -> bool:
    """Whether ``signature`` has the length of a plain signature or of a well-formed seal."""
    rest = len(signature) - SIGNATURE_LEN - _SEAL_HEAD.size
    return len(signature) == SIGNATURE_LEN or (0 <= rest <= MAX_PATH * DIGEST_LEN and rest % DIGEST_LEN == 0)


def _leaf(digest: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + digest).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class MerkleTree:
    """The tree over a batch's receipt digests: its root and each leaf's path."""

    __slots__ = ("levels",)

    def __init__(self, digests: list[bytes] | tuple[bytes, ...]) -> None:
        if not digests:
            raise ValueError("a Merkle tree needs at least one leaf")
        level = [_leaf(d) for d in digests]
        self.levels = [level]
        while len(level) > 1:
            nxt = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])  # promoted
            self.levels.append(nxt)
            level = nxt

    @property
    def size(self) -> int:
        return len(self.levels[0])

    @property
    def root(self) -> bytes:
        return self.levels[-1][0]

    def path(self, index: int) -> list[bytes]:
        out = []
        for level in self.levels[:-1]:
            sib = index ^ 1
            if sib < len(level):
                out.append(level[sib])
            index //= 2
        return out


def root_from_path(digest: bytes, index: int, size: int, path: list[bytes]) -> bytes:
    """The root that ``path`` leads to from leaf ``index`` of ``size`` holding ``digest``."""
    if not 0 <= index < size:
        raise VerificationError(f"leaf index {index} is outside a batch of {size}")
    node, used, width = _leaf(digest), 0, size
    while width > 1:
        if index % 2 or index + 1 < width:
            if used >= len(path):
                raise VerificationError("Merkle path is too short")
            sib = path[used]
            used += 1
            node = _node(sib, node) if index % 2 else _node(node, sib)
        index //= 2
        width = (width + 1) // 2
    if used != len(path):
        raise VerificationError("Merkle path is too long")
    return node


def batch_digest(root: bytes, size: int) -> bytes:
    """What a worker signs for a batch: the root and the leaf count, domain-separated."""
    return hashlib.sha256(BATCH_DOMAIN + struct.pack(">I", size) + root).digest()


def sign_batch(ident: identity.Identity, digests: list[bytes]) -> tuple[bytes, MerkleTree]:
    tree = MerkleTree(digests)
    return ident.sign(batch_digest(tree.root, tree.size)), tree


def make_seal(signature: bytes, index: int, size: int, path: list[bytes]) -> bytes:
    return signature + _SEAL_HEAD.pack(index, size) + b"".join(path)


def open_seal(seal: bytes) -> tuple[bytes, int, int, list[bytes]]:
    """(signature, leaf index, leaf count, path) of a seal; ``VerificationError`` if malformed."""
    rest = len(seal) - SIGNATURE_LEN - _SEAL_HEAD.size
    if rest < 0 or rest % DIGEST_LEN or rest // DIGEST_LEN > MAX_PATH:
        raise VerificationError(f"a receipt seal of {len(seal)} bytes is malformed")
    index, size = _SEAL_HEAD.unpack_from(seal, SIGNATURE_LEN)
    body = seal[SIGNATURE_LEN + _SEAL_HEAD.size :]
    path = [body[i : i + DIGEST_LEN] for i in range(0, len(body), DIGEST_LEN)]
    return seal[:SIGNATURE_LEN], index, size, path


def signed_digest(digest: bytes, seal: bytes) -> tuple[bytes, bytes]:
    """(message, signature) to check for a receipt: itself, or its batch's root."""
    if len(seal) == SIGNATURE_LEN:
        return digest, seal
    signature, index, size, path = open_seal(seal)
    return batch_digest(root_from_path(digest, index, size, path), size), signature
