"""RTP payload formats (gateway.wire.rtp.h264 / aac / opus): round trips, exact bytes, loss,
fuzzing, and packets written by the FFmpeg CLI decoded by PyAV."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from collections.abc import Sequence

import av
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs.aac import build_asc, parse_asc
from gateway.codecs.h264 import parse_sps
from gateway.wire.rtp import opus
from gateway.wire.rtp.aac import (
    AacFrame,
    AacHbrDepacketizer,
    AacHbrPacketizer,
    LatmDepacketizer,
    LatmPacketizer,
    asc_from_latm_config,
    latm_config,
    mpeg4_generic_config,
    parse_mpeg4_generic_config,
)
from gateway.wire.rtp.h264 import (
    AccessUnit,
    H264Depacketizer,
    H264Packetizer,
    RtpPayload,
    RtpPayloadError,
    format_sprop_parameter_sets,
    h264_fmtp,
    parse_profile_level_id,
    parse_sprop_parameter_sets,
    profile_level_id,
)

SPS = bytes.fromhex("6742c01ed9005005bb0110000003001000000303c0f162e480")
PPS = bytes.fromhex("68cb83cb20")


def _nal(kind: int, size: int, nri: int = 3, fill: int = 0) -> bytes:
    return bytes(((nri << 5) | kind,)) + bytes((fill + i) % 251 + 1 for i in range(size - 1))


def _feed(dep: H264Depacketizer, packets: Sequence[RtpPayload], seq: int = 0,
          skip: Sequence[int] = ()) -> list[AccessUnit]:
    out: list[AccessUnit] = []
    for i, p in enumerate(packets):
        if i not in skip:
            out += dep.push(p.payload, p.marker, p.timestamp, seq + i)
    return out


# --- H.264 -----------------------------------------------------------------------------------


def test_h264_fu_a_exact_bytes() -> None:
    nal = bytes((0x65,)) + bytes(range(1, 11))  # IDR, NRI 3, 10 bytes of slice data
    packets = H264Packetizer(mtu=6).packetize([nal], 1000)
    assert [p.payload for p in packets] == [
        bytes((0x7C, 0x85, 1, 2, 3, 4)),  # FU indicator (NRI 3, 28), FU header S + type 5
        bytes((0x7C, 0x05, 5, 6, 7, 8)),
        bytes((0x7C, 0x45, 9, 10)),  # E + type 5
    ]
    assert [p.marker for p in packets] == [False, False, True]
    assert {p.timestamp for p in packets} == {1000}
    units = _feed(H264Depacketizer(), packets)
    assert units == [AccessUnit((nal,), 1000, idr=True, damaged=False)]


def test_h264_single_and_stap_a() -> None:
    idr = _nal(5, 50)
    packets = H264Packetizer(mtu=100).packetize([SPS, PPS, idr], 90)
    assert len(packets) == 2
    stap = packets[0].payload
    assert stap[0] == 0x78  # NRI 3, type 24
    assert stap[1:] == len(SPS).to_bytes(2, "big") + SPS + len(PPS).to_bytes(2, "big") + PPS
    assert packets[1].payload == idr and packets[1].marker
    # parameter sets given out of band go in front of an IDR only
    p2 = H264Packetizer().packetize([idr], 0, parameter_sets=[SPS, PPS])
    assert p2[0].payload == stap and p2[1].payload == idr
    assert [p.payload for p in H264Packetizer().packetize([_nal(1, 30)], 0, [SPS, PPS])] == [
        _nal(1, 30)]
    units = _feed(H264Depacketizer(), packets)
    assert units[0].nals == (SPS, PPS, idr) and units[0].idr
    assert units[0].annexb() == b"\0\0\0\1" + SPS + b"\0\0\0\1" + PPS + b"\0\0\0\1" + idr


@pytest.mark.parametrize("mtu", [3, 20, 1200])
def test_h264_round_trip(mtu: int) -> None:
    units_in = [[SPS, PPS, _nal(6, 10), _nal(5, 3000)], [_nal(1, 700, nri=2)],
                [_nal(1, 1), _nal(1, 1201, fill=7)]]
    packer = H264Packetizer(mtu=mtu)
    packets = [p for i, au in enumerate(units_in) for p in packer.packetize(au, 3000 * i)]
    assert all(len(p.payload) <= mtu for p in packets)
    units = _feed(H264Depacketizer(), packets, seq=65530)  # wraps
    assert [list(u.nals) for u in units] == units_in
    assert [u.idr for u in units] == [True, False, False]
    assert [u.timestamp for u in units] == [0, 3000, 6000]
    assert not any(u.damaged for u in units)


def test_h264_unit_ends_on_timestamp_change_without_marker() -> None:
    dep = H264Depacketizer()
    assert dep.push(_nal(1, 10), False, 0, 1) == []
    units = dep.push(_nal(1, 10), False, 3000, 2)
    assert [(u.timestamp, u.damaged) for u in units] == [(0, False)]
    assert [u.timestamp for u in dep.flush()] == [3000]
    assert dep.flush() == []


def test_h264_lost_fu_a_middle_damages_only_its_unit() -> None:
    packer = H264Packetizer(mtu=100)
    first = packer.packetize([_nal(1, 20), _nal(1, 500)], 0)
    second = packer.packetize([SPS, PPS, _nal(5, 400)], 3000)
    assert len(first) >= 4
    units = _feed(H264Depacketizer(), first + second, skip=[2])
    assert len(units) == 2
    assert units[0].damaged and units[0].nals == (_nal(1, 20),) and not units[0].idr
    assert not units[1].damaged and units[1].idr and units[1].nals == (SPS, PPS, _nal(5, 400))


def test_h264_lost_fu_a_start_and_end() -> None:
    packets = H264Packetizer(mtu=100).packetize([_nal(5, 300)], 0)
    assert _feed(H264Depacketizer(), packets, skip=[0]) == [AccessUnit((), 0, False, True)]
    dep = H264Depacketizer()  # end lost: the next unit's first packet shows the gap
    units = _feed(dep, packets + H264Packetizer().packetize([_nal(1, 10)], 3000),
                  skip=[len(packets) - 1])
    assert [(u.timestamp, u.nals, u.damaged) for u in units] == [
        (0, (), True), (3000, (_nal(1, 10),), True)]  # the gap may have been either's


def test_h264_duplicate_is_ignored() -> None:
    dep = H264Depacketizer()
    assert dep.push(_nal(1, 10), False, 0, 7) == []
    assert dep.push(_nal(1, 10), False, 0, 7) == []
    assert dep.push(_nal(1, 11), True, 0, 8)[0].nals == (_nal(1, 10), _nal(1, 11))


@pytest.mark.parametrize("payload, reason", [
    (b"", "empty"),
    (b"\x18\x00", "truncated"),
    (b"\x18\x00\x05\x65", "truncated"),
    (b"\x18\x00\x00", "zero-length"),
    (b"\x18", "without"),
    (b"\x1c", "FU header"),
    (b"\x1c\x9c", "fragmented NAL type 28"),
    (b"\x19\x00", "interleaved"),
    (b"\x00", "reserved"),
])
def test_h264_malformed(payload: bytes, reason: str) -> None:
    with pytest.raises(RtpPayloadError, match=reason):
        H264Depacketizer().push(payload, True, 0, 0)


def test_h264_sdp_helpers() -> None:
    value = format_sprop_parameter_sets([SPS, PPS])
    assert value == "Z0LAHtkAUAW7ARAAAAMAEAAAAwPA8WLkgA==,aMuDyyA="
    assert parse_sprop_parameter_sets(value) == [SPS, PPS]
    assert profile_level_id(SPS) == "42c01e"
    assert parse_profile_level_id("42C01E") == (0x42, 0xC0, 0x1E)
    assert h264_fmtp(SPS, PPS) == (
        "packetization-mode=1;profile-level-id=42c01e;sprop-parameter-sets=" + value)
    for bad in ("Z0L!", "ab,==="):
        with pytest.raises(RtpPayloadError):
            parse_sprop_parameter_sets(bad)
    with pytest.raises(RtpPayloadError):
        parse_profile_level_id("42c0")
    with pytest.raises(RtpPayloadError):
        profile_level_id(PPS)


# --- AAC -------------------------------------------------------------------------------------


def test_aac_hbr_two_aus_exact_bytes() -> None:
    packets = AacHbrPacketizer().packetize([b"\x01" * 5, b"\x02" * 300], 1024)
    assert len(packets) == 1
    # AU-headers-length 32 bits; AU-size 5 / index 0, AU-size 300 / index-delta 0
    assert packets[0].payload[:6] == bytes((0x00, 0x20, 0x00, 0x28, 0x09, 0x60))
    assert packets[0].payload[6:] == b"\x01" * 5 + b"\x02" * 300
    assert packets[0].marker and packets[0].timestamp == 1024
    frames = AacHbrDepacketizer().push(packets[0].payload, True, 1024, 0)
    assert frames == [AacFrame(b"\x01" * 5, 1024), AacFrame(b"\x02" * 300, 2048)]


def test_aac_hbr_round_trip_grouping_and_fragments() -> None:
    aus = [bytes((i,)) * n for i, n in enumerate([100, 200, 700, 3000, 10, 20, 1190])]
    packets = AacHbrPacketizer(mtu=1000).packetize(aus, 0)
    assert all(len(p.payload) <= 1000 for p in packets)
    assert [p.marker for p in packets] == [True, True, False, False, False, True, True, False, True]
    dep = AacHbrDepacketizer()
    frames = [f for i, p in enumerate(packets) for f in dep.push(p.payload, p.marker,
                                                                   p.timestamp, i)]
    assert [f.data for f in frames] == aus
    assert [f.timestamp for f in frames] == [1024 * i for i in range(len(aus))]
    # a lost fragment drops that AU only
    dep = AacHbrDepacketizer()
    frames = [f for i, p in enumerate(packets) if i != 4
              for f in dep.push(p.payload, p.marker, p.timestamp, i)]
    assert [f.data for f in frames] == aus[:3] + aus[4:]
    assert dep.dropped == 1


def test_aac_hbr_malformed() -> None:
    for payload in (b"", b"\x00", b"\x00\x10\x00", b"\x00\x0f\x00\x08", b"\x00\x00",
                    b"\x00\x20\x00\x28\x09\x60\x01"):
        with pytest.raises(RtpPayloadError):
            AacHbrDepacketizer().push(payload, True, 0, 0)


def test_aac_configs() -> None:
    asc = build_asc(2, 44100, 2)
    assert mpeg4_generic_config(asc) == "1210"
    assert parse_mpeg4_generic_config("1210") == asc
    assert latm_config(asc) == "400024203fc0"  # what FFmpeg writes for 44.1 kHz stereo
    assert asc_from_latm_config("400024203fc0") == asc
    he = build_asc(5, 48000, 2)
    assert asc_from_latm_config(latm_config(he)) == he
    for bad in ("zz", "", "c0"):
        with pytest.raises(RtpPayloadError):
            asc_from_latm_config(bad)
    with pytest.raises(RtpPayloadError):
        parse_mpeg4_generic_config("00")


def test_latm_round_trip_and_fragments() -> None:
    frames_in = [b"\x11" * 10, b"\x22" * 255, b"\x33" * 3000, b"\x44" * 0, b"\x55" * 600]
    packer = LatmPacketizer(mtu=500)
    packets = [p for i, f in enumerate(frames_in) for p in packer.packetize(f, i * 1024)]
    assert packets[1].payload[:2] == b"\xff\x00"
    assert packets[0].payload == b"\x0a" + b"\x11" * 10
    dep = LatmDepacketizer()
    out = [f for i, p in enumerate(packets) for f in dep.push(p.payload, p.marker,
                                                                p.timestamp, i)]
    assert [f.data for f in out] == frames_in
    assert [f.timestamp for f in out] == [i * 1024 for i in range(5)]
    # the FFmpeg CLI's marker on every fragment changes nothing; a lost fragment drops a frame
    dep = LatmDepacketizer()
    out = [f for i, p in enumerate(packets) if i != 4
           for f in dep.push(p.payload, True, p.timestamp, i)]
    assert [f.data for f in out] == frames_in[:2] + frames_in[3:]
    assert dep.dropped == 1
    # two elements in one packet (numSubFrames > 0 style)
    two = b"\x02ab\x01c"
    assert LatmDepacketizer().push(two, True, 0, 0) == [AacFrame(b"ab", 0), AacFrame(b"c", 1024)]


# --- Opus ------------------------------------------------------------------------------------


def test_opus() -> None:
    assert opus.RTPMAP == "opus/48000/2" and opus.CLOCK_RATE == 48000
    packet = bytes((0xFC, 1, 2, 3))  # CELT FB 20 ms, code 0
    assert opus.packetize(packet, 960) == RtpPayload(packet, False, 960)
    assert opus.depacketize(packet) == packet
    assert opus.packet_samples(packet) == 960
    assert opus.packet_samples(bytes((0x0B, 0x02))) == 2 * 960  # SILK NB 20 ms, code 3
    assert opus.packet_samples(bytes((0xFD,))) == 1920  # code 1: two frames
    assert opus.packet_samples(bytes((0xFF, 0x03))) == 2880
    for bad in (b"", bytes((0xFF,)), bytes((0xFF, 0x00)), bytes((0xFF, 0x3F))):
        with pytest.raises(RtpPayloadError):
            opus.depacketize(bad)


# --- fuzzing ---------------------------------------------------------------------------------

# arbitrary bytes, and bytes behind headers that reach the deeper branches (FU-A start /
# middle / end, STAP-A, AU headers for one or two AUs, a LATM length run)
_PREFIXES = [b"\x7c\x85", b"\x7c\x05", b"\x7c\x45", b"\x78\x00\x02", b"\x00\x10",
             b"\x00\x20", b"\xff"]
_payloads = st.one_of(st.binary(max_size=64), st.tuples(
    st.sampled_from(_PREFIXES), st.binary(max_size=64)).map(lambda t: t[0] + t[1]))
_packets = st.lists(st.tuples(_payloads, st.booleans(),
                              st.integers(0, 3), st.integers(0, 5)), max_size=8)


def _fuzz(dep: H264Depacketizer | AacHbrDepacketizer | LatmDepacketizer,
          packets: list[tuple[bytes, bool, int, int]]) -> None:
    seq = 0
    for payload, marker, ts, step in packets:
        seq += step
        try:
            dep.push(payload, marker, ts, seq)
        except RtpPayloadError:
            pass


@settings(max_examples=300, deadline=None)
@given(_packets)
def test_fuzz_h264(packets: list[tuple[bytes, bool, int, int]]) -> None:
    dep = H264Depacketizer()
    _fuzz(dep, packets)
    for unit in dep.flush():
        assert all(unit.nals)


@settings(max_examples=300, deadline=None)
@given(_packets)
def test_fuzz_aac_hbr(packets: list[tuple[bytes, bool, int, int]]) -> None:
    _fuzz(AacHbrDepacketizer(), packets)


@settings(max_examples=300, deadline=None)
@given(_packets)
def test_fuzz_latm(packets: list[tuple[bytes, bool, int, int]]) -> None:
    _fuzz(LatmDepacketizer(), packets)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=16), st.text(max_size=20))
def test_fuzz_opus_and_configs(payload: bytes, text: str) -> None:
    for call in (lambda: opus.depacketize(payload), lambda: asc_from_latm_config(text),
                 lambda: asc_from_latm_config(payload.hex()),
                 lambda: parse_mpeg4_generic_config(text),
                 lambda: parse_sprop_parameter_sets(text),
                 lambda: parse_profile_level_id(text)):
        try:
            call()
        except RtpPayloadError:
            pass


# --- FFmpeg CLI interop ----------------------------------------------------------------------

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="no ffmpeg")


def _ffmpeg_rtp(args: list[str]) -> tuple[str, list[tuple[bytes, bool, int, int]]]:
    """Run the FFmpeg CLI writing RTP to a local UDP socket: (its SDP, the packets as
    (payload, marker, timestamp, sequence number))."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    port = sock.getsockname()[1]
    try:
        proc = subprocess.run(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", *args,
             "-f", "rtp", f"rtp://127.0.0.1:{port}?pkt_size=1200"],
            capture_output=True, text=True, timeout=30, check=True)
        sock.settimeout(0.5)
        packets = []
        while True:
            try:
                datagram = sock.recv(65536)
            except TimeoutError:
                break
            assert datagram[0] & 0xCF == 0x80  # version 2, no padding, extension, CSRCs
            packets.append((datagram[12:], bool(datagram[1] & 0x80),
                            int.from_bytes(datagram[4:8], "big"),
                            int.from_bytes(datagram[2:4], "big")))
    finally:
        sock.close()
    return proc.stdout, packets


@needs_ffmpeg
def test_ffmpeg_h264_decodes() -> None:
    sdp, packets = _ffmpeg_rtp(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-t", "1",
                                "-c:v", "libx264", "-bf", "0", "-g", "10"])
    assert len(packets) > 25
    assert "packetization-mode=1" in sdp  # no sprop-parameter-sets: they are in band
    dep = H264Depacketizer()
    units = [u for p in packets for u in dep.push(*p)] + dep.flush()
    sps = next(nal for nal in units[0].nals if nal[0] & 0x1F == 7)
    assert parse_sps(sps).width == 320
    assert parse_profile_level_id(profile_level_id(sps))[0] == parse_sps(sps).profile_idc
    assert len(units) == 25 and not any(u.damaged for u in units)
    assert sum(u.idr for u in units) == 3
    codec = av.CodecContext.create("h264", "r")
    frames = []
    for unit in units:
        frames += codec.decode(av.Packet(unit.annexb()))
    frames += codec.decode(None)
    assert len(frames) == 25 and (frames[0].width, frames[0].height) == (320, 240)
    # and through our packetizer and back, the same units
    packer = H264Packetizer(mtu=500)
    again = [p for u in units for p in packer.packetize(u.nals, u.timestamp)]
    dep = H264Depacketizer()
    assert [u.nals for i, p in enumerate(again) for u in dep.push(*p, i)] == [
        u.nals for u in units]


def _decode_aac(asc: bytes, frames: list[AacFrame]) -> int:
    codec = av.CodecContext.create("aac", "r")
    codec.extradata = asc
    samples = 0
    for frame in frames:
        for decoded in codec.decode(av.Packet(frame.data)):
            samples += decoded.samples
    return samples


_AUDIO = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "1", "-ac", "2",
          "-c:a", "aac", "-b:a", "256k"]


@needs_ffmpeg
def test_ffmpeg_aac_mpeg4_generic_decodes() -> None:
    sdp, packets = _ffmpeg_rtp(_AUDIO)
    assert "mpeg4-generic/44100/2" in sdp.lower() and "sizelength=13" in sdp
    config = re.search(r"config=([0-9A-Fa-f]+)", sdp)
    assert config is not None
    asc = parse_mpeg4_generic_config(config.group(1))
    assert parse_asc(asc).sample_rate == 44100
    dep = AacHbrDepacketizer()
    frames = [f for p in packets for f in dep.push(*p)]
    assert len(frames) >= 43 and dep.dropped == 0
    assert [f.timestamp - frames[0].timestamp for f in frames] == [
        1024 * i for i in range(len(frames))]
    assert _decode_aac(asc, frames) >= 43 * 1024
    # re-packetized by us, same frames back
    again = AacHbrPacketizer(mtu=400).packetize([f.data for f in frames], 0)
    dep = AacHbrDepacketizer()
    assert [f.data for i, p in enumerate(again) for f in dep.push(*p, i)] == [
        f.data for f in frames]


@needs_ffmpeg
def test_ffmpeg_aac_latm_decodes() -> None:
    sdp, packets = _ffmpeg_rtp([*_AUDIO, "-rtpflags", "latm"])
    assert "MP4A-LATM/44100/2" in sdp and "cpresent=0" in sdp
    config = re.search(r"config=([0-9A-Fa-f]+)", sdp)
    assert config is not None
    asc = asc_from_latm_config(config.group(1))
    assert parse_asc(asc).channels == 2
    dep = LatmDepacketizer()
    frames = [f for p in packets for f in dep.push(*p)]
    assert len(frames) >= 43 and dep.dropped == 0
    assert _decode_aac(asc, frames) >= 43 * 1024
