"""``p2c2r node run --config``: the ``[worker]`` table becomes the worker's settings, and a
bad value is a ``ConfigError`` that names the key (never a node started half-configured)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.errors import ConfigError
from nodes.cli import _node_config, build_parser
from nodes.worker import WorkerConfig


def config_from(tmp_path: Path, worker_table: str) -> WorkerConfig:
    path = tmp_path / "node.toml"
    path.write_text("[worker]\n" + worker_table)
    args = build_parser().parse_args(
        ["node", "run", "--config", str(path), "--key-file", str(tmp_path / "k")]
    )
    worker: WorkerConfig = _node_config(args).worker
    return worker


def test_the_batch_lane_is_configured_from_the_worker_table(tmp_path: Path) -> None:
    wc = config_from(tmp_path, "concurrency = 2\nbatch_concurrency = 3\nbatch_nice = 5\nmax_queued = 9\n")
    assert (wc.concurrency, wc.batch_concurrency, wc.batch_nice, wc.max_queued) == (2, 3, 5, 9)
    default = config_from(tmp_path, "")
    assert (default.batch_concurrency, default.batch_nice) == (0, 10)  # as many as concurrency, nice +10


@pytest.mark.parametrize(
    "table, key",
    [
        ("batch_nice = -1\n", "batch_nice"),
        ("batch_nice = true\n", "batch_nice"),
        ('batch_concurrency = "4"\n', "batch_concurrency"),
        ("max_queued = 0\n", "max_queued"),
        ("batch_slots = 2\n", "batch_slots"),  # unknown key
    ],
)
def test_bad_worker_settings_are_config_errors_naming_the_key(tmp_path: Path, table: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        config_from(tmp_path, table)
