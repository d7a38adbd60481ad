"""The ``streamlearn`` command.

    streamlearn worker [--web-port N] [--broker URL]   run one worker
    streamlearn replay DATASET [options]               publish a dataset as events and labels
    streamlearn watch [--seconds S]                    live predictions and online accuracy
    streamlearn plot PATH.png [--model KEY]            online accuracy over time, version changes marked
    streamlearn topics                                 create the topics (workers also do at start)
    streamlearn status [URL ...]                       are the workers alive and ready
    streamlearn bench [--events N] [--specs ...] [--keys 20,100000]   throughput and latency against baselines
    streamlearn soak [--minutes 30] [--share 0.5]          a long labelled stream, reported once a minute
    streamlearn whatif --spec SPEC [--keys PATTERN]    a spec replayed on the keys' history, against the live models
    streamlearn settings                               every setting, its env var and value
    streamlearn specs list|check [SPEC|mod:factory]    the model specs; the contract suite a spec must pass
    streamlearn models list                            the cluster's models: key, spec, version, learned, metric, worker
    streamlearn models show MODEL_KEY                  one model: spec, version, learned, metric, challengers, snapshots
    streamlearn models ACTION MODEL_KEY [VERSION]      versions|snapshot|restore|rollback|pin|unpin (status: as show)
    streamlearn models promote MODEL_KEY SPEC          make a challenger the champion (rollback undoes it)
    streamlearn models backfill MODEL_KEY SPEC         a challenger of SPEC, taught the key's history at once
    streamlearn models canary SPEC --keys P --share S  promote SPEC on a share of the keys, widened while no worse
    streamlearn models canary status                   the canaries: step, keys, verdicts
    (every models action: --json for the workers' answer as JSON)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from pathlib import Path
from typing import Sequence

from streamlearn.streams.connection import KafkaAuthError, KafkaUnreachable

from . import whatif
from .settings import Settings, SettingsError


def settings_of(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        broker=getattr(args, "broker", None),
        web_port=getattr(args, "web_port", None),
        web_host=getattr(args, "web_host", None),
        data_dir=getattr(args, "data_dir", None),
        log_level=getattr(args, "loglevel", None),
    )


def connected(args: argparse.Namespace, timeout: float | None = None) -> Settings:
    """The settings, once Kafka has accepted a connection made with them (``KafkaAuthError`` if refused,
    ``KafkaUnreachable`` if no broker answered within ``timeout``, by default ``kafka_connect_timeout_seconds``)."""
    s = settings_of(args)
    asyncio.run(s.kafka_auth.check(s.bootstrap_servers, timeout or s.kafka_connect_timeout_seconds,
                                   say=lambda why: print(f"streamlearn: {why}", file=sys.stderr)))
    return s


def cmd_worker(args: argparse.Namespace) -> int:
    from .runner import new_loop, run
    from .worker import create_worker

    new_loop()          # first: the app's tables start their tasks on the loop that runs them (runner._Runner)
    worker = create_worker(settings_of(args))
    run(worker)
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from streamlearn.streams.topics import TopicNames, ensure_topics

    s = connected(args)
    names = TopicNames.with_prefix(s.topic_prefix)
    created = asyncio.run(ensure_topics(s.bootstrap_servers, names, s.partitions, s.replication_factor,
                                        kafka=s.kafka_options))
    for name in names.all().values():
        print(f"{name}\t{'created' if name in created else 'exists'}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from streamlearn.streams.topics import TopicNames

    from .replay import ReplayError, dataset_size, iter_dataset, replay

    try:
        size = dataset_size(args.dataset)
    except ReplayError as exc:
        print(f"streamlearn replay: {exc}", file=sys.stderr)
        return 2
    if size is None and args.limit is None and not args.forever:
        print(f"streamlearn replay: {args.dataset} never ends: give --limit N (or --forever to send until Ctrl-C)",
              file=sys.stderr)
        return 2
    total = min(n for n in (size, args.limit) if n is not None) if size is not None or args.limit else None
    s = connected(args)
    names = TopicNames.with_prefix(s.topic_prefix)
    try:
        sent = asyncio.run(replay(
            iter_dataset(args.dataset, args.target), bootstrap_servers=s.bootstrap_servers,
            features_topic=names.features, feedback_topic=names.feedback, keys=args.keys,
            key_prefix=args.key_prefix, label_delay=args.label_delay, rate=args.rate, limit=args.limit,
            keyed=not args.unkeyed, progress=not args.no_progress, total=total, run_id=args.run_id,
            flip=_span(args.flip), kafka=s.kafka_options))
    except ReplayError as exc:
        print(f"streamlearn replay: {exc}", file=sys.stderr)
        return 2
    print(f"published {sent} events and {sent} labels")
    return 0


def _span(text: str | None) -> range:
    if not text:
        return range(0)
    start, _, count = text.partition(":")
    return range(int(start), int(start) + int(count or 1))


def cmd_plot(args: argparse.Namespace) -> int:
    from .plot import read_topics, render, series

    s = connected(args)
    records = asyncio.run(read_topics(s))
    found = series(records, window=args.window, models=args.model or None)
    if not found:
        print("streamlearn plot: no labelled predictions found", file=sys.stderr)
        return 1
    path = render(found, args.path)
    for sr in found:
        changes = [c for c in sr.changes if c["action"] != "snapshot"]
        live = max((c["to_version"] for c in sr.changes if c.get("to_version") is not None), default=1)
        print(f"{sr.model}: {len(sr.times)} labelled predictions, accuracy over the last {args.window} of them "
              f"{sr.accuracy[-1]:.3f} (against the true labels), {sum(c['action'] == 'snapshot' for c in sr.changes)}"
              f" snapshots, now v{live}"
              + "".join(f"\n  {c['action']} v{c['from_version']} -> v{c['to_version']} by {c['by']}: {c['reason']}"
                        for c in changes))
    print(f"wrote {path}")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from .watch import watch

    s = connected(args)
    return asyncio.run(watch(s, seconds=args.seconds, every=args.every))


def cmd_status(args: argparse.Namespace) -> int:
    """Ask workers' /health and /ready; exit non-zero unless all are ready."""
    import json
    import urllib.error
    import urllib.request

    urls = args.url or [f"http://{settings_of(args).web_host}:{settings_of(args).web_port}"]
    all_ready = True
    for url in urls:
        state = {}
        for path in ("/health", "/ready"):
            try:
                with urllib.request.urlopen(url.rstrip("/") + path, timeout=args.timeout) as r:
                    state[path] = json.loads(r.read())
            except urllib.error.HTTPError as e:
                state[path] = json.loads(e.read() or b"{}")
            except (OSError, ValueError) as e:
                state[path] = {"error": str(e)}
        ready = bool(state["/ready"].get("ready"))
        all_ready &= ready
        alive = state["/health"].get("status") == "ok"
        parts = state["/ready"].get("partitions")
        print(f"{url}  alive={'yes' if alive else 'no'}  ready={'yes' if ready else 'no'}"
              + (f"  partitions={parts}" if parts is not None else "")
              + (f"  error={state['/health']['error']}" if "error" in state["/health"] else ""))
    return 0 if all_ready else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import parse_producers, parse_rates, run_bench

    if args.http:
        from .benchhttp import run_http_bench
        return asyncio.run(run_http_bench(connected(args), events=args.events, specs=args.specs.split(","),
                                          rate=args.http, as_json=args.json))

    return asyncio.run(run_bench(connected(args), events=args.events, specs=args.specs.split(","),
                                 workers=[int(w) for w in args.workers.split(",")],
                                 rates=parse_rates(args.rates), as_json=args.json, plot=args.plot,
                                 keys=_key_counts(args.keys), producers=parse_producers(args.producers)))


def cmd_soak(args: argparse.Namespace) -> int:
    from .soak import run_soak

    if not 0 < args.share <= 1 or args.minutes <= 0 or args.workers < 1 or args.keys < 1 or args.probe < 1:
        raise SystemExit("streamlearn soak: --share in (0, 1], --minutes positive, --workers, --keys and "
                         "--probe at least 1")
    return asyncio.run(run_soak(connected(args), spec=args.spec, workers=args.workers, minutes=args.minutes,
                                share=args.share, rate=args.rate, probe=args.probe, keys=args.keys,
                                report_every=args.report_every, drain=args.drain, max_rss_mb=args.max_rss_mb,
                                as_json=args.json))


def _key_counts(text: str) -> list[int]:
    """``--keys``: the key counts, the 20-key reference first (added when not given first)."""
    counts = [int(k) for k in text.split(",")]
    if any(k < 1 for k in counts):
        raise SystemExit("streamlearn bench --keys: key counts must be positive")
    return counts if counts[0] == 20 else [20, *counts]


def _models(args: argparse.Namespace) -> int:
    from .ops import cmd_models

    return cmd_models(args)


def cmd_specs(args: argparse.Namespace) -> int:
    """List the registered specs, or run the contract suite on some (names, or ``package.module:factory``)."""
    from streamlearn.models import Spec, SpecError, checks
    from streamlearn.models.specs import load_factory

    s = settings_of(args)
    if args.action == "list":
        for spec in s.registry.values():
            print(f"{spec.name:26} {spec.task:15} {spec.summary}  [{spec.source}]")
        return 0
    failed = 0
    for target in args.spec or list(s.registry):
        try:
            spec = (Spec(target.rsplit(":", 1)[-1], target, load_factory(target), source=target)
                    if ":" in target else s.registry[target])
        except (SpecError, KeyError) as exc:
            print(f"streamlearn specs check: {exc}", file=sys.stderr)
            return 2
        results = checks.run(spec, max_checkpoint_bytes=s.max_checkpoint_bytes, examples=args.examples,
                             river_checks=not args.no_river)
        bad = [r for r in results if not r.ok]
        failed += bool(bad)
        print(f"spec {spec.name} ({spec.task}, {spec.source}):")
        for r in results:
            print(f"  {'ok  ' if r.ok else 'FAIL'} {r.name} ({r.seconds:.2f}s){': ' + r.detail if r.detail else ''}")
        print(f"  {len(results) - len(bad)} of {len(results)} checks hold" + (": SERVABLE" if not bad else ""))
    return 1 if failed else 0


def cmd_settings(args: argparse.Namespace) -> int:
    s = settings_of(args)
    docs = Settings.env_names()
    for f in dataclasses.fields(s):
        env = "STREAMLEARN_" + f.name.upper()
        print(f"{env}={s.shown(f.name)}\n    {docs[env]}")   # secrets masked
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamlearn", description="Online machine learning on Kafka.")
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kwargs: object) -> argparse.ArgumentParser:
        return sub.add_parser(name, formatter_class=_Help, **kwargs)

    def common(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--broker", help="Kafka URL (STREAMLEARN_BROKER)")
        return sp

    w = common(command("worker", help="run one worker"))
    w.add_argument("--web-port", type=int, help="HTTP port (STREAMLEARN_WEB_PORT)")
    w.add_argument("--web-host", help="HTTP host (STREAMLEARN_WEB_HOST)")
    w.add_argument("--data-dir", help="data directory (STREAMLEARN_DATA_DIR)")
    w.add_argument("-l", "--loglevel", help="log level (STREAMLEARN_LOG_LEVEL)")
    w.set_defaults(func=cmd_worker)

    r = common(command("replay", help="publish a dataset as feature events and labels"))
    r.add_argument("dataset", help="bundled River dataset (phishing, bananas, ...) or a .jsonl/.csv file")
    r.add_argument("--target", help="label field of a CSV or flat JSONL file")
    r.add_argument("--keys", type=int, default=1, help="spread events over this many model keys")
    r.add_argument("--key-prefix", default="replay", help="model keys are PREFIX or PREFIX-i")
    r.add_argument("--label-delay", type=int, default=0, help="send each label this many events later")
    r.add_argument("--rate", type=float, default=0.0, help="events per second (0: as fast as possible)")
    r.add_argument("--limit", type=int, help="stop after this many events (an endless dataset needs it, or --forever)")
    r.add_argument("--forever", action="store_true", help="an endless dataset (sea, agrawal): send until Ctrl-C")
    r.add_argument("--unkeyed", action="store_true", help="no Kafka key; the model key goes in the message")
    r.add_argument("--run-id", help="event ids are RUN_ID-i (default: random)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar (there is none when stderr is not "
                                                               "a terminal)")
    r.add_argument("--flip", metavar="START:COUNT", help="inject bad labels: flip COUNT labels from event START")
    r.set_defaults(func=cmd_replay)

    wa = common(command("watch", help="show live predictions and online accuracy"))
    wa.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: until Ctrl-C)")
    wa.add_argument("--every", type=float, default=1.0, help="seconds between status lines")
    wa.set_defaults(func=cmd_watch)

    pl = common(command("plot", help="PNG of online accuracy over time, with version changes marked"))
    pl.add_argument("path", help="PNG file to write")
    pl.add_argument("--model", action="append", help="only this model key (repeatable)")
    pl.add_argument("--window", type=int, default=200, help="rolling accuracy over this many labelled predictions")
    pl.set_defaults(func=cmd_plot)

    t = common(command("topics", help="create missing topics and check partition counts"))
    t.set_defaults(func=cmd_topics)
    whatif.add_command(command, common)

    b = common(command("bench", help="benchmark the pipeline against a hand-written loop and a raw passthrough"))
    b.add_argument("--events", type=int, default=10_000, help="labelled events per run")
    b.add_argument("--specs", default="logreg,hoeffding_tree,arf", help="model specs, comma-separated")
    b.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    b.add_argument("--rates", default="0,1000,5000",
                   help="events/s per run, comma-separated (0: flat out; half: half the flat-out run's)")
    b.add_argument("--producers", default="keyed", help="how producers publish events, comma-separated: keyed "
                                                      "(by model: the router's shortcut) or unkeyed (routed)")
    b.add_argument("--keys", default="20", help="model key counts, comma-separated (a 20-key reference run "
                                               "comes first); events are spread over the keys")
    b.add_argument("--http", type=float, default=0, help="instead: predictions over HTTP at this many requests/s, "
                                                        "against a hand-written server")
    b.add_argument("--json", action="store_true", help="also print the results as JSON (table on stderr)")
    b.add_argument("--plot", type=Path, help="also write a PNG of throughput and p99 against the offered rate")
    b.set_defaults(func=cmd_bench)

    so = common(command("soak", help="a labelled stream at a share of the measured maximum, reported "
                                             "once a minute; fails when an event is lost or memory passes a bound"))
    so.add_argument("--minutes", type=float, default=30.0, help="how long to send")
    so.add_argument("--share", type=float, default=0.5, help="share of the maximum measured by the probe")
    so.add_argument("--rate", type=float, default=0.0, help="events/s instead of a share of the maximum")
    so.add_argument("--probe", type=int, default=5_000, help="labelled events of the flat-out probe (and warm-up)")
    so.add_argument("--spec", default="logreg", help="model spec of the workers")
    so.add_argument("--workers", type=int, default=1, help="workers to start (each its own process)")
    so.add_argument("--keys", type=int, default=20, help="model keys the events are spread over")
    so.add_argument("--report-every", type=float, default=60.0, help="seconds between reports")
    so.add_argument("--drain", type=float, default=120.0, help="seconds to wait at the end for the backlog")
    so.add_argument("--max-rss-mb", type=float, help="fail when the workers' resident memory passes this")
    so.add_argument("--json", action="store_true", help="also print the reports as JSON (table on stderr)")
    so.set_defaults(func=cmd_soak)

    ss = command("status", help="ask workers whether they are alive and ready")
    ss.add_argument("url", nargs="*", help="worker URLs (default: this host's STREAMLEARN_WEB_PORT)")
    ss.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for each worker's answer")
    ss.set_defaults(func=cmd_status)

    import getpass

    from streamlearn.streams.codec import COMMANDS

    m = common(command("models", help="the cluster's models (list); a model's versions: status, versions, "
                                             "snapshot, restore, rollback, pin, unpin; promote a challenger"))
    m.add_argument("action", choices=["list", "show", *COMMANDS, "canary"], help="what to do (status: as show)")
    m.add_argument("model", nargs="?", help="the model key (every action but list and canary: SPEC or status)")
    m.add_argument("argument", nargs="?", metavar="VERSION|SPEC",
                   help="the version (restore, pin, unpin), or the challenger's spec (promote, backfill)")
    m.add_argument("--reason", help="why (kept in the snapshot index and the audit trail)")
    m.add_argument("--by", default=f"cli:{getpass.getuser()}", help="who asks (audit trail)")
    m.add_argument("--timeout", type=float, help="seconds to wait for the result (STREAMLEARN_COMMAND_TIMEOUT_SECONDS)")
    m.add_argument("--url", help="list: the worker to ask (default: this host's STREAMLEARN_WEB_PORT)")
    m.add_argument("--keys", help="canary: fnmatch pattern of the model keys (default: all)")
    m.add_argument("--share", type=float, default=0.1, help="canary: the share of those keys it starts on")
    m.add_argument("--json", action="store_true", help="the workers' answer as JSON, for scripts")
    m.set_defaults(func=_models)

    sp = command("specs", help="the model specs: list them, or check that one can be served")
    sp.add_argument("action", choices=["list", "check"], help="list the specs, or run the contract suite on some")
    sp.add_argument("spec", nargs="*", help="check: spec names or package.module:factory (default: every registered)")
    sp.add_argument("--examples", type=int, default=1000, help="examples of the dataset runs (default 1000)")
    sp.add_argument("--no-river", action="store_true", help="skip River's own checks (the slow part)")
    sp.set_defaults(func=cmd_specs)

    st = common(command("settings", help="print every setting with its env var"))
    st.set_defaults(func=cmd_settings)
    return p


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default where it has one (not an unset option's None, not a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class _Version(argparse.Action):
    """``--version``: streamlearn's, River's and Faust's (imported only when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the versions of streamlearn, River and Faust")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        import faust
        import river

        import streamlearn
        print(f"streamlearn {streamlearn.__version__} (River {river.__version__}, "
              f"faust-streaming {faust.__version__})")
        parser.exit()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()   # here, so that a reader gone away is met below, not at the interpreter's exit
        return code
    except BrokenPipeError:
        # the reader went away (`streamlearn settings | head`): end quietly, and let nothing flush again
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except SettingsError as exc:
        print(f"streamlearn: bad setting: {exc}", file=sys.stderr)
        return 2
    except KafkaAuthError as exc:
        print(f"streamlearn: cannot connect to Kafka: {exc}", file=sys.stderr)
        return 1
    except KafkaUnreachable as exc:
        print(f"streamlearn: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
