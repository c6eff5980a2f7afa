"""MPEG-TS muxer/demuxer: FFmpeg interop both ways, late joiners, packet layout, fuzzing."""

from __future__ import annotations

import itertools
import json
import random
import shutil
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import av
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.codecs import aac, h264, mpeg1video, mpegaudio
from gateway.media import MS, Frame, Track, kind_of
from gateway.wire import mpegts
from gateway.wire.mpegts import TsDemuxer, TsError, TsMuxer, stream_type_content
from gateway.wire.mpegts.packets import decode_ts

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
FFPROBE = shutil.which("ffprobe") or "ffprobe"
OFFSET = 126000  # the muxer's default 1.4 s


# --- fixtures and helpers -------------------------------------------------------------------


def _ffmpeg_ts(path: Path, video: list[str], audio: list[str], seconds: int = 3) -> Path:
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
         "-t", str(seconds), *video, *audio, "-f", "mpegts", str(path)],
        check=True, timeout=120,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def ts_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """FFmpeg-made MPEG-TS: ``mpeg1`` (mpeg1video + mp2, jsmpeg's diet) and ``h264`` (+ AAC, B-frames)."""
    d = tmp_path_factory.mktemp("ts")
    return {
        "mpeg1": _ffmpeg_ts(
            d / "mpeg1.ts",
            ["-c:v", "mpeg1video", "-b:v", "800k", "-bf", "0", "-g", "15"],
            ["-c:a", "mp2", "-b:a", "128k"],
        ),
        "h264": _ffmpeg_ts(
            d / "h264.ts",
            ["-c:v", "libx264", "-preset", "veryfast", "-profile:v", "high", "-bf", "2", "-g", "30",
             "-pix_fmt", "yuv420p"],
            ["-c:a", "aac", "-b:a", "64k", "-ac", "2"],
        ),
    }  # fmt: skip


def pyav_frames(
    path: Path, video_tb: Fraction | None = None, audio_tb: Fraction | None = None
) -> tuple[dict[str, Track], list[Frame]]:
    """Frames of a TS file as an ingest would make them (AVCC + avcC, raw AAC + ASC)."""
    tracks: dict[str, Track] = {}
    frames: list[Frame] = []
    with av.open(str(path)) as container:
        for pkt in container.demux():
            if pkt.size == 0 or pkt.pts is None or pkt.dts is None:
                continue
            stream = pkt.stream
            kind = stream.type
            codec = stream.codec_context.name
            data = bytes(pkt)
            if codec == "h264":
                if kind not in tracks:
                    sps, pps = h264.extract_parameter_sets(data)
                    tracks[kind] = Track(
                        "video", "h264", config=h264.build_avc_config(sps, pps), width=640, height=360
                    )
                data = h264.annexb_to_avcc(data, 4, {h264.NAL_SPS, h264.NAL_PPS, h264.NAL_AUD})
            elif codec == "aac":
                header, data = aac.strip_adts(data)
                if kind not in tracks:
                    tracks[kind] = Track(
                        "audio", "aac", config=aac.asc_from_adts(header),
                        sample_rate=header.sample_rate, channels=header.channels,
                    )  # fmt: skip
            elif kind not in tracks:
                tracks[kind] = Track(kind_of(codec), codec, sample_rate=44100 if kind == "audio" else 0)
            assert stream.time_base is not None
            tb = Fraction(stream.time_base)
            pts, dts = int(pkt.pts), int(pkt.dts)
            want = video_tb if kind == "video" else audio_tb
            if want is not None:
                pts, dts, tb = round(pts * tb / want), round(dts * tb / want), want
            frames.append(Frame(tracks[kind], data, pts, dts, tb, bool(pkt.is_keyframe)))
    return tracks, frames


def probe(path: Path, *extra: str) -> dict:  # type: ignore[type-arg]
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-show_streams", "-show_packets", "-of", "json", *extra, str(path)],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    return json.loads(out.stdout)


def decode_errors(path: Path) -> str:
    out = subprocess.run(
        [FFMPEG, "-hide_banner", "-v", "error", "-f", "mpegts", "-i", str(path), "-f", "null", "-"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stderr


def continuity_complaints(path: Path) -> list[str]:
    out = subprocess.run(
        [FFPROBE, "-v", "debug", "-show_packets", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return [line for line in out.stderr.splitlines() if "Continuity check failed" in line]


def packets(data: bytes) -> list[bytes]:
    assert len(data) % 188 == 0
    return [data[i : i + 188] for i in range(0, len(data), 188)]


def pid_of(packet: bytes) -> int:
    return ((packet[1] & 0x1F) << 8) | packet[2]


def af_flags(packet: bytes) -> int | None:
    """Adaptation field flags byte, None without an adaptation field (or an empty one)."""
    if not packet[3] & 0x20 or packet[4] == 0:
        return None
    return packet[5]


def demux_all(data: bytes, chunk: int = 1000) -> tuple[TsDemuxer, list[Frame]]:
    demuxer = TsDemuxer()
    frames: list[Frame] = []
    for i in range(0, len(data), chunk):
        frames += demuxer.receive_data(data[i : i + chunk])
    frames += demuxer.flush()
    return demuxer, frames


MUX_CASES = {
    # name: (file, video time base, audio time base) — frames in several time bases on purpose
    "mpeg1": ("mpeg1", None, None),
    "h264": ("h264", MS, Fraction(1, 44100)),
}


# --- muxer vs FFmpeg ------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(MUX_CASES))
def test_mux_parses_and_decodes(case: str, ts_files: dict[str, Path], tmp_path: Path) -> None:
    name, vtb, atb = MUX_CASES[case]
    tracks, frames = pyav_frames(ts_files[name], vtb, atb)
    muxer = TsMuxer(tracks)
    chunks = [muxer.mux(f) for f in frames]
    for chunk in chunks:
        assert chunk and all(p[0] == 0x47 for p in packets(chunk))
    out = tmp_path / "out.ts"
    out.write_bytes(b"".join(chunks))

    info = probe(out)
    codecs = {s["codec_type"]: s for s in info["streams"]}
    want = {"mpeg1": ("mpeg1video", "mp2"), "h264": ("h264", "aac")}[name]
    assert (codecs["video"]["codec_name"], codecs["audio"]["codec_name"]) == want
    assert (codecs["video"]["width"], codecs["video"]["height"]) == (640, 360)
    assert codecs["audio"]["sample_rate"] == "44100"
    index = {s["index"]: s["codec_type"] for s in info["streams"]}
    counted = {"video": 0, "audio": 0}
    for p in info["packets"]:
        counted[index[p["stream_index"]]] += 1
    assert counted == {k: sum(f.kind == k for f in frames) for k in counted}

    video_in = [f for f in frames if f.kind == "video"]
    video_out = [p for p in info["packets"] if index[p["stream_index"]] == "video"]
    for f, p in zip(video_in, video_out, strict=True):
        assert int(p["pts"]) == mpegts.to_90k(f.pts, f.time_base) + OFFSET
        assert int(p["dts"]) == mpegts.to_90k(f.dts, f.time_base) + OFFSET
        assert (p["flags"][0] == "K") == f.keyframe
    assert decode_errors(out) == ""
    assert continuity_complaints(out) == []


@pytest.mark.parametrize("case", sorted(MUX_CASES))
def test_late_joiners_decode(case: str, ts_files: dict[str, Path], tmp_path: Path) -> None:
    """The same per-frame bytes serve viewers who join (or skip ahead) at any keyframe."""
    name, vtb, atb = MUX_CASES[case]
    tracks, frames = pyav_frames(ts_files[name], vtb, atb)
    muxer = TsMuxer(tracks)
    chunks = [muxer.mux(f) for f in frames]
    keys = [i for i, f in enumerate(frames) if f.kind == "video" and f.keyframe]
    assert len(keys) >= 3
    joined = tmp_path / "joined.ts"
    joined.write_bytes(muxer.header() + b"".join(chunks[keys[1] :]))
    assert decode_errors(joined) == ""
    assert continuity_complaints(joined) == []
    # A viewer that fell behind and was moved ahead to a later keyframe: counters jump.
    skipped = tmp_path / "skipped.ts"
    skipped.write_bytes(muxer.header() + b"".join(chunks[: keys[1] - 3] + chunks[keys[2] :]))
    assert decode_errors(skipped) == ""
    assert continuity_complaints(skipped) == []
    # Each keyframe's bytes start with PAT + PMT.
    for k in keys:
        first = packets(chunks[k])[:3]
        assert [pid_of(p) for p in first] == [0, mpegts.PMT_PID, mpegts.VIDEO_PID]
        flags = af_flags(first[2])
        assert flags is not None and flags & 0xD0 == 0xD0  # discontinuity, random access, PCR


def test_audio_only_stream(ts_files: dict[str, Path], tmp_path: Path) -> None:
    tracks, frames = pyav_frames(ts_files["mpeg1"])
    audio = [f for f in frames if f.kind == "audio"]
    muxer = TsMuxer({"audio": tracks["audio"]})
    chunks = [muxer.mux(f) for f in audio]
    with_psi = [i for i, c in enumerate(chunks) if pid_of(c[:188]) == 0]
    assert with_psi[0] == 0 and 4 <= len(with_psi) <= 8  # about every 0.5 s of 3 s
    for i in with_psi:
        audio_packet = packets(chunks[i])[2]
        flags = af_flags(audio_packet)
        assert flags is not None and flags & 0x10  # PCR on the audio PID
    out = tmp_path / "audio.ts"
    out.write_bytes(b"".join(chunks))
    info = probe(out)
    assert [s["codec_name"] for s in info["streams"]] == ["mp2"]
    assert len(info["packets"]) == len(audio)
    assert decode_errors(out) == ""
    late = tmp_path / "late.ts"
    late.write_bytes(b"".join(chunks[with_psi[2] :]))
    assert decode_errors(late) == ""


# --- demuxer vs FFmpeg ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mpeg1", "h264"])
@pytest.mark.parametrize("chunk", [188 * 7, 1000, 1 << 20])
def test_demux_matches_ffprobe(name: str, chunk: int, ts_files: dict[str, Path]) -> None:
    data = ts_files[name].read_bytes()
    demuxer, frames = demux_all(data, chunk)
    assert demuxer.errors == 0
    info = probe(ts_files[name])
    index = {s["index"]: s["codec_type"] for s in info["streams"]}
    for kind in ("video", "audio"):
        theirs = [p for p in info["packets"] if index[p["stream_index"]] == kind]
        mine = [f for f in frames if f.kind == kind]
        assert len(mine) == len(theirs), kind
        tolerance = 0 if kind == "video" else 1  # FFmpeg accumulates rounded audio durations
        for f, p in zip(mine, theirs, strict=True):
            assert f.time_base == Fraction(1, 90000)
            assert abs(f.pts - int(p["pts"])) <= tolerance and abs(f.dts - int(p["dts"])) <= tolerance
            assert f.keyframe == (p["flags"][0] == "K")
            if f.codec in ("mp2", "mpeg1video"):
                assert len(f.data) == int(p["size"])
            elif f.codec == "aac":
                assert len(f.data) == int(p["size"]) - 7
    video, audio = demuxer.tracks["video"], demuxer.tracks["audio"]
    assert (video.width, video.height, video.frame_rate) == (640, 360, 30.0)
    assert (audio.sample_rate, audio.channels) == (44100, 1 if name == "mpeg1" else 2)
    if name == "mpeg1":
        assert (video.codec, audio.codec, audio.bitrate) == ("mpeg1video", "mp2", 128000)
        assert not video.has_b_frames
    else:
        assert (video.codec, video.profile, audio.codec) == ("h264", "high", "aac")
        assert video.has_b_frames
        assert audio.config == aac.build_asc(2, 44100, 2)
        assert h264.parse_avc_config(video.config).sps
        assert all(f.data[4] & 0x1F not in (7, 8, 9) for f in frames if f.kind == "video")


def test_demux_random_chunking(ts_files: dict[str, Path]) -> None:
    data = ts_files["h264"].read_bytes()[: 188 * 600]
    _, whole = demux_all(data, len(data))
    rng = random.Random(7)
    demuxer = TsDemuxer()
    frames: list[Frame] = []
    pos = 0
    while pos < len(data):
        n = rng.choice((1, 2, 187, 188, 189, 500, 4000))
        frames += demuxer.receive_data(data[pos : pos + n])
        pos += n
    frames += demuxer.flush()
    assert [(f.kind, f.pts, f.dts, f.data) for f in frames] == [(f.kind, f.pts, f.dts, f.data) for f in whole]


@pytest.mark.parametrize("name", ["mpeg1", "h264"])
def test_mux_demux_round_trip(name: str, ts_files: dict[str, Path]) -> None:
    tracks, frames = pyav_frames(ts_files[name])
    muxer = TsMuxer(tracks)
    data = b"".join(muxer.mux(f) for f in frames)
    demuxer, back = demux_all(data, 4096)
    assert demuxer.errors == 0
    for kind in ("video", "audio"):
        a = [f for f in frames if f.kind == kind]
        b = [f for f in back if f.kind == kind]
        assert [(f.data, f.pts + OFFSET, f.dts + OFFSET, f.keyframe) for f in a] == [
            (f.data, f.pts, f.dts, f.keyframe) for f in b
        ]
    if name == "h264":
        assert demuxer.tracks["video"].config == tracks["video"].config
        assert demuxer.tracks["audio"].config == tracks["audio"].config


def test_demux_throughput(ts_files: dict[str, Path]) -> None:
    data = ts_files["h264"].read_bytes() * 4
    start = time.perf_counter()
    demux_all(data, 64 * 1024)
    elapsed = time.perf_counter() - start
    assert len(data) / elapsed > 10e6, f"{len(data) / elapsed / 1e6:.1f} MB/s"


# --- packet layout --------------------------------------------------------------------------


def _mpeg1_track() -> Track:
    return Track("video", "mpeg1video", width=320, height=240, frame_rate=30.0)


def test_psi_tables() -> None:
    tracks = {
        "video": Track("video", "h264", config=b""),
        "audio": Track("audio", "aac", sample_rate=44100, channels=2),
    }
    pat, pmt = packets(TsMuxer(tracks).header())
    assert pid_of(pat) == 0 and pid_of(pmt) == mpegts.PMT_PID
    for packet in (pat, pmt):
        assert packet[1] & 0x40  # payload_unit_start_indicator
        body = packet[4 + 1 + packet[4] :]  # after the adaptation field
        section = body[1 + body[0] :]
        length = ((section[1] & 0x0F) << 8) | section[2]
        assert mpegts.crc32_mpeg2(section[: 3 + length]) == 0
        assert set(section[3 + length :]) <= {0xFF}
    section = pmt[pmt[4] + 5 + 1 :]
    assert section[0] == 0x02
    assert ((section[8] & 0x1F) << 8) | section[9] == mpegts.VIDEO_PID  # PCR PID
    streams = section[12:-4][:10]
    assert (streams[0], ((streams[1] & 0x1F) << 8) | streams[2]) == (0x1B, mpegts.VIDEO_PID)
    assert (streams[5], ((streams[6] & 0x1F) << 8) | streams[7]) == (0x0F, mpegts.AUDIO_PID)
    assert mpegts.crc32_mpeg2(b"123456789") == 0x0376E6E7  # the CRC-32/MPEG-2 check value


@pytest.mark.parametrize("codec,stream_type", [("mpeg1video", 1), ("mp2", 3), ("h264", 0x1B), ("aac", 0x0F)])
def test_stream_types(codec: str, stream_type: int) -> None:
    kind = kind_of(codec)
    track = Track(kind, codec, sample_rate=48000, channels=2)
    _, pmt = packets(TsMuxer({kind: track}).header())
    assert pmt[pmt[4] + 5 + 1 + 12] == stream_type
    if codec == "mp2":
        low = Track("audio", "mp2", sample_rate=22050, channels=1)
        _, pmt = packets(TsMuxer({"audio": low}).header())
        assert pmt[pmt[4] + 5 + 1 + 12] == 0x04


@pytest.mark.parametrize(
    "size", [0, 1, 100, 150, 155, 156, 157, 340, 341, 342, 343, 500, 1000, 65500, 65535, 70000, 200000]
)
def test_pes_packetization(size: int) -> None:
    """Whole packets; PES header in the first; an adaptation field only in the first and last."""
    track = _mpeg1_track()
    muxer = TsMuxer({"video": track})
    noise = random.Random(size).randbytes(size).replace(b"\x00", b"\x01")  # no start codes
    seq = b"\x00\x00\x01\xb3\x14\x00\xf0\x15\xff\xff\xe0\x00"  # 320x240, 30 fps
    payload = seq + b"\x00\x00\x01\x00\x00\x08" + noise  # then an I picture header
    for keyframe in (True, False):
        out = muxer.mux(Frame(track, payload, 3000, 3000, Fraction(1, 90000), keyframe))
        pes = [p for p in packets(out) if pid_of(p) == mpegts.VIDEO_PID]
        assert pes[0][1] & 0x40 and all(not p[1] & 0x40 for p in pes[1:])
        first_payload = pes[0][5 + pes[0][4] :] if pes[0][3] & 0x20 else pes[0][4:]
        assert first_payload[:4] == b"\x00\x00\x01\xe0" and len(first_payload) >= 19
        for p in pes[1:-1]:
            assert p[3] & 0x30 == 0x10  # continuation packets: payload only
        if len(pes) > 1:
            assert pes[-1][3] & 0x20  # the last one carries stuffing (jsmpeg's end-of-frame cue)
        assert len(pes) == -(-(len(payload) + 14 + (8 if keyframe else 7)) // 184) + (
            1 if (len(payload) + 14 + (8 if keyframe else 7)) % 184 == 0 and len(pes) > 1 else 0
        )
        ccs = [p[3] & 0x0F for p in pes]
        assert all((b - a) & 15 == 1 for a, b in itertools.pairwise(ccs))
        length = (first_payload[4] << 8) | first_payload[5]
        assert length == (0 if len(payload) + 8 > 0xFFFF else len(payload) + 8)
        demuxer = TsDemuxer()
        frames = demuxer.receive_data(muxer.header() + out) + demuxer.flush()
        assert [(f.data, f.pts, f.keyframe) for f in frames] == [(payload, 3000 + OFFSET, True)]
        assert (frames[0].track.width, frames[0].track.height, frames[0].track.frame_rate) == (320, 240, 30.0)


def test_timestamps_and_pcr() -> None:
    track = Track("audio", "mp2", sample_rate=48000, channels=2)
    muxer = TsMuxer({"audio": track}, offset=0.0, pcr_delay=0.0)
    # 1/48000 time base: 1152 samples = 2160 ticks exactly; 1/44100 rounds to nearest
    assert mpegts.to_90k(1152, Fraction(1, 48000)) == 2160
    assert mpegts.to_90k(1152, Fraction(1, 44100)) == 2351  # 2351.02
    assert mpegts.to_90k(33, MS) == 2970
    assert mpegts.to_90k(-1, MS) == -90
    frame = b"\xff\xfd\x84\x00" + bytes(380)  # MPEG-1 layer II 128 kb/s 48 kHz: 384 bytes
    out = muxer.mux(Frame(track, frame, 1152 * 1000, 1152 * 1000, Fraction(1, 48000), True))
    pes = next(p for p in packets(out) if pid_of(p) == mpegts.AUDIO_PID)
    assert pes[5] & 0x10
    pcr = (pes[6] << 25) | (pes[7] << 17) | (pes[8] << 9) | (pes[9] << 1) | (pes[10] >> 7)
    assert pcr == 2160 * 1000
    header = pes[5 + pes[4] :]
    assert header[7] >> 6 == 2  # PTS only
    assert decode_ts(header, 9) == 2160 * 1000
    demuxer = TsDemuxer()
    (back,) = demuxer.receive_data(out) + demuxer.flush()
    assert (back.pts, back.data) == (2160000, frame)
    assert (back.track.bitrate, back.track.sample_rate) == (128000, 48000)


def test_codec_headers() -> None:
    """The MPEG video / audio header parsers the demuxer uses, and their own error types."""
    header = mpegaudio.parse_mpeg_audio_header(b"\x00\xff\xfd\x84\x00", 1)  # layer II 128k 48k
    assert header == mpegaudio.MpegAudioHeader(2, 48000, 2, 128000, 384, 1152)
    for bad in (b"\xff\xfd\x84", b"\xff\x00\x84\x00", b"\xff\xfd\xf4\x00"):
        with pytest.raises(mpegaudio.MpegAudioError):  # truncated, no sync, bad bitrate index
            mpegaudio.parse_mpeg_audio_header(bad)
    seq = b"\x00\x00\x01\xb3\x14\x00\xf0\x13\xff\xff\xe0\x00"  # 320x240, 25 Hz, VBR
    assert mpeg1video.parse_mpeg_video_sequence(b"\x00" + seq, 1) == mpeg1video.MpegVideoSequence(
        320, 240, 25.0, 0
    )
    with pytest.raises(mpeg1video.Mpeg1VideoError):
        mpeg1video.parse_mpeg_video_sequence(seq[:11])
    picture = b"\x00\x00\x01\x00\x00\x18"  # temporal reference 0, picture_coding_type 3
    assert mpeg1video.find_picture_coding_type(seq + picture) == mpeg1video.PICTURE_B
    assert not mpeg1video.is_mpeg2_sequence(seq + picture, 0)
    assert mpeg1video.is_mpeg2_sequence(seq + b"\x00\x00\x01\xb5\x14" + picture, 0)
    with pytest.raises(mpeg1video.Mpeg1VideoError):
        mpeg1video.find_picture_coding_type(seq)


def test_timestamp_wrap_is_unwrapped() -> None:
    track = Track("audio", "mp2", sample_rate=48000, channels=2)
    muxer = TsMuxer({"audio": track}, offset=0.0)
    frame = b"\xff\xfd\x84\x00" + bytes(380)
    start = (1 << 33) - 2160 * 2
    data = b"".join(
        muxer.mux(Frame(track, frame, start + i * 2160, start + i * 2160, Fraction(1, 90000), True))
        for i in range(5)
    )
    demuxer = TsDemuxer()
    frames = demuxer.receive_data(data) + demuxer.flush()
    assert [f.pts for f in frames] == [start + i * 2160 for i in range(5)]


def test_h264_gets_aud_and_parameter_sets(ts_files: dict[str, Path]) -> None:
    tracks, frames = pyav_frames(ts_files["h264"])
    muxer = TsMuxer(tracks)
    key = next(f for f in frames if f.kind == "video" and f.keyframe)
    delta = next(f for f in frames if f.kind == "video" and not f.keyframe)
    for frame, want in ((key, [9, 7, 8]), (delta, [9])):
        video = [p for p in packets(muxer.mux(frame)) if pid_of(p) == mpegts.VIDEO_PID]
        payload = b"".join(p[4 + (1 + p[4] if p[3] & 0x20 else 0) :] for p in video)
        es = payload[9 + payload[8] :]
        types = [nal[0] & 0x1F for nal in h264.split_annexb(es)]
        assert types[: len(want)] == want


def test_track_change_bumps_pmt_version() -> None:
    video = _mpeg1_track()
    muxer = TsMuxer({"video": video})
    seq = b"\x00\x00\x01\xb3\x14\x00\xf0\x15\xff\xff\xe0\x00" + b"\x00\x00\x01\x00\x00\x08" + bytes(50)
    muxer.mux(Frame(video, seq, 0, 0, MS, True))
    audio = Track("audio", "mp2", sample_rate=44100, channels=2)
    out = muxer.mux(Frame(audio, b"\xff\xfd\x84\x00" + bytes(413), 0, 0, MS, False))
    pat, pmt = packets(out)[:2]
    assert pid_of(pat) == 0 and pid_of(pmt) == mpegts.PMT_PID and (pmt[pmt[4] + 5 + 1 + 5] >> 1) & 0x1F == 1
    assert set(muxer.tracks) == {"video", "audio"}


def test_mux_rejects_what_ts_cannot_carry() -> None:
    with pytest.raises(TsError):
        TsMuxer({"video": Track("video", "vp8")})
    muxer = TsMuxer({"audio": Track("audio", "mp2")})
    with pytest.raises(TsError):
        muxer.mux(Frame(Track("audio", "opus"), b"x", 0, 0))
    h = Track("video", "h264", config=b"")
    with pytest.raises(TsError):
        TsMuxer({"video": h}).mux(Frame(h, b"\x00\x00\x00\x09abc", 0, 0))  # NAL length overruns


# --- demuxer robustness ---------------------------------------------------------------------


def _sample_stream(ts_files: dict[str, Path], n: int = 1500) -> bytes:
    return ts_files["mpeg1"].read_bytes()[: 188 * n]


def test_resync_after_garbage(ts_files: dict[str, Path]) -> None:
    data = _sample_stream(ts_files)
    _, clean = demux_all(data)
    demuxer, frames = demux_all(b"\x47garbage\x00" * 50 + data)
    assert [f.pts for f in frames] == [f.pts for f in clean]
    assert demuxer.errors >= 1
    # Bytes lost mid-stream: the damaged PES is dropped, later ones come through.
    cut = data[: 188 * 100 + 50] + data[188 * 101 + 50 :]
    demuxer, frames = demux_all(cut)
    assert 0 < len(frames) < len(clean) and demuxer.errors >= 1
    assert {f.pts for f in frames} <= {f.pts for f in clean}


def test_lost_packets_drop_damaged_pes(ts_files: dict[str, Path]) -> None:
    data = _sample_stream(ts_files)
    _, clean = demux_all(data)
    pk = packets(data)
    starts = [i for i, p in enumerate(pk) if pid_of(p) == mpegts.VIDEO_PID and p[1] & 0x40]
    video = [f for f in clean if f.kind == "video"]
    # the second packet of a P picture late in the sample (so the sequence header is known)
    n = next(n for n in range(len(video) - 2, 0, -1) if not video[n].keyframe)
    lost = next(i for i in range(starts[n] + 1, starts[n + 1]) if pid_of(pk[i]) == mpegts.VIDEO_PID)
    del pk[lost]
    demuxer, frames = demux_all(b"".join(pk))
    assert len(frames) == len(clean) - 1 and demuxer.errors == 1


def test_unsyncable_garbage_raises() -> None:
    with pytest.raises(TsError, match=r"^no MPEG-TS sync in \d+ bytes$"):  # nothing to name
        TsDemuxer().receive_data(bytes(100_000))
    demuxer = TsDemuxer(max_garbage=10_000)
    with pytest.raises(TsError):
        for _ in range(100):
            demuxer.receive_data(b"\x47" + bytes(999))


NOT_TS = {  # what is sent by mistake where MPEG-TS belongs -> FFmpeg options and the name we expect
    "flv": (["-c:v", "libx264", "-c:a", "aac", "-f", "flv"], "FLV"),
    "mp4": (["-c:v", "libx264", "-c:a", "aac", "-f", "mp4"], "MP4 / MOV"),
    "fmp4": (["-c:v", "libx264", "-c:a", "aac", "-f", "mp4", "-movflags", "frag_keyframe+empty_moov"],
             "MP4 / MOV"),
    "webm": (["-c:v", "libvpx", "-c:a", "libopus", "-f", "webm"], "Matroska / WebM"),
    "m1v": (["-c:v", "mpeg1video", "-an", "-f", "mpeg1video"], "raw MPEG-1/2 video (-f mpeg1video"),
    "mpg": (["-c:v", "mpeg1video", "-c:a", "mp2", "-f", "mpeg"], "MPEG program stream"),
    "h264": (["-c:v", "libx264", "-an", "-f", "h264"], "raw H.264 / HEVC (Annex B)"),
    "adts": (["-vn", "-c:a", "aac", "-b:a", "320k", "-f", "adts"], "raw AAC (ADTS)"),
    "m2ts": (["-c:v", "libx264", "-c:a", "aac", "-f", "mpegts", "-mpegts_m2ts_mode", "1"],
             "192-byte packets (M2TS / BDAV)"),
}


@pytest.mark.parametrize("name", sorted(NOT_TS))
def test_a_stream_that_is_not_ts_is_refused_naming_what_it_is(name: str, tmp_path: Path) -> None:
    """A publisher that sent FLV, MP4, a raw stream... is told what it sent, not only 'no sync'."""
    opts, what = NOT_TS[name]
    path = tmp_path / f"x.{name}"
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30",
         "-f", "lavfi", "-i", "anoisesrc=amplitude=0.3:sample_rate=48000",
         "-t", "4", *opts, str(path)],
        check=True, timeout=120,
    )  # fmt: skip
    data = path.read_bytes()
    assert len(data) > 70_000
    with pytest.raises(TsError) as e:
        demux_all(data, chunk=4000)
    assert str(e.value).startswith("no MPEG-TS sync in ")
    assert f"the data looks like {what}" in str(e.value), str(e.value)
    assert "send MPEG-TS (FFmpeg: -f mpegts)" in str(e.value)


def test_unsupported_streams_are_listed_and_a_ts_of_only_those_is_refused(tmp_path: Path) -> None:
    hevc = ["-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error"]
    mixed = _ffmpeg_ts(tmp_path / "hevc-mp2.ts", hevc, ["-c:a", "mp2"], seconds=1).read_bytes()
    demuxer, frames = demux_all(mixed)
    assert list(demuxer.unsupported.values()) == [(0x24, "HEVC video")]
    assert {f.track.codec for f in frames} == {"mp2"}  # the audio still comes through
    assert stream_type_content(0x99) == "stream type 0x99"

    only = _ffmpeg_ts(tmp_path / "hevc.ts", hevc, ["-an"], seconds=1).read_bytes()
    with pytest.raises(TsError, match=r"no stream the gateway can take: the TS carries HEVC video \(PID 256\)"):
        demux_all(only)


def test_mpeg2_video_and_mp3_under_taken_stream_types_are_listed_too(tmp_path: Path) -> None:
    mpeg2 = ["-c:v", "mpeg2video", "-bf", "0"]
    d, frames = demux_all(_ffmpeg_ts(tmp_path / "m2.ts", mpeg2, ["-c:a", "mp2"], 1).read_bytes())
    assert list(d.unsupported.values()) == [(0x02, "MPEG-2 video")]
    assert {f.track.codec for f in frames} == {"mp2"}
    assert d.announced == {"audio"}  # viewers must not wait for a video that cannot come
    mp3 = ["-c:a", "libmp3lame"]
    d, frames = demux_all(_ffmpeg_ts(tmp_path / "mp3.ts", ["-c:v", "mpeg1video"], mp3, 1).read_bytes())
    assert list(d.unsupported.values()) == [(0x03, "MPEG audio layer III (MP3)")]
    assert {f.track.codec for f in frames} == {"mpeg1video"}
    assert d.announced == {"video"}
    with pytest.raises(TsError, match=r"no stream the gateway can take: .*") as e:
        demux_all(_ffmpeg_ts(tmp_path / "both.ts", mpeg2, mp3, 1).read_bytes())
    assert "MPEG-2 video (PID 256)" in str(e.value) and "layer III (MP3) (PID 257)" in str(e.value)


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=6000), st.integers(1, 3000))
def test_fuzz_arbitrary_bytes(data: bytes, chunk: int) -> None:
    demuxer = TsDemuxer()
    try:
        for i in range(0, len(data), chunk):
            demuxer.receive_data(data[i : i + chunk])
        demuxer.flush()
    except TsError:
        pass


_VALID: list[bytes] = []


def _valid_stream() -> bytes:
    """A short muxed stream with every codec, for mutation fuzzing."""
    if not _VALID:
        sps = bytes.fromhex("6764001eacd940a02ff970110000030001000003003c0f162d96")  # x264 640x360
        pps = bytes.fromhex("68ef8fcb")
        avc = h264.build_avc_config([sps], [pps])
        v = Track("video", "h264", config=avc)
        a = Track("audio", "aac", config=aac.build_asc(2, 44100, 2), sample_rate=44100, channels=2)
        muxer = TsMuxer({"video": v, "audio": a})
        parts = []
        for i in range(6):
            key = i % 3 == 0
            au = h264.join_avcc([(b"\x65\x88" if key else b"\x41\x9a") + bytes(range(256)) * 3])
            parts.append(muxer.mux(Frame(v, au, i * 33, i * 33, MS, key)))
            parts.append(muxer.mux(Frame(a, b"\x21\x10" + bytes(300), i * 23, i * 23, MS, True)))
        m1 = _mpeg1_track()
        mm = TsMuxer({"video": m1, "audio": Track("audio", "mp2", sample_rate=48000, channels=2)})
        seq = b"\x00\x00\x01\xb3\x14\x00\xf0\x15\xff\xff\xe0\x00\x00\x00\x01\x00\x00\x08" + bytes(400)
        parts.append(mm.mux(Frame(m1, seq, 0, 0, MS, True)))
        parts.append(mm.mux(Frame(mm.tracks["audio"], b"\xff\xfd\x84\x00" + bytes(380), 0, 0, MS, True)))
        _VALID.append(b"".join(parts))
    return _VALID[0]


@settings(max_examples=300, deadline=2000)
@given(st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), max_size=30), st.integers(1, 5000))
def test_fuzz_mutated_stream(flips: list[tuple[int, int]], chunk: int) -> None:
    data = bytearray(_valid_stream())
    for where, value in flips:
        data[where % len(data)] = value
    demuxer = TsDemuxer()
    try:
        for i in range(0, len(data), chunk):
            demuxer.receive_data(bytes(data[i : i + chunk]))
        demuxer.flush()
    except TsError:
        pass


def test_valid_stream_demuxes() -> None:
    demuxer, frames = demux_all(_valid_stream())
    assert demuxer.errors == 0
    kinds = [(f.codec, f.keyframe) for f in frames]
    assert kinds.count(("h264", True)) == 2 and kinds.count(("h264", False)) == 4
    assert kinds.count(("aac", True)) == 6
    assert ("mpeg1video", True) in kinds and ("mp2", True) in kinds


def test_the_pmt_announces_the_kinds_before_their_first_frames(ts_files: dict[str, Path]) -> None:
    """What a publisher will send, known from its PMT (the first packets), not from its first
    frames: the hub lets a viewer wait for an announced kind (``Stream.expect``)."""
    data = ts_files["h264"].read_bytes()
    d = TsDemuxer()
    frames = d.receive_data(data[:188 * 3])  # PAT, PMT and one packet: no frame yet
    assert not frames and not d.tracks
    assert d.announced == {"video", "audio"}
    audio_only = TsMuxer({"audio": Track(kind="audio", codec="mp2", sample_rate=44100, channels=2)})
    d = TsDemuxer()
    d.receive_data(audio_only.header() * 2)  # (the demuxer syncs on a few packets first)
    assert d.announced == {"audio"}
