"""AAC AudioSpecificConfig and ADTS helpers, checked against FFmpeg's own output and fuzzing."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

import av
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs import aac
from gateway.codecs.aac import AacError

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
FFPROBE = shutil.which("ffprobe") or "ffprobe"


@pytest.mark.parametrize(
    ("asc", "object_type", "sample_rate", "channels"),
    [
        ("1210", 2, 44100, 2),
        ("1190", 2, 48000, 2),
        ("1188", 2, 48000, 1),
        ("138856e500", 2, 22050, 1),  # FFmpeg's, with a trailing sync extension
        ("0a10", 1, 44100, 2),  # AAC Main
        ("11b0", 2, 48000, 6),  # 5.1
        ("11b8", 2, 48000, 8),  # channelConfiguration 7 = 7.1
    ],
)
def test_parse_known_asc(asc: str, object_type: int, sample_rate: int, channels: int) -> None:
    info = aac.parse_asc(bytes.fromhex(asc))
    assert (info.object_type, info.sample_rate, info.channels) == (object_type, sample_rate, channels)
    assert not info.sbr


def test_build_matches_common_configs() -> None:
    assert aac.build_asc(2, 44100, 2) == bytes.fromhex("1210")
    assert aac.build_asc(2, 48000, 2) == bytes.fromhex("1190")
    assert aac.build_asc(2, 48000, 8) == bytes.fromhex("11b8")


def test_explicit_frequency_and_escape_object_type() -> None:
    explicit = aac.build_asc(2, 12345, 2)
    assert explicit[0] >> 3 == 2 and (explicit[0] & 0x07) << 1 | explicit[1] >> 7 == 15
    assert aac.parse_asc(explicit).sample_rate == 12345
    escaped = aac.build_asc(42, 48000, 2)  # USAC: needs the 31 + 6-bit escape
    assert escaped[0] >> 3 == 31
    info = aac.parse_asc(escaped)
    assert (info.object_type, info.sample_rate, info.channels) == (42, 48000, 2)


def test_he_aac_explicit_signalling() -> None:
    he = aac.parse_asc(aac.build_asc(aac.AOT_SBR, 44100, 2))
    assert he.sbr and not he.ps
    assert (he.sample_rate, he.core_sample_rate, he.core_object_type, he.channels) == (44100, 22050, 2, 2)
    v2 = aac.parse_asc(aac.build_asc(aac.AOT_PS, 48000, 2))
    assert v2.ps and v2.channel_config == 1 and v2.channels == 2
    assert aac.parse_asc(bytes.fromhex("2b920800")).sample_rate == 44100  # the usual HE-AAC ASC
    header = aac.parse_adts_header(aac.adts_header_for(he, 100))
    assert (header.object_type, header.sample_rate) == (2, 22050)


@given(
    st.integers(1, 95).filter(lambda t: t not in (aac.AOT_SBR, aac.AOT_PS, 31)),
    st.one_of(st.sampled_from(aac.SAMPLE_RATES), st.integers(1, (1 << 24) - 1)),
    st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 24]),
)
def test_asc_round_trip(object_type: int, sample_rate: int, channels: int) -> None:
    info = aac.parse_asc(aac.build_asc(object_type, sample_rate, channels))
    assert (info.object_type, info.sample_rate, info.channels) == (object_type, sample_rate, channels)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x10", b"\x00\x10", b"\x17\x10", b"\x12\x78", b"\x17\x80\x00", b"\xf8"],
)
def test_invalid_asc(data: bytes) -> None:
    with pytest.raises(AacError):
        aac.parse_asc(data)


def test_build_rejects_unrepresentable() -> None:
    for args in [
        (0, 44100, 2),
        (31, 44100, 2),
        (96, 44100, 2),
        (2, 0, 2),
        (2, 44100, 9),
        (2, 1 << 24, 2),
        (aac.AOT_PS, 44100, 1),
    ]:
        with pytest.raises(AacError):
            aac.build_asc(*args)


# --- ADTS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adts_stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    path = tmp_path_factory.mktemp("aac") / "tone.aac"
    subprocess.run(
        [FFMPEG, "-hide_banner", "-v", "error", "-y", "-f", "lavfi",
         "-i", "sine=frequency=440:sample_rate=48000", "-t", "1", "-c:a", "aac", "-ac", "2",
         "-f", "adts", str(path)],
        check=True, timeout=60,
    )  # fmt: skip
    return path, path.read_bytes()


def test_split_ffmpeg_adts(adts_stream: tuple[Path, bytes], tmp_path: Path) -> None:
    path, data = adts_stream
    frames = aac.split_adts(data)
    packets = subprocess.run(
        [FFPROBE, "-v", "error", "-count_packets", "-show_entries", "stream=nb_read_packets",
         "-of", "csv=p=0", str(path)],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    assert len(frames) == int(packets)
    header = frames[0][0]
    assert (header.object_type, header.sample_rate, header.channels) == (2, 48000, 2)
    assert aac.parse_asc(aac.asc_from_adts(header)).sample_rate == 48000
    # Re-wrap the raw frames with our own headers: FFmpeg must decode them all cleanly.
    config = aac.parse_asc(aac.asc_from_adts(header))
    rebuilt = b"".join(aac.adts_header_for(config, len(raw)) + raw for _, raw in frames)
    assert rebuilt == data  # same header layout FFmpeg writes
    out = tmp_path / "rebuilt.aac"
    out.write_bytes(rebuilt)
    decoded = subprocess.run(
        [FFMPEG, "-v", "error", "-i", str(out), "-f", "null", "-"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert decoded.returncode == 0 and not decoded.stderr


def test_raw_frames_match_pyav(adts_stream: tuple[Path, bytes]) -> None:
    path, data = adts_stream
    with av.open(str(path)) as container:
        sizes = [p.size for p in container.demux(audio=0) if p.size]
    frames = aac.split_adts(data)
    # PyAV's ADTS demuxer hands out whole frames (header included).
    assert [h.frame_length for h, _ in frames] == sizes
    assert all(len(raw) == h.payload_length for h, raw in frames)


def test_adts_round_trip_and_errors() -> None:
    header = aac.build_adts_header(2, 44100, 2, 300)
    frame = header + bytes(300)
    parsed, raw = aac.strip_adts(frame)
    assert (parsed.object_type, parsed.sample_rate, parsed.channels) == (2, 44100, 2)
    assert parsed.frame_length == 307 and parsed.header_length == 7 and raw == bytes(300)
    with pytest.raises(AacError):
        aac.strip_adts(frame[:-1])
    with pytest.raises(AacError):
        aac.build_adts_header(5, 44100, 2, 10)
    with pytest.raises(AacError):
        aac.build_adts_header(2, 12345, 2, 10)
    with pytest.raises(AacError):
        aac.build_adts_header(2, 44100, 2, 8190)
    with pytest.raises(AacError):
        aac.parse_adts_header(b"\xff\xf1\x50")
    with pytest.raises(AacError):
        aac.parse_adts_header(b"\xff\xf7\x50\x80\x02\x1f\xfc")  # layer != 0
    crc = bytearray(header)
    crc[1] &= 0xFE  # protection_absent = 0 -> 9-byte header
    assert aac.parse_adts_header(bytes(crc)).header_length == 9


# --- fuzzing: only AacError ----------------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=32))
def test_parsers_only_raise_aac_error(data: bytes) -> None:
    for call in (
        lambda: aac.parse_asc(data),
        lambda: aac.parse_adts_header(data),
        lambda: aac.split_adts(data),
        lambda: aac.strip_adts(b"\xff\xf1" + data),
        lambda: aac.split_adts(b"\xff\xf1" + data),
    ):
        with contextlib.suppress(AacError):
            call()
