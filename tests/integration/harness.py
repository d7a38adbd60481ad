"""Test harness: streamlearn workers as subprocesses, and plain Kafka clients.

Everything here talks to the real broker the way a user would: workers are
started with the ``streamlearn worker`` command, events are produced with
aiokafka, predictions are read back from the predictions topic, and worker
state is read over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streamlearn.app.settings import DEV_COMMAND_SECRET
from streamlearn.streams import codec
from streamlearn.streams.topics import TopicNames

PARTITIONS = 8
DEV_COMMAND_KEY = DEV_COMMAND_SECRET.encode()   # what the test workers (development mode) check commands with
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Broker:
    """A broker of a test's own, run by ``scripts/kafka`` with this environment."""

    env: dict[str, str]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.env['KAFKA_PORT']}"

    def kafka(self, command: str, keep_data: bool = False, check: bool = True) -> None:
        env = {**self.env, "KAFKA_KEEP_DATA": "1" if keep_data else "0"}
        subprocess.run([sys.executable, str(ROOT / "scripts" / "kafka"), command], env=env, check=check,
                       stdout=subprocess.DEVNULL)

    def restart(self, pause: float = 3.0) -> None:
        """Stopped and started again on the same data, as a broker's restart in production."""
        self.kafka("stop", keep_data=True)
        time.sleep(pause)
        self.kafka("start", keep_data=True)


@contextlib.contextmanager
def fresh_broker(home: Path, **kafka_env: str):
    """A broker of its own: a new KRaft cluster on fresh ports, its data under ``home``; stopped (its data
    removed) at the end.

    ``kafka_env``: more of ``scripts/kafka``'s environment (e.g. ``KAFKA_SASL_SSL_PORT``).
    """
    broker = Broker({**os.environ, "KAFKA_PORT": str(free_port()), "KAFKA_CONTROLLER_PORT": str(free_port()),
                     "KAFKA_HOME_DIR": str(home), "KAFKA_HEAP_OPTS": "-Xms128m -Xmx512m", **kafka_env})
    broker.kafka("start")
    try:
        yield broker
    finally:
        broker.kafka("stop", check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class WorkerProc:
    name: str
    port: int
    proc: subprocess.Popen
    log: Path
    token: str = ""      # the worker's STREAMLEARN_API_TOKEN, sent with every request when set
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def get(self, path: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return self.request("GET", path, timeout=timeout, headers=headers)

    def request(self, method: str, path: str, body: Any = None, timeout: float = 5.0,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """(status, JSON or text) of an HTTP request; ``headers`` None: the worker's own token, if any."""
        if headers is None:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={**headers, **({"Content-Type": "application/json"} if data else {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read()
                return r.status, (json.loads(body) if r.headers.get_content_type() == "application/json"
                                  else body.decode())
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return e.code, json.loads(body)
            except ValueError:
                return e.code, body.decode()

    def ready(self) -> dict | None:
        try:
            status, body = self.get("/ready", timeout=2.0)
        except (OSError, urllib.error.URLError):
            return None
        return body if status == 200 else None

    def metric(self, name: str, labels: str = "") -> float:
        """The value of one sample in /metrics (0 when absent)."""
        _, text = self.get("/metrics")
        want = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def metric_sum(self, name: str) -> float:
        """The sum of a metric's samples over all its labels (0 when it has none)."""
        _, text = self.get("/metrics")
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + "{") or line.startswith(name + " "))

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.alive:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


@dataclass
class Cluster:
    bootstrap: str
    prefix: str
    app_id: str
    workdir: Path
    workers: list[WorkerProc] = field(default_factory=list)

    @property
    def topics(self) -> TopicNames:
        return TopicNames.with_prefix(self.prefix)

    def env(self, **settings: Any) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEARN_")}
        base = {
            "broker": f"kafka://{self.bootstrap}",
            "app_id": self.app_id,
            "topic_prefix": self.prefix,
            "partitions": PARTITIONS,
            "session_timeout_seconds": 3,
            "heartbeat_interval_seconds": 0.5,
            "commit_interval_seconds": 0.5,
            "log_level": "info",
            "dev": "true",   # development keys, HTTP commands open: tests of the secured doors set their own
        }
        base.update(settings)
        env.update({f"STREAMLEARN_{k.upper()}": str(v) for k, v in base.items()})
        return env

    def start_worker(self, name: str | None = None, netns: str | None = None, host: str = "127.0.0.1",
                     data_of: str | None = None, port: int | None = None, **settings: Any) -> WorkerProc:
        """A ``streamlearn worker`` process; with ``netns``, inside that network namespace, serving on ``host``;
        with ``data_of``, on the data directory of that (stopped) worker, as a restarted worker (``port``:
        on that worker's web port too, as a restart on its host)."""
        name = name or f"w{len(self.workers)}"
        port = port or (6066 if netns else free_port())     # a namespace has its own ports
        data = self.workdir / (data_of or name)
        data.mkdir(parents=True, exist_ok=True)
        log = self.workdir / f"{name}.log"
        proc = subprocess.Popen(
            [*(["ip", "netns", "exec", netns] if netns else []),
             sys.executable, "-m", "streamlearn.app.cli", "worker", "--web-port", str(port),
             "--data-dir", str(data)],
            env=self.env(web_host=host, **settings), stdout=log.open("wb"), stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        w = WorkerProc(name, port, proc, log, token=str(settings.get("api_token", "")), host=host)
        self.workers.append(w)
        return w

    def wait_ready(self, workers: list[WorkerProc] | None = None, timeout: float = 60.0) -> dict[str, list[int]]:
        """Wait until the given workers are ready and split all partitions between them."""
        workers = workers or [w for w in self.workers if w.alive]
        deadline = time.monotonic() + timeout
        while (split := self._split(workers)) is None and time.monotonic() < deadline:
            time.sleep(0.3)
        return split or self._not_ready(workers, timeout)

    async def ready(self, workers: list[WorkerProc], timeout: float = 60.0) -> dict[str, list[int]]:
        """``wait_ready`` for a test that goes on publishing meanwhile (it sleeps without blocking the loop)."""
        deadline = time.monotonic() + timeout
        while (split := self._split(workers)) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
        return split or self._not_ready(workers, timeout)

    def _split(self, workers: list[WorkerProc]) -> dict[str, list[int]] | None:
        """Each worker's partitions, when all are ready and split all partitions between them; else None."""
        for w in workers:
            if not w.alive:
                raise AssertionError(f"worker {w.name} exited:\n{w.log_tail()}")
        self._last = states = {w.name: w.ready() for w in workers}
        if all(states.values()):
            parts = [set(s["partitions"]) for s in states.values()]
            if set().union(*parts) == set(range(PARTITIONS)) and sum(map(len, parts)) == PARTITIONS:
                return {n: s["partitions"] for n, s in states.items()}
        return None

    def _not_ready(self, workers: list[WorkerProc], timeout: float):
        tails = "\n".join(f"--- {w.name}\n{w.log_tail()}" for w in workers)
        raise AssertionError(f"workers not ready in {timeout}s: {getattr(self, '_last', {})}\n{tails}")

    def stop_all(self, grace: float = 3.0) -> None:
        """The end of a test: every worker signalled at once, and what still runs ``grace`` seconds later killed
        (nothing is asserted of these stops; the graceful stop has tests of its own)."""
        for w in self.workers:
            if w.alive:
                w.proc.terminate()
        deadline = time.monotonic() + grace
        for w in self.workers:
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()


class Producer:
    """A producing service: aiokafka with its default partitioner unless told."""

    def __init__(self, bootstrap: str, **kwargs: Any) -> None:
        self._p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2, **kwargs)

    async def __aenter__(self) -> "Producer":
        await self._p.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._p.stop()

    async def send(self, topic: str, value: Any, key: str | bytes | None = None,
                   partition: int | None = None, headers: list | None = None) -> None:
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        k = key.encode() if isinstance(key, str) else key
        await self._p.send_and_wait(topic, raw, key=k, partition=partition, headers=headers)

    async def command(self, topic: str, value: Any, key: str | None = None, secret: bytes = DEV_COMMAND_KEY) -> None:
        """A command on the control topic as an operator's own client sends it: signed (and with a deadline)."""
        if isinstance(value, dict):
            value = orjson.dumps({"deadline": time.time() + 60, **value})
        await self.send(topic, value, key=key, headers=[(codec.SIGNATURE_HEADER, codec.sign(value, secret))])

    async def partitions(self, topic: str) -> list[int]:
        return sorted(await self._p.partitions_for(topic))


class Collector:
    """Reads a topic from the beginning into a list, in the background."""

    def __init__(self, bootstrap: str, topic: str, **kwargs: Any) -> None:
        self.topic = topic
        self.records: list[Any] = []
        self.arrived: list[float] = []      # time.monotonic() when each record was read
        self._values: list[Any] = []
        self._arrived = asyncio.Event()
        self._consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                          auto_offset_reset="earliest", enable_auto_commit=False,
                                          metadata_max_age_ms=1000, **kwargs)
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> "Collector":
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        await self._consumer.stop()

    async def _run(self) -> None:
        async for m in self._consumer:
            self.records.append(m)
            self.arrived.append(time.monotonic())
            self._values.append(orjson.loads(m.value))
            self._arrived.set()

    def values(self) -> list[Any]:
        return list(self._values)

    async def wait_for(self, predicate: Callable[[list[Any]], bool], timeout: float = 30.0,
                       what: str = "records") -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._arrived.clear()
            if predicate(self._values):
                return self.values()
            try:
                await asyncio.wait_for(self._arrived.wait(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
        if predicate(self._values):
            return self.values()
        raise AssertionError(f"timed out waiting for {what} on {self.topic}; have {len(self.records)}: "
                             f"{[str(v)[:120] for v in self._values[-5:]]}")

    async def wait_count(self, n: int, timeout: float = 30.0) -> list[Any]:
        return await self.wait_for(lambda v: len(v) >= n, timeout, f"{n} records")

    async def wait_for_one(self, predicate: Callable[[Any], bool], timeout: float = 30.0) -> Any:
        """The first record matching predicate, waiting for it."""
        values = await self.wait_for(lambda v: any(predicate(x) for x in v), timeout, "a matching record")
        return next(x for x in values if predicate(x))


async def wait_learned(worker: WorkerProc, key: str, n: int, timeout: float = 30.0) -> dict:
    """The model's status once it has learned at least n examples (asked over HTTP)."""
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        status, body = worker.get(f"/models/{key}")
        if status == 200 and body["learned"] >= n:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"model {key} did not learn {n} examples: {body}")
