"""FLV tags and bodies: layout, round trips, FFmpeg interop both ways, and fuzzing."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections import Counter
from fractions import Fraction
from pathlib import Path

import av
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs import h264
from gateway.media import Track
from gateway.wire import flv
from gateway.wire.flv import FlvError
from gateway.wire.rtmp import amf0

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
FFPROBE = shutil.which("ffprobe") or "ffprobe"


def read_all(data: bytes, chunk: int = 1000) -> list[flv.Tag]:
    reader = flv.FlvReader()
    tags: list[flv.Tag] = []
    for i in range(0, len(data), chunk):
        tags += reader.receive_data(data[i : i + chunk])
    reader.close()
    return tags


# --- layout ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("audio", "video", "flags"), [(True, True, 5), (True, False, 4), (False, True, 1)])
def test_header_flags(audio: bool, video: bool, flags: int) -> None:
    header = flv.FLV_HEADER(audio, video)
    assert header == b"FLV\x01" + bytes((flags,)) + b"\x00\x00\x00\x09\x00\x00\x00\x00"
    reader = flv.FlvReader()
    assert reader.receive_data(header) == []
    assert reader.header == flv.FlvHeader(1, audio, video)


def test_encode_tag_layout() -> None:
    tag = flv.encode_tag(flv.TAG_VIDEO, 0x12345678, b"abc")
    assert tag[:11] == bytes((9, 0, 0, 3, 0x34, 0x56, 0x78, 0x12, 0, 0, 0))
    assert tag[11:14] == b"abc"
    assert tag[14:] == (14).to_bytes(4, "big")


@pytest.mark.parametrize("ts", [0, 1, 0xFFFFFF, 0x1000000, 0x1000001, 0x7FFFFFFF, 0xFFFFFFFF])
def test_extended_timestamps_round_trip(ts: int) -> None:
    (tag,) = read_all(flv.FLV_HEADER() + flv.encode_tag(flv.TAG_AUDIO, ts, b"\xaf\x01x"))
    assert (tag.tag_type, tag.timestamp, tag.body) == (flv.TAG_AUDIO, ts, b"\xaf\x01x")


def test_encode_tag_limits() -> None:
    (tag,) = read_all(flv.FLV_HEADER() + flv.encode_tag(flv.TAG_AUDIO, (1 << 32) + 7, b""))
    assert tag.timestamp == 7  # FLV time wraps at 2**32 ms
    with pytest.raises(FlvError):
        flv.encode_tag(flv.TAG_VIDEO, -1, b"")
    with pytest.raises(FlvError):
        flv.encode_tag(flv.TAG_VIDEO, 0, bytes(1 << 24))
    with pytest.raises(FlvError):
        flv.encode_tag(64, 0, b"")


@pytest.mark.parametrize("cts", [-33, 0, 66, 0x7FFFFF, -0x800000, -1, 1])
def test_signed_cts_round_trip(cts: int) -> None:
    body = flv.video_body_avc(cts >= 0, flv.AVC_NALU, cts, b"\x00\x00\x00\x01\x65")
    tag = flv.parse_video_body(body)
    assert tag.cts == cts and tag.codec_id == 7 and tag.avc_packet_type == 1
    assert tag.keyframe is (cts >= 0) and tag.payload == b"\x00\x00\x00\x01\x65"


@pytest.mark.parametrize("cts", [0x800000, -0x800001])
def test_cts_out_of_range(cts: int) -> None:
    with pytest.raises(FlvError):
        flv.video_body_avc(False, 1, cts, b"")


def test_sequence_headers_and_audio_flags() -> None:
    seq = flv.parse_video_body(flv.video_seq_header_avc(b"\x01config"))
    assert seq.is_avc_sequence_header and seq.keyframe and seq.payload == b"\x01config"
    assert flv.parse_video_body(flv.video_end_of_sequence_avc()).avc_packet_type == 2
    body = flv.audio_body_aac(flv.AAC_RAW, b"raw", 22050, 1)
    assert body == b"\xaf\x01raw"  # 0xAF regardless of the real rate/channels
    tag = flv.parse_audio_body(body)
    assert (tag.sound_format, tag.rate, tag.size, tag.channels) == (10, 44100, 16, 2)
    assert (tag.aac_packet_type, tag.payload) == (1, b"raw")
    head = flv.parse_audio_body(flv.audio_seq_header_aac(b"\x12\x10"))
    assert head.is_aac_sequence_header and head.payload == b"\x12\x10"
    mp3 = flv.parse_audio_body(b"\x22abc")
    assert (mp3.sound_format, mp3.rate, mp3.size, mp3.channels, mp3.aac_packet_type) == (2, 5512, 16, 1, None)
    with pytest.raises(FlvError):
        flv.audio_body_aac(2, b"")


@pytest.mark.parametrize(
    "body",
    [b"", b"\x17\x01\x00", b"\x07\x01\x00\x00\x00", b"\x97\x01\x00\x00\x00", b"\x17\x03\x00\x00\x00"],
)
def test_bad_video_bodies(body: bytes) -> None:
    with pytest.raises(FlvError):
        flv.parse_video_body(body)


def test_other_video_codecs_and_info_frames() -> None:
    vp6 = flv.parse_video_body(b"\x24payload")
    assert (vp6.codec_id, vp6.frame_type, vp6.avc_packet_type, vp6.payload) == (4, 2, None, b"payload")
    info = flv.parse_video_body(b"\x57\x00")
    assert info.frame_type == 5 and not info.keyframe


def test_script_body_round_trip() -> None:
    body = flv.script_tag_body("onMetaData", {"width": 640.0, "title": "x"})
    assert amf0.decode_all(body) == ["onMetaData", {"width": 640.0, "title": "x"}]
    assert isinstance(amf0.decode_all(body)[1], amf0.ECMAArray)
    name, values = flv.parse_script_body(body)
    assert name == "onMetaData" and values == [{"width": 640.0, "title": "x"}]
    wrapped = amf0.encode("@setDataFrame", "onMetaData", amf0.ECMAArray(a=1.0))
    assert flv.parse_script_body(wrapped) == ("onMetaData", [{"a": 1.0}])
    for bad in (b"", b"\x00\x00", amf0.encode(1.0, "x"), b"\x02\x00\x05ab"):
        with pytest.raises(FlvError):
            flv.parse_script_body(bad)


# --- reader ---------------------------------------------------------------------------------

tag_strategy = st.tuples(
    st.sampled_from([flv.TAG_AUDIO, flv.TAG_VIDEO, flv.TAG_SCRIPT]),
    st.integers(0, 0xFFFFFFFF),
    st.binary(max_size=300),
)


@given(st.lists(tag_strategy, max_size=10), st.integers(1, 400), st.booleans())
def test_reader_round_trip_any_chunking(tags: list[tuple[int, int, bytes]], chunk: int, pad: bool) -> None:
    header = flv.FLV_HEADER()
    if pad:  # DataOffset > 9: extra header bytes must be skipped
        header = header[:5] + (12).to_bytes(4, "big") + b"\xff\xff\xff" + header[9:]
    data = header + b"".join(flv.encode_tag(*t) for t in tags)
    assert [(t.tag_type, t.timestamp, t.body) for t in read_all(data, chunk)] == tags


def test_reader_emits_tag_before_its_previous_tag_size() -> None:
    reader = flv.FlvReader()
    data = flv.FLV_HEADER() + flv.encode_tag(flv.TAG_VIDEO, 5, b"body")
    assert reader.receive_data(data[:-4]) == [flv.Tag(flv.TAG_VIDEO, 5, b"body")]
    assert reader.receive_data(data[-4:]) == []
    reader.close()


def test_reader_errors() -> None:
    with pytest.raises(FlvError):
        flv.FlvReader().receive_data(b"FLX")
    with pytest.raises(FlvError):
        flv.FlvReader().receive_data(b"FLV\x02\x05\x00\x00\x00\x09")
    with pytest.raises(FlvError):
        flv.FlvReader().receive_data(b"FLV\x01\x05\x00\x00\x00\x03")
    small = flv.FlvReader(max_tag_size=100)
    with pytest.raises(FlvError, match="limit"):
        small.receive_data(flv.FLV_HEADER() + flv.encode_tag(9, 0, bytes(101))[:20])
    with pytest.raises(FlvError):
        small.receive_data(b"")  # unusable after an error
    reserved = bytearray(flv.encode_tag(9, 0, b"x"))
    reserved[0] |= 0x20  # encrypted/filtered tag
    with pytest.raises(FlvError):
        flv.FlvReader().receive_data(flv.FLV_HEADER() + bytes(reserved))
    truncated = flv.FlvReader()
    truncated.receive_data(flv.FLV_HEADER() + flv.encode_tag(9, 0, b"xyz")[:12])
    with pytest.raises(FlvError, match="truncated"):
        truncated.close()
    with pytest.raises(FlvError):
        flv.FlvReader().close()


# --- glue to the internal model -----------------------------------------------------------


def _sps(profile_idc: int, with_vui: bool) -> bytes:
    """Tiny 320x240 SPS (baseline/main, POC type 2), optionally with 25 fps VUI timing."""
    bits = f"{profile_idc:08b}" + "00000000" + f"{30:08b}" + "1" + "1" + "011" + "010" + "0"
    bits += "000010100" + "0001111" + "1" + "1" + "0"  # 20x15 MBs, no cropping
    if with_vui:
        bits += "1" + "0000" + "1" + f"{1:032b}" + f"{50:032b}" + "1" + "0000"
    else:
        bits += "0"
    bits += "1"
    bits += "0" * (-len(bits) % 8)
    return b"\x67" + h264.escape_rbsp(int(bits, 2).to_bytes(len(bits) // 8, "big"))


def test_track_from_avc_config_and_metadata_fallback() -> None:
    pps = b"\x68\xce\x38\x80"
    with_vui = h264.build_avc_config([_sps(66, True)], [pps])
    track = flv.track_from_avc_config(with_vui, {"framerate": 30.0, "videodatarate": 800.0})
    assert (track.kind, track.codec, track.config) == ("video", "h264", with_vui)
    assert (track.width, track.height, track.frame_rate) == (320, 240, 25.0)  # SPS wins
    assert (track.profile, track.level, track.has_b_frames) == ("baseline", 3.0, False)
    assert track.bitrate == 800_000
    no_vui = h264.build_avc_config([_sps(77, False)], [pps])
    assert flv.track_from_avc_config(no_vui, {"framerate": 29.97}).frame_rate == 29.97
    assert flv.track_from_avc_config(no_vui, {"fps": 24}).frame_rate == 24.0
    assert flv.track_from_avc_config(no_vui, {"framerate": "junk"}).frame_rate == 0.0
    main = flv.track_from_avc_config(no_vui)
    assert main.profile == "main" and main.has_b_frames and main.frame_rate == 0.0
    with pytest.raises(ValueError):
        flv.track_from_avc_config(b"\x01\x42")


def test_track_from_aac_config_and_back() -> None:
    track = flv.track_from_aac_config(b"\x11\x90", {"audiodatarate": 128})
    assert (track.kind, track.codec, track.sample_rate, track.channels, track.bitrate) == (
        "audio", "aac", 48000, 2, 128_000
    )  # fmt: skip
    assert flv.aac_config_of(track) == b"\x11\x90"
    with pytest.raises(ValueError):
        flv.track_from_aac_config(b"")
    video = flv.track_from_avc_config(h264.build_avc_config([_sps(66, True)], [b"\x68\xce\x38\x80"]))
    assert flv.avc_config_of(video) == video.config
    for bad in (track, Track("video", "vp8"), Track("video", "h264")):
        with pytest.raises(FlvError):
            flv.avc_config_of(bad)
    with pytest.raises(FlvError):
        flv.aac_config_of(video)


def test_on_metadata_is_complete_and_keeps_extras() -> None:
    video = Track("video", "h264", b"", width=1280, height=720, frame_rate=30.0, bitrate=2_500_000)
    audio = Track("audio", "aac", b"", sample_rate=44100, channels=2, bitrate=128_000)
    extra = {"width": 1920.0, "title": "cam 1", "fps": 60.0, "encoder": "obs", "author": "me"}
    meta = flv.on_metadata({"video": video, "audio": audio}, extra)
    assert isinstance(meta, amf0.ECMAArray)
    assert meta == {
        "duration": 0.0, "width": 1280.0, "height": 720.0, "framerate": 30.0,
        "videocodecid": 7.0, "videodatarate": 2500.0, "audiocodecid": 10.0,
        "audiosamplerate": 44100.0, "audiosamplesize": 16.0, "stereo": True,
        "audiochannels": 2.0, "audiodatarate": 128.0, "encoder": "mediagateway",
        "title": "cam 1", "author": "me",
    }  # fmt: skip
    audio_only = flv.on_metadata({"audio": Track("audio", "aac", sample_rate=8000, channels=1)}, extra)
    assert "width" not in audio_only and "videocodecid" not in audio_only
    assert audio_only["stereo"] is False and audio_only["audiochannels"] == 1.0
    body = flv.script_tag_body("onMetaData", meta)
    assert flv.parse_script_body(body) == ("onMetaData", [meta])
    with pytest.raises(FlvError):
        flv.on_metadata({"audio": Track("audio", "opus")}, None)


# --- FFmpeg interop ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ffmpeg_flv(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """FFmpeg-made FLV (for our demuxer) and MP4 (for PyAV -> our muxer), made concurrently."""
    directory = tmp_path_factory.mktemp("flv")
    common = [
        "-f", "lavfi", "-i", "testsrc=size=1280x720:rate=30",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
        "-t", "1", "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "veryfast",
        "-profile:v", "high", "-bf", "2", "-g", "15", "-c:a", "aac", "-ac", "2",
    ]  # fmt: skip
    out = {"flv": directory / "src.flv", "mp4": directory / "src.mp4"}
    procs = [
        subprocess.Popen([FFMPEG, "-hide_banner", "-v", "error", "-y", *common, str(path)])
        for path in out.values()
    ]
    for proc in procs:
        assert proc.wait(60) == 0
    return out


def _ffprobe(path: Path, *args: str) -> dict[str, list[dict[str, str]]]:
    out = subprocess.run(
        [FFPROBE, "-v", "error", *args, "-of", "json", str(path)],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    result: dict[str, list[dict[str, str]]] = json.loads(out.stdout)
    return result


def test_demux_ffmpeg_flv(ffmpeg_flv: dict[str, Path]) -> None:
    data = ffmpeg_flv["flv"].read_bytes()
    tags = read_all(data, chunk=4096)
    video = [flv.parse_video_body(t.body) for t in tags if t.tag_type == flv.TAG_VIDEO]
    audio = [flv.parse_audio_body(t.body) for t in tags if t.tag_type == flv.TAG_AUDIO]
    media_counts = {
        "video": sum(v.avc_packet_type == flv.AVC_NALU for v in video),
        "audio": sum(a.aac_packet_type == flv.AAC_RAW for a in audio),
    }
    entries = "stream=codec_type,nb_read_packets"
    streams = _ffprobe(ffmpeg_flv["flv"], "-count_packets", "-show_entries", entries)
    assert media_counts == {s["codec_type"]: int(s["nb_read_packets"]) for s in streams["streams"]}
    assert Counter(t.tag_type for t in tags)[flv.TAG_SCRIPT] == 1
    name, values = flv.parse_script_body(next(t.body for t in tags if t.tag_type == flv.TAG_SCRIPT))
    assert name == "onMetaData"
    metadata = values[0]
    assert metadata["width"] == 1280.0 and metadata["videocodecid"] == 7.0
    track = flv.track_from_avc_config(next(v.payload for v in video if v.is_avc_sequence_header), metadata)
    assert (track.width, track.height, track.profile, track.frame_rate, track.has_b_frames) == (
        1280, 720, "high", 30.0, True
    )  # fmt: skip
    assert any(v.cts > 0 for v in video)  # B-frames carry composition offsets
    assert all(h264.is_keyframe(v.payload) == v.keyframe for v in video if v.avc_packet_type == 1)
    sound = flv.track_from_aac_config(next(a.payload for a in audio if a.is_aac_sequence_header))
    assert (sound.sample_rate, sound.channels) == (48000, 2)


def _write_flv(src: Path, dst: Path, ts_offset: int, cts_shift: int = 0) -> tuple[int, int]:
    """Remux ``src`` with our encoder from PyAV's AVCC packets; returns (video, audio) counts."""
    with av.open(str(src)) as container:
        vstream, astream = container.streams.video[0], container.streams.audio[0]
        vtrack = flv.track_from_avc_config(bytes(vstream.codec_context.extradata or b""))
        atrack = flv.track_from_aac_config(bytes(astream.codec_context.extradata or b""))

        def ms(value: int, time_base: Fraction) -> int:
            return round(value * time_base * 1000)

        # (dts ms, kind, pts ms, keyframe, AVCC/raw AAC data), copied out while PyAV is open
        packets = sorted(
            (ms(p.dts, p.time_base), p.stream.type, ms(p.pts, p.time_base), p.is_keyframe, bytes(p))
            for p in container.demux()
            if p.size and p.dts is not None
        )
    parts = [
        flv.FLV_HEADER(True, True),
        flv.encode_tag(flv.TAG_SCRIPT, 0, flv.script_tag_body(
            "onMetaData", flv.on_metadata({"video": vtrack, "audio": atrack}, {"title": "t"}))),
        flv.encode_tag(flv.TAG_VIDEO, ts_offset, flv.video_seq_header_avc(flv.avc_config_of(vtrack))),
        flv.encode_tag(flv.TAG_AUDIO, ts_offset, flv.audio_seq_header_aac(flv.aac_config_of(atrack))),
    ]  # fmt: skip
    start = packets[0][0]
    counts = [0, 0]
    for dts_ms, kind, pts_ms, keyframe, data in packets:
        dts = dts_ms - start + ts_offset
        if kind == "video":
            cts = pts_ms - dts_ms - cts_shift
            body = flv.video_body_avc(keyframe, flv.AVC_NALU, cts, data)
            assert h264.is_keyframe(data) == keyframe
            parts.append(flv.encode_tag(flv.TAG_VIDEO, dts + cts_shift, body))
            counts[0] += 1
        else:
            parts.append(flv.encode_tag(flv.TAG_AUDIO, dts, flv.audio_body_aac(1, data)))
            counts[1] += 1
    dst.write_bytes(b"".join(parts))
    return counts[0], counts[1]


def test_our_flv_decodes_in_ffmpeg_across_extended_timestamps(
    ffmpeg_flv: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "ours.flv"
    offset = (1 << 24) - 400  # the 24-bit timestamp rolls into the extension byte mid-file
    n_video, n_audio = _write_flv(ffmpeg_flv["mp4"], out, offset)
    decoded = subprocess.run(
        [FFMPEG, "-v", "error", "-i", str(out), "-f", "null", "-"], capture_output=True, text=True, timeout=60
    )
    assert decoded.returncode == 0 and not decoded.stderr, decoded.stderr
    streams = _ffprobe(out, "-count_frames", "-show_entries", "stream=codec_type,nb_read_frames,width,height")
    counts = {s["codec_type"]: int(s["nb_read_frames"]) for s in streams["streams"]}
    assert counts == {"video": n_video, "audio": n_audio} and n_video == 30
    video = next(s for s in streams["streams"] if s["codec_type"] == "video")
    assert (video["width"], video["height"]) == (1280, 720)
    packets = _ffprobe(out, "-select_streams", "v", "-show_entries", "packet=dts_time")["packets"]
    dts = [float(p["dts_time"]) for p in packets]
    assert dts == sorted(dts) and dts[0] < (1 << 24) / 1000 < dts[-1]


def test_negative_cts_understood_by_ffprobe(ffmpeg_flv: dict[str, Path], tmp_path: Path) -> None:
    # Same presentation times, tag timestamps 200 ms later: every CTS becomes negative.
    plain, shifted = tmp_path / "plain.flv", tmp_path / "shifted.flv"
    _write_flv(ffmpeg_flv["mp4"], plain, 0)
    _write_flv(ffmpeg_flv["mp4"], shifted, 0, cts_shift=200)
    video = [flv.parse_video_body(t.body) for t in read_all(shifted.read_bytes()) if t.tag_type == 9]
    frames = [v for v in video if v.avc_packet_type == flv.AVC_NALU]
    assert all(v.cts <= 0 for v in frames) and any(v.cts < 0 for v in frames)
    args = ("-select_streams", "v", "-show_entries", "packet=pts,dts")
    before = _ffprobe(plain, *args)["packets"]
    after = _ffprobe(shifted, *args)["packets"]
    assert [p["pts"] for p in after] == [p["pts"] for p in before]
    assert [int(p["dts"]) for p in after] == [int(p["dts"]) + 200 for p in before]


# --- fuzzing: only FlvError -------------------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_body_parsers_only_raise_flv_error(data: bytes) -> None:
    for parse in (flv.parse_video_body, flv.parse_audio_body, flv.parse_script_body):
        with contextlib.suppress(FlvError):
            parse(data)


@settings(max_examples=300)
@given(st.binary(max_size=200), st.booleans(), st.integers(1, 64))
def test_reader_only_raises_flv_error(data: bytes, with_header: bool, chunk: int) -> None:
    stream = (flv.FLV_HEADER() if with_header else b"") + data
    reader = flv.FlvReader(max_tag_size=1000)
    try:
        for i in range(0, len(stream), chunk):
            for tag in reader.receive_data(stream[i : i + chunk]):
                assert len(tag.body) <= 1000
        reader.close()
    except FlvError:
        pass
