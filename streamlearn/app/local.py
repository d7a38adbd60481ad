"""Workers as local processes, for the benchmark and the failover script."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(port: int, path: str) -> dict | None:
    """A worker's JSON answer at path, or None while it does not answer (or answers an error)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def scrape(port: int, timeout: float = 2.0) -> str | None:
    """A worker's /metrics text, or None while it does not answer within ``timeout``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
            return r.read().decode()
    except OSError:
        return None


def get_metric(port: int, name: str) -> float | None:
    """The sum of a worker's samples of one metric on /metrics, or None while it does not answer."""
    text = scrape(port)
    if text is None:
        return None
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def wait_metric(ports: list[int], name: str, at_least: float, timeout: float = 600.0) -> None:
    """Wait until the workers' metric, summed, reaches at_least."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(get_metric(p, name) or 0.0 for p in ports) >= at_least:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{name} of the workers on ports {ports} did not reach {at_least:g} in {timeout:g}s")


def start_worker(env: dict[str, str], workdir: Path, name: str) -> tuple[subprocess.Popen, int]:
    """``streamlearn worker`` on a free port, logging to workdir/name.log; returns (process, web port)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlearn.app.cli", "worker", "--web-port", str(port),
                             "--data-dir", str(workdir / name)], env=env,
                            stdout=(workdir / f"{name}.log").open("wb"), stderr=subprocess.STDOUT)
    return proc, port


def wait_split(ports: list[int], partitions: int, timeout: float = 120.0) -> list[list[int]]:
    """Wait until the workers are ready and own all partitions between them; their partitions."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [get_json(p, "/ready") for p in ports]
        if all(s and s.get("ready") for s in states) and sum(len(s["partitions"]) for s in states) == partitions:
            return [s["partitions"] for s in states]
        time.sleep(0.3)
    raise RuntimeError(f"workers on ports {ports} not ready in {timeout:g}s")


def stop_workers(procs: list[subprocess.Popen], timeout: float = 30.0) -> None:
    """SIGTERM, then wait (SIGKILL after timeout)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()


def get_buckets(port: int, name: str, timeout: float = 30.0) -> dict[float, float]:
    """A worker's histogram ``name`` as cumulative counts by upper bound (``le``); empty if it does not
    answer within ``timeout`` (a stalled event loop answers late: wait it out, or the stall is lost)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = scrape(port, timeout)
    if text is None:
        return {}
    return {float(sample.labels["le"]): sample.value for family in text_string_to_metric_families(text)
            if family.name == name for sample in family.samples if sample.name == name + "_bucket"}


def worst_within(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The smallest bucket bound holding every observation made between two reads of a histogram (the
    worst one was at most that); None when nothing was observed."""
    total = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
    if total <= 0:
        return None
    return min(le for le, n in after.items() if n - before.get(le, 0.0) >= total)

