"""The ``streamlearn`` command as a user meets it: run as a process, its exit code and what it prints."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from streamlearn.app.local import free_port


def closed_port() -> int:
    """A local port nothing listens on."""
    return free_port()


def streamlearn(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "streamlearn.app.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **env})


COMMANDS = [["topics"], ["replay", "phishing", "--limit", "5"], ["watch", "--seconds", "1"], ["plot", "x.png"],
            ["models", "status", "k"], ["bench", "--events", "10"], ["worker", "--web-port", str(closed_port())]]


@pytest.mark.parametrize("timeout", [6.0])
def test_every_command_and_the_worker_end_in_one_line_when_kafka_cannot_be_reached(tmp_path, timeout):
    """A broker nobody reaches: after ``kafka_connect_timeout_seconds``, one line naming it, exit 1; no
    traceback, no client log lines; while waiting, one line per 5 s at most."""
    port = closed_port()
    started = time.monotonic()
    procs = [streamlearn(*c, "--broker", f"kafka://127.0.0.1:{port}", STREAMLEARN_DEV="true",
                         STREAMLEARN_DATA_DIR=str(tmp_path / "data"),
                         STREAMLEARN_KAFKA_CONNECT_TIMEOUT_SECONDS=str(timeout)) for c in COMMANDS]
    for command, proc in zip(COMMANDS, procs):
        out, _ = proc.communicate(timeout=60)
        lines = [line for line in out.splitlines() if not line.startswith("DEVELOPMENT MODE")]
        assert proc.returncode == 1, (command, out)
        assert lines[-1].startswith(f"streamlearn: cannot connect to Kafka at 127.0.0.1:{port}: Connection "
                                    f"refused (waited {timeout:.0f} s"), (command, out)
        waiting = lines[:-1]
        assert len(waiting) <= timeout // 5 and all(line.startswith("streamlearn: waiting for Kafka at")
                                                    or "waiting for Kafka at" in line for line in waiting), \
            (command, out)
    took = time.monotonic() - started
    assert timeout <= took < timeout + 30, took


def test_a_bad_setting_is_one_line_too():
    out, _ = (proc := streamlearn("worker", "--web-port", "0", STREAMLEARN_DEV="true")).communicate(timeout=60)
    assert proc.returncode == 2 and out.splitlines()[-1] == ("streamlearn: bad setting: web_port must be a port "
                                                            "number (1-65535), not 0"), out


def test_replay_of_an_endless_dataset_asks_for_a_limit_before_it_sends_anything():
    out, _ = (proc := streamlearn("replay", "sea", "--broker", f"kafka://127.0.0.1:{closed_port()}")).communicate(
        timeout=60)
    assert proc.returncode == 2 and out.splitlines() == [
        "streamlearn replay: sea never ends: give --limit N (or --forever to send until Ctrl-C)"], out


def test_replay_knows_how_many_examples_a_dataset_holds(tmp_path):
    from streamlearn.app.replay import ReplayError, dataset_size

    (tmp_path / "a.jsonl").write_text('{"features": {"x": 1}, "label": true}\n\n{"features": {"x": 2}, "label": false}\n')
    (tmp_path / "b.csv").write_text("x,y\n1,0\n2,1\n3,0\n")
    assert dataset_size("phishing") == 1250 and dataset_size("sea") is None and dataset_size("agrawal") is None
    assert dataset_size(str(tmp_path / "a.jsonl")) == 2 and dataset_size(str(tmp_path / "b.csv")) == 3
    with pytest.raises(ReplayError, match="neither a bundled dataset"):
        dataset_size(str(tmp_path / "missing.jsonl"))


def test_every_option_of_every_command_has_help_and_its_help_shows_the_defaults():
    import argparse

    from streamlearn.app.cli import parser

    top = parser()
    [commands] = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"streamlearn {name} {'/'.join(action.option_strings) or action.dest} has no help"
        text = sub.format_help()
        for action in sub._actions:
            if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
                assert f"(default: {action.default})" in " ".join(text.split()), (name, action.dest)


def test_the_bench_bounds_the_worst_stall_of_a_run_by_the_histogram_buckets_it_filled():
    from streamlearn.app.local import worst_within

    inf = float("inf")
    before = {0.001: 10, 0.01: 12, 0.25: 12, 1.0: 12, inf: 12}
    assert worst_within(before, {0.001: 30, 0.01: 33, 0.25: 34, 1.0: 34, inf: 34}) == 0.25   # one of 0.01-0.25 s
    assert worst_within(before, {0.001: 13, 0.01: 17, 0.25: 17, 1.0: 17, inf: 17}) == 0.01
    assert worst_within(before, {0.001: 15, 0.01: 17, 0.25: 17, 1.0: 17, inf: 17}) == 0.001
    assert worst_within(before, dict(before)) is None                                        # nothing observed
    assert worst_within({}, {0.001: 0, 0.01: 0, 0.25: 0, 1.0: 0, inf: 2}) == inf             # over the last bound
