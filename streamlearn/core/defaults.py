"""Default labels: an event of a key with a rule that got no label within its wait learns the rule's label.

Implicit feedback (no click within 30 s means "no") has no message for the
"no": the join learns it when the wait is over. A rule is
``pattern=label@wait`` (``clicks-*=false@30s``): fnmatch pattern over model
keys, the label as JSON (a word that is not JSON is a string), the wait in
seconds (``ms``, ``s``, ``m``, ``h``). The first rule matching a key wins.

``DefaultLabels`` keeps, per partition, the waiting events of keys with a
rule by when their wait ends, and says which are due at a tick. It decides
nothing about an entry: the tick reads each due entry as it is now and asks
``core.join.on_wait_over``. Why a default is learned exactly once is in
docs/checkpoints.md, "Default labels".
"""

from __future__ import annotations

import fnmatch
import heapq
import re
from dataclasses import dataclass
from typing import Any, Iterator

import orjson

_WAIT = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


@dataclass(frozen=True, slots=True)
class DefaultRule:
    pattern: str
    label: Any
    wait: float     # seconds


def parse_rules(text: str) -> list[DefaultRule]:
    """``pattern=label@wait,...`` as rules; ValueError says which part is wrong."""
    rules = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        pattern, sep, rest = part.partition("=")
        label, at, wait = rest.rpartition("@")
        if not sep or not pattern.strip() or not at or not label.strip():
            raise ValueError(f"default label rule {part!r} is not `pattern=label@wait` (e.g. clicks-*=false@30s)")
        m = _WAIT.match(wait)
        if m is None or float(m.group(1)) <= 0:
            raise ValueError(f"default label rule {part!r}: the wait {wait!r} is not a positive duration "
                             f"(e.g. 30s, 500ms, 2m)")
        try:
            value = orjson.loads(label.strip())
        except orjson.JSONDecodeError:
            value = label.strip()
        if isinstance(value, (dict, list)) or value is None:
            raise ValueError(f"default label rule {part!r}: a label is a string, a number or a boolean")
        rules.append(DefaultRule(pattern.strip(), value, float(m.group(1)) * _UNIT[m.group(2)]))
    return rules


class DefaultLabels:
    """Per partition, the waiting events of keys with a rule, soonest due first (a heap of ``(due, key)``).

    ``waiting`` is told of each event written without a label; a key may be
    in a heap more than once (written again later): whoever pops it reads
    the entry as it is now. After a rebalance (``forget_partitions``) the
    events that waited before it are found again by a scan of the join
    state (``found``), in steps while the worker serves; until it reaches
    them, their defaults come late, never wrong.
    """

    def __init__(self, rules: list[DefaultRule]) -> None:
        self.rules = rules
        self._rule: dict[str, DefaultRule | None] = {}
        self._due: dict[int, list[tuple[float, bytes]]] = {}
        self.generation = 0        # moves at each rebalance: a scan under way then starts again
        self.scanned = False       # the scan since the last rebalance is complete

    def rule_for(self, model: str) -> DefaultRule | None:
        if model not in self._rule:
            self._rule[model] = next((r for r in self.rules if fnmatch.fnmatchcase(model, r.pattern)), None)
        return self._rule[model]

    def waiting(self, partition: int, key: bytes, model: str, written: float) -> None:
        """An event of ``model`` (join-state key ``key``) waits for its label since ``written``."""
        rule = self.rule_for(model)
        if rule is not None:
            heapq.heappush(self._due.setdefault(partition, []), (written + rule.wait, key))

    found = waiting   # an entry the scan found waiting without a label

    def due(self, partition: int, now: float) -> Iterator[bytes]:
        """The keys whose wait ended by ``now``, each popped as it is handed out."""
        heap = self._due.get(partition)
        while heap and heap[0][0] <= now:
            yield heapq.heappop(heap)[1]

    def size(self) -> int:
        return sum(len(h) for h in self._due.values())

    def forget_partitions(self, keep: set[int]) -> None:
        """A rebalance: the events of every partition are found again by a scan."""
        self._due = {p: h for p, h in self._due.items() if p in keep}
        self.generation += 1
        self.scanned = False
