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
from .hub.sessions import Authorize, OnMissing, Sessions
from .hub.stream import Hub
from .protocols.h5 import routes as h5_routes
from .protocols.rtmp import routes as rtmp_routes
from .protocols.rtmp import server as rtmp
from .protocols.udp import routes as udp_routes
from .protocols.udp.static import StaticInputs
from .protocols.webrtc import routes as webrtc_routes
from .transcode.transcoder import Transcoder
from .web import app as http

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
    udp_inputs: StaticInputs

    async def close(self) -> None:
        self.rtmp_server.close()
        self.udp_inputs.close()
        self.hub.close()
        await self.http_runner.cleanup()
        await self.rtmp_server.wait_closed()
        await asyncio.get_running_loop().run_in_executor(None, self.ctx.transcoder.shutdown)


async def start(config: Config, *, authorize: Authorize | None = None,
                on_missing: OnMissing | None = None) -> Gateway:
    """Start serving ``config``; ``authorize`` and ``on_missing`` are the session service's
    hooks (default: everything allowed; an unknown key is not found)."""
    transcoder = Transcoder.from_config(config)
    capacity = transcoder.capacity
    log.info("transcoding: capacity %s (in 720p30 H.264->MPEG-1 transcodes), %s; %d usable CPU(s)",
             f"{capacity:g}" if capacity else "unlimited", transcoder.describe(), usable_cpus())
    if config.transcode_prestart and config.transcode_processes != 0:
        transcoder.prestart()
    hub = Hub()
    matrix = planner.load_matrix(config.matrix_dir or None)
    sessions = Sessions(hub, matrix, transcoder, publish_timeout=config.publish_timeout,
                        authorize=authorize, on_missing=on_missing)
    ctx = Context(config, hub, matrix, transcoder, sessions)
    rtmp_server = await rtmp.serve(ctx)
    try:
        udp_inputs = await StaticInputs.start(config, sessions)
    except BaseException:
        rtmp_server.close()
        raise
    app = http.make_app(ctx, [rtmp_routes.add_routes, h5_routes.add_routes,
                              webrtc_routes.add_routes, udp_routes.add_routes])
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.http_port, backlog=4096)
    await site.start()
    rtmp_port = rtmp_server.sockets[0].getsockname()[1]
    http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    log.info("gateway listening: rtmp=%s:%d http=%s:%d", config.host, rtmp_port, config.host,
             http_port)
    return Gateway(config, hub, ctx, rtmp_server, runner, rtmp_port, http_port, udp_inputs)


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
