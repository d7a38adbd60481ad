"""The consumer's commit rules, decided without Kafka: acks, a commit that waits, gaps after seeks, stalls."""

from __future__ import annotations

import pytest

from streamlearn.core.offsets import (MARKER_PATIENCE, REREAD_AFTER, ChangelogRead, CommitHold, InOrder, Seeks,
                                     held_through, new_acks, read_offset_for, stalled_recovery)

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


def test_a_topic_only_we_write_has_no_gaps_a_jump_there_is_read_again():
    """Every offset of an internal topic is a message: a jump is messages the consumer dropped (a fetch of a
    stale generation), never transaction markers; committed as read, routed events and labels were lost (a
    fresh-clone CI run of the restart test lost 6 routed events so)."""
    seeks = Seeks()
    seeks.fetching(TP, 33)
    assert seeks.gap(TP, 30, 40, exact=True) is None
    assert seeks.gap(TP, 30, 40, exact=False) == (30, 40)     # an input topic: transaction markers may sit there


def test_a_jump_is_what_lies_before_the_fetch_the_drain_loop_saw():
    seeks = Seeks()
    seeks.fetching(TP, 21)
    assert seeks.jumped(TP, 21, 29) is None    # 21..29 is the fetch itself
    seeks.fetching(TP, 33)
    assert seeks.jumped(TP, 30, 40) == (30, 32)
    assert seeks.jumped(TP, 30, 40) == (30, 40)   # no fetch known: the whole jump


def test_a_fetch_behind_the_read_offset_is_let_through():
    assert read_offset_for(40, 42, 52) == 39   # read offset set past the seek by a fetch handed over before it
    assert read_offset_for(53, 60, 52) is None and read_offset_for(50, 55, 52) is None
    assert read_offset_for(0, 3, None) is None


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


def test_a_training_fetch_past_the_offset_due_waits_for_the_partition_to_be_read_again_from_there():
    """A model skips what lies at or below its offset: a fetch handled past a skipped one would lose it."""
    now = [0.0]
    order = InOrder(reask_seconds=5.0, clock=lambda: now[0])
    assert order.check(TP, 100, 109, committed=100) == (True, None, None)      # from the committed offset
    assert order.check(TP, 120, 129, committed=100) == (False, 110, None)      # 110..119 skipped: read again
    assert order.check(TP, 130, 139, committed=100) == (False, None, None)     # fetched before that seek
    now[0] = 6.0
    assert order.check(TP, 140, 149, committed=100) == (False, 110, None)      # still not there: asked again
    assert order.check(TP, 110, 119, committed=100) == (True, None, None)      # read again: in order
    assert order.check(TP, 100, 114, committed=100) == (True, None, None)      # a seek further back: again
    assert order.check(TP, 120, 129, committed=100) == (True, None, None)
    assert order.check(("t", 5), 7, 9, committed=None) == (True, None, None)   # nothing committed: it starts
    assert order.check(("t", 6), 8, 9, committed=3) == (False, 3, None)        # the first since the seek skipped
    order.forget()                                                             # a rebalance: from the commit
    assert order.check(TP, 60, 69, committed=60) == (True, None, None)


def test_a_gap_that_is_never_read_again_is_taken_after_the_last_ask():
    """Retention deleted the messages due before they were read: the partition must not stall for good."""
    now = [0.0]
    order = InOrder(reask_seconds=5.0, give_up_after=3, clock=lambda: now[0])
    assert order.check(TP, 0, 9, committed=0) == (True, None, None)
    verdicts = []
    for t in range(0, 16):
        now[0] = float(t)
        verdicts.append(order.check(TP, 500, 509, committed=0))
    assert [v for v in verdicts if v[1] is not None] == [(False, 10, None)] * 3   # at 0, 5 and 10 s
    assert verdicts[-1] == (True, None, (10, 499)) and not any(v[0] for v in verdicts[:-1])   # taken at 15 s
    assert order.check(TP, 510, 519, committed=0) == (True, None, None)


def test_a_changelog_read_covers_each_partition_behind_its_highwater_from_the_record_after_its_store():
    """Faust's offsets: the last applied (-1 or the earliest less one: nothing held), the last in the log."""
    applied = {("c", 0): 41, ("c", 1): -1, ("c", 2): 9, ("c", 3): None, ("c", 4): 99}
    highwaters = {("c", 0): 50, ("c", 1): 3, ("c", 2): 9, ("c", 3): 5, ("c", 4): 80}
    read = ChangelogRead(applied, highwaters)
    assert read.start() == {("c", 0): 42, ("c", 1): 0}   # caught up (2, 4) or unknown (3): not read
    assert read.left() == {("c", 0), ("c", 1)}
    assert read.wanted(("c", 0), [42, 45, 50, 51, 60]) == 3   # what the owner wrote since is not this read's
    read.applied_up_to(("c", 0), 50, 3)
    read.applied_up_to(("c", 1), 2, 2)                        # offset 3 still to come
    assert read.left() == {("c", 1)} and read.records == 5
    read.passed(("c", 1), 3)                                  # the reader stands at 3: not past it yet
    assert read.left() == {("c", 1)}
    read.passed(("c", 1), 4)                                  # 3 compacted away: the position says it was read
    assert read.left() == set() and read.applied == {("c", 0): 50, ("c", 1): 3}


def test_a_store_holds_its_changelog_through_its_own_writes_while_they_follow_one_another():
    assert held_through(None, [0, 1, 2]) == 2          # a fresh partition: from the start
    assert held_through(41, [44, 42, 43]) == 44        # delivered in any order within a flush
    assert held_through(41, [42, 45]) == 42            # 43..44: another writer's records
    assert held_through(41, [45, 46]) is None          # a worker cut off, delivering after the next owner wrote
    assert held_through(41, [40, 41]) is None          # nothing past what it holds
