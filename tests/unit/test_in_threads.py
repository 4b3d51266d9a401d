"""flows.pipeline.in_threads: the gold step's concurrent commits (results in order, each
call in a copy of the caller's context, the first error raised after every call ended,
at most 8 at once)."""

from __future__ import annotations

import contextvars
import threading
import time

import pytest

from riverlake.flows.pipeline import in_threads

pytestmark = pytest.mark.unit

WHO = contextvars.ContextVar("who", default=None)


def test_results_in_order_each_call_in_the_callers_context():
    WHO.set("the task")

    def call(i: int, delay: float):
        time.sleep(delay)  # later calls end first
        return i, WHO.get()

    got = in_threads(call, [(i, 0.05 * (3 - i)) for i in range(4)])
    assert got == [(0, "the task"), (1, "the task"), (2, "the task"), (3, "the task")]


def test_the_first_error_is_raised_after_every_call_ended():
    ended = []

    def call(i: int):
        if i == 1:
            raise ValueError("commit 1 failed")
        time.sleep(0.1)
        ended.append(i)

    with pytest.raises(ValueError, match="commit 1 failed"):
        in_threads(call, [(i,) for i in range(4)])
    assert sorted(ended) == [0, 2, 3]


def test_at_most_eight_at_once():
    lock, running, peak = threading.Lock(), [0], [0]

    def call(_: int):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1

    in_threads(call, [(i,) for i in range(20)])
    assert peak[0] == 8
