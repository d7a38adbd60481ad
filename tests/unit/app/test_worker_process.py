"""The worker process: its view of its assignment (built once per assignment, new with each) and its settled heap."""

import gc
import weakref
from types import SimpleNamespace

from faust.types import TP

from streamlearn.app.runner import settle_heap
from streamlearn.app.worker import _assigned_actives


class _Assignor:
    def __init__(self) -> None:
        self._assignment = object()
        self.actives = {TP("t", 0)}
        self.calls = 0

    def assigned_actives(self) -> set:
        self.calls += 1
        return set(self.actives)

    def assign(self, tps: set) -> None:   # as Faust's on_assignment: a new assignment object each time
        self._assignment = object()
        self.actives = tps


def test_the_assignment_is_built_once_per_assignment_and_follows_each_new_one():
    assignor = _Assignor()
    assigned = _assigned_actives(SimpleNamespace(assignor=assignor))
    assert assigned() == {TP("t", 0)} and assigned() == {TP("t", 0)}
    assert assignor.calls == 1
    assignor.assign({TP("t", 1), TP("u", 0)})
    assert assigned() == {TP("t", 1), TP("u", 0)}
    assert assignor.calls == 2
    assignor.assign(set())   # everything revoked
    assert assigned() == frozenset() and assignor.calls == 3


class _Node:
    pass


def test_a_settled_heap_freezes_what_lives_and_collects_the_garbage_first():
    garbage = _Node()
    garbage.me = garbage            # a cycle: only the collector frees it
    gone = weakref.ref(garbage)
    del garbage
    alive = _Node()
    try:
        frozen = settle_heap()
        assert gone() is None                       # collected, not frozen
        assert frozen == gc.get_freeze_count() > 0
        gc.collect()   # would move it to the oldest generation, had it not been frozen
        assert not any(o is alive for o in gc.get_objects(generation=2))   # no collection walks it
    finally:
        gc.unfreeze()
