"""Routing hash, settings, and the bounded join tables (no broker)."""

from __future__ import annotations

import random
import time


from streamlearn.core.join import Waiting
from streamlearn.streams import codec
from streamlearn.streams import pending
from streamlearn.streams.pending import BoundedTable, join_key
from streamlearn.streams.routing import partition_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def waiting_table(data, clock=time.time, ttl=10, max_per_partition=100) -> BoundedTable:
    return BoundedTable(data, 8, ttl, max_per_partition, codec.encode_waiting, codec.decode_waiting, clock)


def test_bounded_table_ttl_and_size():
    clock, data = Clock(), {}
    table = waiting_table(data, clock, max_per_partition=3)
    p = partition_for("m", 8)
    for i in range(3):
        table.put(p, join_key("m", f"e{i}"), Waiting({"i": i}, clock.now))
        clock.now += 1
    assert table.size() == 3 and table.get(join_key("m", "e0")).features == {"i": 0}
    evicted = table.put(p, join_key("m", "e3"), Waiting({"i": 3}, clock.now))  # over the size bound: the oldest goes
    assert [e.features["i"] for e in evicted] == [0] and table.get(join_key("m", "e0")) is None
    clock.now += 9.5
    assert table.evict(p) == []  # expired entries stay one more TTL, to tell late labels from unknown ones
    clock.now += 10
    assert [e.features["i"] for e in table.evict(p)] == [1, 2]
    assert set(data) == {join_key("m", "e3")}


def test_bounded_table_indexes_what_the_changelog_restored():
    clock, data = Clock(), {}
    first = waiting_table(data, clock)
    pa, pb = partition_for("a", 8), partition_for("zz", 8)
    assert pa != pb
    first.put(pa, join_key("a", "1"), Waiting({}, clock.now))
    first.put(pb, join_key("zz", "1"), Waiting({}, clock.now))
    # a new owner starts with the restored table and an empty index
    clock.now += 21
    second = waiting_table(data, clock)
    assert len(second.evict(pa)) == 1 and join_key("zz", "1") in data


def test_the_join_state_of_partitions_moved_away_leaves_memory_not_the_changelog():
    written = []

    class Logged(dict):   # a store that logs what is written to it (the changelog), not what it drops
        def write(self, partition, key, value):
            self[key] = value
            written.append(key)

    data = Logged()
    table = waiting_table(data)
    keys = {p: next(f"k{i}" for i in range(1000) if partition_for(f"k{i}", 8) == p) for p in (1, 2, 5)}
    for p, model in keys.items():
        table.put(p, join_key(model, "e1"), Waiting({"a": 1.0}, time.time()))
    writes = len(written)
    assert table.drop_other_partitions({2}) == 2
    assert list(data) == [join_key(keys[2], "e1")]
    assert len(written) == writes        # nothing written: the new owners have these entries in the changelog


def test_the_join_state_is_kept_as_json_of_its_own_size():
    """Entries are held as JSON bytes (no objects for the garbage collector to scan), each in memory its size."""
    import tracemalloc

    data: dict = {}
    table = waiting_table(data, max_per_partition=10_000)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(2000):
        table.put(0, join_key("m", f"e{i}"), Waiting({"amount": i / 10, "country": "FR"}, time.time()))
    per_entry = (tracemalloc.get_traced_memory()[0] - before) / 2000
    tracemalloc.stop()
    assert all(type(v) is bytes for v in data.values())
    assert table.get(join_key("m", "e7")).features == {"amount": 0.7, "country": "FR"}
    assert per_entry < 600, per_entry      # key, JSON, index and dict slots; orjson's own bytes took 4 KB each


def test_an_index_built_a_step_at_a_time_while_entries_are_written_ends_as_one_built_at_once(monkeypatch):
    """A restart's million entries are indexed a few thousand per call while the worker writes; every
    interleaving of writes with the build's steps must end with the order a single pass would find."""
    monkeypatch.setattr(pending, "INDEX_STEP", 3)
    for seed in range(200):
        rng, clock, data = random.Random(seed), Clock(), {}
        models = [f"m{i}" for i in range(6)]
        for i in range(rng.randrange(0, 40)):                     # restored: stamps from before the restart
            data[join_key(rng.choice(models), f"e{i}")] = codec.encode_waiting(Waiting({}, clock.now - rng.random()))
        table = waiting_table(data, clock, ttl=10**6, max_per_partition=10**6)
        for n in range(rng.randrange(0, 60)):
            clock.now += 0.001
            model = rng.choice(models)
            key, p = join_key(model, f"e{rng.randrange(0, 60)}"), partition_for(model, 8)
            op = rng.random()
            if op < 0.35:
                table.put(p, key, Waiting({}, clock.now))                         # new, or restamped
            elif op < 0.5 and table.get(key) is not None:
                table.put(p, key, table.get(key), restamp=False)                 # rewritten, same stamp
            elif op < 0.75:
                table.delete(p, key)
            else:
                assert table.evict(p) == []                                       # a step of the build
        monkeypatch.setattr(pending, "INDEX_STEP", 10**6)
        once = waiting_table(dict(data), clock, ttl=10**6, max_per_partition=10**6)   # one pass
        assert once.evict(0) == [] and table.evict(0) == []                     # (the build's last step)
        monkeypatch.setattr(pending, "INDEX_STEP", 3)
        for p in range(8):
            assert list(table._index.of(p).items()) == list(once._index.of(p).items()), seed
        assert table.size() == len(data)


def test_nothing_is_evicted_before_the_index_is_built_and_everything_due_after(monkeypatch):
    monkeypatch.setattr(pending, "INDEX_STEP", 10)
    clock, data = Clock(), {}
    for i in range(100):
        data[join_key("m", f"e{i}")] = codec.encode_waiting(Waiting({"i": i}, clock.now + i))
    clock.now += 1000                                                # every entry past twice its TTL
    table, p = waiting_table(data, clock), partition_for("m", 8)
    calls = [table.evict(p) for _ in range(11)]
    assert not any(calls[:10]) and [e.features["i"] for e in calls[10]] == list(range(100)) and not data
