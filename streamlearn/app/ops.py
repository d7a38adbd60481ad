"""``streamlearn models``: an operator's commands to one model (signed, on the control topic, answered by
the key's owner) and the cluster's model list (one worker's HTTP ``GET /models``)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from .cli import connected, settings_of


def cmd_models(args: argparse.Namespace) -> int:
    """Send a command on the control topic, wait for its result, print it; non-zero exit on error."""
    import json

    from streamlearn.streams import codec

    from . import present
    from .control import ControlClient

    if args.action == "list":
        return _list_models(args)
    if args.action == "canary":
        from .canary import cmd_canary
        return cmd_canary(args, connected(args, args.timeout))
    if args.action == "show":
        args.action = "status"
    if args.model is None:
        print(f"streamlearn models {args.action}: a MODEL_KEY is required", file=sys.stderr)
        return 2
    needs = codec.COMMANDS[args.action]
    if needs is not None and args.argument is None:
        print(f"streamlearn models {args.action}: a {needs.upper()} is required", file=sys.stderr)
        return 2
    version = spec = None
    if needs == "version":
        try:
            version = int(args.argument)
        except ValueError:
            print(f"streamlearn models {args.action}: VERSION must be a number, not {args.argument!r}",
                  file=sys.stderr)
            return 2
    elif needs == "spec":
        spec = args.argument
    s = connected(args, args.timeout)
    timeout = args.timeout or s.command_timeout_seconds

    if s.command_key is None:
        print(f"streamlearn models {args.action}: STREAMLEARN_COMMAND_SECRET is not set: workers run only signed "
              f"commands (STREAMLEARN_DEV=true uses the development secret, for local experiments)",
              file=sys.stderr)
        return 2

    async def call() -> dict:
        client = ControlClient.of(s, timeout)
        try:
            return await client.call(args.action, args.model, version=version, spec=spec,
                                     reason=args.reason or "", by=args.by)
        finally:
            await client.stop()

    try:
        result = asyncio.run(call())
    except Exception as exc:  # noqa: BLE001 - Kafka unreachable, topic missing: say so
        print(f"streamlearn models {args.action}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    if not result["ok"]:
        print(f"streamlearn models {args.action} {args.model}: {result['error']}: {result['detail']}",
              file=sys.stderr)
        return 1
    if not args.json:
        print(present.answer(args.action, args.model, result["result"]))
    return 0


def _list_models(args: argparse.Namespace) -> int:
    """Every model of the cluster, as one worker's ``GET /models`` sees it: a table, or JSON."""
    import json
    import urllib.error
    import urllib.request

    from .auth import bearer_headers

    s = settings_of(args)
    url = (args.url or f"http://{s.web_host}:{s.web_port}").rstrip("/") + "/models"
    request = urllib.request.Request(url, headers=bearer_headers(s.api_token))
    try:
        with urllib.request.urlopen(request, timeout=args.timeout or s.command_timeout_seconds) as r:
            found = json.loads(r.read())["models"]
    except urllib.error.HTTPError as exc:
        print(f"streamlearn models list: {url} answered {exc.code}: {exc.read()[:300].decode(errors='replace')}",
              file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError) as exc:
        print(f"streamlearn models list: no answer from {url}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    from .present import models_table
    print(models_table(found))
    return 0
