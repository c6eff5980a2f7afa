"""The session service: the one way every protocol starts a publisher or a viewer.

Refusals, the ``authorize`` and ``on_missing`` hooks, the publisher idle timeout and the registry
of live sessions are here once (like MediaMTX's path manager); a protocol only maps a
``Refusal`` to its wire (RTMP status, HTTP status, WebSocket close code).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ..media import StreamInfo
from .stream import SETTLE_WAIT, Hub, HubError, NoMediaYet, Sink, Stream

if TYPE_CHECKING:
    from ..planner import Matrix, Plan, TargetSpec

log = logging.getLogger(__name__)

__all__ = ["Authorize", "Code", "OnMissing", "Player", "Publisher", "Refusal", "Session",
           "Sessions"]


class Code(Enum):
    """Why a request is refused; each protocol maps it once to its wire."""

    BAD_REQUEST = 400
    FORBIDDEN = 403
    NOT_FOUND = 404
    BUSY = 409
    UNSUPPORTED = 422  # nothing the client takes can be made from the stream
    UNAVAILABLE = 503  # worth trying again later: no media yet, transcode capacity in use


class Refusal(Exception):
    """A publish or play the gateway refuses: ``code``, and ``str()`` is the reason for the
    client; ``retry_after`` (seconds) when trying again later may work."""

    def __init__(self, code: Code, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.retry_after = retry_after

    @property
    def http_status(self) -> int:
        return self.code.value

    @property
    def ws_close_code(self) -> int:
        """The private-use WebSocket close code (RFC 6455 7.4.2) of a refusal past the
        handshake: 4000 + the HTTP status (4403, 4404, ...)."""
        return 4000 + self.code.value


#: ``authorize(action, key, protocol, peer, query)``: raise ``Refusal`` to refuse (``action`` is
#: ``"publish"`` or ``"play"``); may be a coroutine function. Default: everything is allowed.
Authorize = Callable[[str, str, str, str, Mapping[str, str]], Awaitable[None] | None]
#: ``on_missing(key, protocol, peer, query)``: a stream for a key nobody publishes (a CDN pull
#: started on demand, a cluster lookup), or None for "not found". Default: None.
OnMissing = Callable[[str, str, str, Mapping[str, str]], Awaitable[Stream | None]]


class Planner(Protocol):
    """What plans a viewer's media: the gateway's ``transcode.Transcoder`` (the source itself,
    or the shared variant its target needs, started on first use)."""

    def media_for(self, matrix: Matrix, stream: Stream,
                  target: str | TargetSpec) -> tuple[Stream, Plan]: ...


S = TypeVar("S", bound=Sink)
Stats = Callable[[], Mapping[str, Any]]


@dataclass(eq=False)
class Session:
    """One live publisher or viewer, as the registry (and the API) sees it."""

    id: str
    protocol: str
    role: str  # "publish" | "play"
    key: str
    peer: str
    started: float = field(default_factory=time.time)  # wall clock, for operators
    #: the protocol's counters (bytes_in/bytes_out, drops, queue depth...), set once attached
    counters: Stats | None = None
    #: how the protocol ends this session when the gateway does (idle publisher, a kick)
    kick: Callable[[str], None] | None = None
    closed: bool = False

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "protocol": self.protocol, "role": self.role,
                               "key": self.key, "peer": self.peer, "started": self.started,
                               "bytes_in": 0, "bytes_out": 0}
        if self.counters is not None:
            out.update(self.counters())
        return out


@dataclass(eq=False)
class Publisher(Session):
    """A publisher's session: its stream, and the activity the idle timeout watches."""

    stream: Stream | None = None
    last_active: float = 0.0  # monotonic; ``touch()`` on every piece of media received
    watching: bool = False
    timed_out: bool = False

    def touch(self) -> None:
        self.last_active = time.monotonic()


@dataclass(eq=False)
class Player(Session, Generic[S]):
    """A viewer's session: the source, what it is served from (the source or a variant), the
    plan that chose it and the shared sink the protocol attaches its viewer to."""

    source: Stream | None = None
    media: Stream | None = None
    plan: Plan | None = None
    sink: S | None = None
    sink_key: object = None


class Sessions:
    """Starts, refuses, watches and lists every publisher and viewer of one gateway."""

    def __init__(self, hub: Hub, matrix: Matrix, transcoder: Planner, *,
                 publish_timeout: float = 0.0, authorize: Authorize | None = None,
                 on_missing: OnMissing | None = None) -> None:
        self.hub = hub
        self.matrix = matrix
        self.transcoder = transcoder
        self.publish_timeout = publish_timeout
        self.authorize = authorize
        self.on_missing = on_missing
        self.live: dict[str, Session] = {}
        self._ids = itertools.count(1)

    # -- publish -------------------------------------------------------------------------

    async def publish(self, key: str, protocol: str, peer: str, query: Mapping[str, str], *,
                      kick: Callable[[str], None] | None = None, watch: bool = True,
                      idle_what: str = "data") -> Publisher:
        """Claim ``key`` for a new publisher, or raise ``Refusal``.

        ``kick(reason)`` ends the protocol's connection when the gateway ends the publisher: its
        publisher sent no media for ``publish_timeout`` s (watched from now, or from
        ``watch_idle()`` when ``watch`` is False: a WebRTC publisher before its connection is
        up), or an operator kicked it."""
        await self._authorize("publish", key, protocol, peer, query)
        try:
            stream = self.hub.publish(key, StreamInfo(protocol), f"{protocol} {peer}")
        except HubError as e:
            raise Refusal(Code.BUSY, str(e)) from None
        pub = Publisher(self._id(), protocol, "publish", key, peer, kick=kick, stream=stream)
        pub.counters = lambda: {"bytes_in": stream.bytes_in, "frames_in": stream.frames_in}
        self.live[pub.id] = pub
        if watch:
            self.watch_idle(pub, idle_what)
        return pub

    def watch_idle(self, pub: Publisher, what: str = "data") -> None:
        """From now on, a publisher that sends nothing for ``publish_timeout`` s is ended: a hung
        encoder (its connection still open) must not hold the stream key for ever."""
        if self.publish_timeout <= 0 or pub.watching:
            return
        pub.watching = True
        pub.touch()
        loop = asyncio.get_running_loop()

        def check() -> None:
            if pub.closed:
                return
            idle = time.monotonic() - pub.last_active
            if idle < self.publish_timeout:
                loop.call_later(max(0.1, min(1.0, self.publish_timeout - idle)), check)
                return
            reason = f"no {what} from the publisher for {idle:.0f} s"
            log.warning("%s %s: %s: %s; disconnecting", pub.protocol, pub.peer, pub.key, reason)
            pub.timed_out = True
            self.end(pub, reason)

        loop.call_later(self.publish_timeout, check)

    def unpublish(self, pub: Publisher, reason: str) -> None:
        """The protocol's publisher ended (left, failed): its stream ends with ``reason``."""
        if pub.closed:
            return
        pub.closed = True
        self.live.pop(pub.id, None)
        if pub.stream is not None:
            self.hub.unpublish(pub.stream, reason)

    # -- play ----------------------------------------------------------------------------

    async def source(self, key: str, protocol: str, peer: str,
                     query: Mapping[str, str]) -> Stream:
        """The live stream ``key`` a viewer may see, after ``authorize`` and ``on_missing``;
        starts nothing (an HTTP ``HEAD``, a player's probe)."""
        await self._authorize("play", key, protocol, peer, query)
        return await self._find(key, protocol, peer, query)

    async def play(self, key: str, target: str | TargetSpec | Callable[[Stream], TargetSpec],
                   peer: str, query: Mapping[str, str], make_sink: Callable[[Stream], S], *,
                   sink_key: object, protocol: str = "",
                   settle: float = SETTLE_WAIT) -> Player[S]:
        """Start a viewer of ``key`` as ``target`` (a matrix protocol, or a target planned from
        the settled source, as WHEP's offer), or raise ``Refusal``.

        Waits until the publisher's tracks are known, so the plan is made once from all; the
        returned ``Player`` holds the shared sink (``make_sink`` on first use per ``sink_key``)
        that the protocol attaches its viewer to, and is in the registry until ``stop()``.
        ``settle``: how long to wait for a just-published stream's first track; ``sink_key``
        may be a function, called once the target is planned."""
        protocol = protocol or (target if isinstance(target, str) else "?")
        source = await self.source(key, protocol, peer, query)
        if not source.settled():  # just published: plan once its tracks are known
            log.info("%s %s: %s: waiting for the publisher's tracks (so far: %s)", protocol,
                     peer, key, ", ".join(source.tracks) or "none")
            try:
                await source.wait_settled(settle)
            except NoMediaYet as e:
                raise Refusal(Code.UNAVAILABLE, str(e), retry_after=1.0) from None
            except HubError as e:
                raise Refusal(Code.NOT_FOUND, str(e)) from None
        if source.ended:
            raise Refusal(Code.NOT_FOUND, f"stream {key} ended")
        spec = target(source) if callable(target) else target
        try:
            media, plan = self.transcoder.media_for(self.matrix, source, spec)
        except Refusal as e:  # the transcoder's (capacity, a crashing transcode cooling down)
            log.warning("%s %s: %s", protocol, peer, e)
            raise
        except ValueError as e:
            raise Refusal(Code.UNSUPPORTED, f"cannot plan {key} for {protocol}: {e}") from None
        if callable(sink_key):  # a key that depends on the plan (made by ``target``)
            sink_key = sink_key()
        sink = media.sink(sink_key, make_sink)
        player: Player[S] = Player(self._id(), protocol, "play", key, peer, source=source,
                                   media=media, plan=plan, sink=sink, sink_key=sink_key)
        self.live[player.id] = player
        return player

    def stop(self, session: Session) -> None:
        """A viewer left (or any session ended): out of the registry."""
        session.closed = True
        self.live.pop(session.id, None)

    # -- both ----------------------------------------------------------------------------

    def end(self, session: Session, reason: str) -> None:
        """The gateway ends a session (idle, kicked): the protocol closes its connection, and a
        publisher's stream ends with ``reason``."""
        if session.kick is not None:
            try:
                session.kick(reason)
            except Exception:
                log.exception("%s %s: ending the session failed", session.protocol, session.peer)
        if isinstance(session, Publisher):
            self.unpublish(session, reason)
        else:
            self.stop(session)

    def stats(self) -> list[dict[str, Any]]:
        return [s.stats() for s in self.live.values()]

    def _id(self) -> str:
        return str(next(self._ids))

    async def _authorize(self, action: str, key: str, protocol: str, peer: str,
                         query: Mapping[str, str]) -> None:
        if self.authorize is None:
            return
        result = self.authorize(action, key, protocol, peer, query)
        if inspect.isawaitable(result):
            await result

    async def _find(self, key: str, protocol: str, peer: str,
                    query: Mapping[str, str]) -> Stream:
        stream = self.hub.streams.get(key)
        if (stream is None or stream.ended) and self.on_missing is not None:
            stream = await self.on_missing(key, protocol, peer, query)
        if stream is None or stream.ended:
            raise Refusal(Code.NOT_FOUND, f"stream {key} not found")
        return stream
