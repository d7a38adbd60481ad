"""The checkpoint policy: when a partition's models are due, and which training offsets their checkpoints cover."""

from __future__ import annotations

import random
from types import SimpleNamespace

from streamlearn.core.checkpointing import CheckpointPolicy


def test_a_partition_is_due_every_n_examples_at_once_after_a_change_and_never_when_clean():
    now = [0.0]
    policy = CheckpointPolicy(3, 10.0, clock=lambda: now[0])
    a, b = SimpleNamespace(key="a", offset=4), SimpleNamespace(key="b", offset=5)
    assert not policy.due(0)                              # nothing learned: nothing to write
    policy.learned(0, a)
    policy.learned(0, b)
    assert not policy.due(0) and policy.low_water(0) == 4
    policy.learned(0, a)
    assert policy.due(0)                                  # 3 examples
    assert {m.key for m in policy.take_due(0)} == {"a", "b"} and policy.low_water(0) is None and not policy.due(0)
    policy.changed(0, a)                                  # a version change: due at once, nothing acked until
    assert policy.due(0) and policy.low_water(0) == -1
    policy.take_due(0)
    policy.learned(1, b)
    now[0] = 10.0
    assert policy.due(1) and not policy.due(0)            # 10 s since partition 1 first learned


def test_the_checkpoint_policys_low_water_is_the_lowest_offset_a_dirty_model_lacks():
    """The policy caches the lowest offset some model's checkpoint lacks; against a plain record of the same
    steps (random learning, version changes, deferred checkpoints, offsets going back as after a re-read)."""
    rng, now = random.Random(3), [0.0]
    for _ in range(100):
        policy = CheckpointPolicy(rng.randint(1, 20), 5.0, defer_seconds=rng.choice([0.0, 3.0, 10.0]),
                                  clock=lambda: now[0])
        lacking: dict[int, dict[str, int]] = {p: {} for p in range(3)}   # partition -> key -> first offset
        for _ in range(300):
            now[0] += rng.random()
            p, live = rng.randrange(3), SimpleNamespace(key=f"k{rng.randrange(30)}", offset=rng.randrange(500))
            op = rng.random()
            if op < 0.6:
                policy.learned(p, live)
                lacking[p].setdefault(live.key, live.offset)
            elif op < 0.65:
                policy.changed(p, live)
                lacking[p].setdefault(live.key, -1)
            elif policy.due(p):
                for written in policy.take_due(p):
                    del lacking[p][written.key]
            for q in range(3):
                assert policy.low_water(q) == (min(lacking[q].values()) if lacking[q] else None)
