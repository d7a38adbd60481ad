"""The batch loop every agent runs: any input, one record at a time, never an exception out.

Contract, per agent:

- A fetch (the records of one partition, see transport.py) is handled only
  if it belongs to the consumer's current generation: after a rebalance
  began, another worker may own its partition and reads it again from the
  committed offset; handling it here too could write join state or a
  checkpoint into a partition we no longer own. It is skipped, not acked.
  The learn agent's fetches are also handled only in offset order, with
  no gap (``BatchCommit.in_order``): one skipped makes the partition be
  read again from there.
- Each record is handled under a guard: an unexpected exception (a bug of
  ours) dead-letters the record as ``internal_error`` and the fetch goes on.
- A handled fetch goes to ``BatchCommit.finish``, which acks it once what it
  produced is delivered (the learn agent's: once checkpoints cover it).
- Should an agent die anyway (the guard itself failed), the records it had
  taken and not handled are kept, and handled first by the agent Faust
  restarts; its crash is counted, logged and shown by ``/ready``.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from typing import Any, Awaitable, Callable

import faust

from ..codec import INTERNAL_ERROR, Rejected
from ..commit import BatchCommit
from ..deadletter import Counters, DeadLetters
from ..outbox import Outbox
from ..transport import records_of

log = logging.getLogger("streamlearn.agents")   # what no agent does (ticks, rebalances)
_running: ContextVar[str] = ContextVar("agent", default="")   # each agent runs as a task of its own
_fetched: ContextVar[float] = ContextVar("fetched", default=0.0)   # when the fetch being handled was handed over

Handler = Callable[[Any, Outbox], Awaitable[None]]


def agent_log() -> logging.Logger:
    """The logger of the agent running now: ``streamlearn.agent.predict``, ``streamlearn.agent.join``, ..."""
    name = _running.get()
    return logging.getLogger(f"streamlearn.agent.{name}") if name else log


def fetched_at() -> float:
    """Wall-clock time the consumer handed over the fetch the running agent handles (0.0: unknown)."""
    return _fetched.get()


def current(app: faust.App, event: faust.EventT) -> bool:
    """Whether a fetch belongs to the consumer's current generation (and no rebalance is under way)."""
    return app.flow_control.is_active() and event.message.generation_id == app.consumer_generation_id


class AgentLoop:
    """Builds the agent bodies of a worker, and keeps what they left and when they crashed."""

    def __init__(self, commit: BatchCommit, dead: DeadLetters, metrics: Counters,
                 new_outbox: Callable[[], Outbox]) -> None:
        self.commit = commit
        self.dead = dead
        self.metrics = metrics
        self.new_outbox = new_outbox
        self.bodies: dict[str, Callable[[faust.StreamT], Awaitable[None]]] = {}
        # agent name -> (stream, event, records it had taken but not handled when it crashed)
        self.unfinished: dict[str, tuple[Any, Any, list]] = {}
        self.crashes: dict[str, tuple[float, str]] = {}   # agent name -> (time, exception) of its last crash

    def body(self, name: str, handle: Handler, *, learns: bool = False, counts_input: bool = False):
        """The agent ``name``: ``handle(record, out)`` for each record (``counts_input``: each counted as
        consumed); ``learns``: its fetches are acked once checkpoints cover them."""
        async def agent(stream: faust.StreamT) -> None:
            _running.set(name)
            try:
                await self._consume(name, stream, handle, learns, counts_input)
            except Exception as exc:
                self.crashes[name] = (time.time(), f"{type(exc).__name__}: {exc}")
                self.metrics.agent_crashed(name)
                agent_log().error("agent %s crashed (%s: %s); Faust restarts it", name, type(exc).__name__, exc,
                                  exc_info=exc)
                raise
        agent.__doc__ = handle.__doc__
        self.bodies[name] = agent
        return agent

    async def _consume(self, name: str, stream: faust.StreamT, handle: Handler, learns: bool,
                       counts_input: bool) -> None:
        out = self.new_outbox()
        left = self.unfinished.pop(name, None)
        if left is not None:
            agent_log().warning("agent %s restarted: handling the %d records it had taken first", name, len(left[2]))
            await self._fetch(name, *left, handle, out, learns, counts_input)
        async for event in stream.noack().events():
            if current(stream.app, event) and (not learns or self.commit.in_order(event)):
                await self._fetch(name, stream, event, records_of(event.message), handle, out, learns, counts_input)

    async def _fetch(self, name: str, stream: faust.StreamT, event: faust.EventT, records: list, handle: Handler,
                     out: Outbox, learns: bool, counts_input: bool) -> None:
        i = 0
        _fetched.set(getattr(event.message, "fetched_at", 0.0))
        try:
            for i, record in enumerate(records):
                if counts_input:
                    self.metrics.consumed(record.topic)
                await self.guarded(handle, record, out)
        except Exception:
            # Should anything escape the guard, keep what is left for the restarted agent.
            self.unfinished[name] = (stream, event, records[i:])
            raise
        await self.commit.finish(out, stream, event, learned=learns)

    async def guarded(self, handle: Handler, record, out: Outbox) -> None:
        """Handle one record; an unexpected exception dead-letters it (``internal_error``) instead of the agent."""
        try:
            await handle(record, out)
        except Exception as exc:  # noqa: BLE001 - one event must never stop the agent
            self.metrics.error("internal")
            agent_log().exception("internal error handling %s/%d/%d", record.topic, record.partition, record.offset)
            await self.dead.send(Rejected(INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"), record, out)
