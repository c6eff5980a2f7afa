"""Command line: ``gateway serve`` and ``gateway matrix``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys

from . import config as config_mod


def _serve(args: argparse.Namespace) -> int:
    try:
        cfg = config_mod.load(args.config, host=args.host, rtmp_port=args.rtmp_port,
                              http_port=args.http_port, log_level=args.log_level)
    except config_mod.ConfigError as e:
        print(f"gateway: config error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=cfg.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .app import run

    try:
        import uvloop  # faster transports for large fan-outs; optional
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    gc.freeze()  # the imports live as long as the process: no full collection walks them again
    try:
        runner(run(cfg))
    except OSError as e:
        print(f"gateway: cannot start: {e}", file=sys.stderr)
        return 1
    return 0


def _matrix(args: argparse.Namespace) -> int:
    """Validate a matrix directory and print its table (for operators editing the data)."""
    from . import planner

    try:
        m = planner.load_matrix(args.matrix_dir or None)
    except planner.MatrixError as e:
        print(f"gateway: matrix error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(planner.render_table(m, args.format))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gateway", description="Protocol interop transcoding gateway")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the gateway (embedded defaults without --config)")
    s.add_argument("--config", help="TOML config file (see README)")
    s.add_argument("--host", help="listen address (default 0.0.0.0)")
    s.add_argument("--rtmp-port", type=int, help="RTMP port (default 1935, 0 = any free port)")
    s.add_argument("--http-port", type=int, help="HTTP port (default 8080, 0 = any free port)")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    s.set_defaults(func=_serve)
    m = sub.add_parser("matrix", help="print the protocol x protocol transcoding table")
    m.add_argument("--format", choices=["text", "tsv"], default="text")
    m.add_argument("--matrix-dir", help="matrix data directory "
                   "(default: $GATEWAY_MATRIX_DIR, then the shipped matrix)")
    m.set_defaults(func=_matrix)
    args = p.parse_args(argv)
    return int(args.func(args))
