"""``QueueEstimate``: the wait a worker announces for a task queued behind others (``"Q"``)."""

from __future__ import annotations

import pytest

from nodes.worker import QueueEstimate


def test_the_wait_is_the_work_ahead_spread_over_the_slots() -> None:
    q = QueueEstimate(concurrency=2)
    ticket, wait = q.admit("tile")
    assert wait == 0.0 and ticket.pace == 0.0  # a kind never run here: no idea, no wait
    q.leave(ticket)
    q.observe("tile", 10.0)
    q.observe("frame", 0.02)
    first, wait = q.admit("tile")
    q.start(first)
    assert wait == 0.0 and q.admit("frame")[1] == 0.0  # a slot was free for each
    second, wait = q.admit("tile")
    assert wait == pytest.approx((0.02 + 10.0 / 2) / 2)  # both slots taken: it waits
    q.start(second)
    _, wait = q.admit("frame")
    assert wait == pytest.approx((0.02 + 20.0 / 2) / 2)


def test_every_way_out_gives_the_work_back() -> None:
    q = QueueEstimate(concurrency=1)
    q.observe("tile", 4.0)
    done, cancelled, failed = (q.admit("tile")[0] for _ in range(3))
    q.start(done)
    q.start(done)  # started once only
    assert (q.waiting_s, q.running_s, q.waiting, q.running) == (8.0, 4.0, 2, 1)
    q.leave(cancelled)  # cancelled while it waited
    q.start(cancelled)  # too late to start
    q.leave(done)  # its kernel finished (its answer may still be held back)
    q.leave(done)  # the task's end changes nothing more
    q.start(failed)
    q.leave(failed)
    assert (q.waiting_s, q.running_s, q.waiting, q.running) == (0.0, 0.0, 0, 0)


def test_run_times_are_a_moving_average_per_kind() -> None:
    q = QueueEstimate(concurrency=0)  # at least one slot
    q.observe("tile", 10.0)
    q.observe("tile", 20.0)
    assert q.pace == {"tile": pytest.approx(12.0)} and q.concurrency == 1
