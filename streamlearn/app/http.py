"""The worker's HTTP views: metrics, health and readiness, the models (read), and the command endpoints.

Reads answer from this worker's state or ask the owner of a key (the cluster
view); commands go through the control topic like the CLI's, signed, and
wait for the owner's answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from faust.web import Request, Response, View

from streamlearn import models
from streamlearn.models import LiveModel
from streamlearn.streams import codec
from streamlearn.streams.commands import label_health, versions_of

from .auth import ApiGate
from .console import bind_console
from .control import HTTP_STATUS

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("streamlearn")

# An agent that crashed within this many seconds makes /ready answer 503 (it may be crash-looping).
CRASH_WINDOW_SECONDS = 30.0


LIST_CHUNK = 2000    # models listed between two yields to the event loop (GET /models)

FORWARDED_HEADER = "X-Streamlearn-Forwarded"   # a predict request forwarded to the key's owner


class Unsettled(Exception):
    """A model was asked for while the worker's tables are not recovered (after a rebalance)."""


def readiness(owned: list[int], recovered: bool, rebalancing: bool, crashes: dict[str, tuple[float, str]],
              now: float) -> dict[str, Any]:
    """What ``/ready`` answers: ready only with partitions, tables recovered, no rebalance, no recent agent crash.

    ``crashes``: agent name -> (time, exception) of its last crash (``AgentLoop.crashes``); one within
    ``CRASH_WINDOW_SECONDS`` keeps the worker not ready: Faust restarts it, and it may be crash-looping.
    """
    crashed = {name: f"crashed {now - at:.0f}s ago: {why}" for name, (at, why) in crashes.items()
               if now - at < CRASH_WINDOW_SECONDS}
    is_ready = bool(owned) and recovered and not rebalancing and not crashed
    reason = ("agents crashed: " + "; ".join(f"{n} {c}" for n, c in crashed.items()) if crashed else
              "no partitions assigned" if not owned else "recovering tables" if not recovered else
              "rebalancing" if rebalancing else None)
    return {"ready": is_ready, "reason": reason, "partitions": owned, "recovered": recovered,
            "rebalancing": rebalancing, "crashed_agents": crashed}


async def local_models(w: Worker, windows: bool = False) -> list[dict[str, Any]]:
    """The models of this worker: live ones, and checkpointed ones not loaded since the last rebalance.

    ``windows``: each live model's promotion windows too (what a canary judges by, as ``status`` gives them).
    It yields to the event loop every ``LIST_CHUNK`` models: 100,000 keys take most of a second.
    """
    partitions, health = w.ownership.owned, w.health
    me = str(w.app.conf.canonical_url).rstrip("/")
    found: dict[str, dict[str, Any]] = {}

    def add(key: str, m: dict[str, Any]) -> None:
        labels = health.book.get(key)     # label coverage and recent alerts, where this worker watched them
        if labels is not None and labels.predicted:
            m["coverage"] = round(labels.labelled / labels.predicted, 4)
        alerts = health.alerts.recent(key)
        if alerts:
            m["alerts"] = [a["kind"] for a in alerts]
        policy = w.versions.promotions.get(key) if windows else None
        if policy is not None:
            m["promotion_windows"] = policy.windows(c["spec"] for c in m.get("challengers", ()))
        found[key] = m

    for i, (_, m) in enumerate(list(w.registry)):
        if i % LIST_CHUNK == 0:
            await asyncio.sleep(0)
        add(m.key, {**m.describe(), "live": True, "worker": me})
    for i, h in enumerate(w.checkpoints.headers(lambda k: k not in found and w.ownership.owner(k) in partitions)):
        if i % LIST_CHUNK == 0:
            await asyncio.sleep(0)
        add(h.model, {"model": h.model, "spec": h.spec, "version": h.version, "parent_version": h.parent_version,
                      "learned": h.learned, "metric": {"value": h.metric}, "offset": h.offset, "live": False,
                      "worker": me})
    return list(found.values())


async def cluster_models(w: Worker, headers: dict[str, str], windows: bool = False) -> list[dict[str, Any]]:
    """The models of every worker: this one's, and each peer's ``GET /models?local=1`` (a peer that does not
    answer is left out, and logged)."""
    found, me = await local_models(w, windows), str(w.app.conf.canonical_url).rstrip("/")
    for url in w.app.router.external_topics_metadata():
        peer = str(url).rstrip("/")
        if peer == me:
            continue
        try:
            async with w.app.http_client.get(f"{peer}/models?local=1{'&windows=1' if windows else ''}", timeout=5,
                                             headers=headers) as response:
                found += (await response.json())["models"]
        except Exception as exc:  # noqa: BLE001 - a peer down must not hide the rest
            log.warning("GET /models: worker %s did not answer: %s", peer, exc)
    return found


def bind_views(w: Worker) -> None:
    """Serve the HTTP API on the worker's Faust web server."""
    app, metrics, registry = w.app, w.metrics, w.registry
    gate = ApiGate(w.settings.api_token, open_commands=w.settings.dev, protect_reads=w.settings.api_protect_reads)

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Request) -> Response:
        refused = gate.refuse(request, command=False)
        if refused:
            return web.json(refused[1], status=refused[0])
        metrics.live_models.set(len(registry))
        metrics.pending_events.set(w.pending.size())
        metrics.ready.set(1 if ready_now()["ready"] else 0)
        return web.bytes(metrics.exposition(), content_type="text/plain")

    def ready_now() -> dict[str, Any]:
        return readiness(sorted(w.ownership.owned), app.tables.recovery.completed.is_set(), bool(app.rebalancing),
                         w.loop.crashes, time.time())

    @app.page("/health")
    async def health(web: Any, request: Request) -> Response:
        """Alive: the process answers."""
        return web.json({"status": "ok"})

    @app.page("/ready")
    async def ready(web: Any, request: Request) -> Response:
        """Ready: partitions assigned, not rebalancing, tables recovered, no agent crashed lately."""
        body = ready_now()
        return web.json(body, status=200 if body["ready"] else 503)

    def settled() -> bool:
        """Tables recovered and no rebalance running: only then may a request load a model."""
        return app.tables.recovery.completed.is_set() and not app.rebalancing

    def owner_model(key: str) -> LiveModel | None:
        """The key's live model on its owner (loaded from its checkpoint if needed, once the tables are settled).

        Before Faust has recovered the tables after a rebalance, the
        checkpoint table may miss what another owner wrote: loading (or
        taking a held model back) then could serve a stale model, and the
        learn agent would go on from it. The views answer 503 instead.
        """
        live = registry.find(key)
        if live is None and not settled():
            raise Unsettled(key)
        partition = w.ownership.owner(key)
        if live is None and partition in w.ownership.owned and w.checkpoints.table.get(key.encode()) is not None:
            live = registry.get_or_create(partition, key, w.live.spec_for(key))
        return live

    class GatedView(View):
        """A view whose requests pass the API gate first: commands need the token, reads when protected."""

        reads = False    # a POST that only reads (answers), gated as the reads are

        async def dispatch(self, request: Any) -> Any:
            refused = gate.refuse(request, command=not self.reads and request.method not in ("GET", "HEAD"))
            if refused:
                return self.json(refused[1], status=refused[0])
            try:
                return await super().dispatch(request)
            except Unsettled as exc:
                return self.json({"error": "recovering", "model": exc.args[0],
                                  "detail": "the key's owner is recovering its tables after a rebalance: "
                                            "ask again in a moment"}, status=503)

    @app.page("/models")
    class ModelsView(GatedView):
        async def get(self, request: Request) -> Response:
            """Every model of the cluster (or of this worker only, with ``?local=1``)."""
            local, windows = (request.query.get(q) in ("1", "true") for q in ("local", "windows"))
            found = await local_models(w, windows) if local else await cluster_models(w, gate.peer_headers(), windows)
            return self.json({"models": sorted(found, key=lambda d: d["model"])})

    @app.page("/models/{key}")
    class ModelView(GatedView):
        @app.topic_route(topic=w.topics.events, match_info="key")
        async def get(self, request: Request, key: str) -> Response:
            """One model's status, answered by the worker owning the key."""
            live = owner_model(key)
            if live is None:
                return self.json({"error": "unknown_model", "detail": f"no model {key!r}", "model": key},
                                 status=404)
            return self.json({**live.describe(), **label_health(key, w.health), "live": True})

    @app.page("/models/{key}/versions")
    class VersionsView(GatedView):
        @app.topic_route(topic=w.topics.events, match_info="key")
        async def get(self, request: Request, key: str) -> Response:
            """Every version of a model (read from the owner's snapshot index)."""
            live = owner_model(key)
            index = w.store.load_index(key)
            if live is None and index is None:
                return self.json({"error": "unknown_model", "detail": f"no model {key!r}", "model": key},
                                 status=404)
            return self.json(versions_of(live, index or models.versions.VersionIndex(key)))

    @app.page("/models/{key}/predict")
    class PredictView(GatedView):
        reads = True

        async def post(self, request: Request, key: str) -> Response:
            """Answers from the key's live model, on its owner: ``{"features": {...}}`` (or a list of them); with
            an ``event_id`` (``event_ids``, one per features) the features then wait for the label, as a topic
            event's do. Each answer is the JSON of the predictions topic."""
            try:
                body = await request.json()
            except ValueError:
                body = None
            try:
                owner = str(app.router.external_topic_key_store(w.topics.events, key)).rstrip("/")
            except KeyError:
                raise Unsettled(key) from None
            if owner != str(app.conf.canonical_url).rstrip("/"):
                if request.headers.get(FORWARDED_HEADER):
                    raise Unsettled(key)       # forwarded here as the owner, but the key moved meanwhile
                # Faust's own forwarding (topic_route) drops a POST's body: forwarded here with it
                async with app.http_client.post(f"{owner}/models/{key}/predict", json=body, timeout=10,
                                                headers={**gate.peer_headers(), FORWARDED_HEADER: "1"}) as response:
                    return self.json(await response.json(), status=response.status)
            try:
                events = http_events(body, key, w.settings.max_message_bytes)
                if not settled():
                    raise Unsettled(key)
                answers = [await answer(key, ev, keep) for ev, keep in events]
            except codec.Rejected as rejected:
                status = 422 if rejected.reason in (codec.MODEL_ERROR, codec.SPEC_MISMATCH) else 400
                return self.json({"ok": False, "error": rejected.reason, "detail": rejected.detail, "model": key,
                                  "event_id": rejected.event_id}, status=status)
            many = isinstance(body, dict) and isinstance(body.get("features"), list)
            return self.json(answers if many else answers[0])

    async def answer(key: str, ev: codec.FeatureEvent, keep: bool) -> Any:
        partition = w.ownership.owner(key)
        if partition not in w.ownership.owned:
            raise Unsettled(key)     # forwarded here as its owner, but a rebalance moved it meanwhile
        return codec.loads(await w.predict.answer_request(partition, ev, keep))

    def command_view(command: str) -> type:
        class CommandView(GatedView):
            async def post(self, request: Request, key: str) -> Response:
                """Sent on the control topic, executed by the owner's learn agent; answers with its result."""
                try:
                    body = await request.json() if request.body_exists else {}
                except ValueError:
                    body = None
                version, spec = (body.get("version"), body.get("spec")) if isinstance(body, dict) else (None, None)
                needs = codec.COMMANDS[command]
                bad = ("the body must be a JSON object" if not isinstance(body, dict) else
                       "version must be a positive integer" if version is not None and (
                           isinstance(version, bool) or not isinstance(version, int) or version < 1) else
                       "spec must be the name of a challenger" if spec is not None and (
                           not isinstance(spec, str) or not spec) else
                       f"{command} needs a {needs}" if needs is not None and body.get(needs) is None else None)
                if bad:
                    return self.json({"ok": False, "error": "bad_request", "detail": bad, "model": key}, status=400)
                result = await w.control.call(command, key, version=version, spec=spec,
                                              reason=str(body.get("reason") or ""), by=str(body.get("by") or "http"))
                status = 200 if result["ok"] else HTTP_STATUS.get(result["error"], 400)
                return self.json(result, status=status)
        CommandView.__name__ = f"{command.title()}View"
        return CommandView

    for command in ("snapshot", "restore", "rollback", "pin", "unpin", "promote", "backfill"):
        app.page(f"/models/{{key}}/{command}")(command_view(command))

    bind_console(w, gate, lambda: cluster_models(w, gate.peer_headers()))


def http_events(body: Any, key: str, max_bytes: int) -> list[tuple[codec.FeatureEvent, bool]]:
    """The events of a predict request, validated as the codec validates a topic's (each with whether its
    features wait for a label: it has an event id)."""
    if not isinstance(body, dict) or "features" not in body:
        raise codec.Rejected(codec.MISSING_FIELD, 'the body must be a JSON object with "features"')
    many = isinstance(body["features"], list)
    features = body["features"] if many else [body["features"]]
    ids = body.get("event_ids") if many else [body.get("event_id")]
    if ids is None:
        ids = [None] * len(features)
    if not isinstance(ids, list) or len(ids) != len(features):
        raise codec.Rejected(codec.BAD_FIELD, "event_ids must be a list as long as features")
    events = []
    for f, eid in zip(features, ids):
        raw = codec.dumps({"event_id": eid if eid is not None else f"http-{uuid.uuid4().hex}", "model": key,
                           "features": f, "ts": body.get("ts") or time.time(), "spec": body.get("spec")})
        events.append((codec.decode_event(raw, key.encode(), default_model=key, max_bytes=max_bytes),
                       eid is not None))
    return events
