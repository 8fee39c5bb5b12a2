"""Node identity: an Ed25519 key in a key file, and the libp2p peer id derived from it.

This is one of the two modules in ``mesh`` allowed to import ``libp2p`` (the other is
``mesh.libp2p_host``): peer ids and key types are py-libp2p's, so a P2C2R node is an
ordinary libp2p peer to everyone else.

Key file format (text, one key per file, mode 0600)::

    p2c2r-ed25519-v1
    <64 hex chars: the 32-byte Ed25519 seed>

We write our own file rather than use ``libp2p.save_keypair()``, which writes to a path
relative to the working directory with default permissions (see shared/notes).
Signing and verification use PyNaCl directly (19 us sign, 54 us verify on this machine),
the same implementation py-libp2p's Ed25519 keys wrap.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nacl.exceptions
import nacl.signing
from libp2p.crypto.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID

from mesh.errors import ConfigError, VerificationError

_MAGIC = "p2c2r-ed25519-v1"


@dataclass(frozen=True)
class Identity:
    """A node's signing key and the peer id everyone knows it by."""

    signing_key: nacl.signing.SigningKey
    peer_id: ID

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        if len(seed) != 32:
            raise ConfigError("an Ed25519 seed is 32 bytes")
        sk = nacl.signing.SigningKey(seed)
        pub = Ed25519PublicKey(sk.verify_key)
        return cls(signing_key=sk, peer_id=ID.from_pubkey(pub))

    @classmethod
    def generate(cls) -> Identity:
        return cls.from_seed(os.urandom(32))

    @property
    def peer_id_bytes(self) -> bytes:
        return self.peer_id.to_bytes()

    def sign(self, data: bytes) -> bytes:
        return bytes(self.signing_key.sign(data).signature)

    def libp2p_keypair(self) -> KeyPair:
        priv = Ed25519PrivateKey(self.signing_key)
        return KeyPair(priv, priv.get_public_key())

    def seed(self) -> bytes:
        return bytes(self.signing_key)


def load_or_create(path: str | os.PathLike[str]) -> Identity:
    """Load the key at ``path``, creating it (mode 0600) on first run.

    Refuses a key file that others can read, as ssh does, with the command that fixes it.
    """
    p = Path(path).expanduser()
    if p.exists():
        mode = stat.S_IMODE(p.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(f"key file {p} is readable by other users (mode {mode:o}); run: chmod 600 {p}")
        try:
            lines = p.read_text().split()
        except OSError as exc:
            raise ConfigError(f"cannot read key file {p}: {exc.strerror}") from exc
        if len(lines) != 2 or lines[0] != _MAGIC:
            raise ConfigError(f"{p} is not a P2C2R key file (expected a first line {_MAGIC!r})")
        try:
            seed = bytes.fromhex(lines[1])
        except ValueError as exc:
            raise ConfigError(f"{p}: the key is not valid hex") from exc
        return Identity.from_seed(seed)
    ident = Identity.generate()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the folder for key file {p}: {exc.strerror or exc}") from exc
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_or_create(p)  # another process created it between our check and open
    except OSError as exc:
        raise ConfigError(f"cannot create key file {p}: {exc.strerror}") from exc
    with os.fdopen(fd, "w") as f:
        f.write(f"{_MAGIC}\n{ident.seed().hex()}\n")
    return ident


@lru_cache(maxsize=4096)
def _verify_key_for(peer_id_bytes: bytes) -> nacl.signing.VerifyKey:
    pub = ID(peer_id_bytes).extract_public_key()
    if not isinstance(pub, Ed25519PublicKey):
        raise VerificationError("peer id does not embed an Ed25519 public key")
    return nacl.signing.VerifyKey(pub.to_bytes())


def verify(peer_id_bytes: bytes, data: bytes, signature: bytes) -> None:
    """Check ``signature`` over ``data`` by the key embedded in ``peer_id_bytes``.

    Raises ``VerificationError`` if the signature is not that peer's.
    """
    key = _verify_key_for(bytes(peer_id_bytes))
    try:
        key.verify(data, signature)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError) as exc:
        raise VerificationError("signature does not verify against the peer's key") from exc


@lru_cache(maxsize=4096)
def peer_id_to_str(peer_id_bytes: bytes) -> str:
    """The base58 form (``12D3KooW...``); cached, as a gamer names a worker per completed
    task (the encoding takes about 10 us)."""
    return ID(peer_id_bytes).to_base58()


def peer_id_from_str(text: str) -> bytes:
    """Parse a base58 peer id; only ids that embed an Ed25519 key (``12D3KooW...``) are ours."""
    try:
        raw = ID.from_base58(text).to_bytes()
        key = ID(raw).extract_public_key()
    except Exception as exc:  # py-libp2p and its base58/multihash decoders raise foreign types
        raise ConfigError(f"{text!r} is not a peer id") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{text!r} is not a peer id (expected an Ed25519 id such as 12D3KooW...)")
    return raw
