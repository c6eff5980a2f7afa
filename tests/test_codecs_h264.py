"""H.264 helpers against real encoder output (FFmpeg CLI + ffprobe as the oracle) and fuzzing."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs import h264
from gateway.codecs.h264 import H264Error

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
FFPROBE = shutil.which("ffprobe") or "ffprobe"

# name -> (lavfi size, rate, pix_fmt, extra encoder args,
#          expected width, height, profile, level, fps, may_have_b_frames)
CASES: dict[str, tuple[str, str, str, list[str], int, int, str, float, float, bool]] = {
    "high720": ("1280x720", "30", "yuv420p", ["-profile:v", "high", "-bf", "2"],
                1280, 720, "high", 3.1, 30.0, True),
    "baseline": ("320x240", "30", "yuv420p", ["-profile:v", "baseline"],
                 320, 240, "constrained-baseline", 1.3, 30.0, False),
    "crop718": ("1280x718", "30", "yuv420p", ["-profile:v", "main"],
                1280, 718, "main", 3.1, 30.0, True),
    "crop854": ("854x480", "25", "yuv420p", ["-profile:v", "baseline"],
                854, 480, "constrained-baseline", 3.0, 25.0, False),
    "main_no_b": ("640x366", "15", "yuv420p", ["-profile:v", "main", "-bf", "0"],
                  640, 366, "main", 2.2, 15.0, False),
    "interlaced": ("1920x1080", "50", "yuv420p", ["-x264-params", "interlaced=1"],
                   1920, 1080, "high", 6.2, 50.0, True),
    "high444_odd": ("321x241", "24", "yuv444p", ["-profile:v", "high444"],
                    321, 241, "high444", 1.3, 24.0, True),
    "high422_odd": ("322x241", "24", "yuv422p", ["-profile:v", "high422"],
                    322, 241, "high422", 1.3, 24.0, True),
    "high10_ntsc": ("640x360", "30000/1001", "yuv420p10le", ["-profile:v", "high10"],
                    640, 360, "high10", 3.0, 30000 / 1001, True),
    "scaling_lists": ("640x360", "60", "yuv420p", ["-x264-params", "cqm=jvt"],
                      640, 360, "high", 3.1, 60.0, True),
}  # fmt: skip

PROBE_PROFILES = {
    "high": "High",
    "constrained-baseline": "Constrained Baseline",
    "main": "Main",
    "high444": "High 4:4:4 Predictive",
    "high422": "High 4:2:2",
    "high10": "High 10",
}


def _encode(directory: Path, name: str) -> Path:
    size, rate, pix_fmt, extra, *_ = CASES[name]
    out = directory / f"{name}.h264"
    subprocess.run(
        [FFMPEG, "-hide_banner", "-v", "error", "-y", "-f", "lavfi",
         "-i", f"testsrc=size={size}:rate={rate}", "-frames:v", "3", "-pix_fmt", pix_fmt,
         "-c:v", "libx264", "-preset", "veryfast", *extra,
         str(out)],
        check=True, timeout=60,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Annex B elementary streams made by the FFmpeg CLI, encoded in parallel."""
    directory = tmp_path_factory.mktemp("h264")
    with ThreadPoolExecutor(max_workers=len(CASES)) as pool:
        paths = dict(zip(CASES, pool.map(lambda n: _encode(directory, n), CASES), strict=True))
    return {name: path.read_bytes() for name, path in paths.items()}


def _probe(data: bytes, tmp_path: Path) -> dict[str, object]:
    path = tmp_path / "probe.h264"
    path.write_bytes(data)
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-show_entries",
         "stream=width,height,profile,level,r_frame_rate,has_b_frames", "-of", "json", str(path)],
        check=True, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    stream: dict[str, object] = json.loads(out.stdout)["streams"][0]
    return stream


@pytest.mark.parametrize("name", list(CASES))
def test_sps_of_real_streams(samples: dict[str, bytes], name: str, tmp_path: Path) -> None:
    _, _, _, _, width, height, profile, level, fps, b_frames = CASES[name]
    sps_list, pps_list = h264.extract_parameter_sets(samples[name])
    assert len(sps_list) == 1 and len(pps_list) == 1
    sps = h264.parse_sps(sps_list[0])
    assert (sps.width, sps.height) == (width, height)
    assert sps.profile == profile
    assert sps.level == level
    assert sps.frame_rate == pytest.approx(fps)
    assert sps.may_have_b_frames is b_frames
    # ffprobe agrees on everything it reports.
    probe = _probe(samples[name], tmp_path)
    assert (probe["width"], probe["height"]) == (width, height)
    assert probe["profile"] == PROBE_PROFILES[profile]
    assert probe["level"] == round(level * 10)
    num, den = str(probe["r_frame_rate"]).split("/")
    assert sps.frame_rate == pytest.approx(int(num) / int(den))
    assert (int(str(probe["has_b_frames"])) > 0) is b_frames


def test_sps_details(samples: dict[str, bytes]) -> None:
    def sps_of(name: str) -> h264.Sps:
        return h264.parse_sps(h264.extract_parameter_sets(samples[name])[0][0])

    interlaced = sps_of("interlaced")
    assert not interlaced.frame_mbs_only and interlaced.coded_height == 1088
    assert sps_of("high10_ntsc").bit_depth_luma == 10
    assert sps_of("high444_odd").chroma_format_idc == 3
    assert sps_of("high444_odd").coded_width == 336
    assert sps_of("high720").max_num_reorder_frames == 2
    assert sps_of("main_no_b").max_num_reorder_frames == 0
    assert sps_of("baseline").sar == (1, 1)


def test_avc_config_round_trip(samples: dict[str, bytes]) -> None:
    for name, data in samples.items():
        sps, pps = h264.extract_parameter_sets(data)
        record = h264.build_avc_config(sps, pps)
        config = h264.parse_avc_config(record)
        assert config.sps == tuple(sps) and config.pps == tuple(pps), name
        assert config.nal_length_size == 4
        assert config.profile_idc == sps[0][1] and config.level_idc == sps[0][3]
        assert config.level == h264.parse_sps(sps[0]).level
        if sps[0][1] in (100, 110, 122, 144):
            info = h264.parse_sps(sps[0])
            assert config.chroma_format_idc == info.chroma_format_idc
            assert config.bit_depth_luma == info.bit_depth_luma
        assert h264.build_avc_config(config.sps, config.pps) == record
    two = h264.build_avc_config(sps, pps, nal_length_size=2)
    assert h264.parse_avc_config(two).nal_length_size == 2


def test_avc_config_matches_ffmpeg_avcc(samples: dict[str, bytes], tmp_path: Path) -> None:
    src = tmp_path / "in.h264"
    src.write_bytes(samples["high720"])
    out = tmp_path / "out.mp4"
    subprocess.run([FFMPEG, "-v", "error", "-y", "-i", str(src), "-c", "copy", str(out)],
                   check=True, timeout=30)  # fmt: skip
    import av

    with av.open(str(out)) as container:
        extradata = bytes(container.streams.video[0].codec_context.extradata or b"")
        packets = [bytes(p) for p in container.demux(video=0) if p.size]
    sps, pps = h264.extract_parameter_sets(samples["high720"])
    assert h264.build_avc_config(sps, pps) == extradata
    # AVCC -> Annex B with the config decodes like the original elementary stream.
    config = h264.parse_avc_config(extradata)
    annexb = b"".join(h264.avcc_to_annexb(p, config) for p in packets)
    assert [h264.nal_type(n) for n in h264.split_annexb(annexb)][:2] == [7, 8]
    assert h264.is_keyframe(packets[0]) and not h264.is_keyframe(packets[1])
    rebuilt = tmp_path / "rebuilt.h264"
    rebuilt.write_bytes(annexb)
    decoded = subprocess.run(
        [FFPROBE, "-v", "error", "-count_frames", "-show_entries", "stream=nb_read_frames",
         "-of", "csv=p=0", str(rebuilt)],
        check=True, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert decoded.stdout.strip() == str(len(packets)) and not decoded.stderr


# --- synthetic SPS ------------------------------------------------------------------------


class BitWriter:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, n: int, value: int) -> None:
        self.bits += [(value >> (n - 1 - i)) & 1 for i in range(n)]

    def ue(self, value: int) -> None:
        code = value + 1
        self.u(code.bit_length() * 2 - 1, code)

    def rbsp(self) -> bytes:
        bits = [*self.bits, 1]
        bits += [0] * (-len(bits) % 8)
        return bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))


def synthetic_sps(
    profile_idc: int = 66,
    constraint_flags: int = 0,
    level_idc: int = 30,
    width_mbs: int = 20,
    height_mbs: int = 15,
    crop: tuple[int, int, int, int] | None = None,
    vui_timing: tuple[int, int] | None = None,
) -> bytes:
    w = BitWriter()
    w.u(8, profile_idc)
    w.u(8, constraint_flags)
    w.u(8, level_idc)
    w.ue(0)  # sps id
    if profile_idc == 100:
        w.ue(1)  # chroma_format_idc
        w.ue(0)
        w.ue(0)
        w.u(1, 0)
        w.u(1, 0)
    w.ue(0)  # log2_max_frame_num_minus4
    w.ue(2)  # poc type 2
    w.ue(1)  # max_num_ref_frames
    w.u(1, 0)
    w.ue(width_mbs - 1)
    w.ue(height_mbs - 1)
    w.u(1, 1)  # frame_mbs_only
    w.u(1, 1)  # direct_8x8
    w.u(1, crop is not None)
    for value in crop or ():
        w.ue(value)
    w.u(1, vui_timing is not None)
    if vui_timing is not None:
        w.u(4, 0)  # aspect, overscan, video signal, chroma loc
        w.u(1, 1)
        w.u(32, vui_timing[0])
        w.u(32, vui_timing[1])
        w.u(1, 1)
        w.u(5, 0)  # nal/vcl hrd, pic_struct, bitstream_restriction
    return b"\x67" + h264.escape_rbsp(w.rbsp())


def test_synthetic_sps_without_vui() -> None:
    baseline = h264.parse_sps(synthetic_sps(crop=(1, 2, 3, 4)))
    assert (baseline.width, baseline.height) == (320 - 6, 240 - 14)
    assert baseline.frame_rate is None
    assert baseline.max_num_reorder_frames is None
    assert not baseline.may_have_b_frames  # baseline cannot reorder
    main = h264.parse_sps(synthetic_sps(profile_idc=77, vui_timing=(1001, 60000)))
    assert main.may_have_b_frames  # nothing says otherwise
    assert main.frame_rate == pytest.approx(29.97, abs=0.01)
    assert h264.parse_sps(synthetic_sps(profile_idc=100, constraint_flags=0x0C)).profile == (
        "constrained-high"
    )
    assert h264.parse_sps(synthetic_sps(profile_idc=100, level_idc=9)).level == 1.1  # 1b


def test_emulation_prevention_is_removed() -> None:
    # Huge crop offsets -> long runs of zero bits that need escaping in the NAL.
    nal = synthetic_sps(width_mbs=2048, height_mbs=64, crop=(8191, 2047, 0, 0))
    assert b"\x00\x00\x03" in nal
    sps = h264.parse_sps(nal)
    assert (sps.width, sps.height) == (32768 - 2 * (8191 + 2047), 1024)
    assert h264.unescape_rbsp(b"\x00\x00\x03\x00\x00\x03\x03\x00\x03") == b"\x00\x00\x00\x00\x03\x00\x03"


@pytest.mark.parametrize(
    "nal",
    [
        b"",
        b"\x67",
        b"\x68\x42\x00\x1e\xff",  # PPS, not SPS
        b"\xe7\x42\x00\x1e\xff",  # forbidden bit
        b"\x67\x42\x00\x1e",  # truncated after level
        b"\x67\x42\x00\x1e\x00\x00\x00\x00\x01",  # exp-Golomb over 32 bits
    ],
)
def test_invalid_sps(nal: bytes) -> None:
    with pytest.raises(H264Error):
        h264.parse_sps(nal)


def test_crop_larger_than_picture() -> None:
    with pytest.raises(H264Error, match="cropping"):
        h264.parse_sps(synthetic_sps(crop=(100, 100, 0, 0)))


# --- AVCC / Annex B -----------------------------------------------------------------------


def nal_strategy() -> st.SearchStrategy[bytes]:
    """Valid-looking NAL units: header byte, escaped payload, non-zero last byte."""
    return st.builds(
        lambda kind, ref, body, last: bytes((ref << 5 | kind,)) + h264.escape_rbsp(body + bytes((last,))),
        st.integers(1, 23),
        st.integers(0, 3),
        st.binary(max_size=64),
        st.integers(1, 255),
    )


@given(st.lists(nal_strategy(), max_size=8))
def test_avcc_annexb_round_trip(nals: list[bytes]) -> None:
    for size in (1, 2, 4):
        if size == 1 and any(len(n) > 255 for n in nals):
            continue
        avcc = h264.join_avcc(nals, size)
        assert h264.split_avcc(avcc, size) == nals
        assert h264.avcc_nal_types(avcc, size) == [n[0] & 0x1F for n in nals]
        annexb = h264.avcc_to_annexb(avcc, nal_length_size=size)
        assert h264.split_annexb(annexb) == nals
        assert h264.annexb_to_avcc(annexb, size) == avcc


def test_annexb_start_code_variants() -> None:
    a, b, c = b"\x09\xf0", b"\x67\x42\x00\x1e\x80", b"\x65\x88\x84"
    stream = b"\x00\x00\x00\x01" + a + b"\x00\x00\x01" + b + b"\x00\x00\x00\x00\x01" + c + b"\x00\x00"
    assert h264.split_annexb(stream) == [a, b, c]
    assert h264.split_annexb(b"") == [] and h264.split_annexb(b"\x00\x00") == []
    with pytest.raises(H264Error):
        h264.split_annexb(b"\x65\x88")
    with pytest.raises(H264Error):
        h264.split_annexb(b"\x01\x00\x00\x01\x65")
    assert h264.annexb_to_avcc(stream, drop={h264.NAL_AUD, h264.NAL_SPS}) == h264.join_avcc([c])


def test_parameter_sets_inserted_before_idr() -> None:
    sps, pps = synthetic_sps(), b"\x68\xce\x38\x80"
    config_bytes = h264.build_avc_config([sps], [pps])
    config = h264.parse_avc_config(config_bytes)
    aud, idr, sei, slice_ = b"\x09\xf0", b"\x65\x88\x84\x21", b"\x06\x05\x01\x80", b"\x41\x9a\x02"

    def types(annexb: bytes) -> list[int]:
        return [h264.nal_type(n) for n in h264.split_annexb(annexb)]

    assert types(h264.avcc_to_annexb(h264.join_avcc([aud, sei, idr]), config)) == [9, 7, 8, 6, 5]
    assert types(h264.avcc_to_annexb(h264.join_avcc([idr]), config_bytes)) == [7, 8, 5]
    assert types(h264.avcc_to_annexb(h264.join_avcc([sps, pps, idr]), config)) == [7, 8, 5]
    assert types(h264.avcc_to_annexb(h264.join_avcc([slice_]), config)) == [1]
    assert h264.extract_parameter_sets(h264.avcc_to_annexb(h264.join_avcc([idr]), config)) == (
        [sps],
        [pps],
    )
    assert h264.is_keyframe(h264.join_avcc([aud, idr]))
    assert not h264.is_keyframe(h264.join_avcc([aud, slice_]))


@pytest.mark.parametrize(
    "au",
    [b"\x00\x00\x00", b"\x00\x00\x00\x05\x65", b"\x00\x00\x00\x01\x65\xff\xff\xff\xff"],
)
def test_malformed_nal_lengths(au: bytes) -> None:
    with pytest.raises(H264Error):
        h264.split_avcc(au)
    with pytest.raises(H264Error):
        h264.is_keyframe(au)
    with pytest.raises(H264Error):
        h264.avcc_to_annexb(au)


def test_disposable_means_every_slice_unreferenced() -> None:
    def au(*nals: bytes) -> bytes:
        return h264.join_avcc(nals)

    b_slice, p_slice, idr = b"\x01\x9e", b"\x41\x9a", b"\x65\x88"  # ref_idc 0, 2, 3
    sei = b"\x06\x05"
    assert h264.is_disposable(au(sei, b_slice))
    assert h264.is_disposable(au(b_slice, b_slice))
    assert not h264.is_disposable(au(b_slice, p_slice))  # one referenced slice keeps it all
    assert not h264.is_disposable(au(p_slice)) and not h264.is_disposable(au(idr))
    assert not h264.is_disposable(au(sei))  # no picture at all: nothing to gain by skipping
    assert not h264.is_disposable(b"")


def test_invalid_length_size_and_config() -> None:
    with pytest.raises(H264Error):
        h264.split_avcc(b"", 3)
    with pytest.raises(H264Error):
        h264.build_avc_config([], [])
    with pytest.raises(H264Error):
        h264.build_avc_config([b"\x68\x00\x00\x00"], [])
    with pytest.raises(H264Error):
        h264.join_avcc([b"\x65" * 300], 1)
    record = h264.build_avc_config([synthetic_sps()], [b"\x68\xce\x38\x80"])
    for bad in (record[:6], record[:-2], b"\x02" + record[1:], record[:4] + b"\xfe" + record[5:]):
        with pytest.raises(H264Error):
            h264.parse_avc_config(bad)


@given(st.binary(max_size=256))
def test_escape_round_trip(data: bytes) -> None:
    escaped = h264.escape_rbsp(data)
    assert h264.unescape_rbsp(escaped) == data
    for bad in (b"\x00\x00\x00", b"\x00\x00\x01", b"\x00\x00\x02"):
        assert bad not in escaped


# --- fuzzing: only H264Error ---------------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=96), st.sampled_from([b"", b"\x67", b"\x67\x64", b"\x67\x42"]))
def test_parse_sps_only_raises_h264error(data: bytes, prefix: bytes) -> None:
    try:
        sps = h264.parse_sps(prefix + data)
    except H264Error:
        return
    assert sps.width > 0 and sps.height > 0
    _ = (sps.profile, sps.level, sps.frame_rate, sps.may_have_b_frames)


@settings(max_examples=300)
@given(st.binary(max_size=96), st.sampled_from([b"", b"\x01\x64\x00\x1f\xff\xe1"]))
def test_parse_avc_config_only_raises_h264error(data: bytes, prefix: bytes) -> None:
    with contextlib.suppress(H264Error):
        h264.parse_avc_config(prefix + data)


@settings(max_examples=300)
@given(st.binary(max_size=96), st.sampled_from([1, 2, 4]))
def test_bitstream_functions_only_raise_h264error(data: bytes, size: int) -> None:
    config = h264.parse_avc_config(h264.build_avc_config([synthetic_sps()], [b"\x68\xce\x38\x80"]))
    for call in (
        lambda: h264.split_avcc(data, size),
        lambda: h264.is_keyframe(data, size),
        lambda: h264.is_disposable(data, size),
        lambda: h264.avcc_to_annexb(data, config, size),
        lambda: h264.split_annexb(data),
        lambda: h264.annexb_to_avcc(data),
        lambda: h264.extract_parameter_sets(data),
    ):
        with contextlib.suppress(H264Error):
            call()
