"""Running one worker: its event loop, the topics it needs first, and Faust's worker with a bounded stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faust
import uvloop

from streamlearn.streams.stores import keep_tables_of
from streamlearn.streams.topics import cluster_id, ensure_committed

from .logs import logging_config

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("streamlearn")


async def prepare(worker: Worker) -> None:
    """What must exist before the worker consumes: its topics, committed start offsets, and (on RocksDB) tables
    on disk that belong to this Kafka cluster.

    First a connection check: Kafka refusing our credentials, or a broker
    certificate we do not trust, stops the worker here (``KafkaAuthError``),
    and so does a broker that no connection reaches within
    ``kafka_connect_timeout_seconds`` (``KafkaUnreachable``).
    """
    s = worker.settings
    await s.kafka_auth.check(s.bootstrap_servers, s.kafka_connect_timeout_seconds)
    if s.table_store == "rocksdb":   # tables on disk: only those of this Kafka cluster (``keep_tables_of``)
        keep_tables_of(await cluster_id(s.bootstrap_servers, s.kafka_options), Path(s.data_dir),
                       Path(worker.app.conf.tabledir))
    created = await worker.ensure_topics()
    if created:
        log.info("created %d topics", len(created))
    n = worker.topics.names
    await ensure_committed(s.bootstrap_servers, s.app_id,
                           [n.features, n.feedback, n.control, n.events, n.labels, n.training], kafka=s.kafka_options)


def settle_heap() -> int:
    """Collect garbage, then move every object still alive into the collector's permanent generation
    (``gc.freeze``); returns how many objects it holds.

    Full collections skip frozen objects from then on, so they no longer walk
    the modules, the app and the state it restored with the event loop held.
    Frozen objects are still freed by reference counting when dropped; only
    cyclic garbage among them would stay (River's models make none). Called
    before the worker starts and once its first recovery is complete. Why and
    what it measured: docs/benchmarks.md.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class _Runner(faust.Worker):
    """Faust's worker, whose stop on a signal is bounded.

    The app and its tables must be built on the loop that runs them
    (``new_loop`` first): a table's cleanup task made on another loop never
    runs, and Faust's stop then cancels it and awaits it forever (it hung after
    ``Table: pending: Shutting down...`` on every stop while the loop was made
    after the app). Built in that order the worker stops in a fraction of a
    second, having left the group, committed and flushed its producer. The bound stays as a
    safety net: ``stop_timeout`` after the signal the process exits, with a
    warning. That loses nothing: what the worker produced is committed only
    once delivered, and a restart resumes from the committed offsets, as after
    a crash.
    """

    stop_timeout: float = 10.0

    async def _stop_on_signal(self, signal: Any) -> None:
        timer = threading.Timer(self.stop_timeout, self._exit_now)
        timer.daemon = True
        timer.start()
        await super()._stop_on_signal(signal)

    async def _sentinel_task(self) -> None:
        """Mode lets the loop run a last second before closing it, after every service stopped (the group
        left, the offsets committed, the producer flushed): a tenth is room enough for stray callbacks."""
        await asyncio.sleep(0.1)

    def _exit_now(self) -> None:
        log.warning("the worker did not stop within %gs of the signal (Faust's stop hung); exiting now",
                    self.stop_timeout)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(0)


def new_loop() -> asyncio.AbstractEventLoop:
    """The worker's event loop, uvloop, set as current; also the policy for Faust's consumer thread's loop.

    Made before the app (see ``_Runner``).
    """
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def run(worker: Worker) -> None:
    """Create the topics, then run the Faust worker until a signal stops it (on the loop of ``new_loop``)."""
    s = worker.settings
    loop = asyncio.get_event_loop()
    loop.run_until_complete(prepare(worker))
    runner = _Runner(worker.app, loglevel=s.log_level, loop=loop,
                     logging_config=logging_config(s.log_format, s.log_level))
    runner.stop_timeout = s.stop_timeout_seconds
    # Faust's terminal spinner sets the root logger to DEBUG at log levels
    # WARNING and above (to spin on every record): every debug call of Faust
    # and aiokafka then builds a LogRecord, ~8% of a worker's CPU. No spinner.
    runner.spinner = None
    settle_heap()
    try:
        runner.execute_from_commandline()
    except SystemExit as done:
        # Stopped: the group left, the offsets committed, the producer flushed, the loop closed. What
        # the interpreter's own teardown would still do took 1.6 s of every stop: exit now.
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
