"""The shared-memory primitives (``nodes.shm``) and their wire form, with real segments.

Segments are real POSIX shared memory (``/dev/shm`` here); every test removes what it
creates (the ``segments`` fixture unlinks any name it handed out, whatever happened).
The resource-tracker and sweeper tests run a second Python process, because both are
about what happens when *another* process attaches or dies.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh import wire
from mesh.errors import ProtocolError
from nodes import shm

pytestmark = pytest.mark.skipif(not shm.SHM_DIR.is_dir(), reason="needs Linux /dev/shm")

REPO = Path(__file__).resolve().parents[2]


class Names:
    """Hands out segment names owned by this process; unlinks them all at the end."""

    def __init__(self) -> None:
        self.token = shm.new_token()
        self.made: list[str] = []

    def new(self, token: str | None = None) -> str:
        name = shm.segment_name(token or self.token)
        self.made.append(name)
        return name

    def close(self) -> None:
        for name in self.made:
            shm.unlink(name)


@pytest.fixture
def segments() -> Iterator[Names]:
    names = Names()
    try:
        yield names
    finally:
        names.close()


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )


# ---------------------------------------------------------------- segments


def test_a_segment_round_trips_and_is_gone_after_unlink(segments: Names) -> None:
    name, data = segments.new(), os.urandom(300_000)
    shm.write_segment(name, data)
    assert shm.exists(name)
    assert shm.read_segment(name, len(data)) == data
    assert shm.read_segment(name, len(data), remove=True) == data
    assert shm.exists(name) is False
    assert shm.unlink(name) is False  # already gone: no error


def test_a_size_other_than_the_frame_states_is_refused(segments: Names) -> None:
    name = segments.new()
    shm.write_segment(name, b"x" * 5000)
    with pytest.raises(shm.ShmRefusedError, match="holds 5000 bytes, the frame states 4999"):
        shm.read_segment(name, 4999)
    with pytest.raises(shm.ShmRefusedError):
        shm.read_segment(name, 5001, remove=True)  # the reader owns it: removed all the same
    assert shm.exists(name) is False


def test_a_missing_segment_is_unavailable_not_a_crash(segments: Names) -> None:
    with pytest.raises(shm.ShmUnavailableError, match="cannot open"):
        shm.read_segment(segments.new(), 10)
    name = segments.new()
    shm.write_segment(name, b"a")
    with pytest.raises(shm.ShmUnavailableError, match="cannot create"):
        shm.write_segment(name, b"b")  # names are never reused: O_EXCL


def test_segments_are_private_to_their_user(segments: Names) -> None:
    name = segments.new()
    shm.write_segment(name, b"secret")
    assert (shm.SHM_DIR / name).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "name",
    [
        "psm_1234abcd",  # Python's own default names: someone else's segment
        "p2c2r_12_0123456789abcdef",  # no id
        "p2c2r_x_0123456789abcdef_0123456789abcdef",  # owner not a pid
        "p2c2r_12_0123456789ABCDEF_0123456789abcdef",  # token not lower-case hex
        "p2c2r_12_0123456789abcdef_0123456789abcdef/../x",
        "../p2c2r_12_0123456789abcdef_0123456789abcdef",
        "",
    ],
)
def test_names_outside_the_scheme_are_refused(name: str) -> None:
    with pytest.raises(shm.ShmRefusedError, match="outside"):
        shm.check_name(name, None)


def test_a_name_must_carry_the_streams_token() -> None:
    token, other = shm.new_token(), shm.new_token()
    name = shm.segment_name(token)
    assert shm.check_name(name, token) == os.getpid()
    with pytest.raises(shm.ShmRefusedError, match="token"):
        shm.check_name(name, other)


def test_attaching_in_another_process_does_not_unlink_the_segment(segments: Names) -> None:
    """Python's resource tracker unlinks, at exit, what a process merely attached to;
    ``nodes.shm`` keeps it out. The child reads the segment and exits normally."""
    name, data = segments.new(), b"still mine" * 1000
    shm.write_segment(name, data)
    child = run_python(
        f"from nodes import shm; assert shm.read_segment({name!r}, {len(data)}) == {data!r}; print('read')"
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "read"
    assert "leaked" not in child.stderr  # the tracker had nothing to warn about
    assert shm.exists(name) and shm.read_segment(name, len(data)) == data


def test_the_sweeper_reclaims_a_dead_owners_segment_and_keeps_a_live_ones(segments: Names) -> None:
    token = shm.new_token()
    # A child creates a segment in its own name and dies without unlinking it (SIGKILL-like).
    child = run_python(
        "import os; from nodes import shm; "
        f"n = shm.segment_name({token!r}); shm.write_segment(n, b'orphan'); print(n, flush=True); os._exit(0)"
    )
    assert child.returncode == 0, child.stderr
    orphan = child.stdout.strip()
    segments.made.append(orphan)
    assert shm.check_name(orphan, token) != os.getpid()
    assert shm.exists(orphan)
    mine = segments.new()
    shm.write_segment(mine, b"live")
    swept = shm.sweep()
    assert orphan in swept and mine not in swept
    assert shm.exists(orphan) is False and shm.exists(mine)


def test_a_stream_unlinks_what_is_left_when_it_ends(segments: Names) -> None:
    segs = shm.StreamSegments(shm.new_token(), segments.token, 4096, max_outputs=2)
    kept, consumed, named = segments.new(), segments.new(), segments.new(segs.in_token)
    for n in (kept, consumed, named):
        shm.write_segment(n, b"z" * 10)
    segs.handed_out(consumed, 10)
    segs.handed_out(kept, 10)
    segs.named_input(named)
    shm.unlink(consumed)  # the gamer read it
    assert segs.output_room(10)  # the consumed one no longer counts
    assert list(segs.outputs) == [kept]
    segs.handed_out(segments.new(), 10)
    assert not segs.output_room(10)  # two held: a gamer that never unlinks gets the stream
    assert segs.close() == 2  # kept + named (the third was never created)
    assert shm.exists(kept) is False and shm.exists(named) is False


# ---------------------------------------------------------------- wire


def test_shared_memory_references_round_trip_in_every_frame() -> None:
    ref = wire.ShmRef("p2c2r_1_0123456789abcdef_0123456789abcdef", 1 << 20)
    tid = os.urandom(16)
    task = wire.TaskRecord(tid, "echo", {}, b"", wire.ENC_SHM, 100, ref)
    body = wire.encode_tasks([task])[4:]
    assert wire.decode_frame(body).tasks == (task,)
    res = wire.ResultRecord(tid, b"", wire.ENC_SHM, 5, b"s" * 64, shm=ref)
    assert wire.decode_frame(wire.encode_results([res])[4:]).results == (res,)
    signed = wire.decode_frame(wire.encode_signed_results([res], b"t" * 64, [b"d" * 32])[4:])
    assert signed.results[0] == wire.ResultRecord(tid, b"", wire.ENC_SHM, 5, b"", 0, ref)
    hello = wire.ShmHello(ref.name, 32, "0123456789abcdef", 262144)
    assert wire.decode_frame(wire.encode_hello(hello)[4:]).hello == hello
    reply = wire.ShmHelloReply(True, b"n" * 32, "fedcba9876543210", "")
    assert wire.decode_frame(wire.encode_hello_reply(reply)[4:]).hello_reply == reply


@pytest.mark.parametrize(
    "payload",
    [b"bytes are not a reference", ["name"], ["name", -1], [7, 10], ["x" * 65, 10], ["name", True]],
)
def test_malformed_references_are_protocol_errors(payload: object) -> None:
    import msgpack

    body = msgpack.packb([1, "T", [[b"\x00" * 16, "echo", {}, payload, wire.ENC_SHM, 0]]])
    with pytest.raises(ProtocolError):
        wire.decode_frame(body)


def test_shared_memory_payloads_have_no_bytes_to_decompress() -> None:
    with pytest.raises(ProtocolError, match="no bytes"):
        wire.decompress_payload(b"", wire.ENC_SHM, 10)


# ---------------------------------------------------------------- configuration


def test_the_worker_option_is_on_by_default_and_can_be_turned_off(tmp_path: Path) -> None:
    from mesh.errors import ConfigError
    from nodes.cli import _node_config, build_parser

    def worker_shm(*argv: str) -> bool:
        args = build_parser().parse_args(["node", "run", "--key-file", str(tmp_path / "k"), *argv])
        return bool(_node_config(args).worker.shm)

    assert worker_shm() is True
    assert worker_shm("--no-shm") is False
    conf = tmp_path / "node.toml"
    conf.write_text("[worker]\nshm = false\n")
    assert worker_shm("--config", str(conf)) is False
    conf.write_text('[worker]\nshm = "no"\n')
    with pytest.raises(ConfigError, match="shm must be true or false"):
        worker_shm("--config", str(conf))
