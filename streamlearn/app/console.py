"""``/console``: the operator console, served by every worker (the markup is in app/pages.py).

The pages are shells that load their data with htmx, so a request for data
carries the API token as a header (never in a URL): data fragments are gated
as the API's reads are (``STREAMLEARN_API_PROTECT_READS``), actions as its
commands. The keys table reads the cluster's model list (``GET /models``)
at most once per ``LIST_SECONDS`` and searches and pages it in memory; a
key's page asks the key's owner through this worker's own API (which
forwards), and reads the key's recent audit records and deadletters from
the tail of its partition of those topics.
"""

from __future__ import annotations

import collections
import logging
import time
from importlib.resources import files
from typing import TYPE_CHECKING, Any, Awaitable, Callable
from urllib.parse import quote

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.web import Request, Response, View

from streamlearn.streams import codec
from streamlearn.streams.routing import partition_for

from . import pages
from .auth import ApiGate
from .control import HTTP_STATUS

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("streamlearn.console")

LIST_SECONDS = 5.0       # the keys table's copy of the cluster's model list is at most this old
TAIL = 2000              # records read from the end of a key's partition of the audit and deadletter topics
ACTIONS = {a: codec.COMMANDS[a] for a in ("rollback", "snapshot", "restore", "pin", "unpin", "promote")}  # -> arg


def htmx_js() -> bytes:
    """htmx, from the package that ships it (no CDN: a worker may have no Internet)."""
    return (files("js_lib_htmx") / "static" / "htmx" / "htmx.min.js").read_bytes()


class ModelList:
    """The cluster's model list, fetched at most once per ``LIST_SECONDS`` (100,000 keys are a few MB)."""

    def __init__(self, fetch: Callable[[], Awaitable[list[dict[str, Any]]]], clock=time.monotonic) -> None:
        self.fetch = fetch
        self.clock = clock
        self._models: list[dict[str, Any]] = []
        self._at: float | None = None

    async def get(self) -> list[dict[str, Any]]:
        if self._at is None or self.clock() - self._at > LIST_SECONDS:
            self._models = sorted(await self.fetch(), key=lambda m: m["model"])
            self._at = self.clock()
        return self._models


async def tail_of(w: Worker, topic: str, key: str) -> list[tuple[bytes | None, Any]]:
    """The last ``TAIL`` records of ``key``'s partition of ``topic`` (key and JSON value), oldest first."""
    s = w.settings
    consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap_servers, enable_auto_commit=False, **s.kafka_options)
    await consumer.start()
    out: list[tuple[bytes | None, Any]] = []
    try:
        count = len(consumer.partitions_for_topic(topic) or ()) or s.partitions
        tp = TopicPartition(topic, partition_for(key, count))
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        begin = (await consumer.beginning_offsets([tp]))[tp]
        consumer.seek(tp, max(begin, end - TAIL))
        deadline = time.monotonic() + 10.0     # a slow broker: the page shows what came by then
        while await consumer.position(tp) < end and time.monotonic() < deadline:
            for msgs in (await consumer.getmany(tp, timeout_ms=1000)).values():
                for m in msgs:
                    try:
                        out.append((m.key, orjson.loads(m.value)))
                    except orjson.JSONDecodeError:
                        continue
    finally:
        await consumer.stop()
    return out


def bind_console(w: Worker, gate: ApiGate, list_models: Callable[[], Awaitable[list[dict[str, Any]]]]) -> None:
    app, s = w.app, w.settings
    needs_token = bool(s.api_token) or not s.dev
    cluster = ModelList(list_models)
    me = str(app.conf.canonical_url).rstrip("/")
    script = htmx_js()

    async def api(path: str) -> tuple[int, Any]:
        """This worker's own API (which asks the key's owner), as the console's caller would."""
        async with app.http_client.get(f"{me}{path}", timeout=10, headers=gate.peer_headers()) as r:
            return r.status, await r.json()

    class Page(View):
        async def refused(self, request: Request, command: bool) -> Response | None:
            no = gate.refuse(request, command=command)
            if no is None:
                return None
            status, body = no
            return self.html(f'<div id="outcome" class="refused">refused ({status}): {pages.esc(body["error"])}: '
                             f'{pages.esc(body["detail"])}</div>', status=status)

    @app.page("/console")
    class Index(Page):
        async def get(self, request: Request) -> Response:
            return self.html(pages.shell("models", pages.index_body(), needs_token=needs_token))

    @app.page("/console/static/htmx.min.js")
    class Script(Page):
        async def get(self, request: Request) -> Response:
            return self.bytes(script, content_type="application/javascript",
                              headers={"Cache-Control": "max-age=3600"})

    @app.page("/console/keys")
    class Keys(Page):
        async def get(self, request: Request) -> Response:
            no = await self.refused(request, command=False)
            if no is not None:
                return no
            q = request.query.get("q", "")[:200]
            try:
                page = max(0, int(request.query.get("page", "0")))
            except ValueError:
                page = 0
            rows, total = pages.select(await cluster.get(), q, page)
            return self.html(pages.keys_fragment(rows, total, q, page))

    @app.page("/console/models/{key}")
    class KeyPage(Page):
        async def get(self, request: Request, key: str) -> Response:
            return self.html(pages.shell(key, pages.key_body(key), needs_token=needs_token))

    @app.page("/console/models/{key}/panel")
    class Panel(Page):
        async def get(self, request: Request, key: str) -> Response:
            no = await self.refused(request, command=False)
            if no is not None:
                return no
            path = "/models/" + quote(key, safe="")
            status, live = await api(path)
            if status != 200:
                return self.html(f'<p class="refused">{pages.esc(str(live.get("error")))}: '
                                 f'{pages.esc(str(live.get("detail")))}</p>', status=status)
            _, versions = await api(path + "/versions")
            audit = [v for _, v in await tail_of(w, w.topics.names.audit, key)
                     if isinstance(v, dict) and v.get("model") == key]
            dead = collections.Counter(v.get("reason", "?") for k, v in await tail_of(w, w.topics.names.deadletter, key)
                                       if k == key.encode() and isinstance(v, dict))
            return self.html(pages.panel(key, live, versions, audit, dead, time.time()))

    @app.page("/console/models/{key}/{action}")
    class Action(Page):
        async def post(self, request: Request, key: str, action: str) -> Response:
            no = await self.refused(request, command=True)
            if no is not None:
                return no
            if action not in ACTIONS:
                return self.html(pages.result(action, key, {"error": "bad_request",
                                                            "detail": f"no action {action!r}"}, 400), status=400)
            form = await request.post()
            needs, version, spec = ACTIONS[action], None, None
            if needs == "version":
                try:
                    version = int(form.get("version", ""))
                except ValueError:
                    return self.html(pages.result(action, key, {"error": "bad_request",
                                                                "detail": "version must be a number"}, 400), status=400)
            elif needs == "spec":
                spec = str(form.get("spec", ""))
            answer = await w.control.call(action, key, version=version, spec=spec, by="console",
                                          reason="asked in the console")
            status = 200 if answer["ok"] else HTTP_STATUS.get(answer["error"], 400)
            return self.html(pages.result(action, key, answer, status), status=status)
