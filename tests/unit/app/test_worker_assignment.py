"""The worker's view of its assignment: built once per assignment, new with each."""

from types import SimpleNamespace

from faust.types import TP

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
