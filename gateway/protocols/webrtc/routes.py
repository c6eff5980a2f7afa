"""WHIP/WHEP HTTP endpoints (RFC 9725 and its WHEP sibling) and the publish/play pages.

    POST   /{app}/{stream}/whip          application/sdp offer -> 201, Location, answer
    POST   /{app}/{stream}/whep          same, for playing
    PATCH  /{app}/{stream}/whip/{id}     application/trickle-ice-sdpfrag -> 204 (trickle ICE);
                                         an ICE restart (new ufrag) -> 422, as RFC 9725 wants
                                         from a session that supports trickle but not restarts
    DELETE /{app}/{stream}/whip/{id}     ends the session -> 200
    OPTIONS on all of them               CORS preflight, Accept-Post / Accept-Patch
    GET    /{app}/{stream}/publish.html  browser publisher (WHIP)
    GET    /{app}/{stream}.html          player: ?player=whep|flv|jsmpeg (default whep)

Client mistakes (wrong content type, malformed SDP, no usable codec, busy or unknown stream)
get a 4xx with the reason as text, never a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from ...web.common import CORS, CTX, peer, query, stream_key
from ...wire import sdp
from . import PeerSession, SessionError, Settings
from .whep import WhepSession
from .whip import WhipSession

log = logging.getLogger(__name__)

__all__ = ["SESSIONS", "SETTINGS", "add_routes"]

STATIC = Path(__file__).resolve().parents[2] / "static"
SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
HEADERS = {**CORS,
           "Access-Control-Expose-Headers": "Location, Link, ETag, Accept-Patch, Accept-Post",
           "Access-Control-Allow-Headers": "Content-Type, Authorization, If-Match"}

SESSIONS: web.AppKey[dict[str, PeerSession]] = web.AppKey("webrtc_sessions", dict)
SETTINGS: web.AppKey[Settings] = web.AppKey("webrtc_settings", Settings)


def _error(status: int, reason: str) -> web.Response:
    return web.Response(status=status, text=reason.rstrip() + "\n", headers=HEADERS)


async def _offer(request: web.Request) -> sdp.Offer:
    ctype = request.content_type
    if ctype != SDP:
        raise SessionError(415, f"Content-Type must be {SDP}, not {ctype or 'missing'}")
    try:
        body = await request.text()
    except UnicodeDecodeError:
        raise SessionError(400, "SDP is not valid UTF-8") from None
    try:
        return sdp.parse(body)
    except sdp.SdpError as e:
        raise SessionError(400, f"bad SDP offer: {e}") from None


def _created(request: web.Request, session: PeerSession, answer: str) -> web.Response:
    sessions = request.app[SESSIONS]
    sessions[session.id] = session

    def forget(s: PeerSession) -> None:
        sessions.pop(s.id, None)

    session.on_close(forget)
    location = f"{request.path.rstrip('/')}/{session.id}"
    return web.Response(status=201, text=answer, content_type=SDP,
                        headers={**HEADERS, "Location": location, "ETag": session.etag,
                                 "Accept-Patch": SDPFRAG})


async def _negotiate(request: web.Request, role: str,
                     make: Callable[[], Awaitable[tuple[PeerSession, sdp.Offer]]]) -> web.Response:
    """The shared WHIP/WHEP POST: build the session, answer the offer, 201 or a 4xx with reason."""
    try:
        session, offer = await make()
        try:
            answer = await session.start(offer)
        except BaseException:
            await session.close("negotiation failed")
            raise
    except SessionError as e:
        log.info("%s %s %s: %d %s", role, peer(request), request.path, e.status, e)
        return _error(e.status, str(e))
    log.info("%s %s: %s (session %s)", role, peer(request), request.path, session.id)
    return _created(request, session, answer)


async def whip_post(request: web.Request) -> web.Response:
    ctx = request.app[CTX]

    async def make() -> tuple[WhipSession, sdp.Offer]:
        key = stream_key(request)
        offer = await _offer(request)
        return WhipSession(request.app[SETTINGS], ctx.sessions, key, peer(request),
                           query(request)), offer

    return await _negotiate(request, "whip", make)


async def whep_post(request: web.Request) -> web.Response:
    ctx = request.app[CTX]

    async def make() -> tuple[WhepSession, sdp.Offer]:
        key = stream_key(request)
        offer = await _offer(request)
        return WhepSession(request.app[SETTINGS], ctx.sessions, key, peer(request),
                           query(request)), offer

    return await _negotiate(request, "whep", make)


def _session(request: web.Request, role: str) -> PeerSession:
    session = request.app[SESSIONS].get(request.match_info["id"])
    if session is None or session.role != role or session.key != stream_key(request):
        raise SessionError(404, "no such session")
    return session


async def resource_delete(request: web.Request) -> web.Response:
    role = request.match_info["role"]
    try:
        session = _session(request, role)
    except SessionError as e:
        return _error(e.status, str(e))
    await session.close("client ended the session")
    return web.Response(status=200, headers=HEADERS)


async def resource_patch(request: web.Request) -> web.Response:
    """Trickle ICE (RFC 8840 fragments); ICE restarts are refused with 422."""
    role = request.match_info["role"]
    try:
        session = _session(request, role)
        if request.content_type != SDPFRAG:
            raise SessionError(415, f"Content-Type must be {SDPFRAG}")
        match = request.headers.get("If-Match")
        if match == "*":
            raise SessionError(422, "ICE restart is not supported; start a new session")
        if match is not None and match != session.etag:
            raise SessionError(412, "If-Match does not match the session's ETag")
        try:
            frag = sdp.parse_sdpfrag(await request.text())
        except (sdp.SdpError, UnicodeDecodeError) as e:
            raise SessionError(400, f"bad SDP fragment: {e}") from None
        mids = [t.mid for t in session.pc.getTransceivers() if t.mid is not None]
        await session.trickle(frag, mids)
    except SessionError as e:
        return _error(e.status, str(e))
    return web.Response(status=204, headers=HEADERS)


async def endpoint_options(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={**HEADERS, "Accept-Post": SDP})


async def resource_options(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={**HEADERS, "Accept-Patch": SDPFRAG})


def _page(name: str) -> web.Response:
    return web.Response(body=(STATIC / name).read_bytes(), content_type="text/html",
                        charset="utf-8", headers={"Cache-Control": "no-cache"})


async def publish_page(request: web.Request) -> web.Response:
    stream_key(request)
    return _page("publish.html")


async def play_page(request: web.Request) -> web.Response:
    stream_key(request)
    return _page("play.html")


async def _close_all(app: web.Application) -> None:
    for session in list(app[SESSIONS].values()):
        await session.close("gateway shutting down")


def add_routes(app: web.Application) -> None:
    """Register WHIP/WHEP and the pages; settings follow the gateway's bind address."""
    app[SESSIONS] = {}
    if SETTINGS not in app:
        app[SETTINGS] = Settings.for_host(app[CTX].config.host)
    r = app.router
    for role, post in (("whip", whip_post), ("whep", whep_post)):
        r.add_post(f"/{{app}}/{{name}}/{role}", post)
        r.add_route("OPTIONS", f"/{{app}}/{{name}}/{role}", endpoint_options)
        resource = f"/{{app}}/{{name}}/{{role:{role}}}/{{id}}"
        r.add_delete(resource, resource_delete)
        r.add_patch(resource, resource_patch)
        r.add_route("OPTIONS", resource, resource_options)
    r.add_get("/{app}/{name}/publish.html", publish_page)
    r.add_get("/{app}/{name}.html", play_page)
    app.on_shutdown.append(_close_all)
