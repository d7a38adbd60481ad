"""The one settings object: every knob, its type, default, docs and env var.

Settings are read from the environment in one place only, ``Settings.from_env``;
nothing reads ``os.environ`` at import time. Each field's env var is
``STREAMLEARN_`` + the field name in upper case.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

import orjson

from streamlearn.core.defaults import DefaultRule, parse_rules
from streamlearn.models.specs import SPECS, SpecError, Specs
from streamlearn.streams.connection import KafkaAuth

ENV_PREFIX = "STREAMLEARN_"
# Used only in development mode (STREAMLEARN_DEV=true) when no secret is set: well known, never for production.
DEV_SIGNING_KEY = "streamlearn-development-key"
DEV_COMMAND_SECRET = "streamlearn-development-command-secret"
MASK = "********"
MIN_SECRET_LENGTH = 16


class SettingsError(ValueError):
    """A setting has a value we cannot use."""


def _setting(default: Any, doc: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"doc": doc, "secret": secret}, repr=not secret)


@dataclass(frozen=True)
class Settings:
    """streamlearn's configuration. See the README's "Configuration" table."""

    dev: bool = _setting(False, "Development mode, for the demo and local experiments: the development signing key and command secret are used when none is set, HTTP commands need no token; a loud warning at start. Never in production.")
    broker: str = _setting("kafka://127.0.0.1:9092", "Kafka bootstrap servers, `kafka://host:port[;host:port]`.")
    kafka_security_protocol: str = _setting("PLAINTEXT", "How every client connects to Kafka: `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`.")
    kafka_ssl_cafile: str = _setting("", "TLS: PEM file of the CAs that signed the brokers' certificates (empty: the system's CAs).")
    kafka_ssl_certfile: str = _setting("", "Mutual TLS: PEM file of this client's certificate (with `KAFKA_SSL_KEYFILE`).")
    kafka_ssl_keyfile: str = _setting("", "Mutual TLS: PEM file of this client's private key.")
    kafka_ssl_key_password: str = _setting("", "Mutual TLS: password of the private key, if it is encrypted.", secret=True)
    kafka_ssl_check_hostname: bool = _setting(True, "TLS: check that the broker's certificate names the host connected to.")
    kafka_sasl_mechanism: str = _setting("PLAIN", "SASL mechanism: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.")
    kafka_sasl_username: str = _setting("", "SASL user name.")
    kafka_sasl_password: str = _setting("", "SASL password.", secret=True)
    app_id: str = _setting("streamlearn", "Faust app id: the consumer group and the prefix of table changelog topics.")
    topic_prefix: str = _setting("streamlearn.", "Prefix of every topic name.")
    partitions: int = _setting(8, "Partition count of every model-keyed topic (internal topics, tables, and input topics we create).")
    replication_factor: int = _setting(1, "Replication factor of topics streamlearn creates.")
    web_host: str = _setting("127.0.0.1", "Interface the worker's HTTP server binds to.")
    web_port: int = _setting(6066, "Port of the worker's HTTP server (`/metrics`, `/models`).")
    data_dir: str = _setting("streamlearn-data", "Data directory of this worker (one per worker, kept across restarts): its tables live here (RocksDB, the default store).")
    table_store: str = _setting("rocksdb", "Where this worker keeps its tables: `rocksdb` (on disk in `DATA_DIR`: a restart reads only what the changelogs gained since, see docs/operations.md, \"Tables on disk\") or `memory` (every start reads every changelog in full).")
    rocksdb_memory_mb: int = _setting(16, "RocksDB memory per table partition, in MB: half write buffer, half block cache (a worker opens one database per table and partition it owns).")
    default_model_key: str = _setting("default", "Model key used when an event names none (no `model` field, no Kafka key).")
    specs: str = _setting("", "Your own model specs, by import path: `name=package.module:factory,...`, each factory returning a River estimator or pipeline (task and metric come from it); checked at start.")
    default_spec: str = _setting("logreg", "Model spec for keys that no rule matches.")
    challenger_rules: str = _setting("", "Challengers per model key: `pattern=spec[+spec],...` (fnmatch, first match wins); each learns every example of its key in the champion's shadow, is scored on it first, and never answers.")
    spec_rules: str = _setting("", "Rules choosing a spec per model key: `pattern=spec,...`, fnmatch patterns, first match wins.")
    spec_params: str = _setting("", "Hyperparameters per spec as JSON, e.g. `{\"hoeffding_tree\": {\"grace_period\": 100}}`.")
    pending_ttl_seconds: float = _setting(3600.0, "How long an event's features wait for their label.")
    label_wait_seconds: float = _setting(60.0, "How long a label that arrived before its event's features waits for them.")
    default_label_rules: str = _setting("", "Implicit feedback: `pattern=label@wait,...` (e.g. `clicks-*=false@30s`; fnmatch, first match wins; the label as JSON, the wait in ms, s, m or h, at most `STREAMLEARN_PENDING_TTL_SECONDS`). An event of a matching key that got no label within the wait learns the label, exactly once; a label that comes after is dead-lettered `late_label`.")
    label_starvation_seconds: float = _setting(300.0, "A key that was receiving labels and got none for this long, while answering at least `STREAMLEARN_LABEL_STARVATION_PREDICTIONS` events, raises a `label_starvation` alert (0: never).")
    label_starvation_predictions: int = _setting(100, "Events a key must answer without a label, besides the wait, before its labels count as stopped.")
    drift_alerts: bool = _setting(False, "Watch each key's input features for drift (a River ADWIN per numeric feature, category shares per string feature) and raise a `drift` alert naming the features that moved; costs a detector per feature per key.")
    pending_max_per_partition: int = _setting(100_000, "Most events waiting for a label (and labels waiting for an event), per partition; the oldest go first.")
    dedup_window: int = _setting(10_000, "Event ids each model remembers, inside its checkpoint, so that an example repeated after a crash is learned once (see docs/checkpoints.md).")
    max_message_bytes: int = _setting(1_000_000, "Input messages larger than this are dead-lettered as oversized.")
    checkpoint_every_examples: int = _setting(1000, "Checkpoint a partition's changed models after this many examples.")
    checkpoint_every_seconds: float = _setting(5.0, "... or after this many seconds, whichever comes first.")
    checkpoint_defer_seconds: float = _setting(0.0, "How long a changed model may wait for its checkpoint (0: none, every changed model at each checkpoint). With many keys of few examples each, raise it (say 60): one checkpoint then takes in a model's examples of that long, and a crash replays that much more (see docs/operations.md, sizing).")
    max_live_models: int = _setting(0, "Most models live in one worker's memory (0: no cap); beyond it the least recently used models whose state is all in their checkpoint leave memory, and come back from it on their next event (see docs/operations.md, sizing).")
    model_idle_seconds: float = _setting(0.0, "A model without an event for this long leaves memory once checkpointed, and comes back from its checkpoint on demand (0: never).")
    max_checkpoint_bytes: int = _setting(900_000, "Largest checkpoint written (keep under the broker's message.max.bytes); larger ones are refused and counted.")
    snapshot_every_examples: int = _setting(1000, "Snapshot a model after this many examples learned (0: never by count).")
    snapshot_every_seconds: float = _setting(0.0, "... and/or after this many seconds, if it learned anything since (0: never by time).")
    snapshot_keep: int = _setting(10, "Automatic snapshots kept per model (the newest); manual, pinned and pre-restore snapshots are always kept.")
    quality_gate: bool = _setting(True, "Roll a model back automatically when it is significantly worse than a recent snapshot.")
    gate_window: int = _setting(500, "Quality gate: examples over which the live model and its reference snapshot are compared.")
    gate_z_threshold: float = _setting(3.0, "Quality gate: how significant (sign test z) the reference's advantage must be to roll back.")
    gate_min_discordant: int = _setting(30, "Quality gate: fewest examples the two models must disagree on before it may decide.")
    gate_steady_examples: int = _setting(1000, "Quality gate: examples without a rise in the error before a snapshot becomes the reference; a change lasting longer is learned, not rolled back.")
    auto_promote: bool = _setting(True, "Promote a challenger automatically when it is significantly better than its champion (the gate's paired test, pointed the other way); the champion is snapshotted first and goes on as a challenger.")
    promote_window: int = _setting(500, "Promotion: examples over which each challenger and its champion are compared.")
    promote_z_threshold: float = _setting(3.0, "Promotion: how significant (sign test z) the challenger's advantage must be.")
    promote_min_discordant: int = _setting(30, "Promotion: fewest examples the two models must disagree on before it may decide.")
    promote_min_examples: int = _setting(1000, "Promotion: fewest examples a challenger must have learned before it may be promoted.")
    canary_steps: str = _setting("0.1,0.25,0.5,1", "Canary promotion: the shares of the matching keys it widens through (after the `--share` it starts at).")
    canary_examples: int = _setting(200, "Canary promotion: examples each promoted key must have compared (promoted spec against the champion it replaced) before a step may widen; at most `PROMOTE_WINDOW`.")
    canary_check_seconds: float = _setting(2.0, "Canary promotion: how often the canaries' controller (the owner of partition 0) judges and widens them.")
    warm_start_rules: str = _setting("", "New keys start from a template key's latest snapshot: `pattern=template_key,...`, fnmatch patterns, first match wins.")
    command_timeout_seconds: float = _setting(10.0, "How long the CLI and HTTP wait for a command's result; the owner does not execute it later.")
    signing_key: str = _setting("", "HMAC-SHA256 key signing checkpoints and snapshots (at least 16 characters); a worker refuses to start without one, outside development mode.", secret=True)
    command_secret: str = _setting("", "HMAC-SHA256 secret shared by workers and operators' tools: commands on the control topic must be signed with it (the CLI and HTTP sign for you).", secret=True)
    api_token: str = _setting("", "Bearer token of the HTTP command endpoints (snapshot, restore, rollback, pin, unpin, promote, backfill); without one they are refused, outside development mode.", secret=True)
    api_protect_reads: bool = _setting(False, "Also require the API token for the HTTP read endpoints (`/models...`) and `/metrics`; `/health` and `/ready` stay open.")
    session_timeout_seconds: float = _setting(6.0, "Kafka consumer session timeout: how soon a dead worker's partitions move (the broker's group.min.session.timeout.ms is 6 s by default).")
    heartbeat_interval_seconds: float = _setting(1.0, "Kafka consumer heartbeat interval.")
    instance_id: str = _setting("", "Static group membership (Kafka's `group.instance.id`): a name for this worker, unique in the group and the same across its restarts (its host name, say), which keep its web host and port (the group hands a returning member its previous assignment, which names them; with another address its start fails). A worker started again within the session timeout gets its partitions back without a rebalance, so the other workers never pause; but a worker that dies keeps its partitions, unanswered, until the session timeout. Empty: dynamic membership (every start and stop rebalances the group).")
    kafka_connect_timeout_seconds: float = _setting(30.0, "How long a worker or a command waits at its start for Kafka to accept a connection; then it ends with one line saying so (exit 1).")
    broker_request_timeout_seconds: float = _setting(30.0, "How long a Kafka request (fetch, commit, produce) waits for its answer before its connection is dropped and made again: after packets were lost for a while, how soon a worker talks to the broker again, since TCP alone retries ever more slowly (Kafka's own clients default to 30 s). At least the session timeout.")
    commit_interval_seconds: float = _setting(1.0, "How often consumed offsets are committed.")
    producer_linger_ms: int = _setting(1, "Producer linger: how long a batch waits to fill.")
    batch_max: int = _setting(500, "Most records one fetch brings, over all partitions (the consumer's `max_poll_records`); each partition's share reaches its agent as one batch, handled at once, so batches grow only with a backlog.")
    offset_reset: str = _setting("earliest", "Where a new consumer group starts reading: `earliest` or `latest`.")
    metrics_max_models: int = _setting(100, "At most this many model keys get Prometheus series of their own; the rest are aggregated as `_other`.")
    stop_timeout_seconds: float = _setting(10.0, "On SIGTERM/SIGINT the worker stops gracefully, or exits after this many seconds (Faust's stop can hang; nothing is lost: inputs are committed only once their outputs are delivered).")
    log_level: str = _setting("info", "Log level of the worker.")
    log_format: str = _setting("text", "Log format: `text`, or `json` for one JSON object per line.")

    # ---- construction -------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Settings from ``STREAMLEARN_*`` variables, then explicit overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = ENV_PREFIX + f.name.upper()
            if name in env:
                values[f.name] = _parse(f, env[name], name)
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise SettingsError(f"unknown settings: {sorted(unknown)}")
        settings = cls(**values)
        settings.validate()
        return settings

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Every setting's environment variable, with its doc."""
        return {ENV_PREFIX + f.name.upper(): f.metadata["doc"] for f in dataclasses.fields(cls)}

    def validate(self) -> None:
        if self.partitions < 1:
            raise SettingsError("partitions must be at least 1")
        if self.checkpoint_every_examples < 1 or self.checkpoint_every_seconds <= 0:
            raise SettingsError("checkpoint_every_examples and checkpoint_every_seconds must be positive")
        if self.checkpoint_defer_seconds < 0:
            raise SettingsError("checkpoint_defer_seconds must be >= 0")
        if self.label_starvation_seconds < 0 or self.label_starvation_predictions < 1:
            raise SettingsError("label_starvation_seconds must be >= 0 and label_starvation_predictions at least 1")
        if self.snapshot_every_examples < 0 or self.snapshot_every_seconds < 0 or self.snapshot_keep < 1:
            raise SettingsError("snapshot_every_* must be >= 0 and snapshot_keep at least 1")
        if self.gate_window < 10 or self.gate_min_discordant < 1 or self.gate_z_threshold <= 0:
            raise SettingsError("gate_window must be at least 10, gate_min_discordant and gate_z_threshold positive")
        if (self.promote_window < 10 or self.promote_min_discordant < 1 or self.promote_z_threshold <= 0
                or self.promote_min_examples < 0):
            raise SettingsError("promote_window must be at least 10, promote_min_discordant and promote_z_threshold "
                                "positive, promote_min_examples >= 0")
        if not 1 <= self.canary_examples <= self.promote_window or self.canary_check_seconds <= 0:
            raise SettingsError("canary_examples must be between 1 and promote_window, canary_check_seconds positive")
        _ = self.canary_shares
        if not 0 < self.web_port < 65536:
            raise SettingsError(f"web_port must be a port number (1-65535), not {self.web_port}")
        if self.stop_timeout_seconds <= 0 or self.kafka_connect_timeout_seconds <= 0:
            raise SettingsError("stop_timeout_seconds and kafka_connect_timeout_seconds must be positive")
        if self.broker_request_timeout_seconds < self.session_timeout_seconds:
            raise SettingsError("broker_request_timeout_seconds must be at least session_timeout_seconds")
        if self.max_live_models < 0 or self.model_idle_seconds < 0:
            raise SettingsError("max_live_models and model_idle_seconds must be >= 0 (0: no cap, never idle)")
        if self.dedup_window < 1:
            raise SettingsError("dedup_window must be at least 1")
        if self.batch_max < 1:
            raise SettingsError("batch_max must be at least 1")
        _ = self.warm_starts
        if self.log_format not in ("text", "json"):
            raise SettingsError("log_format must be 'text' or 'json'")
        if self.table_store not in ("rocksdb", "memory"):
            raise SettingsError("table_store must be 'rocksdb' or 'memory'")
        if self.rocksdb_memory_mb < 2:
            raise SettingsError("rocksdb_memory_mb must be at least 2")
        if self.offset_reset not in ("earliest", "latest"):
            raise SettingsError("offset_reset must be 'earliest' or 'latest'")
        if self.api_protect_reads and not self.api_token:
            raise SettingsError("api_protect_reads needs an api_token")
        problems = self.kafka_auth.problems()
        if problems:
            raise SettingsError("; ".join(problems))
        for spec in [self.default_spec, *(s for _, s in self.rules),
                     *(c for _, cs in self.challenger_specs for c in cs)]:
            if spec not in self.registry:
                raise SettingsError(f"unknown model spec {spec!r}; known: {', '.join(sorted(self.registry))}")
        for rule in self.default_labels:
            if rule.wait > self.pending_ttl_seconds:
                raise SettingsError(f"default label rule {rule.pattern!r} waits {rule.wait:g}s, longer than "
                                    f"pending_ttl_seconds ({self.pending_ttl_seconds:g}s) keeps an event's features")
        for spec, params in self.params.items():
            if spec not in self.registry:
                raise SettingsError(f"spec_params names unknown spec {spec!r}")
            if not isinstance(params, dict):
                raise SettingsError(f"spec_params[{spec!r}] must be an object")

    def require_secrets(self) -> None:
        """What a worker needs before it starts: its secrets, unless in development mode."""
        if self.dev:
            return
        for name in ("signing_key", "command_secret"):
            value = getattr(self, name)
            env = ENV_PREFIX + name.upper()
            if not value:
                raise SettingsError(f"{env} is not set: a worker needs it outside development mode "
                                    f"(STREAMLEARN_DEV=true, for local experiments only)")
            if value in (DEV_SIGNING_KEY, DEV_COMMAND_SECRET):
                raise SettingsError(f"{env} is the well-known development value; set a secret of your own")
            if len(value) < MIN_SECRET_LENGTH:
                raise SettingsError(f"{env} is too short: at least {MIN_SECRET_LENGTH} characters")

    @property
    def signing_secret(self) -> bytes:
        """The key signing checkpoints and snapshots (the development one in development mode)."""
        return (self.signing_key or (DEV_SIGNING_KEY if self.dev else "")).encode()

    @property
    def command_key(self) -> bytes | None:
        """The secret signing control-topic commands (the development one in development mode), or None."""
        value = self.command_secret or (DEV_COMMAND_SECRET if self.dev else "")
        return value.encode() or None

    def shown(self, name: str) -> str:
        """A setting's value as printed anywhere: secrets masked."""
        value = getattr(self, name)
        if _is_secret(name):
            return MASK if value else "(not set)"
        return str(value)

    # ---- derived ------------------------------------------------------
    @cached_property
    def registry(self) -> Specs:
        """Every model spec: the built-in ones and the operator's (``STREAMLEARN_SPECS``), built from nothing else."""
        try:
            return SPECS.with_factories(self.specs)
        except SpecError as exc:
            raise SettingsError(f"STREAMLEARN_SPECS: {exc}") from None

    @cached_property
    def kafka_auth(self) -> KafkaAuth:
        """How every Kafka client connects (the worker, the control client, replay, watch, bench, ...)."""
        return KafkaAuth(protocol=self.kafka_security_protocol.upper(), cafile=self.kafka_ssl_cafile,
                         certfile=self.kafka_ssl_certfile, keyfile=self.kafka_ssl_keyfile,
                         key_password=self.kafka_ssl_key_password, check_hostname=self.kafka_ssl_check_hostname,
                         mechanism=self.kafka_sasl_mechanism.upper(), username=self.kafka_sasl_username,
                         password=self.kafka_sasl_password)

    @property
    def kafka_options(self) -> dict[str, Any]:
        """Connection keyword arguments for a plain aiokafka client."""
        return self.kafka_auth.client_options()

    @cached_property  # parsed once: spec_for runs for every new model key
    def rules(self) -> list[tuple[str, str]]:
        return _pairs(self.spec_rules, "spec rule", "pattern=spec")

    @cached_property
    def challenger_specs(self) -> list[tuple[str, list[str]]]:
        return [(pattern, [c.strip() for c in specs.split("+") if c.strip()])
                for pattern, specs in _pairs(self.challenger_rules, "challenger rule", "pattern=spec[+spec]")]

    def challengers_for(self, model_key: str) -> list[str]:
        """The challenger spec names the rules give a model key (none without a match)."""
        for pattern, specs in self.challenger_specs:
            if fnmatch.fnmatchcase(model_key, pattern):
                return specs
        return []

    @cached_property
    def canary_shares(self) -> list[float]:
        try:
            shares = [float(p) for p in self.canary_steps.split(",") if p.strip()]
        except ValueError:
            shares = []
        if not shares or any(not 0 < x <= 1 for x in shares):
            raise SettingsError(f"canary_steps must be shares above 0 and at most 1, comma-separated, "
                                f"not {self.canary_steps!r}")
        return shares

    @cached_property
    def default_labels(self) -> list[DefaultRule]:
        try:
            return parse_rules(self.default_label_rules)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None

    @cached_property
    def warm_starts(self) -> list[tuple[str, str]]:
        return _pairs(self.warm_start_rules, "warm start rule", "pattern=template_key")

    @cached_property
    def params(self) -> dict[str, dict[str, Any]]:
        if not self.spec_params.strip():
            return {}
        try:
            value = orjson.loads(self.spec_params)
        except orjson.JSONDecodeError as exc:
            raise SettingsError(f"spec_params is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise SettingsError("spec_params must be a JSON object")
        return value

    def spec_for(self, model_key: str) -> str:
        """The spec name the rules choose for a model key."""
        return _first_match(self.rules, model_key) or self.default_spec

    def template_for(self, model_key: str) -> str | None:
        """The warm-start template key of a new model key (never the template itself), if a rule names one."""
        template = _first_match(self.warm_starts, model_key)
        return template if template != model_key else None

    @property
    def bootstrap_servers(self) -> str:
        """The broker URL as a plain `host:port,...` list for Kafka clients."""
        hosts = self.broker.replace("kafka://", "").replace(";", ",")
        return ",".join(h.strip() for h in hosts.split(",") if h.strip())


def _is_secret(name: str) -> bool:
    return Settings.__dataclass_fields__[name].metadata.get("secret", False)


def secret_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(Settings) if f.metadata.get("secret")]


def _first_match(rules: list[tuple[str, str]], key: str) -> str | None:
    """The value of the first ``(fnmatch pattern, value)`` rule whose pattern matches key."""
    for pattern, value in rules:
        if fnmatch.fnmatchcase(key, pattern):
            return value
    return None


def _pairs(text: str, what: str, shape: str) -> list[tuple[str, str]]:
    """``a=b,c=d`` as pairs."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        left, sep, right = part.partition("=")
        if not sep or not left.strip() or not right.strip():
            raise SettingsError(f"{what} {part!r} is not `{shape}`")
        out.append((left.strip(), right.strip()))
    return out


def _parse(f: dataclasses.Field, raw: str, name: str) -> Any:
    kind = f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str, "bool": bool}[f.type]
    try:
        if kind is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        return kind(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
