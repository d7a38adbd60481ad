"""The live models in memory: parked across a rebalance, evicted by a cap or idleness."""

from __future__ import annotations


import pytest

from streamlearn.core.registry import ModelRegistry
from streamlearn.models import get_spec, new_model

X = {"amount": 12.5, "country": "FR", "flag": True}


@pytest.mark.parametrize("valid", [True, False])
def test_registry_parks_the_models_of_kept_partitions_until_they_prove_still_valid(valid):
    asked = []

    def still_valid(partition, live):
        asked.append((partition, live.key))
        return valid
    reg = ModelRegistry(lambda key, spec: new_model(key, spec), still_valid)
    spec = get_spec("logreg")
    a = reg.get_or_create(0, "a", spec)
    reg.get_or_create(0, "c", spec)
    reg.get_or_create(1, "b", spec)
    assert reg.get_or_create(0, "a", spec) is a
    assert reg.find("b").key == "b" and len(reg) == 3
    assert reg.park({0, 2}) == (2, 1)                   # partition 1 moved away: dropped
    assert reg.find("b") is None and len(reg) == 0 and reg.get(1, "b") is None
    assert reg.park({0}) == (2, 0)                      # a second rebalance before first use: still parked
    again = reg.get_or_create(0, "a", spec)
    assert asked == [(0, "a")] and (again is a) == valid and reg.get(0, "a") is again
    assert (reg.kept, reg.invalidated) == ((1, 0) if valid else (0, 1))
    assert reg.park(set()) == (0, 2) and reg.get(0, "c") is None and asked == [(0, "a")]


def test_registry_over_its_cap_evicts_the_least_recently_used_evictable_models_never_the_one_just_added():
    now = [0.0]
    dirty: set[str] = set()
    evicted = []
    reg = ModelRegistry(lambda key, spec: new_model(key, spec), max_live=3, clock=lambda: now[0],
                        evictable=lambda p, live: live.key not in dirty,
                        on_evict=lambda p, live, reason: evicted.append((p, live.key, reason)))
    spec = get_spec("logreg")
    for i, key in enumerate("abc"):
        now[0] = i
        reg.get_or_create(i % 2, key, spec)
    now[0] = 3
    a = reg.get(0, "a")                       # a used again: b is now the least recently used
    dirty.add("b")                            # ... but b has learned since its checkpoint
    reg.get_or_create(1, "d", spec)
    assert evicted == [(0, "c", "cap")] and len(reg) == 3 and reg.get(0, "c") is None
    assert reg.get(0, "a") is a and reg.find("b") is not None   # order now: b d a
    dirty.update("ad")                        # nothing evictable but the model being added: over the cap, briefly
    reg.get_or_create(0, "e", spec)
    assert len(reg) == 4 and reg.find("e") is not None and len(evicted) == 1
    dirty.clear()                             # after the partitions' checkpoints: the next addition shrinks it
    reg.get_or_create(1, "f", spec)
    assert len(reg) == 3 and [k for _, k, _ in evicted] == ["c", "b", "d"] and reg.find("f") is not None


def test_registry_evicts_idle_models_and_parked_models_count_against_the_cap():
    now = [0.0]
    evicted = []
    reg = ModelRegistry(lambda key, spec: new_model(key, spec), max_live=2, clock=lambda: now[0],
                        on_evict=lambda p, live, reason: evicted.append((live.key, reason)))
    spec = get_spec("logreg")
    reg.get_or_create(0, "a", spec)
    now[0] = 10
    reg.get_or_create(0, "b", spec)
    assert reg.evict_idle(5) == 1 and evicted == [("a", "idle")] and reg.find("b") is not None
    assert reg.park({0}) == (1, 0) and reg.parked() == 1
    reg.get_or_create(0, "c", spec)
    reg.get_or_create(0, "d", spec)           # b (parked, never taken back) goes first, unannounced
    assert reg.parked() == 0 and len(reg) == 2 and evicted == [("a", "idle")]
