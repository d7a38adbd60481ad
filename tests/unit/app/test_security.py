"""Security without a broker: secrets required and masked, the HTTP gate, signed commands, Kafka client options."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from streamlearn.app.auth import COMMANDS_OFF, FORBIDDEN, UNAUTHORIZED, ApiGate, bearer_headers
from streamlearn.app.settings import DEV_COMMAND_SECRET, DEV_SIGNING_KEY, MASK, Settings, SettingsError, secret_fields
from streamlearn.streams import codec
from streamlearn.streams.codec import Rejected
from streamlearn.streams.connection import KafkaAuth

ROOT = Path(__file__).resolve().parents[3]
STRONG = {"STREAMLEARN_SIGNING_KEY": "a-signing-key-of-ours-0123", "STREAMLEARN_COMMAND_SECRET": "a-command-secret-4567"}


# ---- secrets a worker needs ------------------------------------------------
@pytest.mark.parametrize("env,match", [
    ({}, "STREAMLEARN_SIGNING_KEY is not set"),
    ({"STREAMLEARN_SIGNING_KEY": "a-signing-key-of-ours-0123"}, "STREAMLEARN_COMMAND_SECRET is not set"),
    ({**STRONG, "STREAMLEARN_SIGNING_KEY": DEV_SIGNING_KEY}, "well-known development value"),
    ({**STRONG, "STREAMLEARN_COMMAND_SECRET": DEV_COMMAND_SECRET}, "well-known development value"),
    ({**STRONG, "STREAMLEARN_SIGNING_KEY": "short"}, "too short"),
])
def test_a_worker_outside_development_mode_needs_real_secrets(env, match):
    with pytest.raises(SettingsError, match=match):
        Settings.from_env(env).require_secrets()


def test_development_mode_uses_the_development_secrets_and_real_ones_win():
    dev = Settings.from_env({"STREAMLEARN_DEV": "true"})
    dev.require_secrets()
    assert dev.signing_secret == DEV_SIGNING_KEY.encode() and dev.command_key == DEV_COMMAND_SECRET.encode()
    prod = Settings.from_env(STRONG)
    prod.require_secrets()
    assert prod.signing_secret == b"a-signing-key-of-ours-0123" and prod.command_key == b"a-command-secret-4567"
    assert Settings.from_env({}).command_key is None      # no secret, no development mode: nothing to sign with


def test_secrets_are_masked_in_repr_and_in_streamlearn_settings():
    values = {**STRONG, "STREAMLEARN_API_TOKEN": "token-abcdef-123456", "STREAMLEARN_KAFKA_SASL_PASSWORD": "pw-98765",
              "STREAMLEARN_KAFKA_SASL_USERNAME": "alice", "STREAMLEARN_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
              "STREAMLEARN_KAFKA_SSL_KEY_PASSWORD": "keypw-24680"}
    s = Settings.from_env(values)
    secrets = [v for k, v in values.items() if k[len("STREAMLEARN_"):].lower() in secret_fields()]
    assert len(secrets) == 5
    assert all(s.shown(f) in (MASK, "(not set)") for f in secret_fields())
    for text in (repr(s), repr(s.kafka_auth), str(s.kafka_auth.faust_credentials())):
        assert not any(secret in text for secret in secrets), text
    env = {"PATH": "/usr/bin:/bin", **values}
    out = subprocess.run([sys.executable, "-m", "streamlearn.app.cli", "settings"], env=env, capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout
    assert "STREAMLEARN_KAFKA_SASL_USERNAME=alice" in out and f"STREAMLEARN_API_TOKEN={MASK}" in out
    assert not any(secret in out for secret in secrets)


def test_the_readme_table_masks_secret_defaults():
    readme = (ROOT / "README.md").read_text()
    assert DEV_SIGNING_KEY not in readme.split("<!-- settings -->")[1].split("<!-- /settings -->")[0]


# ---- the HTTP gate ---------------------------------------------------------
def request(authorization: str | None = None):
    return SimpleNamespace(headers={} if authorization is None else {"Authorization": authorization})


def test_commands_need_the_bearer_token_reads_stay_open():
    gate = ApiGate("s3cret-token", open_commands=False, protect_reads=False)
    assert gate.refuse(request(), command=True)[0:1] == (401,)
    assert gate.refuse(request(), command=True)[1]["error"] == UNAUTHORIZED
    assert gate.refuse(request("Bearer wrong"), command=True) == (403, gate.refuse(request("Bearer x"), command=True)[1])
    assert gate.refuse(request("Bearer wrong"), command=True)[1]["error"] == FORBIDDEN
    assert gate.refuse(request("Basic s3cret-token"), command=True)[0] == 401
    assert gate.refuse(request("Bearer s3cret-token"), command=True) is None
    assert gate.refuse(request(), command=False) is None
    assert gate.peer_headers() == {"Authorization": "Bearer s3cret-token"} == bearer_headers("s3cret-token")


def test_without_a_token_commands_are_off_unless_development_mode_opens_them():
    closed = ApiGate("", open_commands=False, protect_reads=False)
    status, body = closed.refuse(request("Bearer anything"), command=True)
    assert status == 403 and body["error"] == COMMANDS_OFF and "STREAMLEARN_API_TOKEN" in body["detail"]
    assert ApiGate("", open_commands=True, protect_reads=False).refuse(request(), command=True) is None
    # a token, once set, is required even in development mode
    assert ApiGate("tok", open_commands=True, protect_reads=False).refuse(request(), command=True)[0] == 401


def test_reads_can_be_protected_too():
    gate = ApiGate("tok", open_commands=False, protect_reads=True)
    assert gate.refuse(request(), command=False)[0] == 401
    assert gate.refuse(request("Bearer nope"), command=False)[0] == 403
    assert gate.refuse(request("Bearer tok"), command=False) is None
    with pytest.raises(SettingsError, match="api_token"):
        Settings.from_env({"STREAMLEARN_API_PROTECT_READS": "true"})


# ---- signed commands -------------------------------------------------------
def command(**extra) -> bytes:
    return orjson.dumps({"request_id": "r1", "command": "rollback", "model": "k", "deadline": 2e9, **extra})


def test_a_signed_command_decodes_and_any_change_breaks_the_signature():
    secret = b"shared-command-secret"
    value = command()
    cmd = codec.decode_command(value, None, max_bytes=10_000, secret=secret, signature=codec.sign(value, secret))
    assert (cmd.command, cmd.model) == ("rollback", "k")
    for raw, signature in [(value, None), (value, b""), (value, codec.sign(value, b"another-secret")),
                           (command(model="other"), codec.sign(value, secret)), (value, b"sha256=00")]:
        with pytest.raises(Rejected) as refused:
            codec.decode_command(raw, None, max_bytes=10_000, secret=secret, signature=signature)
        assert refused.value.reason == codec.UNAUTHENTICATED
    # without a deadline a captured command could be replayed forever
    bare = orjson.dumps({"request_id": "r2", "command": "rollback", "model": "k"})
    with pytest.raises(Rejected, match="deadline"):
        codec.decode_command(bare, None, max_bytes=10_000, secret=secret, signature=codec.sign(bare, secret))
    # with no secret configured (a unit of ours that does not check), nothing is required
    assert codec.decode_command(bare, None, max_bytes=10_000).request_id == "r2"


def test_the_signature_is_found_in_either_header_shape():
    sig = codec.sign(b"x", b"k")
    assert codec.signature_of([("other", b"1"), (codec.SIGNATURE_HEADER, sig)]) == sig
    assert codec.signature_of({codec.SIGNATURE_HEADER: sig}) == sig
    assert codec.signature_of(None) is None


# ---- Kafka client options --------------------------------------------------
@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "kafka"), "certs", str(folder)], check=True,
                   capture_output=True)
    return folder


def test_plaintext_is_the_default_and_sasl_ssl_gives_every_client_the_same_connection(certs):
    assert Settings.from_env({}).kafka_options == {"security_protocol": "PLAINTEXT"}
    assert Settings.from_env({}).kafka_auth.faust_credentials() is None
    s = Settings.from_env({"STREAMLEARN_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
                           "STREAMLEARN_KAFKA_SSL_CAFILE": str(certs / "ca.pem"),
                           "STREAMLEARN_KAFKA_SSL_CERTFILE": str(certs / "client.pem"),
                           "STREAMLEARN_KAFKA_SSL_KEYFILE": str(certs / "client.key"),
                           "STREAMLEARN_KAFKA_SASL_MECHANISM": "scram-sha-512",
                           "STREAMLEARN_KAFKA_SASL_USERNAME": "alice", "STREAMLEARN_KAFKA_SASL_PASSWORD": "pw"})
    options = s.kafka_options
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("alice", "pw")
    assert isinstance(options["ssl_context"], ssl.SSLContext) and options["ssl_context"].check_hostname
    creds = s.kafka_auth.faust_credentials()
    assert (creds.protocol.value, creds.mechanism.value, creds.username) == ("SASL_SSL", "SCRAM-SHA-512", "alice")


@pytest.mark.parametrize("auth,match", [
    (KafkaAuth(protocol="TLS"), "must be one of"),
    (KafkaAuth(protocol="SASL_SSL", username="a"), "needs kafka_sasl_username and kafka_sasl_password"),
    (KafkaAuth(protocol="SASL_PLAINTEXT", mechanism="GSSAPI", username="a", password="b"), "kafka_sasl_mechanism"),
    (KafkaAuth(protocol="SSL", certfile="/etc/hostname"), "both kafka_ssl_certfile and kafka_ssl_keyfile"),
    (KafkaAuth(protocol="SSL", cafile="/nonexistent/ca.pem"), "not a readable file"),
])
def test_unusable_security_settings_are_refused_with_their_reason(auth, match):
    assert any(match in p for p in auth.problems()), auth.problems()
