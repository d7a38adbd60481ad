"""Hosts of their own on one machine: Linux network namespaces on a bridge, and the faults of a real network.

Each host is a network namespace with one veth link to a bridge in the root
namespace and an address of its own on 10.213.0.0/24; the bridge has no
address, so the hosts reach each other only over their links, as separate
machines on one switch would. Faults are made on a host's link:

- ``cut``: the bridge's end of the link down (a pulled cable: the host's
  process runs on and sees nothing arrive);
- ``degrade``: a slow link that queues (``tc`` token bucket at ``rate``, each
  direction) and drops ``loss`` of the packets at random (``iptables``'
  statistic match); this kernel has no ``netem`` qdisc, so latency comes from
  the queue of a link too slow for its traffic, not from a fixed delay;
- ``isolate``: every packet between the host and one address dropped
  (``iptables``), in both directions, silently.

Needs root, ``ip`` (iproute2), ``tc`` and ``iptables``: ``scripts/setup``
installs them. ``unavailable()`` says why not, for the tests to skip with.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from typing import Iterator

CLONE_NEWNET = 0x40000000
SUBNET = "10.213.0"


def unavailable() -> str | None:
    """Why this machine cannot make the hosts (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc", "iptables"):
        if shutil.which(tool) is None:
            return f"no `{tool}` command (scripts/setup installs iproute2 and iptables)"
    probe = f"slprobe{os.getpid() % 100000}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False)
    return None


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


_ROOT_NS = os.open("/proc/thread-self/ns/net", os.O_RDONLY)   # where this module was imported: the machine's own


def _in_root_ns() -> None:
    _libc().setns(_ROOT_NS, CLONE_NEWNET)


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    """A command run in the machine's own namespace, also while this thread is ``inside`` a host."""
    done = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_in_root_ns, pass_fds=(_ROOT_NS,))
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip() or done.stdout.strip()}")
    return done


@dataclass
class Host:
    name: str
    ns: str          # its network namespace
    ip: str
    link: str        # the bridge's end of its veth (root namespace)
    inner: str       # its own end (inside ns)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.ns, *cmd, check=check)


class Network:
    """A bridge and hosts on it; ``remove()`` (or leaving the ``with``) kills their processes and deletes it all."""

    def __init__(self) -> None:
        self.tag = f"sl{os.getpid() % 100000}"
        self.bridge = f"{self.tag}br"
        self.hosts: list[Host] = []

    def __enter__(self) -> "Network":
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "link", "set", self.bridge, "up")
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def add(self, name: str) -> Host:
        host = Host(name, f"{self.tag}-{name}", f"{SUBNET}.{len(self.hosts) + 2}", f"{self.tag}{name}",
                    f"{self.tag}{name}i")
        self.hosts.append(host)
        sh("ip", "netns", "add", host.ns)
        sh("ip", "link", "add", host.link, "type", "veth", "peer", "name", host.inner, "netns", host.ns)
        sh("ip", "link", "set", host.link, "master", self.bridge, "up")
        sh("ip", "-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", host.inner)
        sh("ip", "-n", host.ns, "link", "set", host.inner, "up")
        sh("ip", "-n", host.ns, "link", "set", "lo", "up")
        return host

    # faults, and their repair
    def cut(self, host: Host) -> None:
        sh("ip", "link", "set", host.link, "down")

    def mend(self, host: Host) -> None:
        sh("ip", "link", "set", host.link, "up")

    def degrade(self, host: Host, rate: str = "512kbit", queue: str = "400ms", loss: float = 0.05) -> None:
        sh("tc", "qdisc", "add", "dev", host.link, "root", "tbf", "rate", rate, "burst", "16kb", "latency", queue)
        host.run("tc", "qdisc", "add", "dev", host.inner, "root", "tbf", "rate", rate, "burst", "16kb",
                 "latency", queue)
        for chain in ("INPUT", "OUTPUT"):
            host.run("iptables", "-A", chain, "-m", "statistic", "--mode", "random", "--probability", str(loss),
                     "-j", "DROP")

    def restore(self, host: Host) -> None:
        sh("tc", "qdisc", "del", "dev", host.link, "root", check=False)
        host.run("tc", "qdisc", "del", "dev", host.inner, "root", check=False)
        host.run("iptables", "-F", "INPUT", check=False)
        host.run("iptables", "-F", "OUTPUT", check=False)

    def isolate(self, host: Host, other: Host) -> None:
        host.run("iptables", "-A", "OUTPUT", "-d", other.ip, "-j", "DROP")
        host.run("iptables", "-A", "INPUT", "-s", other.ip, "-j", "DROP")

    @contextlib.contextmanager
    def inside(self, host: Host) -> Iterator[None]:
        """Run this thread in the host's namespace: the sockets it opens meanwhile are the host's."""
        libc = _libc()
        back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        there = os.open(f"/run/netns/{host.ns}", os.O_RDONLY)
        try:
            if libc.setns(there, CLONE_NEWNET):
                raise OSError(ctypes.get_errno(), f"setns into {host.ns}")
            yield
        finally:
            if libc.setns(back, CLONE_NEWNET):
                raise OSError(ctypes.get_errno(), "setns back to the root network namespace")
            os.close(there)
            os.close(back)

    def remove(self) -> None:
        for host in self.hosts:
            pids = sh("ip", "netns", "pids", host.ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            # the pair's end here first, at once: a namespace's deletion removes it only later (the kernel
            # cleans up behind), and the next network of this process, named alike, would find it there
            sh("ip", "link", "del", host.link, check=False)
            sh("ip", "netns", "del", host.ns, check=False)
        sh("ip", "link", "del", self.bridge, check=False)
        self.hosts.clear()
