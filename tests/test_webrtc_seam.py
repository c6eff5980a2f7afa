"""Guards ``gateway.protocols.webrtc.seam``: if an aiortc/aioice upgrade moves the internals it relies on,
these tests fail with the reason instead of the gateway silently decoding (or encoding) media.

Two aiortc peers talk over real ICE/DTLS/SRTP on 127.0.0.1 in-process; no gateway is involved.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable

import aiortc.codecs.h264 as aiortc_h264
import aiortc.rtcrtpreceiver as aiortc_receiver
import av
import pytest
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
)
from aiortc.mediastreams import MediaStreamTrack

from gateway.codecs import h264
from gateway.protocols.webrtc import seam

VIDEO_TB = fractions.Fraction(1, 90000)
AUDIO_TB = fractions.Fraction(1, 48000)


def encode_h264(n: int = 45, size: tuple[int, int] = (320, 240)) -> list[bytes]:
    """Annex B access units (baseline, no B-frames), a keyframe every 15 frames."""
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height = size
    enc.pix_fmt = "yuv420p"
    enc.time_base = fractions.Fraction(1, 30)
    enc.framerate = fractions.Fraction(30, 1)
    enc.options = {"profile": "baseline", "tune": "zerolatency", "g": "15", "bf": "0"}
    out: list[bytes] = []
    for i in range(n):
        frame = av.VideoFrame(*size, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes([(i * 7 + 16 * plane.line_size) % 256]) * plane.buffer_size)
        frame.pts = i
        out += [bytes(p) for p in enc.encode(frame)]
    out += [bytes(p) for p in enc.encode(None)]
    return out


def encode_opus(n: int = 100) -> list[bytes]:
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate = 48000
    enc.layout = "stereo"
    enc.format = "s16"
    enc.time_base = AUDIO_TB
    out: list[bytes] = []
    for i in range(n):
        frame = av.AudioFrame(format="s16", layout="stereo", samples=960)
        frame.planes[0].update(bytes(960 * 4))
        frame.sample_rate = 48000
        frame.pts = i * 960
        out += [bytes(p) for p in enc.encode(frame)]
    return out


class PacketTrack(MediaStreamTrack):
    """Plays pre-encoded packets in real time: what the gateway's WHEP tracks do."""

    def __init__(self, kind: str, packets: list[bytes], tb: fractions.Fraction, step: int,
                 interval: float) -> None:
        super().__init__()
        self.kind = kind
        self.packets = packets
        self.tb, self.step, self.interval = tb, step, interval
        self.i = 0

    async def recv(self) -> av.Packet:
        if self.i >= len(self.packets):
            await asyncio.sleep(3600)
        await asyncio.sleep(self.interval)
        pkt = av.Packet(self.packets[self.i])
        pkt.pts = self.i * self.step
        pkt.time_base = self.tb
        self.i += 1
        return pkt


def codec_caps(kind: str, name: str) -> list:
    return [c for c in RTCRtpSender.getCapabilities(kind).codecs if c.name.lower() == name]


async def connect(pub: RTCPeerConnection, sub: RTCPeerConnection,
                  on_track: Callable[[RTCRtpReceiver, str], None]) -> None:
    with seam.ice_hosts(["127.0.0.1"]):
        await pub.setLocalDescription(await pub.createOffer())
    await sub.setRemoteDescription(pub.localDescription)
    for t in sub.getTransceivers():
        on_track(t.receiver, t.kind)
    with seam.ice_hosts(["127.0.0.1"]):
        await sub.setLocalDescription(await sub.createAnswer())
    await pub.setRemoteDescription(sub.localDescription)


def candidates(sdp: str) -> list[str]:
    return [line.split()[4] for line in sdp.splitlines() if line.startswith("a=candidate:")]


def test_ice_hosts_gathers_exactly_loopback() -> None:
    async def main() -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("audio", direction="sendonly")
        with seam.ice_hosts(["127.0.0.1"]):
            await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    sdp = asyncio.run(main())
    assert candidates(sdp) == ["127.0.0.1"], sdp
    assert "typ srflx" not in sdp


def test_encoded_frames_pass_through_without_decoder_or_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Publisher sends av.Packets (never encoded), receiver taps frames (never decoded),
    PLI travels back, sender reports are seen."""
    calls = {"decoder": 0, "encode": 0}

    def no_decoder(codec):  # type: ignore[no-untyped-def]
        calls["decoder"] += 1
        raise AssertionError("aiortc created a decoder for a tapped receiver")

    real_encode = aiortc_h264.H264Encoder._encode_frame

    def counting_encode(self, frame, force_keyframe):  # type: ignore[no-untyped-def]
        calls["encode"] += 1
        return real_encode(self, frame, force_keyframe)

    monkeypatch.setattr(aiortc_receiver, "get_decoder", no_decoder)
    monkeypatch.setattr(aiortc_h264.H264Encoder, "_encode_frame", counting_encode)
    video = encode_h264()
    audio = encode_opus()

    async def main() -> dict[str, object]:
        pub = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        sub = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        vt = pub.addTransceiver(PacketTrack("video", video, VIDEO_TB, 3000, 1 / 30),
                                direction="sendonly")
        vt.setCodecPreferences(codec_caps("video", "h264")[:1])
        pub.addTransceiver(PacketTrack("audio", audio, AUDIO_TB, 960, 0.02), direction="sendonly")
        got: dict[str, list[seam.EncodedFrame]] = {"video": [], "audio": []}
        reports: list[tuple[int, int, int]] = []
        taps: dict[str, seam.ReceiverTap] = {}
        plis: list[float] = []

        def on_track(receiver: RTCRtpReceiver, kind: str) -> None:
            taps[kind] = seam.tap_receiver(receiver, kind, got[kind].append,
                                           lambda *sr: reports.append(sr))

        await connect(pub, sub, on_track)
        for t in pub.getTransceivers():
            if t.kind == "video":
                seam.watch_sender(t.sender, lambda: plis.append(asyncio.get_running_loop().time()))
        deadline = asyncio.get_running_loop().time() + 10
        while (len(got["video"]) < 40 or not reports) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert taps["video"].request_keyframe()
        await asyncio.sleep(0.3)
        await pub.close()
        await sub.close()
        return {"got": got, "reports": reports, "plis": plis, "taps": taps}

    out = asyncio.run(asyncio.wait_for(main(), 30))
    got = out["got"]
    assert isinstance(got, dict)
    vids: list[seam.EncodedFrame] = got["video"]
    assert len(vids) >= 40, f"only {len(vids)} video frames tapped"
    # byte-exact pass-through, NAL by NAL (aiortc rewrites start codes to 4 bytes)
    for i, f in enumerate(vids):
        assert h264.split_annexb(f.data) == h264.split_annexb(video[i]), f"frame {i} differs"
    assert vids[0].discontinuity and not any(f.discontinuity for f in vids[1:])
    ts = [f.rtp_timestamp for f in vids]
    assert all((b - a) % (1 << 32) == 3000 for a, b in zip(ts, ts[1:], strict=False))
    auds: list[seam.EncodedFrame] = got["audio"]
    assert len(auds) >= 50 and [f.data for f in auds] == audio[: len(auds)]
    assert out["reports"], "no RTCP sender report reached the tap"
    assert out["plis"], "the PLI sent by the tap did not reach the sender"
    assert calls == {"decoder": 0, "encode": 0}


def test_seam_refuses_a_started_receiver() -> None:
    class Started:
        _RTCRtpReceiver__jitter_buffer = type("J", (), {"add": lambda self, p: (False, None)})()
        _RTCRtpReceiver__decoder_thread = object()
        _send_rtcp_pli = staticmethod(lambda ssrc: None)

    with pytest.raises(seam.SeamError, match="already started"):
        seam.tap_receiver(Started(), "video", lambda f: None)  # type: ignore[arg-type]


def test_seam_names_still_exist() -> None:
    """The private names the seam uses, checked without a connection (fast failure)."""
    import aioice.ice

    assert callable(aioice.ice.get_host_addresses)
    with open(aiortc_receiver.__file__) as f:
        src = f.read()
    for needle in ("self.__jitter_buffer.add(packet)", "self.__decoder_thread",
                   "def _send_rtcp_pli", "async def _handle_rtcp_packet"):
        assert needle in src, f"aiortc's RTCRtpReceiver no longer has {needle!r}"
    import aiortc.rtcrtpsender as sender_mod

    with open(sender_mod.__file__) as f:
        sender_src = f.read()
    assert "self.__encoder.pack(data)" in sender_src, "aiortc no longer packs pre-encoded av.Packet"
    assert "if self.__encoder is None:" in sender_src, "aiortc no longer creates its encoder lazily"


def test_shared_packetizer_packs_each_packet_once() -> None:
    class Sender:
        _RTCRtpSender__encoder = None

    a, b = Sender(), Sender()
    shared = seam.SharedPacketizer("h264")
    seam.share_packetizer(a, shared)  # type: ignore[arg-type]
    seam.share_packetizer(b, shared)  # type: ignore[arg-type]
    packet = av.Packet(b"\x00\x00\x00\x01\x65" + bytes(5000))
    packet.pts, packet.time_base = 3000, VIDEO_TB
    first = a._RTCRtpSender__encoder.pack(packet)
    second = b._RTCRtpSender__encoder.pack(packet)
    assert first == second and len(first[0]) == 4 and first[1] == 3000
    assert (shared.hits, shared.misses) == (1, 1)
    with pytest.raises(seam.SeamError, match="already has an encoder"):
        seam.share_packetizer(a, shared)  # type: ignore[arg-type]


def _rtp(seq: int, ts: int, marker: bool, data: bytes = b"x") -> object:
    from types import SimpleNamespace

    return SimpleNamespace(sequence_number=seq & 0xFFFF, timestamp=ts, marker=int(marker),
                           payload_type=96, ssrc=1234, _data=data)


def test_frame_assembler_emits_on_marker_reorders_and_gives_up_gaps() -> None:
    out: list[seam.EncodedFrame] = []
    fa = seam.FrameAssembler(True, out.append, max_wait=0.05)
    base = 65533  # sequence numbers wrap inside the second frame
    assert fa.add(_rtp(base, 0, False, b"a")) == (False, None)
    assert fa.add(_rtp(base + 1, 0, True, b"b")) == (False, None)
    assert [f.data for f in out] == [b"ab"] and out[0].discontinuity  # first frame ever
    # reordered: the frame appears when its missing middle packet arrives
    fa.add(_rtp(base + 2, 3000, False, b"c"))
    fa.add(_rtp(base + 4, 3000, True, b"e"))
    assert len(out) == 1
    fa.add(_rtp(base + 3, 3000, False, b"d"))
    assert [f.data for f in out][1:] == [b"cde"] and not out[1].discontinuity
    # a lost packet (base+5) is given up after max_wait: next complete frame flagged, PLI asked
    fa.add(_rtp(base + 6, 6000, True, b"g"))
    fa.add(_rtp(base + 7, 9000, False, b"h"))
    time.sleep(0.06)
    pli, _ = fa.add(_rtp(base + 8, 9000, True, b"i"))
    assert pli and out[-1].data == b"hi" and out[-1].discontinuity
    assert fa.lost >= 1
    # late duplicates are ignored
    fa.add(_rtp(base + 3, 3000, False, b"d"))
    assert out[-1].data == b"hi"


def test_frame_assembler_audio_is_immediate() -> None:
    out: list[seam.EncodedFrame] = []
    fa = seam.FrameAssembler(False, out.append)
    fa.add(_rtp(10, 0, True, b"1"))
    fa.add(_rtp(12, 1920, True, b"3"))  # 11 lost: audio does not wait
    fa.add(_rtp(11, 960, True, b"2"))  # too late
    assert [f.data for f in out] == [b"1", b"3"]
