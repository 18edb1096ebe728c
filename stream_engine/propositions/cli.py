"""`stream-engine propositions serve|invalidate|rules`."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stream_engine.settings import Settings

log = logging.getLogger("stream_engine.propositions")

KAFKA_START_TIMEOUT_S = 5.0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("propositions", help="Reference proposition service and cache invalidations.")
    sub = parser.add_subparsers(dest="propositions_command", required=True)

    serve = sub.add_parser("serve", help="Run the rule-based proposition service (HTTP).")
    serve.add_argument("--host", default="127.0.0.1", help="Bind address (default 127.0.0.1).")
    serve.add_argument("--port", type=int, default=None, help="Port (default: settings propositions_port).")
    serve.add_argument(
        "--rules", default=None, metavar="PATH", help="Rule book JSON to start from (default: the shipped rules.json)."
    )
    serve.add_argument(
        "--rules-store",
        default=None,
        metavar="PATH",
        help="Where PUT /v1/rules keeps the live rules; when it exists it is loaded instead of --rules "
        "(default: DATA_DIR/propositions/rules.json).",
    )
    serve.add_argument("--latency-median-ms", type=float, default=None, metavar="X", help="Simulated latency median.")
    serve.add_argument("--latency-p99-ms", type=float, default=None, metavar="Y", help="Simulated latency p99 (default = median: fixed).")
    serve.add_argument("--latency-per-item-ms", type=float, default=0.0, metavar="Z",
                       help="Simulated latency added per item of a request (a batch of n costs n × Z more).")
    serve.add_argument("--seed", type=int, default=None, help="Seed of the simulated latency.")
    serve.add_argument(
        "--no-updates",
        action="store_true",
        help="Do not publish invalidations to Kafka (PUT /v1/rules then answers published: false; invalidate yourself).",
    )
    serve.set_defaults(func=serve_handler)

    invalidate = sub.add_parser("invalidate", help="Publish one cache invalidation to the updates topic.")
    invalidate.add_argument("--scope", required=True, choices=("key", "type", "all"))
    invalidate.add_argument("--key", default=None, help="Proposition key (scope key).")
    invalidate.add_argument("--alert-type", default=None, help="Alert type (scope type).")
    invalidate.add_argument("--rules-version", default="manual", help="Version to stamp on the message.")
    invalidate.set_defaults(func=invalidate_handler)

    rules = sub.add_parser(
        "rules", help="Read or replace the service's rule book (admin token: STREAM_ENGINE_ADMIN_TOKEN or STACK_DIR/admin-token)."
    )
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    get = rules_sub.add_parser("get", help="Print the rule book (GET /v1/rules).")
    get.set_defaults(func=rules_get_handler)
    put = rules_sub.add_parser("put", help="Replace the rule book from a JSON file (PUT /v1/rules).")
    put.add_argument("path", metavar="PATH", help="Rule book JSON.")
    put.set_defaults(func=rules_put_handler)


def _configure_logging(settings: Settings) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve_handler(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    _configure_logging(settings)
    try:
        return asyncio.run(_serve(args, settings))
    except KeyboardInterrupt:
        return 0


async def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio
    import signal

    from aiohttp import web

    from stream_engine.propositions.admin import AdminTokenMissing, ensure_admin_token
    from stream_engine.propositions.rules import DEFAULT_RULES_PATH, RuleBook, RuleBookError, RuleStore
    from stream_engine.propositions.service import LatencyModel, make_app
    from stream_engine.propositions.updates import UpdatesPublisher

    try:
        token, generated = ensure_admin_token(settings)
    except (AdminTokenMissing, OSError) as exc:
        print(f"cannot get an admin token: {exc}", file=sys.stderr)
        return 2
    log.info("admin routes need the token %s %s", "generated in" if generated else "from", token.source)

    store = RuleStore(args.rules_store or settings.data_dir / "propositions" / "rules.json")
    try:
        rulebook = store.load(default=RuleBook.load(args.rules or DEFAULT_RULES_PATH))
    except (OSError, RuleBookError) as exc:
        print(f"cannot load rules: {exc}", file=sys.stderr)
        return 2
    if store.path.exists():
        log.info("rules %s from %s (stored by PUT /v1/rules; delete it to start from --rules)", rulebook.version, store.path)
    latency = None
    if args.latency_median_ms or args.latency_per_item_ms:  # 0 means off, as in PUT /v1/admin/latency
        try:
            latency = LatencyModel(
                args.latency_median_ms or 0.0, args.latency_p99_ms, per_item_ms=args.latency_per_item_ms, seed=args.seed
            )
        except ValueError as exc:
            print(f"bad latency: {exc}", file=sys.stderr)
            return 2

    publisher = None
    if not args.no_updates:
        publisher = UpdatesPublisher(settings.kafka_bootstrap, settings.topic_updates, timeout_s=KAFKA_START_TIMEOUT_S)
        try:
            await publisher.start()
        except Exception as exc:  # noqa: BLE001 - the service must come up without Kafka
            # The publisher retries its start on the first publish, so nothing else to do here.
            log.warning("Kafka at %s unreachable (%r): serving anyway; invalidations will retry", settings.kafka_bootstrap, exc)

    app = make_app(rulebook, admin_token=token.value, latency=latency, updates_publisher=publisher, rule_store=store)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    port = args.port if args.port is not None else settings.propositions_port
    try:
        site = web.TCPSite(runner, args.host, port)
        await site.start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{port}: {exc}", file=sys.stderr)
        await runner.cleanup()
        if publisher is not None:
            await publisher.stop()
        return 1

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    log.info(
        "proposition service on http://%s:%d rules %s latency %s updates %s",
        args.host,
        port,
        rulebook.version,
        latency.describe() if latency else None,
        f"{settings.kafka_bootstrap}/{settings.topic_updates}" if publisher else "off",
    )
    await stopping.wait()
    log.info("shutting down")
    await runner.cleanup()  # stops accepting, lets in-flight requests finish
    if publisher is not None:
        await publisher.stop()
    return 0


def invalidate_handler(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from stream_engine.propositions.updates import Invalidation, InvalidInvalidation, UpdatesPublisher

    _configure_logging(settings)
    try:
        invalidation = Invalidation(scope=args.scope, version=args.rules_version, key=args.key, alert_type=args.alert_type)
    except InvalidInvalidation as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 2

    async def publish() -> None:
        publisher = UpdatesPublisher(settings.kafka_bootstrap, settings.topic_updates)
        try:
            await publisher.publish(invalidation)
        finally:
            await publisher.stop()

    try:
        asyncio.run(publish())
    except Exception as exc:  # noqa: BLE001 - a CLI reports, it does not trace back
        print(f"publish to {settings.kafka_bootstrap}/{settings.topic_updates} failed: {exc!r}", file=sys.stderr)
        return 1
    print(invalidation.to_json().decode())
    return 0


def rules_get_handler(args: argparse.Namespace, settings: Settings) -> int:
    return _admin_call(settings, "GET", "/v1/rules")


def rules_put_handler(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    try:
        document = Path(args.path).read_bytes()
    except OSError as exc:
        print(f"cannot read {args.path}: {exc}", file=sys.stderr)
        return 2
    return _admin_call(settings, "PUT", "/v1/rules", content=document, headers={"content-type": "application/json"})


def _admin_call(settings: Settings, method: str, path: str, **kwargs: object) -> int:
    """Print the answer's body; exit 1 on an HTTP error, 2 without a token or a service."""
    import httpx

    from stream_engine.propositions.admin import AdminTokenMissing, admin_request

    try:
        response = admin_request(settings, method, path, **kwargs)
    except AdminTokenMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:
        print(f"{method} {settings.propositions_url}{path} failed: {exc!r}", file=sys.stderr)
        return 2
    if response.status_code == 401:
        print(f"401 from {settings.propositions_url}: {response.text} (is the token the one the service runs with?)", file=sys.stderr)
        return 1
    print(response.text)
    return 0 if response.is_success else 1
