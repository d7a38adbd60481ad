"""The secured doors, as users meet them: Kafka over SASL_SSL, bearer tokens on HTTP, signed control commands.

Each door is tried with the right credential (it works), with none and with a
wrong one (refused with the documented answer, and nothing changes: the
model's version and learned count are the same after), and no secret value
appears in anything the tests capture (worker logs, CLI output, HTTP bodies).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
from aiokafka.helpers import create_ssl_context

from streamlearn.streams import codec

from .harness import Cluster, Collector, Producer, fresh_broker, free_port, wait_learned

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

SIGNING_KEY = "test-signing-key-" + uuid.uuid4().hex
COMMAND_SECRET = "test-command-secret-" + uuid.uuid4().hex
API_TOKEN = "test-api-token-" + uuid.uuid4().hex
SASL_PASSWORD = "sasl-" + uuid.uuid4().hex
SECRETS = (SIGNING_KEY, COMMAND_SECRET, API_TOKEN, SASL_PASSWORD)
PRODUCTION = dict(dev="false", signing_key=SIGNING_KEY, command_secret=COMMAND_SECRET, api_token=API_TOKEN)


def cli(cluster: Cluster, *args: str, timeout: float = 90, **settings) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamlearn.app.cli", *args], env=cluster.env(**settings),
                          capture_output=True, text=True, timeout=timeout, cwd=cluster.workdir)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"a secret value was printed: ...{text[max(text.find(secret) - 80, 0):][:200]}"


async def labelled(p: Producer, topics, key: str, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        x = {"a": float(i % 7), "b": float(i % 3)}
        await p.send(topics.features, {"event_id": f"{key}-{i}", "features": x}, key=key)
        await p.send(topics.feedback, {"event_id": f"{key}-{i}", "label": x["a"] > 3}, key=key)


def exited(worker, timeout: float = 60.0) -> int:
    try:
        return worker.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"worker {worker.name} still runs:\n{worker.log_tail()}") from None


async def test_http_commands_need_the_token_and_control_commands_a_signature(cluster):
    w = cluster.start_worker("w0", **PRODUCTION)
    cluster.wait_ready()
    key = "secured"
    async with Producer(cluster.bootstrap) as p:
        await labelled(p, cluster.topics, key, 30)
    before = await wait_learned(w, key, 30)
    path = f"/models/{key}/snapshot"

    def unchanged() -> None:
        now = w.get(f"/models/{key}")[1]
        assert (now["version"], now["learned"]) == (before["version"], before["learned"])
        assert w.get(f"/models/{key}/versions")[1]["snapshots"] == []

    # HTTP: no credential 401, a wrong one 403; nothing changed; the right one works
    status, body = w.request("POST", path, {}, headers={})
    assert status == 401 and body["error"] == "unauthorized", body
    status, body = w.request("POST", path, {}, headers={"Authorization": "Bearer not-the-token"})
    assert status == 403 and body["error"] == "forbidden", body
    unchanged()
    status, body = w.request("POST", path, {"reason": "known good"})
    assert status == 200 and body["ok"], body
    [snapshot] = w.get(f"/models/{key}/versions")[1]["snapshots"]
    assert snapshot["reason"] == "known good"
    async with Producer(cluster.bootstrap) as p:      # learning goes on after the snapshot
        await labelled(p, cluster.topics, key, 10, start=30)
    after_http = await wait_learned(w, key, 40)

    # control topic: unsigned, or signed with another secret, is refused, answered and dead-lettered
    t = cluster.topics
    async with Producer(cluster.bootstrap) as p, Collector(cluster.bootstrap, t.control_results) as results, \
            Collector(cluster.bootstrap, t.deadletter) as dead:
        for rid, headers in (("unsigned", []),
                             ("forged", [(codec.SIGNATURE_HEADER, codec.sign(b"x", b"a guessed secret"))])):
            value = orjson.dumps({"request_id": rid, "command": "rollback", "model": key, "deadline": time.time() + 60})
            await p._p.send_and_wait(t.control, value, key=key.encode(), headers=headers)
            answer = await results.wait_for_one(lambda r, rid=rid: r["request_id"] == rid)
            assert (answer["ok"], answer["error"]) == (False, "unauthenticated"), answer
        await dead.wait_for(lambda v: sum(d["reason"] == "unauthenticated" for d in v) == 2, what="deadletters")
    now = w.get(f"/models/{key}")[1]
    assert (now["version"], now["learned"]) == (after_http["version"], after_http["learned"])
    assert w.metric("streamlearn_deadletters_total", 'reason="unauthenticated"') == 2

    # the CLI signs with the secret from the environment; with another secret it is refused
    wrong = cli(cluster, "models", "rollback", key, **{**PRODUCTION, "command_secret": "another-secret-" + "x" * 16})
    assert wrong.returncode == 1 and "unauthenticated" in wrong.stderr, wrong.stderr
    assert w.get(f"/models/{key}")[1]["version"] == after_http["version"]
    right = cli(cluster, "models", "rollback", key, **PRODUCTION)
    assert right.returncode == 0, right.stderr
    assert right.stdout.startswith(f"{key}: rolled back to v{snapshot['version']} (was v"), right.stdout
    assert w.get(f"/models/{key}")[1]["learned"] == 30
    missing = cli(cluster, "models", "snapshot", key, **{**PRODUCTION, "command_secret": ""})
    assert missing.returncode == 2 and "STREAMLEARN_COMMAND_SECRET" in missing.stderr

    listed = cli(cluster, "models", "list", "--url", w.url, **PRODUCTION)
    settings = cli(cluster, "settings", **PRODUCTION)
    _, health = w.get("/health", headers={})
    assert_no_secret(w.log.read_text(), wrong.stdout, wrong.stderr, right.stdout, right.stderr, listed.stdout,
                     settings.stdout, json.dumps(health), json.dumps(body))


async def test_a_worker_without_a_token_refuses_http_commands_and_reads_can_be_protected(cluster):
    closed = cluster.start_worker("closed", **{**PRODUCTION, "api_token": ""})
    cluster.wait_ready()
    status, body = closed.request("POST", "/models/k/snapshot", {}, headers={"Authorization": "Bearer anything"})
    assert status == 403 and body["error"] == "commands_disabled" and "STREAMLEARN_API_TOKEN" in body["detail"]
    closed.stop()
    guarded = cluster.start_worker("guarded", **PRODUCTION, api_protect_reads="true")
    cluster.wait_ready([guarded])
    for path in ("/models", "/metrics", "/models/k", "/models/k/versions"):
        assert guarded.get(path, headers={})[0] == 401, path
        assert guarded.get(path, headers={"Authorization": "Bearer wrong"})[0] == 403, path
    assert guarded.get("/models")[0] == 200 and guarded.get("/metrics")[0] == 200
    assert guarded.get("/health", headers={})[0] == 200 and guarded.get("/ready", headers={})[0] == 200
    assert guarded.get("/table/pending/k", headers={})[0] == 404     # Faust's table view, past the gate: off
    listed = cli(cluster, "models", "list", "--url", guarded.url, **PRODUCTION, api_protect_reads="true")
    assert listed.returncode == 0 and listed.stdout.startswith("MODEL"), listed.stderr
    assert_no_secret(closed.log.read_text(), guarded.log.read_text(), listed.stdout, listed.stderr)


@pytest.mark.parametrize("settings,says", [
    (dict(dev="false"), "STREAMLEARN_SIGNING_KEY is not set"),
    (dict(dev="false", signing_key="streamlearn-development-key", command_secret=COMMAND_SECRET),
     "well-known development value"),
])
def test_outside_development_mode_a_worker_refuses_to_start_without_its_secrets(cluster, settings, says):
    w = cluster.start_worker(**settings)
    assert exited(w, 30) == 2
    text = w.log.read_text()
    assert says in text and "Traceback" not in text, text
    assert_no_secret(text)


@pytest.fixture(scope="module")
def secured_broker(tmp_path_factory):
    """A broker of its own with a SASL_SSL listener (PLAIN and SCRAM users), and a second, untrusted CA."""
    home = tmp_path_factory.mktemp("kafka-sasl-ssl")
    port = free_port()
    with fresh_broker(home, KAFKA_SASL_SSL_PORT=str(port), KAFKA_SSL_DIR=str(home / "ssl"),
                      KAFKA_SASL_USERS=f"operator:{SASL_PASSWORD}"):
        other = home / "other-ca"
        subprocess.run([sys.executable, str(ROOT / "scripts" / "kafka"), "certs", str(other)], check=True,
                       capture_output=True)
        yield f"localhost:{port}", home / "ssl", other


def sasl_ssl(certs: Path, mechanism: str = "SCRAM-SHA-256", password: str = SASL_PASSWORD) -> dict:
    return dict(kafka_security_protocol="SASL_SSL", kafka_ssl_cafile=str(certs / "ca.pem"),
                kafka_sasl_mechanism=mechanism, kafka_sasl_username="operator", kafka_sasl_password=password)


@pytest.mark.timeout(600)
async def test_a_worker_runs_end_to_end_over_sasl_ssl(secured_broker, tmp_path):
    bootstrap, certs, other_ca = secured_broker
    cluster = Cluster(bootstrap=bootstrap, prefix="secure.", app_id="secure", workdir=tmp_path)
    security = {**PRODUCTION, **sasl_ssl(certs)}
    client = dict(security_protocol="SASL_SSL", ssl_context=create_ssl_context(cafile=str(certs / "ca.pem")),
                  sasl_mechanism="SCRAM-SHA-512", sasl_plain_username="operator", sasl_plain_password=SASL_PASSWORD)
    try:
        # credentials Kafka refuses, and a broker certificate we do not trust: a clear line, a non-zero exit
        for name, settings, says in (
                ("wrong-password", {**security, "kafka_sasl_password": "not-the-password"}, "refused the credentials"),
                ("untrusted", {**security, "kafka_ssl_cafile": str(other_ca / "ca.pem")}, "is not trusted")):
            w = cluster.start_worker(name, **settings)
            assert exited(w, 60) == 1, w.log_tail()
            lines = [line for line in w.log.read_text().splitlines() if line.strip()]
            assert lines[-1].startswith("streamlearn: cannot connect to Kafka:") and says in lines[-1], lines
            assert "Traceback" not in w.log.read_text()
            assert_no_secret(w.log.read_text())
        cluster.workers.clear()

        w = cluster.start_worker("w0", **security)
        cluster.wait_ready(timeout=120)
        replay = cli(cluster, "replay", "phishing", "--limit", "200", "--keys", "2", "--no-progress",
                     "--run-id", "tls", **security)
        assert replay.returncode == 0, replay.stderr
        async with Collector(bootstrap, cluster.topics.predictions, **client) as predictions:
            await predictions.wait_for(lambda v: len({p["event_id"] for p in v}) >= 200, timeout=120,
                                       what="200 predictions")
        for key in ("replay-0", "replay-1"):
            await wait_learned(w, key, 100, timeout=120)
        snap = cli(cluster, "models", "snapshot", "replay-0", "--json", **{**security, **sasl_ssl(certs, "PLAIN")})
        assert snap.returncode == 0, snap.stderr
        version = json.loads(snap.stdout)["result"]["snapshot"]["version"]
        async with Producer(bootstrap, **client) as p:
            await labelled(p, cluster.topics, "replay-0", 20)
        await wait_learned(w, "replay-0", 120, timeout=60)
        restore = cli(cluster, "models", "restore", "replay-0", str(version), **security)
        assert restore.returncode == 0, restore.stderr
        assert w.get("/models/replay-0")[1]["learned"] == 100
        assert_no_secret(w.log.read_text(), replay.stdout, replay.stderr, snap.stdout, restore.stdout)
    finally:
        cluster.stop_all()
