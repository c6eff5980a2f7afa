"""aiortc WHIP and WHEP clients, for tests, benchmarks and scripts (a relay to another WHIP
server, a headless viewer). Not used by the gateway itself."""

from __future__ import annotations

import aiohttp
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack

from .protocols.webrtc import SessionError, seam

__all__ = ["WhepClient", "WhipClient"]



class WhipClient:
    """Publishes aiortc tracks to a WHIP endpoint; ``close()`` DELETEs the session."""

    def __init__(self, url: str, tracks: list[MediaStreamTrack], *,
                 video_codec: str | None = "h264", ice_hosts: tuple[str, ...] | None = ("127.0.0.1",)) -> None:
        self.url = url
        self.tracks = tracks
        self.video_codec = video_codec
        self.ice_hosts = ice_hosts
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.location = ""
        self.answer = ""
        self.senders: dict[str, object] = {}

    async def start(self) -> None:
        for track in self.tracks:
            t = self.pc.addTransceiver(track, direction="sendonly")
            self.senders[track.kind] = t.sender
            if track.kind == "video" and self.video_codec:
                video_caps = RTCRtpReceiver.getCapabilities("video")
                caps = [c for c in (video_caps.codecs if video_caps else [])
                        if c.name.lower() == self.video_codec]
                t.setCodecPreferences(caps)
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
            async with aiohttp.ClientSession() as http:
                async with http.delete(self.location) as r:
                    await r.read()
            self.location = ""
        await self.pc.close()



class WhepClient:
    """Plays a WHEP endpoint with aiortc; ``on_track`` sees each receiver before media flows."""

    def __init__(self, url: str, *, video_codecs: tuple[str, ...] = ("h264", "vp8"),
                 audio: bool = True, video: bool = True,
                 ice_hosts: tuple[str, ...] | None = ("127.0.0.1",)) -> None:
        self.url = url
        self.video_codecs = video_codecs
        self.ice_hosts = ice_hosts
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.location = ""
        self.answer = ""
        self.kinds = [k for k, on in (("video", video), ("audio", audio)) if on]

    async def start(self, on_track=None) -> None:
        from aiortc import RTCRtpReceiver

        for kind in self.kinds:
            t = self.pc.addTransceiver(kind, direction="recvonly")
            if kind == "video":
                video_caps = RTCRtpReceiver.getCapabilities("video")
                caps = video_caps.codecs if video_caps else []
                prefs = [c for name in self.video_codecs for c in caps if c.name.lower() == name]
                prefs += [c for c in caps if c.name.lower() == "rtx"]
                t.setCodecPreferences(prefs)
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
        if on_track is not None:
            for t in self.pc.getTransceivers():
                on_track(t.receiver, t.kind)

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
