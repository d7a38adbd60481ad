"""The run's own plumbing: the session's Kafka broker, and a run that leaves nothing behind.

The pytest process that runs the session (xdist's controller when the run is
parallel) starts the session broker in the background as the run begins, when
integration tests are among what it runs, and hands every test process its
address in ``STREAMLEARN_TEST_BOOTSTRAP``; the ``bootstrap`` fixture waits
until it answers. At the end, also after a failure or Ctrl-C, the controller
stops it (``scripts/kafka stop`` removes its storage) and then checks that the
run left nothing: no process of the run (anything whose working directory,
command line or environment names the run's temporary folder, or the session
broker), and no folder in ``.kafka/`` of a broker that no longer runs. What it
finds it stops and removes, and the run fails saying what it was.

Every integration test not marked ``smoke`` is marked ``slow``: the quick loop
(``scripts/test -m "not slow"``) runs the unit tests and the smoke tests. Tests
run longest first, so that side by side the last to end is not a long one
started late; a test's declared timeout stands for how long it runs.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KAFKA = ROOT / "scripts" / "kafka"
INTEGRATION = ROOT / "tests" / "integration"
GRACE = 15.0     # seconds for the run's processes to be gone once the run ends


def _kafka_script():
    """``scripts/kafka`` as a module: its own idea of a broker's folder and of whether that broker runs."""
    loader = importlib.machinery.SourceFileLoader("streamlearn_kafka_script", str(KAFKA))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


kafka_script = _kafka_script()


def _controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


def _runs_integration(config: pytest.Config) -> bool:
    """Whether the paths this run collects from hold integration tests."""
    for arg in config.args:
        path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
        if path == INTEGRATION or INTEGRATION in path.parents or path in INTEGRATION.parents:
            return True
    return False


class SessionBroker:
    """The broker the integration tests share, started by the controller and stopped by it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.folder = ROOT / ".kafka" / f"broker-{port}"
        self.env = {**os.environ, "KAFKA_PORT": str(port)}
        self.log = Path(tempfile.mkstemp(prefix=f"streamlearn-broker-{port}-", suffix=".log")[1])
        self.starting: subprocess.Popen | None = None

    def start(self) -> None:
        if subprocess.run([sys.executable, KAFKA, "status"], env=self.env, capture_output=True).returncode == 0:
            return      # someone's broker already answers on this port: use it, and leave it running
        with self.log.open("wb") as out:
            self.starting = subprocess.Popen([sys.executable, KAFKA, "start"], env=self.env, stdout=out,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.starting is not None:
            try:
                self.starting.wait(120)
            except subprocess.TimeoutExpired:
                self.starting.kill()
            subprocess.run([sys.executable, KAFKA, "stop"], env=self.env, capture_output=True)
        self.log.unlink(missing_ok=True)


def pytest_configure(config: pytest.Config) -> None:
    if (not _controller(config) or not _runs_integration(config) or os.environ.get("STREAMLEARN_TEST_BOOTSTRAP")
            or config.option.collectonly):   # listing the tests runs none: no broker (it would stop another run's)
        return
    broker = SessionBroker(int(os.environ.get("STREAMLEARN_TEST_KAFKA_PORT", "19092")))
    config.stash[BROKER] = broker
    os.environ["STREAMLEARN_TEST_BOOTSTRAP"] = f"127.0.0.1:{broker.port}"   # the test processes inherit it
    os.environ["STREAMLEARN_TEST_BROKER_LOG"] = str(broker.log)
    broker.start()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION in Path(item.fspath).parents and item.get_closest_marker("smoke") is None:
            item.add_marker(pytest.mark.slow)

    def expected_length(item: pytest.Item) -> float:
        if INTEGRATION not in Path(item.fspath).parents:
            return 0.0
        timeout = item.get_closest_marker("timeout")
        return float(timeout.args[0]) if timeout and timeout.args else float(config.getini("timeout") or 300)

    items.sort(key=expected_length, reverse=True)     # stable: the same order in every test process


BROKER = pytest.StashKey[SessionBroker]()
LEFT = pytest.StashKey[list[str]]()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if not _controller(config) or BROKER not in config.stash:
        return
    broker = config.stash[BROKER]
    broker.stop()
    left = sweep(config._tmp_path_factory.getbasetemp(), broker.folder if broker.starting else None)
    config.stash[LEFT] = left
    if left:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    if LEFT not in config.stash:
        return
    left = config.stash[LEFT]
    if left:
        terminalreporter.section("left behind by the run (now stopped and removed)", red=True)
        for line in left:
            terminalreporter.write_line(line)
    else:
        terminalreporter.write_line("left behind: nothing (no process of the run, no broker folder in .kafka/ "
                                    "but those of running brokers)")


def sweep(basetemp: Path, session_broker: Path | None, grace: float = GRACE) -> list[str]:
    """What the run left: its processes (waited for, then killed) and dead brokers' folders (removed)."""
    deadline = time.monotonic() + grace
    while (procs := run_processes(basetemp, session_broker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [f"process {pid}: {cmd[:200]}" for pid, cmd in procs.items()]
    for pid in procs:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if procs:
        time.sleep(1.0)    # reaped by init, so that their brokers' PIDs read as gone
    for folder in dead_broker_folders(ROOT / ".kafka", basetemp):
        left.append(f"folder of a broker no longer running: {folder}")
        shutil.rmtree(folder, ignore_errors=True)
    return left


def run_processes(basetemp: Path, session_broker: Path | None) -> dict[int, str]:
    """Processes that belong to the run: they name its temporary folder in their working directory, command
    line or environment, or they are the session broker the run started (its folder in their command line)."""
    mark = f"{basetemp}/".encode()
    broker = f"{session_broker}/".encode() if session_broker else None
    mine = {os.getpid(), os.getppid()}
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            cwd = os.readlink(entry / "cwd").encode()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if mark in cmdline or (cwd + b"/").startswith(mark) or mark in environ or (broker and broker in cmdline):
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def dead_broker_folders(checkout: Path, basetemp: Path) -> list[Path]:
    """Folders of brokers that no longer run (``scripts/kafka``'s test): in the checkout's ``.kafka/`` (but those
    kept on purpose with KAFKA_KEEP_DATA=1), anywhere in the run's temporary folder."""
    candidates = [f for f in checkout.glob("broker-*") if not (f / kafka_script.KEPT).exists()] \
        if checkout.is_dir() else []
    candidates += list(basetemp.rglob("broker-*")) if basetemp.is_dir() else []
    return [f for f in candidates if f.is_dir() and kafka_script.running_pid(f) is None]
