"""Workers on hosts of their own, and the network failing under them.

Five hosts on one machine (``netns.py``: network namespaces on a bridge, each
with its own address): the broker, three workers, and the producing and
checking clients (this test's own process, moved into the fifth). A labelled
stream runs through all three workers while the network fails three ways:

1. one worker's link is cut for longer than the session timeout, then mended:
   the other two take over its keys, and it rejoins and gets partitions again;
2. one worker's link turns slow and lossy for 30 s;
3. the broker is unreachable from every worker for 30 s (the clients still
   reach it, so events go on arriving).

After each: every label the producer sent learned exactly once, every model
equal to River trained in process (``assert_exact``), every event answered;
and how long the affected keys went unanswered is printed.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from streamlearn.streams.routing import partition_for

from . import netns
from .harness import PARTITIONS, Cluster, Collector, Producer
from .test_durability import N_KEYS, SETTINGS, Sent, assert_exact, publish

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
RATE = 60                      # labelled events a second, through the whole test
SESSION_TIMEOUT = 6.0
HOSTS = dict(SETTINGS, session_timeout_seconds=SESSION_TIMEOUT, heartbeat_interval_seconds=1)


class Stream:
    """Publishes labelled events at RATE, remembering when each was sent."""

    def __init__(self, cluster: Cluster, p: Producer, sent: Sent) -> None:
        self.cluster, self.p, self.sent = cluster, p, sent
        self.next = 0
        self.sent_at: dict[str, float] = {}

    async def run(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        step = RATE // 10
        while (now := time.monotonic()) < end:
            for i in range(self.next, self.next + step):
                self.sent_at[f"e{i}"] = now
            await publish(self.cluster, self.p, self.next, self.next + step, self.sent)
            self.next += step
            await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - now)))


def keys_of(partitions: list[int]) -> set[str]:
    return {f"m{i}" for i in range(N_KEYS) if partition_for(f"m{i}", PARTITIONS) in partitions}


def report(what: str, stream: Stream, preds: Collector, keys: set[str], began: float, ended: float) -> str:
    """How the keys of a fault were served: events sent while it lasted, from send to first answer."""
    first: dict[str, float] = {}
    for value, at in zip(preds.values(), preds.arrived):
        first.setdefault(value["event_id"], at)
    during = [e for e, at in stream.sent_at.items() if began <= at <= ended and stream.sent.events[e][0] in keys]
    waits = sorted(first[e] - stream.sent_at[e] for e in during)
    again = min(first[e] for e in during) - began
    last = max(first[e] for e in during) - ended
    line = (f"{what}: {len(during)} events of {len(keys)} affected keys sent during the fault; first answered "
            f"{again:.1f} s after it began, all answered {max(0.0, last):.1f} s after it ended; send to answer "
            f"p50 {statistics.median(waits):.2f} s, max {waits[-1]:.1f} s")
    print(line)
    return line


@pytest.mark.timeout(1200)
async def test_three_hosts_survive_a_cut_link_a_bad_link_and_a_lost_broker(tmp_path):
    why = netns.unavailable()
    if why:
        print(f"skipped: {why}")
        pytest.skip(why)
    with netns.Network() as net:
        broker = net.add("kafka")
        hosts = [net.add(f"w{i}") for i in range(3)]
        clients = net.add("clients")
        kafka_env = {**os.environ, "KAFKA_HOST": broker.ip, "KAFKA_PORT": "9092", "KAFKA_CONTROLLER_PORT": "9093",
                     "KAFKA_HOME_DIR": str(tmp_path / "kafka"), "KAFKA_HEAP_OPTS": "-Xms128m -Xmx512m"}
        subprocess.run(["ip", "netns", "exec", broker.ns, sys.executable, str(ROOT / "scripts" / "kafka"), "start"],
                       env=kafka_env, check=True, stdout=subprocess.DEVNULL)
        cluster = Cluster(bootstrap=f"{broker.ip}:9092", prefix="t.hosts.", app_id=f"sl-hosts-{uuid.uuid4().hex[:6]}",
                          workdir=tmp_path)
        ws = [cluster.start_worker(f"w{i}", netns=h.ns, host=h.ip, **HOSTS) for i, h in enumerate(hosts)]
        try:
            with net.inside(clients):
                await faults(net, cluster, hosts, broker, ws)
        finally:
            cluster.stop_all()
            subprocess.run([sys.executable, str(ROOT / "scripts" / "kafka"), "stop"], env=kafka_env, check=False,
                           stdout=subprocess.DEVNULL)


async def faults(net: netns.Network, cluster: Cluster, hosts: list[netns.Host], broker: netns.Host, ws) -> None:
    sent = Sent()
    lines = []
    split = await cluster.ready(ws, timeout=120)
    async with Producer(cluster.bootstrap) as p, Collector(cluster.bootstrap, cluster.topics.predictions) as preds:
        stream = Stream(cluster, p, sent)
        await stream.run(5)

        # 1. a worker's link cut for longer than the session timeout: the other two take over its keys
        cut = hosts[2]
        affected = keys_of(split["w2"])
        publishing = asyncio.create_task(stream.run(45))
        await asyncio.sleep(5)
        began = time.monotonic()
        net.cut(cut)
        took = await cluster.ready(ws[:2], timeout=60)
        print(f"link of w2 cut: w0 and w1 own all partitions {time.monotonic() - began:.1f} s later: {took}")
        await asyncio.sleep(max(0.0, 3 * SESSION_TIMEOUT - (time.monotonic() - began)))
        net.mend(cut)
        ended = time.monotonic()
        split = await cluster.ready(ws, timeout=120)
        print(f"link of w2 mended: it rejoined with partitions {split['w2']} {time.monotonic() - ended:.1f} s later")
        assert split["w2"], "w2 rejoined without partitions"
        await publishing
        await assert_exact(cluster, ws, sent, n_probes=3, tag="-cut")
        lines.append(report("w2's link cut", stream, preds, affected, began, ended))

        # 2. a slow, lossy link
        affected = keys_of(split["w1"])
        publishing = asyncio.create_task(stream.run(40))
        await asyncio.sleep(5)
        began = time.monotonic()
        net.degrade(hosts[1])
        await asyncio.sleep(30)
        net.restore(hosts[1])
        ended = time.monotonic()
        await publishing
        split = await cluster.ready(ws, timeout=120)
        await assert_exact(cluster, ws, sent, n_probes=3, tag="-slow")
        lines.append(report("w1's link slow and lossy", stream, preds, affected, began, ended))

        # 3. the broker unreachable from every worker for 30 s, the producers still sending
        publishing = asyncio.create_task(stream.run(50))
        await asyncio.sleep(5)
        began = time.monotonic()
        for h in hosts:
            net.isolate(h, broker)
        await asyncio.sleep(30)
        for h in hosts:
            net.restore(h)
        ended = time.monotonic()
        await publishing
        split = await cluster.ready(ws, timeout=120)
        await assert_exact(cluster, ws, sent, n_probes=3, tag="-broker")
        lines.append(report("broker unreachable from the workers", stream, preds, {f"m{i}" for i in range(N_KEYS)},
                            began, ended))
    print("\n" + "\n".join(lines))


@pytest.mark.timeout(300)
def test_a_worker_with_the_compose_environment_turns_healthy_by_the_compose_health_check(tmp_path):
    """No Docker engine here: the compose stack's parts as compose runs them. Hosts named as its services
    (``kafka``, ``worker-1``: each a network namespace, the names in its own hosts file), the broker on the
    containers' listener, a worker with exactly ``worker-1``'s environment from docker-compose.yml (and the
    image's data directory moved here), and compose's health check command run inside the worker's host, as
    often as compose would: it must pass (a check of 127.0.0.1 failed there, the worker binding its name)."""
    import yaml

    why = netns.unavailable()
    if why:
        print(f"skipped: {why}")
        pytest.skip(why)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    service = compose["worker-1"]
    env = {k: str(v) for k, v in service["environment"].items()}
    check = service["healthcheck"]
    assert check["test"][0] == "CMD"
    retries, interval = int(check["retries"]), float(check["interval"].rstrip("s"))
    broker_url = env["STREAMLEARN_BROKER"].removeprefix("kafka://")
    broker_name, broker_port = broker_url.split(":")
    assert broker_name == "kafka" and env["STREAMLEARN_WEB_HOST"] == "worker-1"
    with netns.Network() as net:
        kafka, worker = net.add("kafka"), net.add("w1")   # the names are in the hosts files (ifnames are short)
        for host in (kafka, worker):    # `ip netns exec` puts /etc/netns/NS/hosts in place of /etc/hosts
            folder = Path("/etc/netns") / host.ns
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "hosts").write_text(f"127.0.0.1 localhost\n{kafka.ip} kafka\n{worker.ip} worker-1\n")
        kafka_env = {**os.environ, "KAFKA_HOST": kafka.ip, "KAFKA_PORT": broker_port, "KAFKA_CONTROLLER_PORT": "9093",
                     "KAFKA_HOME_DIR": str(tmp_path / "kafka"), "KAFKA_HEAP_OPTS": "-Xms128m -Xmx512m"}
        try:
            subprocess.run(["ip", "netns", "exec", kafka.ns, sys.executable, str(ROOT / "scripts" / "kafka"),
                            "start"], env=kafka_env, check=True, stdout=subprocess.DEVNULL)
            data = tmp_path / "data"
            data.mkdir()
            clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEARN_")}
            log = (tmp_path / "worker-1.log").open("wb")
            proc = subprocess.Popen(["ip", "netns", "exec", worker.ns, sys.executable, "-m", "streamlearn.app.cli",
                                     "worker"], env={**clean, **env, "STREAMLEARN_DATA_DIR": str(data)},
                                    stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
            command = [sys.executable, "-m", "streamlearn.app.cli", *check["test"][2:]]   # the image's `streamlearn`
            assert check["test"][1] == "streamlearn"
            started, answers = time.monotonic(), []
            for _ in range(retries):
                done = subprocess.run(["ip", "netns", "exec", worker.ns, *command], env={**clean, **env},
                                      capture_output=True, text=True, timeout=30)
                answers.append(done.stdout.strip() or done.stderr.strip())
                if done.returncode == 0:
                    break
                time.sleep(interval)
            assert done.returncode == 0, (answers[-3:], (tmp_path / "worker-1.log").read_text()[-3000:])
            assert answers[-1].startswith("http://worker-1:6066  alive=yes  ready=yes  partitions="), answers[-1]
            print(f"healthy {time.monotonic() - started:.1f} s after the start, after {len(answers)} checks")
            local = subprocess.run(["ip", "netns", "exec", worker.ns, *command, "http://127.0.0.1:6066"],
                                   env={**clean, **env}, capture_output=True, text=True, timeout=30)
            assert local.returncode == 1 and "alive=no" in local.stdout, local   # why the old check never passed
            proc.terminate()
            proc.wait(timeout=30)
        finally:
            subprocess.run(["ip", "netns", "exec", kafka.ns, sys.executable, str(ROOT / "scripts" / "kafka"), "stop"],
                           env=kafka_env, check=False, stdout=subprocess.DEVNULL)
            for host in (kafka, worker):
                for f in (Path("/etc/netns") / host.ns).glob("*"):
                    f.unlink()
                (Path("/etc/netns") / host.ns).rmdir()
