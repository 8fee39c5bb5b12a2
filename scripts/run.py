#!/usr/bin/env python3
"""One-step set-up and run: ``python3 scripts/run.py demo`` or ``python3 scripts/run.py test``.

Each command creates ``.venv`` next to this repository if it is missing, installs what it
needs (torch's CPU build first, so the project's ``torch>=2.4`` installs nothing more),
then runs:

- ``demo [ARGS]``: ``p2c2r demo`` (a local mesh on loopback), extra ARGS passed through;
- ``test [PYTEST ARGS]``: ruff (lint + format check), mypy --strict on product code, and
  the whole pytest suite, slow multi-process tests included.

Only the standard library is used here, so it runs on a fresh Python 3.11 with pip.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
TORCH = "torch==2.13.0"


def sh(*cmd: str | Path, check: bool = True) -> int:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, check=check).returncode


def ensure_env(extras: str) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this script may be started by an older python3
        sys.exit(f"P2C2R needs Python >= 3.11; this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / f".p2c2r-installed-{extras or 'base'}"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == want:
        return
    pip = [PY, "-m", "pip", "--disable-pip-version-check", "-q"]
    if subprocess.run([str(PY), "-c", "import torch"], capture_output=True).returncode != 0:
        # The pinned CPU build first: a bare torch requirement would pull a multi-GB CUDA build.
        if sh(*pip, "install", TORCH, check=False) != 0:
            sh(*pip, "install", "torch>=2.4")
    target = f".[{extras}]" if extras else "."
    sh(*pip, "install", "-e", target)
    drop_stale_trio_stubs()
    stamp.write_text(want)


def drop_stale_trio_stubs() -> None:
    """Remove ``trio-stubs`` (from trio-typing, a py-libp2p dependency) from the venv.

    Those stubs describe trio 0.22 and shadow the inline types of the trio we run (mypy
    always prefers a stub package), so mypy would reject current APIs such as
    ``abandon_on_cancel``. The runtime never imports them.
    """
    out = subprocess.run(
        [str(PY), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    stubs = Path(out.stdout.strip()) / "trio-stubs"
    if stubs.is_dir():
        shutil.rmtree(stubs)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test"):
        print(__doc__)
        return 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "demo":
        ensure_env("")
        return subprocess.run([str(BIN / "p2c2r"), "demo", *rest], cwd=ROOT).returncode
    ensure_env("test")
    env_bin = str(BIN)
    steps = [
        [f"{env_bin}/ruff", "check", "mesh", "tasks", "nodes", "simulations", "scripts", "tests"],
        [f"{env_bin}/ruff", "format", "--check", "mesh", "tasks", "nodes", "simulations", "scripts", "tests"],
        [f"{env_bin}/mypy"],
    ]
    for step in steps:
        if sh(*step, check=False) != 0:
            print(f"FAILED: {' '.join(step)}", flush=True)
            return 1
    return sh(PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", *rest, check=False)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
