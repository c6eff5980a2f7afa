"""RTP set-up over HTTP (the ``udp`` protocol's contract):

    POST   /{app}/{stream}/rtp/publish        application/sdp: what the client will send
                                              -> 201, Location, the SDP of where to send it
    DELETE /{app}/{stream}/rtp/publish/{id}   ends the session -> 200
    POST   /{app}/{stream}/rtp/play           application/sdp: where to send, which codecs
                                              -> 201, Location, the receiver's SDP
    GET    /{app}/{stream}/rtp/play/{id}      the receiver's SDP again (for ffplay, VLC)
    DELETE /{app}/{stream}/rtp/play/{id}      ends the session -> 200

Errors are 4xx/5xx with the reason as text: 415 (not SDP), 400 (bad SDP), 422 (no codec the
gateway takes), 409 (stream busy), 503 (no UDP port or session left).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Mapping

from aiohttp import web

from ...hub.sessions import Code, Publisher, Refusal, Sessions
from ...web.common import CORS, CTX, peer, query, refused, stream_key
from ...wire.rtp.clock import RtpClock
from ...wire.rtp.session import RtpDescription, RtpMedia, answer, parse
from ...wire.sdp import Codec, SdpError
from .ingest import RtpTrack, TrackError, UdpEndpoint, choose, push_to
from .play import RtpPlay
from .ports import PortRange, PortsExhausted, open_endpoint

log = logging.getLogger(__name__)

SDP = "application/sdp"


class RtpPublish:
    """One RTP publisher: its ports, its tracks, its publisher session."""

    def __init__(self, sessions: Sessions, key: str, peer_addr: str,
                 query: Mapping[str, str]) -> None:
        self.sessions = sessions
        self.key = key
        self.peer = peer_addr
        self.peer_host = peer_addr.rsplit(":", 1)[0].strip("[]")
        self.query = query
        self.id = secrets.token_urlsafe(12)
        self.publisher: Publisher | None = None
        self.clock = RtpClock()
        self.endpoints: list[UdpEndpoint] = []
        self.tracks: list[RtpTrack] = []
        self.closed = False

    async def start(self, desc: RtpDescription, ports: PortRange, local: str) -> str:
        """Claim the key, bind a port (pair) per track, return the answer SDP."""
        try:
            chosen = choose(self.sessions.matrix, desc)
        except TrackError as e:
            raise Refusal(Code.UNSUPPORTED, str(e)) from None
        self.publisher = await self.sessions.publish(self.key, "udp", self.peer, self.query,
                                                     kick=self._kicked)
        stream = self.publisher.stream
        assert stream is not None
        self.publisher.counters = self._counters
        answered: list[tuple[RtpMedia, Codec, int]] = []
        try:
            for media, codec, name in chosen:
                track = RtpTrack(media, codec, name, self.clock, push_to(stream),
                                 f"udp {self.peer} {self.key} {media.kind}")
                port, rtp_sock, rtcp_sock = ports.allocate(media.rtcp_mux)
                for sock, rtcp_only in ((rtp_sock, False), (rtcp_sock, True)):
                    if sock is None:
                        continue
                    endpoint = UdpEndpoint(track, self.peer_host, self.publisher.touch,
                                           rtcp_only)
                    await open_endpoint(endpoint, sock=sock)
                    self.endpoints.append(endpoint)
                self.tracks.append(track)
                answered.append((media, codec, port))
        except PortsExhausted as e:
            self.close("no UDP port left")
            raise Refusal(Code.UNAVAILABLE, str(e), retry_after=5.0) from None
        except TrackError as e:
            self.close(str(e))
            raise Refusal(Code.UNSUPPORTED, str(e)) from None
        video = next((t for t in self.tracks if t.kind == "video"), None)
        if video is not None and video.feedback:
            stream.keyframe_hook = video.request_keyframe  # a viewer's PLI reaches the publisher
        asyncio.get_running_loop().call_later(0.05, self._poll)
        return answer(local, abs(hash(self.id)) % (1 << 31), answered, "recvonly")

    def _poll(self) -> None:
        """Tracks release what their jitter buffers held too long for a lost packet."""
        if self.closed:
            return
        now = time.monotonic()
        for t in self.tracks:
            t.poll(now)
        asyncio.get_running_loop().call_later(0.05, self._poll)

    def _counters(self) -> dict[str, object]:
        stream = self.publisher.stream if self.publisher is not None else None
        return {"bytes_in": stream.bytes_in if stream is not None else 0,
                "packets": sum(t.packets for t in self.tracks),
                "plis": sum(t.plis for t in self.tracks),
                "foreign": sum(e.foreign for e in self.endpoints),
                "malformed": sum(t.malformed for t in self.tracks)}

    def _kicked(self, reason: str) -> None:
        self.close(reason)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        for e in self.endpoints:
            e.close()
        if self.publisher is not None:
            self.sessions.unpublish(self.publisher, f"RTP session ended: {reason}")
        log.info("udp %s %s: ended: %s", self.peer, self.key, reason)


SESSIONS: web.AppKey[dict[str, RtpPublish | RtpPlay]] = web.AppKey("udp_sessions", dict)
PORTS: web.AppKey[PortRange] = web.AppKey("udp_ports", PortRange)


async def _description(request: web.Request) -> RtpDescription:
    """The client's SDP, if a new session may start: 415, 400 or 503 with the reason if not."""
    if request.content_type != SDP:
        raise web.HTTPUnsupportedMediaType(
            text=f"Content-Type must be {SDP}, not {request.content_type or 'missing'}\n",
            headers=CORS)
    try:
        desc = parse(await request.text())
    except (SdpError, UnicodeDecodeError) as e:
        raise web.HTTPBadRequest(text=f"bad SDP: {e}\n", headers=CORS) from None
    limit = request.app[CTX].config.rtp_max_sessions
    if len(request.app[SESSIONS]) >= limit:
        raise web.HTTPServiceUnavailable(text=f"too many RTP sessions ({limit})\n", headers=CORS)
    return desc


async def publish_post(request: web.Request) -> web.Response:
    key = stream_key(request)
    ctx = request.app[CTX]
    desc = await _description(request)
    live = request.app[SESSIONS]
    session = RtpPublish(ctx.sessions, key, peer(request), query(request))
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    local = sockname[0] if sockname else "127.0.0.1"
    try:
        text = await session.start(desc, request.app[PORTS], local)
    except Refusal as e:
        session.close(str(e))
        raise refused(e) from None
    live[session.id] = session
    log.info("udp %s: publishing %s: %s", session.peer, key,
             ", ".join(f"{t.kind} {t.name} pt {t.codec.pt}" for t in session.tracks))

    def forget(task: object = None) -> None:
        live.pop(session.id, None)

    assert session.publisher is not None and session.publisher.stream is not None
    stream = session.publisher.stream
    asyncio.ensure_future(stream.finished.wait()).add_done_callback(forget)
    return web.Response(status=201, text=text, content_type=SDP,
                        headers={**CORS, "Location": f"{request.path.rstrip('/')}/{session.id}"})


async def play_post(request: web.Request) -> web.Response:
    key = stream_key(request)
    ctx = request.app[CTX]
    desc = await _description(request)
    live = request.app[SESSIONS]
    session = RtpPlay(ctx.sessions, key, peer(request), query(request), ctx.config.rtp_mtu)
    try:
        text = await session.start(desc, request.app[PORTS])
    except Refusal as e:
        session.close(str(e))
        raise refused(e) from None
    live[session.id] = session

    def forget() -> None:
        live.pop(session.id, None)

    session.on_close = forget
    log.info("udp %s: playing %s: %s", session.peer, key,
             ", ".join(f"{k} pt {c.pt} to {m.address}:{m.port}"
                       for k, (m, c) in session.chosen.items()))
    return web.Response(status=201, text=text, content_type=SDP,
                        headers={**CORS, "Location": f"{request.path.rstrip('/')}/{session.id}"})


def _session(request: web.Request, kind: type[RtpPublish] | type[RtpPlay]
             ) -> RtpPublish | RtpPlay:
    session = request.app[SESSIONS].get(request.match_info["id"])
    if session is None or not isinstance(session, kind) or session.key != stream_key(request):
        raise web.HTTPNotFound(text="no such session\n", headers=CORS)
    return session


async def play_get(request: web.Request) -> web.Response:
    session = _session(request, RtpPlay)
    assert isinstance(session, RtpPlay)
    return web.Response(text=session.sdp, content_type=SDP, headers=CORS)


async def session_delete(request: web.Request) -> web.Response:
    kind = RtpPublish if request.match_info["role"] == "publish" else RtpPlay
    session = _session(request, kind)
    session.close("client ended the session")
    request.app[SESSIONS].pop(session.id, None)
    return web.Response(status=200, headers=CORS)


async def _close_all(app: web.Application) -> None:
    for session in list(app[SESSIONS].values()):
        session.close("gateway shutting down")


def add_routes(app: web.Application) -> None:
    config = app[CTX].config
    app[SESSIONS] = {}
    app[PORTS] = PortRange(config.host, config.rtp_port_min, config.rtp_port_max)
    app.router.add_post("/{app}/{name}/rtp/publish", publish_post)
    app.router.add_post("/{app}/{name}/rtp/play", play_post)
    app.router.add_get("/{app}/{name}/rtp/play/{id}", play_get)
    app.router.add_delete("/{app}/{name}/rtp/{role:publish|play}/{id}", session_delete)
    app.on_shutdown.append(_close_all)
