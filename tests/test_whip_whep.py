"""WHIP ingest and WHEP egress against the real gateway, with aiortc peers on 127.0.0.1.

Publishers send pre-encoded H.264/VP8/Opus (``LoopTrack``) so the tests spend no CPU on encoding
and know every byte sent; viewers are plain aiortc clients that decode what they get (as a
browser would), or tap encoded frames through ``gateway.protocols.webrtc.seam``.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamTrack

from gateway.codecs import h264
from gateway.config import Config
from gateway.media import Frame, Track
from gateway.protocols.webrtc import SessionError, Settings, seam
from gateway.protocols.webrtc import whip as whip_mod
from gateway.protocols.webrtc.routes import SESSIONS
from gateway.protocols.webrtc.whep import PacketTrack, WhepSession
from gateway.testing import WhepClient, WhipClient
from gateway.wire import sdp
from gateway.wire.rtp import clock as clock_mod
from gateway.wire.rtp.clock import RtpClock

import flvcheck
from conftest import FFMPEG, RunningGateway, _start_gateway, kill_while_coding

VIDEO_TB = fractions.Fraction(1, 90000)
AUDIO_TB = fractions.Fraction(1, 48000)
FPS = 30


# --------------------------------------------------------------------------------------------
# pre-encoded clips and a publisher track that loops them in real time
# --------------------------------------------------------------------------------------------


@dataclass
class Clip:
    video: list[bytes]  # one access unit per frame, 30 fps
    audio: list[bytes]  # 20 ms Opus packets
    video_codec: str = "h264"


def _flash(i: int) -> bool:
    return i % FPS == 0  # a white frame once a second; a beep starts at the same instant


def encode_video(codec: str, frames: int = 2 * FPS, size: tuple[int, int] = (320, 240)) -> list[bytes]:
    enc = av.CodecContext.create("libx264" if codec == "h264" else "libvpx", "w")
    enc.width, enc.height = size
    enc.pix_fmt = "yuv420p"
    enc.time_base = fractions.Fraction(1, FPS)
    enc.framerate = fractions.Fraction(FPS, 1)
    enc.gop_size = FPS
    if codec == "h264":
        enc.options = {"profile": "baseline", "tune": "zerolatency", "preset": "ultrafast",
                       "bf": "0", "keyint_min": str(FPS)}
    else:
        enc.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        enc.bit_rate = 500_000
    out: list[bytes] = []
    w, h = size
    for i in range(frames):
        y = np.full((h, w), 235 if _flash(i) else 16 + (i * 3) % 64, np.uint8)
        y[(i * 4) % h: (i * 4) % h + 8, :] = 128  # motion, so P-frames carry data
        yuv = np.concatenate([y.reshape(-1), np.full(w * h // 2, 128, np.uint8)]).reshape(h * 3 // 2, w)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = i
        frame.time_base = enc.time_base
        out += [bytes(p) for p in enc.encode(frame)]
    out += [bytes(p) for p in enc.encode(None)]
    assert len(out) == frames, (codec, len(out))
    return out


def encode_opus(packets: int = 100) -> list[bytes]:
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate = 48000
    enc.layout = "stereo"
    enc.format = "s16"
    enc.time_base = AUDIO_TB
    enc.bit_rate = 64000
    t = np.arange(packets * 960) / 48000
    beep = (np.floor(t * FPS) % FPS == 0) & ((t * FPS) % 1 < 3)  # 100 ms from each flash
    pcm = (np.where(beep, 12000, 0) * np.sin(2 * math.pi * 1000 * t)).astype(np.int16)
    out: list[bytes] = []
    for i in range(packets):
        chunk = np.repeat(pcm[i * 960:(i + 1) * 960], 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
        frame.sample_rate = 48000
        frame.pts = i * 960
        out += [bytes(p) for p in enc.encode(frame)]
    out += [bytes(p) for p in enc.encode(None)]
    return out[:packets]


class LoopTrack(MediaStreamTrack):
    """Sends pre-encoded packets in real time from a start time shared by audio and video."""

    def __init__(self, kind: str, packets: list[bytes], start: list[float], first: int = 0) -> None:
        super().__init__()
        self.kind = kind
        self.packets = packets
        self.start = start
        self.interval = 1 / FPS if kind == "video" else 0.02
        self.step, self.tb = (3000, VIDEO_TB) if kind == "video" else (960, AUDIO_TB)
        self.i = first
        self.sent_at: list[float] = []

    async def recv(self) -> av.Packet:
        if not self.start:
            self.start.append(time.monotonic() + 0.05)
        delay = self.start[0] + self.i * self.interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        packet = av.Packet(self.packets[self.i % len(self.packets)])
        packet.pts = self.i * self.step
        packet.time_base = self.tb
        self.i += 1
        self.sent_at.append(time.monotonic())
        return packet


@pytest.fixture(scope="module")
def h264_clip() -> Clip:
    return Clip(encode_video("h264"), encode_opus())


@pytest.fixture(scope="module")
def vp8_clip() -> Clip:
    return Clip(encode_video("vp8"), encode_opus(), "vp8")


def whip_client(gateway: RunningGateway, clip: Clip, key: str = "live/cam",
                audio: bool = True) -> WhipClient:
    start: list[float] = []
    tracks: list[MediaStreamTrack] = [LoopTrack("video", clip.video, start)]
    if audio:
        tracks.append(LoopTrack("audio", clip.audio, start))
    return WhipClient(gateway.http_url(f"{key}/whip"), tracks, video_codec=clip.video_codec)


def sessions(gateway: RunningGateway) -> dict:
    return gateway.gw.http_runner.app[SESSIONS]


async def wait_until(cond: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.02)


async def first_frames(client: WhepClient, kinds: tuple[str, ...] = ("video", "audio"),
                       n: int = 5, timeout: float = 10.0) -> dict[str, list]:
    """Decoded frames per kind (aiortc decodes: this is the viewer's own decoder)."""
    out: dict[str, list] = {}

    async def pull(kind: str) -> None:
        track = next(t.receiver.track for t in client.pc.getTransceivers() if t.kind == kind)
        frames = out.setdefault(kind, [])
        while len(frames) < n:
            frames.append((time.monotonic(), await track.recv()))

    await asyncio.wait_for(asyncio.gather(*(pull(k) for k in kinds)), timeout)
    return out


def negotiated(answer: str) -> dict[str, list[str]]:
    return {k: sorted(set(v.values())) for k, v in sdp.payload_types(answer).items()}


def run(coro, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, timeout))


# --------------------------------------------------------------------------------------------
# sans-I/O: SDP, timeline, bounded viewer queue
# --------------------------------------------------------------------------------------------

CHROME_OFFER = """v=0
o=- 1 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0
c=IN IP4 0.0.0.0
a=ice-ufrag:abcd
a=ice-pwd:aaaaaaaaaaaaaaaaaaaaaaaa
a=fingerprint:sha-256 00:11
a=setup:actpass
a=mid:0
a=sendonly
a=rtpmap:111 opus/48000/2
a=rtcp-fb:111 transport-cc
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:63 red/48000/2
a=fmtp:63 111/111
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=candidate:1 1 udp 2122260223 192.0.2.9 50000 typ host
a=candidate:2 1 udp 2122260223 5f3c.local 50001 typ host
a=candidate:3 1 udp 2122260223 127.0.0.1 50002 typ host
m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 106 107 112 113
c=IN IP4 0.0.0.0
a=ice-ufrag:abcd
a=ice-pwd:aaaaaaaaaaaaaaaaaaaaaaaa
a=fingerprint:sha-256 00:11
a=setup:actpass
a=mid:1
a=sendonly
a=rtpmap:96 VP8/90000
a=rtcp-fb:96 nack pli
a=rtpmap:97 rtx/90000
a=fmtp:97 apt=96
a=rtpmap:102 H264/90000
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f
a=rtpmap:103 rtx/90000
a=fmtp:103 apt=102
a=rtpmap:106 H264/90000
a=rtcp-fb:106 nack pli
a=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640c1f
a=rtpmap:107 rtx/90000
a=fmtp:107 apt=106
a=rtpmap:112 H264/90000
a=fmtp:112 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f
a=rtpmap:113 rtx/90000
a=fmtp:113 apt=112
"""


def test_sdp_offer_inspection() -> None:
    offer = sdp.parse(CHROME_OFFER)
    assert offer.offers() == {"audio": ["opus"], "video": ["vp8", "h264"]}
    video = offer.kinds()["video"]
    usable = [(c.pt, c.profile) for c in video.usable() if c.name == "h264"]
    assert usable == [(106, "constrained-high"), (112, "main")]  # packetization-mode 0 refused
    assert sdp.choose_h264(video.codecs).pt == 106
    assert sdp.choose_h264(video.codecs, "main").pt == 112
    assert sdp.choose_h264(video.codecs, "constrained-baseline").pt == 106  # any can decode it
    assert sdp.h264_profile("42e01f") == "constrained-baseline"
    assert sdp.h264_profile("64001f") == "high"


def test_sdp_restrict_and_restore_fmtp() -> None:
    offer = sdp.parse(CHROME_OFFER)
    text, original = sdp.restrict(offer, {"0": 111, "1": 112})
    trimmed = sdp.parse(text)
    assert [c.pt for c in trimmed.kinds()["audio"].codecs] == [111]
    assert [c.pt for c in trimmed.kinds()["video"].codecs] == [112, 113]
    assert "profile-level-id=42e01f" in text and "a=rtcp-fb:106" not in text
    assert original == {112: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f"}
    answer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 112\r\na=fmtp:112 profile-level-id=42e01f\r\n"
    assert "a=fmtp:112 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f" in \
        sdp.restore_fmtp(answer, original)
    kept = sdp.filter_candidates(text, lambda a: sdp.allowed_address(a, loopback_only=True))
    assert "127.0.0.1 50002" in kept and ".local" not in kept and "192.0.2.9" not in kept
    assert "192.0.2.9" in sdp.filter_candidates(text, lambda a: sdp.allowed_address(a, False))


@pytest.mark.parametrize("text, reason", [
    ("", "v=0"),
    ("hello", "v=0"),
    ("v=0\r\ns=-\r\n", "no m= section"),
    ("v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n", "neither"),
    ("v=0\r\nm=video 9 RTP/SAVPF 96\r\na=mid:0\r\na=ice-ufrag:x\r\n", "fingerprint"),
    ("v=0\r\nm=video 9 RTP/SAVPF 96\r\na=fingerprint:sha-256 00\r\na=mid:0\r\n", "ICE"),
    ("v=0\r\nm=video 9 RTP/SAVPF x\r\na=fingerprint:sha-256 0\r\na=ice-ufrag:x\r\na=mid:0\r\n", "number"),
    ("v=0\r\nbad line\r\n", "malformed"),
])
def test_sdp_rejects_with_reason(text: str, reason: str) -> None:
    with pytest.raises(sdp.SdpError, match=reason):
        sdp.parse(text)


def test_sdpfrag() -> None:
    frag = sdp.parse_sdpfrag("a=ice-ufrag:abcd\r\na=ice-pwd:x\r\na=mid:0\r\n"
                             "a=candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\n")
    assert frag.ufrag == "abcd" and frag.end_of_candidates
    assert frag.candidates == [("0", "candidate:1 1 udp 1 127.0.0.1 5000 typ host")]
    with pytest.raises(sdp.SdpError):
        sdp.parse_sdpfrag("a=candidate:broken\r\n")


def test_timeline_aligns_tracks_on_sender_reports() -> None:
    """Video arrives 40 ms later than audio captured at the same instant; before any report
    arrival time rules, after both reports the publisher's NTP clock does."""
    tl = RtpClock()
    tl.add("video", 90000)
    tl.add("audio", 48000)
    v0, a0 = 1_000_000, 4_000_000_000  # random RTP origins (audio about to wrap)
    ntp0 = 3_900_000_000.0  # publisher NTP seconds at capture time 0
    assert tl.seconds("audio", a0, arrival=100.000) == 0.0
    assert tl.seconds("video", v0, arrival=100.040) == pytest.approx(0.040)
    tl.sender_report("audio", int((ntp0 + 1.0) * (1 << 32)), (a0 + 48000) & 0xFFFFFFFF)
    tl.sender_report("video", int((ntp0 + 1.0) * (1 << 32)), v0 + 90000)
    # capture instant 2 s for both (audio timestamp has wrapped past 2**32)
    a = tl.seconds("audio", (a0 + 96000) & 0xFFFFFFFF, arrival=102.0)
    v = tl.seconds("video", v0 + 180000, arrival=102.04)
    assert a == pytest.approx(2.0, abs=1e-6)
    assert v == pytest.approx(a, abs=1e-6)


def test_timeline_ignores_report_jitter_and_follows_real_drift() -> None:
    """A report pairs a packet's RTP time with when it was sent: packets sent late (here up
    to 40 ms, a loaded sender) must not move the clock; a real move of the sender's clock
    relation (here 50 ms) does, once it shows in every report of the window."""
    tl = RtpClock()
    tl.add("video", 90000)
    v0, ntp0 = 1_000_000, 3_900_000_000.0
    tl.seconds("video", v0, arrival=100.0)

    def report(at: float, late: float, shift: float = 0.0) -> None:
        tl.sender_report("video", int((ntp0 + at + late + shift) * (1 << 32)),
                         v0 + round(at * 90000))

    report(1.0, 0.0)
    anchored = tl.seconds("video", v0 + 3 * 90000, arrival=103.0)
    for i, late in enumerate([0.033, 0.005, 0.040, 0.012, 0.027, 0.001, 0.038]):
        report(2.0 + i, late)
        assert tl.seconds("video", v0 + 3 * 90000, arrival=103.0) == anchored
    for i in range(clock_mod.SR_WINDOW):  # the sender's clock relation really moved by 50 ms
        report(10.0 + i, 0.0, shift=0.050)
    assert tl.seconds("video", v0 + 3 * 90000, arrival=103.0) == pytest.approx(anchored + 0.050)
    report(20.0, 0.0, shift=2.050)  # a step of the sender's clocks counts at once
    assert tl.seconds("video", v0 + 3 * 90000, arrival=103.0) == pytest.approx(anchored + 2.050)


def test_video_pts_never_share_a_millisecond() -> None:
    """After the clock steps back (re-anchoring), frames are still >= 1 ms apart, so outputs
    in milliseconds (FLV, RTMP) keep strictly increasing timestamps."""
    holder = SimpleNamespace(_last_pts={})
    pts = [whip_mod.WhipSession._pts(holder, "video", t, whip_mod.VIDEO_TB)  # type: ignore[arg-type]
           for t in (1.000, 1.033, 0.990, 0.995, 1.066, 1.100)]
    ms = [round(p / 90) for p in pts]
    assert all(b > a for a, b in zip(ms, ms[1:], strict=False)), ms
    assert pts[-2:] == [round(1.066 * 90000), round(1.100 * 90000)]  # back on the clock


def test_slow_viewer_queue_is_bounded_and_drops_to_keyframe() -> None:
    async def main() -> PacketTrack:
        track = PacketTrack("video", Settings(video_queue_frames=30))
        track.active = True
        for i in range(1000):
            p = av.Packet(b"\x00\x00\x00\x01\x65" + bytes(1000))
            p.pts = i
            track.put(p, keyframe=i % 60 == 0)
            assert len(track._q) <= 30
        return track

    track = asyncio.run(main())
    assert track.drops > 10
    assert track._bytes <= 31 * 1005


# --------------------------------------------------------------------------------------------
# HTTP contract
# --------------------------------------------------------------------------------------------


async def _request(method: str, url: str, **kw) -> tuple[int, str, dict[str, str]]:  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url, **kw) as r:
            return r.status, await r.text(), dict(r.headers)


def test_whip_http_errors_are_4xx_with_reasons(gateway: RunningGateway) -> None:
    url = gateway.http_url("live/err/whip")
    sdp_hdr = {"Content-Type": "application/sdp"}
    no_codec = CHROME_OFFER.replace("111 63 9 0", "9 0").replace(
        "96 97 102 103 106 107 112 113", "102 103")

    async def main() -> None:
        st, body, _ = await _request("POST", url, data="v=0", headers={"Content-Type": "text/plain"})
        assert st == 415 and "application/sdp" in body
        st, body, _ = await _request("POST", url, data="garbage", headers=sdp_hdr)
        assert st == 400 and "v=0" in body
        st, body, _ = await _request("POST", url, data=no_codec, headers=sdp_hdr)
        assert st == 422 and "codec" in body
        recvonly = CHROME_OFFER.replace("a=sendonly", "a=recvonly")
        st, body, _ = await _request("POST", url, data=recvonly, headers=sdp_hdr)
        assert st == 400 and "recvonly" in body
        st, _, h = await _request("OPTIONS", url)
        assert st == 204 and h["Accept-Post"] == "application/sdp"
        assert h["Access-Control-Allow-Origin"] == "*" and "Location" in h["Access-Control-Expose-Headers"]
        st, _, _ = await _request("DELETE", url + "/nosuchsession")
        assert st == 404
        st, body, _ = await _request("POST", gateway.http_url("live/none/whep"), data=CHROME_OFFER,
                                     headers=sdp_hdr)
        assert st == 404 and "not found" in body
        st, _, _ = await _request("POST", gateway.http_url("live/bad name/whip"), data=CHROME_OFFER,
                                  headers=sdp_hdr)
        assert st == 400

    run(main())
    assert not gateway.gw.hub.streams, "a refused offer left a stream behind"


def test_whip_session_lifecycle_trickle_busy_delete(gateway: RunningGateway, h264_clip: Clip) -> None:
    async def main() -> None:
        pub = whip_client(gateway, h264_clip, "live/life")
        await pub.start()
        assert pub.location.startswith(gateway.http_url("live/life/whip/"))
        await wait_until(lambda: "live/life" in gateway.gw.hub.streams, what="stream published")
        session = next(iter(sessions(gateway).values()))
        # a second publisher on the same key is refused
        other = whip_client(gateway, h264_clip, "live/life")
        with pytest.raises(SessionError) as busy:
            await other.start()
        assert busy.value.status == 409
        await other.pc.close()
        frag = "a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
        hdr = {"Content-Type": "application/trickle-ice-sdpfrag"}
        st, _, _ = await _request("PATCH", pub.location, data=frag, headers=hdr)
        assert st == 204
        st, _, _ = await _request("PATCH", pub.location, data=frag, headers={**hdr, "If-Match": '"x"'})
        assert st == 412
        st, _, _ = await _request("PATCH", pub.location, data="a=ice-ufrag:new\r\na=ice-pwd:p\r\n",
                                  headers={**hdr, "If-Match": "*"})
        assert st == 422
        st, _, _ = await _request("PATCH", pub.location, data=frag, headers={"Content-Type": "text/plain"})
        assert st == 415
        await pub.close()
        await wait_until(lambda: "live/life" not in gateway.gw.hub.streams, what="unpublished")
        assert session.closed and not sessions(gateway)

    run(main())


# --------------------------------------------------------------------------------------------
# bridges
# --------------------------------------------------------------------------------------------


def test_whip_to_whep_is_pure_pass_through(gateway: RunningGateway, h264_clip: Clip) -> None:
    """H264+Opus in, the same H264+Opus out: nothing decoded or encoded in the gateway, and the
    viewer's own decoder shows a picture at once."""
    before = gateway.gw.ctx.transcoder.counters.snapshot()

    async def main() -> None:
        pub = whip_client(gateway, h264_clip, "live/pt")
        await pub.start()
        assert negotiated(pub.answer) == {"audio": ["opus"], "video": ["h264"]}
        await asyncio.to_thread(gateway.wait_stream, "live/pt")
        stream = gateway.gw.hub.streams["live/pt"]
        assert stream.tracks["video"].codec == "h264" and stream.tracks["audio"].codec == "opus"
        assert (stream.tracks["video"].width, stream.tracks["video"].height) == (320, 240)
        viewer = WhepClient(gateway.http_url("live/pt/whep"))
        t0 = time.monotonic()
        await viewer.start()
        assert negotiated(viewer.answer) == {"audio": ["opus"], "video": ["h264"]}
        second = WhepClient(gateway.http_url("live/pt/whep"), video_codecs=("h264",))
        await second.start()
        got = await first_frames(viewer)
        await first_frames(second, n=10)
        first_video = got["video"][0][0] - t0
        frame = got["video"][0][1]
        assert (frame.width, frame.height) == (320, 240)
        assert got["audio"][0][1].sample_rate == 48000
        assert first_video < 1.0, f"first picture {first_video:.3f}s after POST"
        whep = next(s for s in sessions(gateway).values() if isinstance(s, WhepSession))
        assert whep.plan is not None and whep.plan.passthrough_all
        assert whep.output is not None and len(whep.output.viewers) == 2
        assert whep.media is stream  # attached to the source itself, no variant
        assert whep.output is not None and list(stream.sinks).count("webrtc") == 1
        assert whep.output.packetizers["h264"].hits > 0  # packetized once for both viewers
        await second.close()
        await viewer.close()
        await pub.close()

    run(main())
    assert (gateway.gw.ctx.transcoder.counters.snapshot()["decoders_opened"]
            == before["decoders_opened"])
    assert (gateway.gw.ctx.transcoder.counters.snapshot()["encoders_opened"]
            == before["encoders_opened"])


class ClientLoop:
    """aiortc clients on their own loop thread, so the test can block (FFmpeg) meanwhile."""

    def __enter__(self) -> ClientLoop:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="clients", daemon=True)
        self.thread.start()
        return self

    def run(self, coro, timeout: float = 30.0):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class _Collect:
    """A hub sink recording (kind, session seconds, data, arrival) of every frame."""

    def __init__(self, stream) -> None:  # type: ignore[no-untyped-def]
        self.frames: list[tuple[str, float, bytes, float]] = []

    def on_track(self, track: Track) -> None: ...
    def on_metadata(self, metadata: dict[str, object]) -> None: ...
    def on_end(self, reason: str) -> None: ...

    def on_frame(self, frame: Frame) -> None:
        self.frames.append((frame.kind, float(frame.pts * frame.time_base), frame.data,
                            time.monotonic()))


def _loop_index(track: LoopTrack, content_index: int, arrival: float) -> int:
    """The send index of a received frame: same content, latest sent before it arrived."""
    n = len(track.packets)
    return max(i for i, t in enumerate(track.sent_at) if t <= arrival and i % n == content_index)


def test_whip_timeline_keeps_audio_and_video_in_sync(gateway: RunningGateway, h264_clip: Clip) -> None:
    """Frames captured at the same instant get the same session time once RTCP sender reports
    arrived, whatever their arrival order."""
    def unique(items: list[bytes]) -> dict[bytes, int]:
        """Content -> loop index, for content that occurs once (silence packets repeat)."""
        counts: dict[bytes, int] = {}
        for x in items:
            counts[x] = counts.get(x, 0) + 1
        return {x: i for i, x in enumerate(items) if counts[x] == 1}

    video_index = unique([h264.join_avcc(n for n in h264.split_annexb(au)
                                         if h264.nal_type(n) not in (7, 8, 9))
                          for au in h264_clip.video])
    audio_index = unique(h264_clip.audio)

    async def main() -> tuple[WhipClient, list[tuple[str, float, bytes, float]]]:
        pub = whip_client(gateway, h264_clip, "live/sync")
        await pub.start()
        await asyncio.to_thread(gateway.wait_stream, "live/sync")
        collect = gateway.call(lambda: gateway.gw.hub.streams["live/sync"].sink("t", _Collect))
        whip = next(iter(sessions(gateway).values()))
        await wait_until(lambda: len(whip.clock.synced) == 2, 8, "sender reports of both tracks")
        n = len(collect.frames)
        await asyncio.sleep(2.0)
        await pub.close()
        return pub, collect.frames[n:]

    pub, frames = run(main())
    tracks = {t.kind: t for t in pub.tracks}
    offsets: dict[str, list[float]] = {"video": [], "audio": []}
    for kind, seconds, data, arrival in frames:
        idx = (video_index if kind == "video" else audio_index).get(data)
        if idx is None:
            continue
        track = tracks[kind]
        i = _loop_index(track, idx, arrival)  # type: ignore[arg-type]
        captured = track.start[0] + i * track.interval  # type: ignore[attr-defined]
        offsets[kind].append(seconds - captured)
    assert len(offsets["video"]) > 30 and len(offsets["audio"]) >= 5, {k: len(v) for k, v in offsets.items()}
    skew = float(np.median(offsets["video"]) - np.median(offsets["audio"]))
    assert abs(skew) < 0.025, f"audio/video skew {skew * 1000:.1f} ms"


def _onsets(times: list[float], level: list[float], threshold: float) -> list[float]:
    return [times[i] for i in range(1, len(level)) if level[i] > threshold >= level[i - 1]]


def _flash_and_beep_times(path: Path) -> tuple[list[float], list[float]]:
    """Flash times (video) and beep onsets (audio) of a capture, decoded with PyAV."""
    with av.open(str(path)) as c:
        vt, vl = [], []
        for f in c.decode(video=0):
            vt.append(float(f.time))
            vl.append(float(f.to_ndarray(format="gray").mean()))
    bt: list[float] = []
    bl: list[float] = []
    with av.open(str(path)) as c:
        for f in c.decode(audio=0):
            arr = f.to_ndarray()
            mono = arr[0] if f.format.is_planar else arr.reshape(-1)[:: len(f.layout.channels)]
            mono = np.abs(mono.astype(np.float32))
            win = max(1, f.sample_rate // 400)  # 2.5 ms windows
            for k in range(0, len(mono) - win + 1, win):
                bt.append(float(f.time) + k / f.sample_rate)
                bl.append(float(mono[k:k + win].max()))
    loud = max(bl) if bl else 1.0
    return _onsets(vt, vl, 150), _onsets(bt, bl, 0.2 * loud)


def _capture_while_publishing(gateway: RunningGateway, clip: Clip, key: str, out: Path,
                              seconds: float) -> None:
    with ClientLoop() as clients:
        async def start() -> WhipClient:
            pub = whip_client(gateway, clip, key)
            await pub.start()
            await asyncio.to_thread(gateway.wait_stream, key)
            whip = next(iter(sessions(gateway).values()))
            await wait_until(lambda: len(whip.clock.synced) == len(whip.codecs), 8,
                             "sender reports")
            return pub

        pub = clients.run(start())
        try:
            res = flvcheck.capture(gateway.http_url(f"{key}.flv"), out, seconds=seconds)
            assert res.returncode == 0, res.stderr
        finally:
            clients.run(pub.close())


def test_whip_to_http_flv_video_passed_through_opus_to_aac_in_sync(
        gateway: RunningGateway, h264_clip: Clip, tmp_path: Path) -> None:
    out = tmp_path / "whip.flv"
    before = gateway.gw.ctx.transcoder.counters.snapshot()
    _capture_while_publishing(gateway, h264_clip, "live/flv", out, 4.5)
    delta = {k: gateway.gw.ctx.transcoder.counters.snapshot()[k] - before[k] for k in before}
    assert delta["decoders_opened"] == 1 and delta["encoders_opened"] == 1, delta  # audio only
    p = flvcheck.probe(out)
    assert p.codecs == {"video": "h264", "audio": "aac"}, p.codecs
    assert not p.decode_errors, p.decode_errors
    assert len(p.video_dts) >= 100 and len(p.audio_dts) >= 150, (len(p.video_dts), len(p.audio_dts))
    assert all(b > a for a, b in zip(p.video_dts, p.video_dts[1:], strict=False))
    flashes, beeps = _flash_and_beep_times(out)
    assert len(flashes) >= 3 and len(beeps) >= 3, (flashes, beeps)
    skews = [min((b - f for b in beeps), key=abs) for f in flashes]
    assert all(abs(s) < 0.06 for s in skews), f"beep minus flash (s): {skews}"


def test_whip_vp8_to_whep_vp8_passes_through(gateway: RunningGateway, vp8_clip: Clip) -> None:
    before = gateway.gw.ctx.transcoder.counters.snapshot()

    async def main() -> None:
        pub = whip_client(gateway, vp8_clip, "live/vp8pt")
        await pub.start()
        await asyncio.to_thread(gateway.wait_stream, "live/vp8pt")
        viewer = WhepClient(gateway.http_url("live/vp8pt/whep"), video_codecs=("vp8",))
        await viewer.start()
        assert negotiated(viewer.answer) == {"audio": ["opus"], "video": ["vp8"]}
        got = await first_frames(viewer, n=3)
        assert (got["video"][0][1].width, got["video"][0][1].height) == (320, 240)
        await viewer.close()
        await pub.close()

    run(main())
    assert (gateway.gw.ctx.transcoder.counters.snapshot()["decoders_opened"]
            == before["decoders_opened"])


def test_whip_vp8_publisher_reaches_flv_as_h264(gateway: RunningGateway, vp8_clip: Clip,
                                                tmp_path: Path) -> None:
    out = tmp_path / "vp8.flv"
    _capture_while_publishing(gateway, vp8_clip, "live/vp8", out, 2.5)
    p = flvcheck.probe(out)
    assert p.codecs == {"video": "h264", "audio": "aac"}, p.codecs
    assert not p.decode_errors, p.decode_errors
    assert len(p.video_dts) >= 30


@pytest.mark.parametrize("clip, video_plan", [("plain", "h264 pass-through"), ("bframes", "h264 -> h264")])
def test_rtmp_to_whep(gateway: RunningGateway, publish, clips, clip: str, video_plan: str) -> None:  # type: ignore[no-untyped-def]
    """AAC always becomes Opus; H264 passes through unless it has B-frames (then re-encoded)."""
    publish(clips[clip], "live/rtmp")
    before = gateway.gw.ctx.transcoder.counters.snapshot()

    async def main() -> WhepSession:
        viewer = WhepClient(gateway.http_url("live/rtmp/whep"))
        t0 = time.monotonic()
        await viewer.start()
        assert negotiated(viewer.answer) == {"audio": ["opus"], "video": ["h264"]}
        got = await first_frames(viewer, n=3, timeout=15)
        frame = got["video"][0][1]
        assert (frame.width, frame.height) == (640, 360)
        assert got["video"][0][0] - t0 < 3.0
        session = next(s for s in sessions(gateway).values() if isinstance(s, WhepSession))
        await viewer.close()
        return session

    session = run(main())
    assert video_plan in str(session.plan) and "aac -> opus" in str(session.plan), session.plan
    delta = {k: gateway.gw.ctx.transcoder.counters.snapshot()[k] - before[k] for k in before}
    assert delta["encoders_opened"] == (1 if clip == "plain" else 2), delta  # Opus (+ H264)


def test_rtmp_high10_source_is_re_encoded_for_whep(gateway: RunningGateway, publish,  # type: ignore[no-untyped-def]
                                                   high10_clip: Path) -> None:
    """Browsers decode 8-bit 4:2:0 H.264 only, and no offer names High 10: re-encode, never
    pass it on under the offer's High (the aiortc viewer would decode either, so the test looks
    at the bits it gets)."""
    publish(high10_clip, "live/ten")
    assert gateway.gw.hub.streams["live/ten"].tracks["video"].profile == "high10"

    async def main() -> WhepSession:
        viewer = WhepClient(gateway.http_url("live/ten/whep"))
        await viewer.start()
        got = await first_frames(viewer, kinds=("video",), n=3, timeout=15)
        assert got["video"][0][1].format.name == "yuv420p"  # 8 bits: what the encoder made
        session = next(s for s in sessions(gateway).values() if isinstance(s, WhepSession))
        await viewer.close()
        return session

    session = run(main())
    assert "h264 -> h264" in str(session.plan), session.plan


def test_video_only_whep_viewer_costs_no_audio_transcode(gateway: RunningGateway, publish, clips) -> None:  # type: ignore[no-untyped-def]
    """A kind the viewer did not offer is dropped, not transcoded for nobody."""
    publish(clips["plain"], "live/vo")
    before = gateway.gw.ctx.transcoder.counters.snapshot()

    async def main() -> WhepSession:
        viewer = WhepClient(gateway.http_url("live/vo/whep"), audio=False)
        await viewer.start()
        got = await first_frames(viewer, ("video",), n=3, timeout=15)
        assert got["video"]
        session = next(s for s in sessions(gateway).values() if isinstance(s, WhepSession))
        await viewer.close()
        return session

    session = run(main())
    assert "h264 pass-through" in str(session.plan) and "aac -> opus" not in str(session.plan)
    assert (gateway.gw.ctx.transcoder.counters.snapshot()["encoders_opened"]
            == before["encoders_opened"])


def test_whip_asks_a_publisher_that_starts_mid_gop_for_a_keyframe(
        gateway: RunningGateway, h264_clip: Clip) -> None:
    async def main() -> None:
        plis: list[float] = []
        track = LoopTrack("video", h264_clip.video, [], first=5)  # P-frames first
        pub = WhipClient(gateway.http_url("live/midgop/whip"), [track])
        await pub.start()
        seam.watch_sender(pub.senders["video"], lambda: plis.append(time.monotonic()))  # type: ignore[arg-type]
        t0 = time.monotonic()
        await wait_until(lambda: plis, 3, "a PLI at start")
        assert plis[0] - t0 < 1.0
        await asyncio.to_thread(gateway.wait_stream, "live/midgop", 5.0, True, 1)
        stream = gateway.gw.hub.streams["live/midgop"]
        assert stream.gop[0].keyframe  # nothing before the first keyframe reached the hub
        await pub.close()

    run(main())


def test_viewer_pli_reaches_the_whip_publisher(gateway: RunningGateway, h264_clip: Clip) -> None:
    async def main() -> None:
        pub = whip_client(gateway, h264_clip, "live/pli", audio=False)
        plis: list[float] = []
        await pub.start()
        seam.watch_sender(pub.senders["video"], lambda: plis.append(time.monotonic()))  # type: ignore[arg-type]
        await asyncio.to_thread(gateway.wait_stream, "live/pli", 15.0, True, 1)
        taps: dict[str, seam.ReceiverTap] = {}
        frames: list[seam.EncodedFrame] = []
        viewer = WhepClient(gateway.http_url("live/pli/whep"), audio=False)
        await viewer.start(lambda r, k: taps.setdefault(k, seam.tap_receiver(r, k, frames.append)))
        await wait_until(lambda: len(frames) > 3, what="frames at the viewer")
        n = len(plis)
        await asyncio.sleep(0.6)  # past the publisher's PLI rate limit
        assert taps["video"].request_keyframe()
        await wait_until(lambda: len(plis) > n, 3, "PLI forwarded to the publisher")
        await viewer.close()
        await pub.close()

    run(main())


def test_viewer_pli_from_rtmp_source_is_answered_from_gop_cache(gateway: RunningGateway, publish, clips) -> None:  # type: ignore[no-untyped-def]
    publish(clips["plain"], "live/gop")

    async def main() -> None:
        taps: dict[str, seam.ReceiverTap] = {}
        frames: list[tuple[float, bool]] = []

        def on_frame(f: seam.EncodedFrame) -> None:
            frames.append((time.monotonic(), h264.NAL_IDR in [h264.nal_type(n) for n in h264.split_annexb(f.data)]))

        viewer = WhepClient(gateway.http_url("live/gop/whep"), audio=False)
        await viewer.start(lambda r, k: taps.setdefault(k, seam.tap_receiver(r, k, on_frame)))
        await wait_until(lambda: len(frames) > 3, what="frames at the viewer")
        stream = gateway.gw.hub.streams["live/gop"]
        await wait_until(lambda: sum(f.kind == "video" for f in stream.gop) >= 12, what="a GOP cache")
        await asyncio.sleep(0.6)
        t = time.monotonic()
        assert taps["video"].request_keyframe()
        await wait_until(lambda: any(k and ts > t for ts, k in frames), 2, "a keyframe")
        burst = [ts for ts, _ in frames if t < ts < t + 0.5]
        assert len(burst) >= 8, f"GOP not re-sent at once ({len(burst)} frames in 500 ms)"
        await viewer.close()

    run(main())


def test_whep_viewer_ends_with_the_stream(gateway: RunningGateway, h264_clip: Clip) -> None:
    async def main() -> None:
        pub = whip_client(gateway, h264_clip, "live/end")
        await pub.start()
        await asyncio.to_thread(gateway.wait_stream, "live/end")
        viewer = WhepClient(gateway.http_url("live/end/whep"))
        await viewer.start()
        await first_frames(viewer, n=2)
        whep = next(s for s in sessions(gateway).values() if isinstance(s, WhepSession))
        await pub.close()
        await wait_until(lambda: whep.closed, 5, "viewer session closed")
        assert "stream ended" in whep.close_reason
        stream_sinks = whep.source.sinks
        assert "webrtc" not in stream_sinks
        await viewer.pc.close()

    run(main())


@pytest.mark.parametrize("codec", ["h264", "vp8"])
def test_whip_to_jsmpeg(gateway: RunningGateway, h264_clip: Clip, vp8_clip: Clip, tmp_path: Path,
                        codec: str) -> None:
    async def main() -> None:
        pub = whip_client(gateway, h264_clip if codec == "h264" else vp8_clip, "live/js")
        await pub.start()
        await asyncio.to_thread(gateway.wait_stream, "live/js")
        got = b""
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(gateway.ws_url("live/js.jsmpeg")) as ws:
                async def read() -> None:
                    nonlocal got
                    async for msg in ws:
                        got += msg.data
                        if len(got) > 188 * 2000:
                            return
                await asyncio.wait_for(read(), 20)
        assert got[0] == 0x47  # MPEG-TS
        await pub.close()
        (tmp_path / "js.ts").write_bytes(got)

    run(main())
    p = flvcheck.probe(tmp_path / "js.ts")
    assert p.codecs == {"video": "mpeg1video", "audio": "mp2"}, p.codecs  # H.264/VP8 + Opus in
    assert not p.decode_errors, p.decode_errors
    assert len(p.video_dts) >= 10


class _StallingTrack(LoopTrack):
    """Sends ``limit`` packets, then none, while the peer connection stays up (a frozen tab)."""

    def __init__(self, *args, limit: int, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.limit = limit

    async def recv(self) -> av.Packet:
        if self.i >= self.limit:
            await asyncio.Event().wait()  # for ever: the sender stops sending RTP
        return await super().recv()


def test_whip_publisher_without_media_is_closed_and_its_stream_ends(h264_clip: Clip) -> None:
    gen = _start_gateway(Config(host="127.0.0.1", rtmp_port=0, http_port=0, publish_timeout=1.0))
    gateway = next(gen)
    try:
        with ClientLoop() as clients:
            async def start() -> WhipClient:
                start_at: list[float] = []
                pub = WhipClient(gateway.http_url("live/frozen/whip"),
                                 [_StallingTrack("video", h264_clip.video, start_at, limit=45),
                                  _StallingTrack("audio", h264_clip.audio, start_at, limit=75)])
                await pub.start()
                return pub

            pub = clients.run(start())
            try:
                gateway.wait_stream("live/frozen")
                whip = next(iter(sessions(gateway).values()))
                deadline = time.monotonic() + 1.5 + 1.0 + 3  # media, timeout, margin
                while "live/frozen" in gateway.gw.hub.streams:
                    assert time.monotonic() < deadline, "stalled WHIP publisher kept its stream"
                    time.sleep(0.05)
                assert whip.closed and "no media from the publisher" in whip.close_reason
            finally:
                clients.run(pub.close())
    finally:
        next(gen, None)


def test_whep_variant_that_keeps_crashing_is_refused_with_503(gateway: RunningGateway, publish, clips,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The H.264 re-encode for WebRTC crashes its process (killed while coding it): past the
    budget the session ends, and a new WHEP viewer gets 503 with the reason, not a session
    that would crash the process again."""
    from gateway.transcode import variant as variant_mod

    monkeypatch.setattr(variant_mod, "RESTARTS", 0)  # the first death on the step ends it
    publish(clips["bframes"], "live/crashw")  # B-frames: re-encoded for WebRTC

    async def main() -> None:
        viewer = WhepClient(gateway.http_url("live/crashw/whep"))
        await viewer.start()
        assert (await first_frames(viewer, ("video",), n=3, timeout=15))["video"]
        session = next(s for s in sessions(gateway).values() if isinstance(s, WhepSession))
        step = session.media.workers["video"]
        assert await asyncio.to_thread(kill_while_coding, step._child, step.step_id)
        await wait_until(lambda: session.closed, what="the session ended")
        assert "transcoder failed" in (session.close_reason or ""), session.close_reason
        await viewer.close()
        again = WhepClient(gateway.http_url("live/crashw/whep"))
        with pytest.raises(SessionError) as e:
            await again.start()
        assert e.value.status == 503 and "crashed repeatedly" in str(e.value), e.value
        await again.pc.close()

    run(main())


def test_h5_to_whep(gateway: RunningGateway) -> None:
    """An h5 (MPEG-TS, MPEG-1 + MP2) publisher watched over WHEP: the answer offers H.264 and
    Opus, and the viewer decodes both, at the source's size."""
    pub = subprocess.Popen(
        [FFMPEG, "-hide_banner", "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "20",
         "-c:v", "mpeg1video", "-b:v", "1M", "-bf", "0", "-g", "15", "-c:a", "mp2", "-b:a", "128k",
         "-f", "mpegts", gateway.http_url("live/h5w.ts")],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        gateway.wait_stream("live/h5w", timeout=10)

        async def main() -> WhepSession:
            viewer = WhepClient(gateway.http_url("live/h5w/whep"))
            await viewer.start()
            assert negotiated(viewer.answer) == {"audio": ["opus"], "video": ["h264"]}
            got = await first_frames(viewer, n=3, timeout=15)
            frame = got["video"][0][1]
            assert (frame.width, frame.height) == (640, 360)
            session = next(s for s in sessions(gateway).values() if isinstance(s, WhepSession))
            await viewer.close()
            return session

        session = run(main())
        plan = str(session.plan)
        assert "mpeg1video -> h264" in plan and "mp2 -> opus" in plan, plan
    finally:
        pub.terminate()
        pub.wait(5)
