"""``p2c2r submit`` against a running node, as a user types it (issue: CLI and upscale)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.e2e.test_task_path_libp2p import REPO, NodeFactory, NodeProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    factory = NodeFactory(tmp_path_factory.mktemp("cli"))
    try:
        yield factory.start("cli1")[0]
    finally:
        factory.close()


def submit(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nodes.cli", "submit", *args],
        cwd=REPO,
        env={**os.environ, "P2C2R_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_submit_upscale_png_to_jpeg(node: NodeProcess, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, 160 * 90 * 3).reshape(90, 160, 3)
    frame = (gradient + rng.normal(0, 3, gradient.shape)).clip(0, 255).astype(np.uint8)
    src = tmp_path / "frame.png"
    Image.fromarray(frame).save(src)
    out = tmp_path / "frame2x.jpg"
    proc = submit("upscale", "--peer", node.addr, "--input", str(src), "--output", str(out), home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "verified result from" in proc.stdout
    img = Image.open(io.BytesIO(out.read_bytes()))
    assert img.format == "JPEG" and img.size == (320, 180)


def test_submit_reports_typed_errors_with_exit_codes(node: NodeProcess, tmp_path: Path) -> None:
    bad_param = submit("upscale", "--peer", node.addr, "--param", "scale=7", home=tmp_path)
    assert bad_param.returncode == 1 and "scale" in bad_param.stderr and "must be one of" in bad_param.stderr
    unknown = submit("teleport", "--peer", node.addr, home=tmp_path)
    assert unknown.returncode == 1 and "unknown task kind" in unknown.stderr
    bad_addr = submit("echo", "--peer", "/ip4/bad", home=tmp_path)
    assert bad_addr.returncode == 2 and "not a valid multiaddr" in bad_addr.stderr
    no_peer = submit("echo", home=tmp_path / "empty")
    assert no_peer.returncode == 2 and "--peer" in no_peer.stderr
    echoed = submit("echo", "--peer", node.addr, "--param", "tag=hello", home=tmp_path)
    assert echoed.returncode == 0 and "verified result" in echoed.stdout
