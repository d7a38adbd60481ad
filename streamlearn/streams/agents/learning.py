"""Learn: the training topic in order, per partition; examples, ticks and commands (decisions: ``core.learner``).

Learning is exact (no example lost, none learned twice) because the training
topic is each model's write-ahead log, a model skips what its checkpoint
covers (``core.learner``), and a training message is committed only once
checkpoints cover it (``streams.commit``).
"""

from __future__ import annotations

from streamlearn import models
from streamlearn.core import learner
from streamlearn.models import LiveModel

from ..codec import INTERNAL_ERROR, Example, Rejected, decode_examples, encode_example, request_id_of
from ..commit import BatchCommit
from ..deadletter import Counters, DeadLetters
from ..outbox import Outbox
from ..routing import is_command, is_tick
from ..commands import Commands
from ..snapshots import Audit
from .live import LiveModels
from .loop import agent_log


class Learning:
    """The learn agent's handler: each training message's examples, a tick's snapshots, an operator's command."""

    def __init__(self, live: LiveModels, versions: models.ModelVersions, commit: BatchCommit, commands: Commands,
                 audit: Audit, dead: DeadLetters, metrics: Counters) -> None:
        self.live = live
        self.versions = versions
        self.commit = commit
        self.commands = commands
        self.audit = audit
        self.dead = dead
        self.metrics = metrics

    async def message(self, msg, out: Outbox) -> None:
        """One message of the training topic, in its partition's order."""
        if is_tick(msg.headers):
            self._snapshot_on_time(msg.partition)
        elif is_command(msg.headers):
            changed = await self._command(msg, out)
            if changed is not None:
                self.commit.changed(msg.partition, changed)
        else:
            await self._examples(msg, out)

    async def _examples(self, msg, out: Outbox) -> None:
        """The examples of one training message, each under its own guard."""
        inside: dict[str, bool] = {}
        for example in decode_examples(msg.value):
            try:
                await self._example(msg, example, out, inside)
            except Exception as exc:  # noqa: BLE001 - one example must not stop the others
                self.metrics.error("internal")
                agent_log().exception("internal error learning event_id=%s model=%s", example.event_id,
                                      example.model)
                await self._refuse(Rejected(INTERNAL_ERROR, f"{type(exc).__name__}: {exc}", example.event_id),
                                   msg, example, out)

    async def _example(self, msg, example: Example, out: Outbox, inside: dict[str, bool]) -> None:
        live = self.live.get(msg.partition, example.model)
        outcome = learner.learn_example(live, example, msg.offset, inside, self.versions)
        if isinstance(outcome, learner.Replayed):
            self.metrics.replay_skipped()
            return
        self.commit.learned(msg.partition, live)
        if isinstance(outcome, learner.Repeated):
            self.metrics.repeat_skipped()
        elif isinstance(outcome, learner.Failed):
            self.live.model_failed("learn", example.event_id, outcome.error)
            await self._refuse(outcome.rejected, msg, example, out)
        else:
            self.metrics.learned(example.model, outcome.correct)
            if outcome.changes:   # a snapshot, a rollback or a promotion: checkpoint the new version at once
                if outcome.new is not None:
                    self.live.registry.put(msg.partition, outcome.new)
                self.audit.record(outcome.changes)
                self.commit.changed(msg.partition, outcome.new or live)

    async def _refuse(self, rejected: Rejected, msg, example: Example, out: Outbox) -> None:
        """Dead-letter one example of a pack: its own JSON, traced to its label's first source."""
        topic, partition, offset = example.origin or (msg.topic, msg.partition, msg.offset)
        await self.dead.send_record(rejected, out, topic=topic, partition=partition, offset=offset,
                                    key=example.model.encode(), value=encode_example(example), model=example.model)

    async def _command(self, msg, out: Outbox) -> LiveModel | None:
        """Run an operator's command; one that fails unexpectedly is answered and dead-lettered, not retried forever."""
        try:
            return await self.commands.run(msg.partition, msg)
        except Exception as exc:  # noqa: BLE001 - a command must not crash-loop the learn agent
            self.metrics.error("internal")
            agent_log().exception("internal error running the command at %s/%d/%d", msg.topic, msg.partition,
                                  msg.offset)
            detail = f"{type(exc).__name__}: {exc}"
            await self.dead.send(Rejected(INTERNAL_ERROR, detail), msg, out)
            await self.commands.answers.send(None, request_id_of(msg.value), ok=False, error=INTERNAL_ERROR,
                                             detail=detail)
            return None

    def _snapshot_on_time(self, partition: int) -> None:
        for live in self.live.registry.partition(partition):
            if self.versions.due_by_time(live):
                _, changes = self.versions.snapshot(live, kind=models.versions.AUTO, by="policy",
                                                    reason=f"every {self.versions.settings.snapshot_every_seconds:g}s")
                self.audit.record(changes)
                self.commit.changed(partition, live)
