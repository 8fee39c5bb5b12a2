"""What the simulated gamers verify with: the real trust cores over token results.

Every simulated gamer runs the SDK's own ``nodes.verification.VerificationCore`` with its own
``nodes.reputation.Reputation`` (and ``nodes.sdk_cores.AdaptiveTimeouts``), exactly as
``nodes.gamer.GamerClient`` builds them. What the simulator replaces is only what the cores
leave to their shell -- running kernels and checks -- because task inputs and outputs are not
computed here. They are *tokens*:

* a task's input is 8 bytes naming it; the right output is ``b"r" + input``; a malicious
  worker's wrong output is ``b"w" + input`` (``collude``: every cheater forges the same bytes,
  so two cheaters paired as duplicates agree) or ``b"w" + input + worker`` (they do not);
* ``RunCheck`` verdicts follow from the tokens: equivalence is byte equality, a local re-run
  knows the right token, and the kind's cheap self-check rejects a wrong output with
  probability ``self_check_detect`` -- decided by a hash of the output, so every node that
  checks the same output (the gamer, and later whoever verifies its evidence) agrees;
* ``verify_evidence`` is mirrored without signatures (``evidence_proof``): the same order of
  proofs (self-check, re-run when the input is included and the kind's cost is at most
  ``max_recompute_cost`` work units, conflicting reference) decides the ``Proof``, which the
  receiver hands to the real ``Reputation.apply_evidence``.

The registry the cores consult is the real one with each kind's ``cost`` replaced by the
scenario's calibrated cost (the core uses it to decide what a gamer may re-run itself).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from nodes.reputation import Evidence, Proof
from nodes.verification import RunCheck
from tasks.registry import Registry, default_registry

__all__ = [
    "MAX_RECOMPUTE_COST",
    "check_verdict",
    "evidence_proof",
    "right_output",
    "self_check_passes",
    "sim_registry",
    "wrong_output",
]

#: ``verify_evidence``'s default ``max_recompute_cost`` (work units).
MAX_RECOMPUTE_COST = 2000.0


class _Cost:
    """A kind's cost model replaced by the scenario's calibrated cost (picklable)."""

    def __init__(self, cost: float) -> None:
        self.cost = cost

    def __call__(self, params: Any, data_len: int) -> float:
        return self.cost


def sim_registry(costs: Iterable[tuple[str, float]]) -> Registry:
    """The real kinds named in ``costs``, each with its calibrated cost in work units (ms)."""
    reg = default_registry()
    return Registry(replace(reg.get(kind), cost=_Cost(cost)) for kind, cost in sorted(dict(costs).items()))


def right_output(data: bytes) -> bytes:
    return b"r" + data


def wrong_output(data: bytes, worker: bytes, collude: bool) -> bytes:
    return b"w" + data if collude else b"w" + data + worker


def self_check_passes(output: bytes, detect: float) -> bool:
    """The kind's cheap self-check on ``output``: right outputs pass; a wrong one fails with
    probability ``detect``, decided by a hash so every checker agrees."""
    if output[:1] != b"w":
        return True
    return zlib.crc32(output) / 4294967296.0 >= detect


def check_verdict(eff: RunCheck, detect: float) -> bool:
    """What ``nodes.verification.run_check`` would answer for ``eff`` on token outputs."""
    if eff.recompute:
        return eff.output[:1] != b"w"
    if eff.reference is None:
        return self_check_passes(eff.output, detect)
    return eff.output == eff.reference


def evidence_proof(ev: Evidence, cost: float, detect: float, recompute: bool = True) -> Proof | None:
    """``verify_evidence``'s verdict on token evidence (signatures are not modelled); None
    where the real function raises ``InvalidEvidenceError``."""
    bad = ev.bad.output
    if ev.input is not None and bad is not None and not self_check_passes(bad, detect):
        return Proof.SELF_CHECK
    if recompute and ev.input is not None and cost <= MAX_RECOMPUTE_COST:
        if bad is not None and bad[:1] != b"w":
            return None  # a re-run gives the accused output: it is right
        return Proof.RECOMPUTED
    ref = ev.reference
    if ref is not None and ref.output_digest != ev.bad.output_digest:
        return Proof.CONFLICT
    return None
