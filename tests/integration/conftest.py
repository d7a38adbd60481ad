"""Integration fixtures: the session's real Kafka broker, workers as real processes.

The broker is Apache Kafka from Maven Central, started by ``scripts/kafka`` on
``STREAMLEARN_TEST_KAFKA_PORT`` (default 19092) by the run's controller
(``tests/conftest.py``), which stops it, removing its storage, at the end.
Each test gets its own topic prefix and consumer group, so tests never see
each other's messages and may run side by side.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from .harness import Cluster

ROOT = Path(__file__).resolve().parents[2]
KAFKA = ROOT / "scripts" / "kafka"


@pytest.fixture(scope="session")
def bootstrap() -> str:
    """The session broker's address, once it answers."""
    address = os.environ.get("STREAMLEARN_TEST_BOOTSTRAP")
    if not address:
        pytest.fail("no session broker: STREAMLEARN_TEST_BOOTSTRAP is unset (tests/conftest.py sets it)")
    env = {**os.environ, "KAFKA_PORT": address.rsplit(":", 1)[1]}
    deadline = time.monotonic() + 150
    while subprocess.run([sys.executable, KAFKA, "status"], env=env, capture_output=True).returncode:
        if time.monotonic() > deadline:
            log = Path(os.environ.get("STREAMLEARN_TEST_BROKER_LOG", "/nonexistent"))
            pytest.fail(f"the session broker at {address} did not answer in 150 s: "
                        f"{log.read_text()[-3000:] if log.exists() else ''}")
        time.sleep(0.5)
    return address


@pytest.fixture
def cluster(bootstrap: str, tmp_path: Path, request: pytest.FixtureRequest):
    """Workers and Kafka clients of one test, isolated by a fresh topic prefix and app id."""
    tag = f"{request.node.name[:24].replace('[', '-').replace(']', '')}-{uuid.uuid4().hex[:6]}"
    c = Cluster(bootstrap=bootstrap, prefix=f"t.{tag}.", app_id=f"sl-{tag}", workdir=tmp_path)
    yield c
    c.stop_all()
