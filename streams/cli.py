"""`python -m hedgerow.streams serve`: run the stream manager.

Its configuration is the component's configuration, as JSON: in
HEDGEROW_STREAM_MANAGER_CONFIG (the shipped manifest sets it from `{configuration:}`) or
`--config`. Only loopback addresses are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import pathlib
import signal
import sys
from collections.abc import Sequence

from hedgerow.core import streams as core
from hedgerow.streams import exports, server, store

log = logging.getLogger("hedgerow.streams")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hedgerow.streams",
        description="Hedgerow's stream manager: durable local streams that the Greengrass "
                    "Stream Manager SDK (StreamManagerClient) talks to, exported over "
                    "HTTP or to the cloud MQTT broker.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="serve streams on a loopback port",
        description="Serve streams until SIGTERM. Configuration keys (JSON): host "
                    "(loopback only, default 127.0.0.1), port (8088), storageDir (default "
                    "./streams), diskBudgetBytes (1 GiB), exportBandwidthBytesPerSecond "
                    "(0: unlimited), flushIntervalMillis (1000), logLevel (INFO), "
                    "statusStreamName, mqttExports ([{stream, topic, batchSize, priority}], "
                    "published through the agent's cloud connection over IPC); see "
                    "docs/streams.md.")
    serve.add_argument("--config", default=os.environ.get("HEDGEROW_STREAM_MANAGER_CONFIG",
                                                          "{}"),
                       help="the configuration as JSON (default: "
                            "$HEDGEROW_STREAM_MANAGER_CONFIG, else {})")
    serve.add_argument("--tokens", type=pathlib.Path, default=None,
                       help="file of SHA-256 digests of allowed tokens, one a line (default: "
                            f"$HEDGEROW_ROOT/{core.TOKENS_FILE}, which the agent keeps)")
    serve.add_argument("--no-auth", action="store_true",
                       help="accept any client (a developer's machine only)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = core.resolve_config(json.loads(args.config))
    except ValueError as exc:  # ConfigError and JSONDecodeError both are
        print(f"stream manager configuration: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tokens_path = args.tokens
    if tokens_path is None and not args.no_auth:
        root = os.environ.get("HEDGEROW_ROOT")
        if not root:
            print("no tokens file: run under the agent (HEDGEROW_ROOT), give --tokens, "
                  "or --no-auth", file=sys.stderr)
            return 2
        tokens_path = pathlib.Path(root) / core.TOKENS_FILE
    try:
        asyncio.run(serve(config, None if args.no_auth else tokens_path))
    except (OSError, ValueError) as exc:  # a port in use, unreadable TLS files, …
        print(f"stream manager: {exc}", file=sys.stderr)
        return 1
    return 0


async def serve(config: core.Config, tokens_path: pathlib.Path | None) -> None:
    folder = pathlib.Path(config.storage or "streams").absolute()
    st = store.Store(folder, config.disk_budget)
    st.load()
    srv = server.Server(st, server.Tokens(tokens_path))
    exp = exports.Exports(st, config)
    srv.describe_exports = exp.describe
    st.on_change = exp.on_change
    exp.start()
    tcp = await asyncio.get_running_loop().create_server(srv.protocol, config.host,
                                                         config.port, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    housekeeping = loop.create_task(_housekeep(st, config.flush_interval_ms / 1000))
    log.info("stream manager listening on %s:%d, storage %s, %d streams", config.host,
             config.port, folder, len(st.streams))
    try:
        await stop.wait()
    finally:
        tcp.close()
        housekeeping.cancel()
        await exp.stop()
        for stream in list(st.streams.values()):
            with contextlib.suppress(OSError):
                await stream.flush()
        st.close()
        log.info("stream manager stopped")


async def _housekeep(st: store.Store, interval: float) -> None:
    """Sync streams without flushOnWrite, and delete segments past their TTL."""
    while True:
        await asyncio.sleep(interval)
        now = store.now_ms()
        for stream in list(st.streams.values()):
            try:
                await stream.flush()
                stream.expire(now)
            except OSError as exc:
                log.error("stream %r: %s", stream.name, exc)
