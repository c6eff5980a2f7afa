"""aiortc WHIP and WHEP clients, for tests, benchmarks and scripts (a relay to another WHIP
server, a headless viewer). Not used by the gateway itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from .protocols.webrtc import SessionError, seam

__all__ = ["WhepClient", "WhipClient"]


class _Client:
    """One WHIP/WHEP resource: POST the offer, keep the ``Location``, DELETE it at the end."""

    def __init__(self, url: str, ice_hosts: tuple[str, ...] | None) -> None:
        self.url = url
        self.ice_hosts = ice_hosts
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.location = ""
        self.answer = ""

    async def _negotiate(self) -> None:
        """Offer what the transceivers say; ``SessionError(status, reason)`` unless 201."""
        with seam.ice_hosts(self.ice_hosts):
            await self.pc.setLocalDescription(await self.pc.createOffer())
        async with aiohttp.ClientSession() as http:
            async with http.post(self.url, data=self.pc.localDescription.sdp,
                                 headers={"Content-Type": "application/sdp"}) as r:
                body = await r.text()
                if r.status != 201:
                    raise SessionError(r.status, body.strip())
                self.location = str(r.url.join(aiohttp.client.URL(r.headers["Location"])))
                self.answer = body
        await self.pc.setRemoteDescription(RTCSessionDescription(self.answer, "answer"))

    async def close(self) -> None:
        if self.location:
            try:
                async with aiohttp.ClientSession() as http:
                    async with http.delete(self.location) as r:
                        await r.read()
            except aiohttp.ClientError:
                pass
            self.location = ""
        await self.pc.close()


def _video_codecs(names: tuple[str, ...], rtx: bool) -> list[Any]:
    caps = RTCRtpReceiver.getCapabilities("video")
    codecs = caps.codecs if caps else []
    prefs = [c for name in names for c in codecs if c.name.lower() == name]
    return prefs + ([c for c in codecs if c.name.lower() == "rtx"] if rtx else [])


class WhipClient(_Client):
    """Publishes aiortc tracks to a WHIP endpoint; ``close()`` DELETEs the session."""

    def __init__(self, url: str, tracks: list[MediaStreamTrack], *,
                 video_codec: str | None = "h264",
                 ice_hosts: tuple[str, ...] | None = ("127.0.0.1",)) -> None:
        super().__init__(url, ice_hosts)
        self.tracks = tracks
        self.video_codec = video_codec
        self.senders: dict[str, object] = {}

    async def start(self) -> None:
        for track in self.tracks:
            t = self.pc.addTransceiver(track, direction="sendonly")
            self.senders[track.kind] = t.sender
            if track.kind == "video" and self.video_codec:
                t.setCodecPreferences(_video_codecs((self.video_codec,), rtx=False))
        await self._negotiate()


class WhepClient(_Client):
    """Plays a WHEP endpoint with aiortc; ``on_track`` sees each receiver before media flows."""

    def __init__(self, url: str, *, video_codecs: tuple[str, ...] = ("h264", "vp8"),
                 audio: bool = True, video: bool = True,
                 ice_hosts: tuple[str, ...] | None = ("127.0.0.1",)) -> None:
        super().__init__(url, ice_hosts)
        self.video_codecs = video_codecs
        self.kinds = [k for k, on in (("video", video), ("audio", audio)) if on]

    async def start(self, on_track: Callable[[Any, str], object] | None = None) -> None:
        for kind in self.kinds:
            t = self.pc.addTransceiver(kind, direction="recvonly")
            if kind == "video":
                t.setCodecPreferences(_video_codecs(self.video_codecs, rtx=True))
        await self._negotiate()
        if on_track is not None:
            for t in self.pc.getTransceivers():
                on_track(t.receiver, t.kind)
