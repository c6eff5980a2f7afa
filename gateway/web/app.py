"""The HTTP application: one aiohttp app for every protocol's routes, the API, CORS and static
assets. The protocols' routes are handed in by the composition root (``gateway.app``), so this
package imports no protocol."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable

from aiohttp import web

from ..context import Context
from ..hub.sessions import Player
from ..hub.stream import Stream
from ..static import asset_candidates, find_asset
from ..transcode.variant import Variant
from .common import CORS, CTX

log = logging.getLogger(__name__)

Routes = Callable[[web.Application], None]


def _outputs(stream: Stream, viewers: Counter[tuple[int, object]]) -> dict[str, object]:
    """Viewers per output format, and each transcoding variant with its own outputs and stats;
    ``viewers`` counts the session registry's players by (id of their media, sink key)."""
    out: dict[str, object] = {}
    for key, sink in stream.sinks.items():
        if isinstance(sink, Variant):
            out[f"variant {sink.plan}"] = {"stats": sink.stats(),
                                           "outputs": _outputs(sink, viewers)}
        else:
            out[str(key)] = viewers[id(stream), key]
    return out


async def streams(request: web.Request) -> web.Response:
    """Live streams with their tracks and viewer counts, for operators."""
    ctx = request.app[CTX]
    viewers = Counter((id(p.media), p.sink_key) for p in ctx.sessions.live.values()
                      if isinstance(p, Player) and p.sink is not None)
    out = []
    for key, s in ctx.hub.streams.items():
        out.append({
            "key": key,
            "protocol": s.info.protocol,
            "publisher": s.publisher,
            "tracks": {k: {n: v for n, v in t.params().items() if v not in (0, "", 0.0)}
                       for k, t in s.tracks.items()},
            "frames_in": s.frames_in,
            "bytes_in": s.bytes_in,
            # the publisher's clock went back this often (see hub/timeline.py)
            "timestamp_jumps": s.timeline.jumps,
            "outputs": _outputs(s, viewers),
        })
    return web.json_response({"streams": out, "transcode": ctx.transcoder.load()}, headers=CORS)


async def static_asset(request: web.Request) -> web.StreamResponse:
    """Browser players installed from npm (never vendored), see ``gateway/static``."""
    name = request.match_info["file"]
    path = find_asset(name)
    if path is None:
        tried = ", ".join(str(p) for p in asset_candidates(name)) or "unknown asset"
        raise web.HTTPNotFound(text=f"{name} is not installed (run `npm ci`); looked in: {tried}\n",
                               headers=CORS)
    return web.FileResponse(path, headers={**CORS, "Content-Type": "application/javascript"})


async def options(request: web.Request) -> web.Response:
    return web.Response(status=204, headers=CORS)


def make_app(ctx: Context, routes: Iterable[Routes]) -> web.Application:
    """The app serving ``ctx``: the API and static assets, then each protocol's ``routes``."""
    app = web.Application()
    app[CTX] = ctx
    app.router.add_get("/api/streams", streams)
    app.router.add_get("/_static/{file}", static_asset)
    for add_routes in routes:
        add_routes(app)
    app.router.add_route("OPTIONS", "/{tail:.*}", options)
    return app
