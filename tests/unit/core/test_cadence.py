"""One cadence, every N events or T seconds, for checkpoints and snapshots."""

from __future__ import annotations

import pytest

from streamlearn.core.cadence import Cadence


@pytest.mark.parametrize("every, every_seconds, steps, due", [
    # steps: ("count", n) | ("wait", seconds) | ("done",) | ("done-left",); due: after the last step
    (3, 10, [("count", 2)], False),
    (3, 10, [("count", 3)], True),                                   # by count
    (3, 10, [("count", 1), ("wait", 9.9)], False),
    (3, 10, [("count", 1), ("wait", 10)], True),                     # by time, from the first event
    (3, 10, [("wait", 60)], False),                                  # nothing counted: never due
    (3, 10, [("count", 3), ("done",), ("wait", 60)], False),         # done: starts over
    (3, 10, [("wait", 5), ("count", 1), ("wait", 6)], False),        # time runs from the first event
    (3, 10, [("count", 3), ("done-left",), ("wait", 10)], True),     # something still waits: due by time
    (0, 10, [("count", 1000)], False),                               # 0: never by count
    (0, 10, [("count", 1), ("wait", 10)], True),
    (5, 0, [("count", 1), ("wait", 1e6)], False),                    # 0: never by time
])
def test_when_it_is_due(every, every_seconds, steps, due):
    now = [0.0]
    cadence: Cadence[str] = Cadence(every, every_seconds, clock=lambda: now[0])
    for step in steps:
        if step[0] == "count":
            cadence.count("k", step[1])
        elif step[0] == "wait":
            now[0] += step[1]
        else:
            cadence.done("k", left=step[0] == "done-left")
    assert cadence.due("k") is due
    assert cadence.due("other") is False                             # keys are apart


def test_forgetting_keys():
    cadence: Cadence[int] = Cadence(1, 1, clock=lambda: 0.0)
    for key in range(4):
        cadence.count(key)
    cadence.keep_only({1, 2})
    cadence.forget(2)
    assert [cadence.due(k) for k in range(4)] == [False, True, False, False]
    cadence.clear()
    assert not cadence.due(1)
