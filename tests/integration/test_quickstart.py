"""The README's quick start, run as written: a newcomer's first minutes with their own worker.

Its three blocks (the shell session that starts a broker and a worker, the
Python service, the kcat lines) run one after the other, exactly as the
README has them, in the checkout, inside a network namespace of their own:
its localhost:9092 and :6066 are its own, whatever runs on the machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from . import netns

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def quickstart() -> list[tuple[str, str]]:
    """The quick start's code blocks: (language, code), in order."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start: your own worker\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(bash|python)\n(.*?)```", section, re.S)


@pytest.mark.timeout(600)
def test_the_readme_quick_start_runs_as_written(tmp_path):
    why = netns.unavailable()
    if why:
        print(f"skipped: {why}")
        pytest.skip(why)
    blocks = quickstart()
    assert [lang for lang, _ in blocks] == ["bash", "python", "bash"]
    ns = f"slqs{os.getpid() % 100000}"
    netns.sh("ip", "netns", "add", ns)
    netns.sh("ip", "-n", ns, "link", "set", "lo", "up")
    # a user's shell: none of the test run's settings
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMLEARN_", "KAFKA_", "VIRTUAL_ENV"))}
    env["PATH"] = ":".join(p for p in env.get("PATH", "").split(":") if ".venv" not in p)
    log = ROOT / "worker.log"
    assert not log.exists(), "a worker.log in the checkout would be overwritten"
    data = ROOT / "streamlearn-data"      # the worker's data directory (its tables): the test's, unless one was there
    data_before = data.exists()

    def run(lang: str, code: str, timeout: float) -> subprocess.CompletedProcess:
        if lang == "bash":
            command = ["bash", "-e", "-c", code]     # -e: a failing line fails the block
        else:
            (tmp_path / "service.py").write_text(code)
            command = [str(ROOT / ".venv/bin/python"), str(tmp_path / "service.py")]
        done = subprocess.run(["ip", "netns", "exec", ns, *command], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)
        assert done.returncode == 0, (code, done.stdout[-3000:], done.stderr[-3000:],
                                      log.read_text()[-3000:] if log.exists() else "")
        return done

    try:
        session = run(*blocks[0], timeout=300).stdout.splitlines()
        table = session[session.index(next(r for r in session if r.startswith("MODEL "))):]
        assert table[0].split()[:4] == ["MODEL", "SPEC", "VERSION", "LEARNED"], session
        [row] = [r for r in table[1:] if r.split()[0] == "replay"]
        assert row.split()[1:3] == ["logreg", "v1"] and 0 < int(row.split()[3]) <= 500, row
        learned = 0
        for _ in range(60):     # and in the end every label of the replay (on a busy machine, after the table)
            listed = subprocess.run(["ip", "netns", "exec", ns, ".venv/bin/streamlearn", "models", "list", "--json"],
                                    cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
            learned = {m["model"]: m["learned"] for m in orjson.loads(listed.stdout or "[]")}.get("replay", 0)
            if learned == 500:
                break
            time.sleep(1)
        assert learned == 500
        prediction, version = run(*blocks[1], timeout=120).stdout.split()
        assert prediction in ("True", "False", "None") and version == "1"
        [answer] = run(*blocks[2], timeout=120).stdout.splitlines()
        answer = orjson.loads(answer)
        assert answer["event_id"] == "order-2" and answer["model"] == "shop-1", answer
    finally:
        pids = netns.sh("ip", "netns", "pids", ns, check=False).stdout.split()
        subprocess.run(["ip", "netns", "exec", ns, "bash", "-c", "KAFKA_PORT=9092 scripts/kafka stop"], cwd=ROOT,
                       env=env, capture_output=True, timeout=120)
        for pid in netns.sh("ip", "netns", "pids", ns, check=False).stdout.split() or pids:
            subprocess.run(["kill", "-9", pid], capture_output=True)
        netns.sh("ip", "netns", "del", ns, check=False)
        log.unlink(missing_ok=True)
        if not data_before:
            shutil.rmtree(data, ignore_errors=True)
