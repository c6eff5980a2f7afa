"""WebRTC: WHIP ingest and WHEP egress on aiortc, media kept encoded end to end.

``seam`` is the only module that touches aiortc internals; ``wire.sdp`` inspects and trims
offers (sans-I/O); ``whip`` is the publishing session, ``whep`` the playing one with the shared
output that converts each frame once for every viewer; ``routes`` are the HTTP resources.

This module holds what both sessions share: their settings and the aiortc peer lifecycle
(negotiation on a trimmed offer, trickle ICE, closing exactly once).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from ...wire import sdp
from . import seam

log = logging.getLogger(__name__)

__all__ = ["PeerSession", "SessionError", "Settings"]


class SessionError(Exception):
    """A request the session refuses; ``status`` is the HTTP status, ``str()`` the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(slots=True)
class Settings:
    """WebRTC knobs; defaults suit a LAN/loopback gateway without STUN/TURN."""

    # Addresses to offer as ICE host candidates; None = every interface (aioice's choice).
    ice_hosts: tuple[str, ...] | None = None
    # Longest GOP a WebRTC publisher may send before the gateway asks for a keyframe: browsers
    # only send keyframes on request, while late RTMP/FLV/WHEP joiners start at one.
    keyframe_interval: float = 2.0
    connect_timeout: float = 20.0  # seconds from the answer to ICE+DTLS connected
    track_wait: float = 5.0  # WHEP: how long to wait for a just-published stream's tracks
    video_queue_frames: int = 90  # per WHEP viewer; past it the viewer drops to the next keyframe
    video_queue_bytes: int = 4 << 20
    audio_queue_packets: int = 100

    @property
    def loopback_only(self) -> bool:
        return bool(self.ice_hosts) and all(
            h.startswith("127.") or h == "::1" for h in self.ice_hosts or ())

    @classmethod
    def for_host(cls, host: str) -> Settings:
        """Offer only the address the gateway is bound to (all interfaces for a wildcard)."""
        if host in ("", "0.0.0.0", "::"):
            return cls()
        return cls(ice_hosts=(host,))


class PeerSession:
    """One WHIP or WHEP resource: an aiortc peer connection and its HTTP identity."""

    role = "webrtc"

    def __init__(self, settings: Settings, key: str, peer: str) -> None:
        self.settings = settings
        self.key = key
        self.peer = peer
        self.id = secrets.token_urlsafe(12)
        self.etag = f'"{secrets.token_hex(8)}"'
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.created = time.monotonic()
        self.connected_at = 0.0
        self.closed = False
        self.close_reason = ""
        self._on_close: list[Callable[[PeerSession], None]] = []
        self._timeout: asyncio.TimerHandle | None = None
        self.pc.on("connectionstatechange", self._state_changed)

    def __repr__(self) -> str:
        return f"{self.role} {self.key} {self.id} ({self.peer})"

    def on_close(self, callback: Callable[[PeerSession], None]) -> None:
        self._on_close.append(callback)

    # -- negotiation ---------------------------------------------------------------------

    async def start(self, offer: sdp.Offer) -> str:
        """Subclass: negotiate ``offer``, claim or find the stream, return the answer SDP."""
        raise NotImplementedError

    async def answer(self, offer: sdp.Offer, chosen: Mapping[str, int],
                     prepare: Callable[[], None]) -> str:
        """Apply the trimmed offer, let ``prepare`` attach taps/tracks, return the answer SDP."""
        text, original = sdp.restrict(offer, chosen)
        loopback = self.settings.loopback_only
        text = sdp.filter_candidates(text, lambda a: sdp.allowed_address(a, loopback))
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(text, "offer"))
            prepare()
            with seam.ice_hosts(self.settings.ice_hosts):
                await self.pc.setLocalDescription(await self.pc.createAnswer())
        except (ValueError, AssertionError, KeyError, TypeError, LookupError) as e:
            raise SessionError(400, f"offer rejected by the WebRTC stack: {e}") from e
        except Exception as e:  # aiortc's own errors (OperationError, InvalidStateError, ...)
            if isinstance(e, seam.SeamError):
                raise
            raise SessionError(400, f"offer rejected by the WebRTC stack: {type(e).__name__}: {e}") from e
        self._timeout = asyncio.get_running_loop().call_later(
            self.settings.connect_timeout, self._connect_timed_out)
        return sdp.restore_fmtp(self.pc.localDescription.sdp, original)

    async def trickle(self, frag: sdp.TrickleFragment, mids: Sequence[str]) -> None:
        """Add the client's trickled candidates (RFC 8840); ICE restarts are refused."""
        remote = self.pc.remoteDescription
        if frag.ufrag and remote is not None and f"a=ice-ufrag:{frag.ufrag}" not in remote.sdp:
            raise SessionError(422, "ICE restart is not supported; start a new session")
        loopback = self.settings.loopback_only
        for mid, line in frag.candidates:
            if not sdp.allowed_address(sdp.candidate_address(line), loopback):
                continue
            try:
                cand = candidate_from_sdp(line.split(":", 1)[1])
            except (AssertionError, ValueError, IndexError) as e:
                raise SessionError(400, f"malformed candidate: {e}") from None
            cand.sdpMid = mid or (mids[0] if mids else None)
            await self.pc.addIceCandidate(cand)
        if frag.end_of_candidates:
            await self.pc.addIceCandidate(None)

    # -- lifecycle -----------------------------------------------------------------------

    async def _state_changed(self) -> None:
        state = self.pc.connectionState
        log.debug("%r: connection %s", self, state)
        if state == "connected" and not self.connected_at:
            self.connected_at = time.monotonic()
            if self._timeout is not None:
                self._timeout.cancel()
            self.on_connected()
        elif state in ("failed", "closed"):
            await self.close(f"connection {state}")

    def on_connected(self) -> None:
        """Subclass hook: ICE and DTLS are up."""

    def _connect_timed_out(self) -> None:
        if not self.connected_at and not self.closed:
            asyncio.ensure_future(self.close(
                f"not connected within {self.settings.connect_timeout:.0f}s"))

    async def close(self, reason: str = "closed") -> None:
        """End the session once: subclass cleanup, callbacks, then the peer connection."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        if self._timeout is not None:
            self._timeout.cancel()
        log.info("%r ended: %s", self, reason)
        try:
            self.on_closing(reason)
        except Exception:
            log.exception("%r: cleanup failed", self)
        for cb in self._on_close:
            try:
                cb(self)
            except Exception:
                log.exception("%r: close callback failed", self)
        await self.pc.close()

    def on_closing(self, reason: str) -> None:
        """Subclass hook: release hub resources (runs before the peer connection closes)."""
