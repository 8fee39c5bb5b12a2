"""Adversarial end to end: 10 real worker processes, 3 of them cheating, the default policy.

Drives ``scripts/adversarial.py`` (the same code the script runs, quick size): a baseline
with 10 honest workers, then one run per misbehaviour (always wrong, honest then wrong,
forged signatures, replayed results, dropped tasks, slow answers), each with 3 fresh
cheating processes started with the hidden ``--misbehave`` flag beside 7 honest ones.
Every process is stopped and reaped by the script's context managers, pass or fail.

Pass criteria (from the issue): forged or replayed results accepted = 0; wrong results
accepted <= 1% of tasks when cheaters answer wrong; every task ends verified or with a
typed error; every cheater is banned (and no honest worker); throughput falls by at most
30% against the all-honest baseline (asserted in work per task, see below).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import trio

pytestmark = pytest.mark.slow

_PATH = Path(__file__).resolve().parents[2] / "scripts" / "adversarial.py"
_spec = importlib.util.spec_from_file_location("adversarial", _PATH)
assert _spec is not None and _spec.loader is not None
adv = importlib.util.module_from_spec(_spec)
sys.modules["adversarial"] = adv
_spec.loader.exec_module(adv)

TASKS = 1000  # the script's --quick size: each run lasts a few seconds of real time


async def test_three_cheaters_in_ten_are_caught_in_every_mode() -> None:
    lines: list[str] = []
    with trio.fail_after(300):
        results = await adv.run_all(list(adv.MODES), TASKS, log=lines.append)
    report = "\n".join(lines)
    print(report)
    by_mode = {r.mode: r for r in results}
    assert list(by_mode) == ["baseline", *adv.MODES], report
    for r in results:
        assert r.untyped == 0 and r.verified + sum(r.errors.values()) == r.tasks, report
        assert r.honest_banned == 0, report
    b = by_mode["baseline"]
    baseline_extra = (b.duplicates + b.probes + b.recomputes) / b.tasks
    for mode in adv.MODES:
        r = by_mode[mode]
        assert r.forged_or_replayed_accepted == 0, report
        assert r.wrong_rate <= (0.01 if mode in ("wrong", "sleeper") else 0.0), report
        assert r.cheaters_banned == r.cheaters == 3, report
        # The throughput criterion (fall <= 30%) is a wall-clock figure: scripts/adversarial.py
        # prints it, and this test does not assert it (a test must not fail because the CI
        # machine is busy). Its clock-free form: on a saturated mesh throughput is inversely
        # proportional to the executions per submitted task (1 + copies, hedges, probes and
        # local re-runs), so a fall of at most 30% against the all-honest baseline means
        # (1 + extra) <= (1 + baseline extra) / 0.7.
        extra = (r.duplicates + r.probes + r.recomputes) / r.tasks
        assert 1.0 + extra <= (1.0 + baseline_extra) / 0.7, f"{mode}: {extra:.3f} extra per task\n{report}"
    # The proofs against answer-cheaters travelled to the honest worker nodes.
    assert by_mode["wrong"].evidence >= 3 and by_mode["wrong"].evidence_shared >= 3, report
