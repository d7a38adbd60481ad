"""Label health per key: coverage, delays, refusals, and a starving episode that opens once and ends once."""

from __future__ import annotations

from streamlearn.core.labels import DELAYS, LabelBook, LabelSettings


def book(seconds: float = 300.0, predictions: int = 100) -> tuple[LabelBook, list[float]]:
    now = [1000.0]
    return LabelBook(LabelSettings(seconds, predictions), lambda: now[0]), now


def test_coverage_delays_and_refusals_per_key():
    labels, now = book()
    for i in range(10):
        labels.predicted(3, "a")
    for delay in (1.0, 2.0, 3.0, 40.0):
        labels.labelled(3, "a", delay)
    labels.refused(3, "a", "expired")
    labels.refused(3, "a", "unknown")
    labels.refused(3, "a", "late")
    labels.defaulted(3, "a")
    labels.predicted(5, "b")
    now[0] += 7
    health = labels.get("a").describe(now[0])
    assert health == {"predicted": 10, "labelled": 4, "coverage": 0.4, "delay_p50_seconds": 3.0,
                      "delay_p99_seconds": 40.0, "expired": 1, "unknown": 1, "defaulted": 1, "late": 1,
                      "since_last_label_seconds": 7.0,
                      "starving": False}
    assert labels.get("b").describe(now[0])["coverage"] == 0.0 and labels.get("c") is None


def test_the_delays_kept_are_the_last_ones():
    labels, _ = book()
    for delay in [100.0] * DELAYS + [1.0] * DELAYS:
        labels.labelled(0, "a", delay)
    assert labels.get("a").describe(0.0)["delay_p99_seconds"] == 1.0


def test_a_key_whose_labels_stop_starves_once_and_its_next_label_ends_it():
    labels, now = book(seconds=300, predictions=100)
    labels.labelled(0, "a", 1.0)
    labels.predicted(0, "quiet")            # never labelled: not starving, it never had labels
    for _ in range(150):
        labels.predicted(0, "a")
    now[0] += 299
    assert labels.starving(0) == []          # not long enough
    now[0] += 1
    [(key, health)] = labels.starving(0)
    assert key == "a" and health.starving and health.since_label == 150
    assert labels.starving(0) == []          # once per episode
    assert labels.labelled(0, "a", 2.0) == 150   # the next label ends it: 150 answered meanwhile
    assert labels.labelled(0, "a", 2.0) is None and not labels.get("a").starving


def test_few_predictions_or_the_setting_off_never_starve():
    labels, now = book(predictions=100)
    labels.labelled(0, "a", 1.0)
    for _ in range(99):
        labels.predicted(0, "a")
    now[0] += 10_000
    assert labels.starving(0) == []          # an idle key is not starving
    off, now = book(seconds=0)
    off.labelled(0, "a", 1.0)
    for _ in range(500):
        off.predicted(0, "a")
    now[0] += 10_000
    assert off.starving(0) == []


def test_a_rebalance_forgets_the_keys_of_partitions_moved_away():
    labels, _ = book()
    labels.predicted(1, "a")
    labels.predicted(2, "b")
    labels.keep_partitions({2})
    assert labels.get("a") is None and labels.get("b") is not None
