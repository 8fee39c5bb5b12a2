"""Every built-in kernel: registered, cheap to import, examples valid, checks hold."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tasks.registry import default_registry

KINDS = ["upscale", "physics_step", "raytrace", "pathfind", "flocking"]


def test_all_kernels_registered() -> None:
    names = default_registry().names()
    for k in KINDS:
        assert k in names


def test_importing_kernels_does_not_import_torch() -> None:
    code = "import sys, tasks.registry as r; r.default_registry(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", KINDS)
def test_small_example_runs_and_checks(name: str) -> None:
    kind = default_registry().get(name)
    assert kind.example is not None and kind.tolerance and kind.description
    params, data = kind.example(np.random.default_rng(0), "small")
    params = kind.validate_params(params, len(data))
    out = kind.execute(params, data)
    assert kind.self_check(params, data, out)
    assert kind.equivalent(params, out, out)
    assert kind.cost(params, len(data)) > 0
    assert not kind.inline


@pytest.mark.parametrize("name", KINDS)
def test_garbage_input_is_a_validation_error(name: str) -> None:
    from mesh.errors import ValidationError

    kind = default_registry().get(name)
    params = kind.validate_params({})
    for junk in (b"", b"\x00" * 17, b"P2CA\x01\x00\x07\x02" + b"\xff" * 8, b"\x81\xa1a\x01"):
        with pytest.raises(ValidationError):
            kind.execute(params, junk)
