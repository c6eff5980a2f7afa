"""Composition root: wires the hub, the RTMP server and the HTTP server from a ``Config``."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

from aiohttp import web

from . import planner
from .config import Config
from .context import Context
from .cpus import usable_cpus
from .hub.stream import Hub
from .web import app as http
from .protocols.rtmp import server as rtmp
from .transcode import pool, variant

log = logging.getLogger("gateway")


@dataclass
class Gateway:
    """A running gateway; ``rtmp_port``/``http_port`` are the bound ports (useful with port 0)."""

    config: Config
    hub: Hub
    ctx: Context
    rtmp_server: asyncio.Server
    http_runner: web.AppRunner
    rtmp_port: int
    http_port: int

    async def close(self) -> None:
        self.rtmp_server.close()
        self.hub.close()
        await self.http_runner.cleanup()
        await self.rtmp_server.wait_closed()
        await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)


async def start(config: Config) -> Gateway:
    capacity = config.effective_transcode_capacity()
    variant.configure(processes=config.transcode_processes, threads=config.transcode_threads,
                      capacity=capacity)
    workers = config.transcode_processes
    log.info("transcoding: capacity %s (in 720p30 H.264->MPEG-1 transcodes), %s; %d usable CPU(s)",
             f"{capacity:g}" if capacity else "unlimited",
             "threads of this process" if workers == 0
             else f"{workers if workers > 0 else pool.default_processes()} worker processes",
             usable_cpus())
    if config.transcode_prestart and config.transcode_processes != 0:
        pool.get_pool(config.transcode_processes, config.transcode_threads)
    hub = Hub()
    ctx = Context(config, hub, planner.load_matrix(config.matrix_dir or None))
    rtmp_server = await rtmp.serve(ctx)
    runner = web.AppRunner(http.make_app(ctx), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.http_port, backlog=4096)
    await site.start()
    rtmp_port = rtmp_server.sockets[0].getsockname()[1]
    http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    log.info("gateway listening: rtmp=%s:%d http=%s:%d", config.host, rtmp_port, config.host,
             http_port)
    return Gateway(config, hub, ctx, rtmp_server, runner, rtmp_port, http_port)


async def run(config: Config) -> None:
    """Serve until SIGINT/SIGTERM, then end every stream cleanly."""
    gw = await start(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # pragma: no cover - non-POSIX
            pass
    await stop.wait()
    log.info("shutting down")
    await gw.close()
