"""The end-of-run check (tests/conftest.py): what a run leaves behind is found, stopped, removed and named."""

from __future__ import annotations

import subprocess

from tests.conftest import sweep


def test_sweep_finds_stops_and_removes_what_a_run_left(tmp_path):
    basetemp = tmp_path / "pytest-7"
    left_in = basetemp / "test_something0"
    (left_in / "kafka" / "broker-4242" / "logs").mkdir(parents=True)
    (left_in / "kafka" / "broker-4242" / "kafka.pid").write_text("999999999")     # no such process
    worker = subprocess.Popen(["sleep", "120"], cwd=left_in)                          # a test's forgotten child
    elsewhere = subprocess.Popen(["sleep", "120"], cwd=tmp_path)                      # not the run's
    try:
        left = sweep(basetemp, session_broker=None, grace=0.5)
        assert any(line.startswith(f"process {worker.pid}: sleep 120") for line in left), left
        assert any("broker-4242" in line for line in left), left
        assert worker.wait(5) != 0                                                   # killed
        assert not (left_in / "kafka" / "broker-4242").exists()
        assert elsewhere.poll() is None and not any(str(elsewhere.pid) in line for line in left)
        assert sweep(basetemp, session_broker=None, grace=0.5) == []                # and then nothing is left
    finally:
        for proc in (worker, elsewhere):
            proc.kill()
            proc.wait()
