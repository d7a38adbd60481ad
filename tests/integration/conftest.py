"""Integration fixtures: one real Kafka broker per session, workers as real processes.

The broker is Apache Kafka from Maven Central, started by ``scripts/kafka``
on ``STREAMLEARN_TEST_KAFKA_PORT`` (default 19092) and stopped at the end of
the session (unless it was already running). Each test gets its own topic
prefix and consumer group, so tests never see each other's messages.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from .harness import Cluster

ROOT = Path(__file__).resolve().parents[2]
KAFKA = ROOT / "scripts" / "kafka"


@pytest.fixture(scope="session")
def kafka_port() -> int:
    return int(os.environ.get("STREAMLEARN_TEST_KAFKA_PORT", "19092"))


@pytest.fixture(scope="session")
def bootstrap(kafka_port: int) -> str:
    env = {**os.environ, "KAFKA_PORT": str(kafka_port)}
    was_running = subprocess.run([sys.executable, KAFKA, "status"], env=env, capture_output=True).returncode == 0
    if not was_running:
        subprocess.run([sys.executable, KAFKA, "start"], env=env, check=True)
    yield f"127.0.0.1:{kafka_port}"
    if not was_running:
        subprocess.run([sys.executable, KAFKA, "stop"], env=env, check=False)


@pytest.fixture
def cluster(bootstrap: str, tmp_path: Path, request: pytest.FixtureRequest):
    """Workers and Kafka clients of one test, isolated by a fresh topic prefix and app id."""
    tag = f"{request.node.name[:24].replace('[', '-').replace(']', '')}-{uuid.uuid4().hex[:6]}"
    c = Cluster(bootstrap=bootstrap, prefix=f"t.{tag}.", app_id=f"sl-{tag}", workdir=tmp_path)
    yield c
    c.stop_all()
