"""The learner's decisions, example by example, with River and without an app or a broker."""

from __future__ import annotations

import pytest

from streamlearn.core.learner import Failed, Learned, Repeated, Replayed, learn_example
from streamlearn.core.messages import MODEL_ERROR, Example
from streamlearn.models import get_spec, new_model


class Versions:
    """Records what the learner tells the model's versions; answers with ``changes`` (and ``new``)."""

    def __init__(self, changes=(), new=None) -> None:
        self.calls: list[tuple] = []
        self.changes, self.new = list(changes), new

    def learned(self, live, x, y, y_pred, shadow=None):
        self.calls.append((live.key, x, y, y_pred))
        return self.new, self.changes


def model(offset: int = 10, learned_ids: tuple = ()):
    live = new_model("m", get_spec("logreg"))
    live.offset = offset
    for eid in learned_ids:
        live.recent.add(eid)
    return live


def ex(eid: str = "e1", y=True) -> Example:
    return Example(eid, "m", {"a": 1.0}, y)


@pytest.mark.parametrize("offset, inside, learned_ids, outcome, learned, offset_after", [
    (10, {}, (), Replayed, 0, 10),                     # at the model's offset: inside its checkpoint
    (9, {}, (), Replayed, 0, 10),                      # below it
    (11, {}, (), Learned, 1, 11),                      # after it: learned
    (11, {"m": True}, (), Replayed, 0, 10),            # the message was found inside for an earlier example
    (10, {"m": False}, (), Learned, 1, 10),            # ... or outside: every example of it is learned
    (11, {}, ("e1",), Repeated, 0, 11),                # learned this event already: the offset moves on
], ids=["at-offset", "below", "after", "message-inside", "message-outside", "repeat"])
def test_what_an_example_of_a_message_at_an_offset_does(offset, inside, learned_ids, outcome, learned, offset_after):
    live, versions = model(10, learned_ids), Versions()
    result = learn_example(live, ex(), offset, inside, versions)
    assert type(result) is outcome
    assert (live.learned, live.offset) == (learned, offset_after)
    assert len(versions.calls) == (1 if outcome is Learned else 0)


def test_a_message_is_decided_once_per_model_so_all_its_examples_are_learned():
    """A checkpoint covers whole messages: after the first example moved the offset to the message, the others
    of the same message are still learned, not taken as inside the checkpoint."""
    live, inside = model(10), {}
    results = [learn_example(live, ex(f"e{i}"), 11, inside, Versions()) for i in range(3)]
    assert [type(r) for r in results] == [Learned] * 3 and live.learned == 3 and inside == {"m": False}


def test_learning_scores_first_and_hands_the_versions_their_verdict():
    live = model(0)
    first = learn_example(live, ex("e1", True), 1, {}, Versions())
    assert first == Learned(False)                       # an untrained model answers False: scored wrong
    versions = Versions(changes=["a snapshot"], new="the new live model")
    second = learn_example(live, ex("e2", True), 2, {}, versions)
    assert second == Learned(True, ["a snapshot"], "the new live model")
    assert versions.calls == [("m", {"a": 1.0}, True, True)]


def test_a_river_failure_refuses_the_example_and_moves_the_offset_past_it():
    class Broken:
        def predict_one(self, x):
            raise ValueError("no such thing")

    live, versions = model(10), Versions()
    live.model = Broken()
    result = learn_example(live, ex("e1"), 11, {}, versions)
    assert isinstance(result, Failed) and result.rejected.reason == MODEL_ERROR
    assert "ValueError: no such thing" in result.rejected.detail and result.rejected.event_id == "e1"
    assert isinstance(result.error, ValueError)
    assert (live.learned, live.offset, versions.calls) == (0, 11, [])
