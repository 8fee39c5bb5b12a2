"""Node identity (``mesh.identity``): key file created 0600, refused when others can read it,
the same peer id on every load, and signatures tied to that peer id."""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from libp2p.peer.id import ID

from mesh import identity
from mesh.errors import ConfigError, VerificationError
from mesh.identity import Identity, load_or_create


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Run with umask 0, so only the code's own mode keeps the key private."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_file_is_created_mode_0600(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "deep" / "dir" / "node.key"
    ident = load_or_create(path)
    assert path.exists()
    assert mode_of(path) == 0o600
    lines = path.read_text().split()
    assert lines[0] == "p2c2r-ed25519-v1"
    assert bytes.fromhex(lines[1]) == ident.seed()


def test_peer_id_is_stable_across_loads(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    first = load_or_create(path)
    content = path.read_bytes()
    for _ in range(3):
        again = load_or_create(path)
        assert again.peer_id == first.peer_id
        assert again.peer_id_bytes == first.peer_id_bytes
    assert path.read_bytes() == content  # loading never rewrites the key


def test_distinct_files_give_distinct_peers(tmp_path: Path) -> None:
    assert load_or_create(tmp_path / "a.key").peer_id != load_or_create(tmp_path / "b.key").peer_id


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o700 | 0o004, 0o610])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    load_or_create(path)
    path.chmod(mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create(path)
    path.chmod(0o600)
    load_or_create(path)


@pytest.mark.parametrize(
    "content",
    [
        "",
        "p2c2r-ed25519-v1\n",
        "ssh-ed25519 AAAA\n" + "00" * 32 + "\n",
        "p2c2r-ed25519-v1\nnot-hex\n",
        "p2c2r-ed25519-v1\n" + "00" * 31 + "\n",
        "p2c2r-ed25519-v1\n" + "00" * 32 + "\nextra\n",
    ],
)
def test_malformed_key_files_are_config_errors(tmp_path: Path, content: str) -> None:
    path = tmp_path / "node.key"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError):
        load_or_create(path)


def test_unwritable_location_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    outcome = "no error"
    try:
        load_or_create(blocker / "node.key")
    except ConfigError:
        outcome = "config error"
    except RecursionError:
        outcome = "recursion"  # kept out of the report: its 1000-deep exception chain is slow to render
    assert outcome == "config error"


def test_cli_id_prints_the_same_peer_id_every_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nodes import cli

    key = tmp_path / "node.key"
    printed = []
    for _ in range(2):
        assert cli.cmd_id(argparse.Namespace(key_file=str(key))) == 0
        printed.append(capsys.readouterr().out.strip())
    assert printed[0] == printed[1] == load_or_create(key).peer_id.to_base58()
    assert mode_of(key) == 0o600


@given(st.binary(min_size=32, max_size=32))
def test_peer_id_derives_from_the_seed_and_matches_libp2p(seed: bytes) -> None:
    ident = Identity.from_seed(seed)
    assert Identity.from_seed(seed).peer_id == ident.peer_id
    keypair = ident.libp2p_keypair()
    assert ID.from_pubkey(keypair.public_key) == ident.peer_id
    text = ident.peer_id.to_base58()
    assert text.startswith("12D3KooW")  # Ed25519 key inlined in the peer id
    assert identity.peer_id_from_str(text) == ident.peer_id_bytes
    assert identity.peer_id_to_str(ident.peer_id_bytes) == text


@pytest.mark.parametrize("seed", [b"", b"\x00" * 31, b"\x00" * 33])
def test_seed_must_be_32_bytes(seed: bytes) -> None:
    with pytest.raises(ConfigError):
        Identity.from_seed(seed)


@given(st.binary(max_size=200))
def test_signatures_verify_only_for_their_signer_and_data(data: bytes) -> None:
    a = Identity.from_seed(b"\x0a" * 32)
    b = Identity.from_seed(b"\x0b" * 32)
    sig = a.sign(data)
    identity.verify(a.peer_id_bytes, data, sig)
    with pytest.raises(VerificationError):
        identity.verify(b.peer_id_bytes, data, sig)
    with pytest.raises(VerificationError):
        identity.verify(a.peer_id_bytes, data + b"\x00", sig)


def test_signature_by_libp2p_key_matches_ours() -> None:
    ident = Identity.from_seed(b"\x05" * 32)
    sig = ident.libp2p_keypair().private_key.sign(b"hello")
    identity.verify(ident.peer_id_bytes, b"hello", sig)


@pytest.mark.parametrize(
    "text",
    [
        "not a peer id",
        "",
        "12D3KooW",
        "Qm" + "1" * 10,
    ],
)
def test_bad_peer_id_strings_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        identity.peer_id_from_str(text)
