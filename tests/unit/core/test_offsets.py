"""The consumer's commit rules, decided without Kafka: acks, a commit that waits, gaps after seeks, stalls."""

from __future__ import annotations

import pytest

from streamlearn.core.offsets import MARKER_PATIENCE, REREAD_AFTER, CommitHold, Seeks, new_acks, stalled_recovery

TP = ("t", 4)


@pytest.mark.parametrize("offsets, committed, acked, expected", [
    ([10, 11, 12], None, set(), [10, 11, 12]),       # nothing committed yet: all
    ([9, 10, 11, 14], 10, {10, 11}, [14]),           # read again after a seek: below the commit, or acked: no
    ([10, 11], 12, set(), []),                       # all committed already
])
def test_a_handled_fetch_acks_its_offsets_at_or_past_the_commit_once(offsets, committed, acked, expected):
    assert new_acks(offsets, committed, acked) == expected


def test_a_commit_of_a_topic_only_we_write_never_passes_an_unhandled_message_and_reads_it_again():
    hold = CommitHold()
    decisions = [hold.check(TP, 229, 230, exact=True) for _ in range(MARKER_PATIENCE + 5)]
    assert all(wait for wait, _ in decisions)                    # 229 was skipped: never committed past
    again = [i + 1 for i, (_, read_again) in enumerate(decisions) if read_again]
    assert again == [REREAD_AFTER, 3 * REREAD_AFTER]             # read again after a while, and again later
    assert hold.check(TP, 229, 229, exact=True) == (False, False)   # read again and handled: commit


def test_an_input_topic_gives_up_after_its_patience_a_transaction_marker_may_sit_there():
    hold = CommitHold()
    waits = [hold.check(TP, 300, 301, exact=False)[0] for _ in range(MARKER_PATIENCE + 1)]
    assert waits == [True] * MARKER_PATIENCE + [False]
    assert hold.check(TP, 300, 301, exact=False) == (True, False)   # a new wait starts over


def test_the_wait_starts_over_when_the_committed_offset_moves():
    hold = CommitHold()
    for _ in range(REREAD_AFTER - 1):
        hold.check(TP, 100, 101, exact=True)
    assert hold.check(TP, 200, 201, exact=True) == (True, False)   # another offset: counted from one


def test_a_jump_right_after_a_seek_is_read_again_twice_then_taken_for_a_gap():
    seeks = Seeks()
    seeks.sought(TP, 1122)                                   # sought back to its committed offset ...
    assert seeks.gap(TP, 1123, 1127) is None                 # ... then 1127, fetched before the seek, came first
    assert seeks.gap(TP, 1300, 1302) == (1300, 1302)         # later, a real gap (a transaction marker)
    decided = []
    for _ in range(3):                                       # a real gap right after a seek
        seeks.sought(TP, 2000)
        decided.append(seeks.gap(TP, 2001, 2003))
    assert decided == [None, None, (2001, 2003)]
    seeks.sought_all({TP: 2000, ("t", 5): None})             # a new round of seeks: counted anew
    assert seeks.gap(TP, 2001, 2003) is None


def test_only_offsets_before_a_fetch_are_a_gap():
    """Faust's drain loop compares the fetch's last offset with the last read: the fetch itself is no gap."""
    seeks = Seeks()
    seeks.fetching(TP, 21)                    # read up to 20, fetched 21..29: Faust sees a jump 20 -> 29
    assert seeks.gap(TP, 21, 29) is None
    seeks.fetching(TP, 33)                    # read up to 29, fetched 33..40: 30..32 are a gap (markers)
    assert seeks.gap(TP, 30, 40) == (30, 32)


NOW = 1000.0
STUCK, MOVING, DONE = "cl/0", "cl/1", "cl/2"


@pytest.mark.parametrize("started, stall, queued, offsets, expected", [
    (NOW - 30, 15, 0, {STUCK: -1}, {STUCK: 0}),          # no event since the start: from the first offset
    (NOW - 30, 15, 0, {STUCK: 39}, {STUCK: 40}),         # one left: the next offset it needs
    (NOW - 30, 60, 0, {STUCK: -1}, {}),                  # not waited that long yet
    (NOW - 30, 15, 1, {STUCK: -1}, {}),                  # events queued: recovery is behind, not stuck
    (None, 15, 0, {STUCK: -1}, {}),                      # not recovering
])
def test_a_changelog_partition_recovery_waits_on_in_vain(started, stall, queued, offsets, expected):
    remaining = {STUCK: 1, MOVING: 40, DONE: 0}
    received = {MOVING: NOW - 2}                          # events still arriving for this one
    assert stalled_recovery(NOW, started, stall, queued, remaining, {MOVING: 50, DONE: 7, **offsets},
                            received) == expected
