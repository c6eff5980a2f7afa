"""Planner decisions on concrete streams, plus properties that must hold for any source."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # plain `pytest` without an installed package
    sys.path.insert(0, str(ROOT))

from gateway.media import Track
from gateway.planner import (
    Drop,
    Matrix,
    MatrixError,
    PassThrough,
    Plan,
    TargetSpec,
    Transcode,
    check_publish,
    load_matrix,
    negotiate_publish,
    plan,
)

STANDARD_RATES = (23.976, 24.0, 25.0, 29.97, 30.0, 50.0, 59.94, 60.0)
M = load_matrix(ROOT / "matrix")


def h264(**kw: object) -> Track:
    base: dict[str, object] = dict(width=1280, height=720, frame_rate=30.0, profile="baseline")
    return Track("video", "h264", **{**base, **kw})  # type: ignore[arg-type]


def aac(**kw: object) -> Track:
    return Track("audio", "aac", **{**dict(sample_rate=44100, channels=2), **kw})  # type: ignore[arg-type]


def opus(**kw: object) -> Track:
    return Track("audio", "opus", **{**dict(sample_rate=48000, channels=2), **kw})  # type: ignore[arg-type]


def av(video: Track, audio: Track) -> dict[str, Track]:
    return {"video": video, "audio": audio}


def transcode(p: Plan, kind: str) -> Transcode:
    t = p[kind]
    assert isinstance(t, Transcode), f"expected a transcode, got {t}"
    return t


# --- the cases from the design ----------------------------------------------------------------


def test_high_profile_with_b_frames_to_webrtc() -> None:
    p = plan(M, av(h264(profile="high", has_b_frames=True), aac()), "webrtc")
    v = transcode(p, "video")
    assert (v.from_codec, v.to_codec) == ("h264", "h264")
    assert v.params["b_frames"] is False
    assert (v.params["width"], v.params["height"], v.params["frame_rate"]) == (1280, 720, 30.0)
    assert {"bitrate", "gop"} <= set(v.params)
    a = transcode(p, "audio")
    assert (a.from_codec, a.to_codec) == ("aac", "opus")
    assert a.params["sample_rate"] == 48000 and a.params["channels"] == 2
    assert not p.passthrough_all


def test_baseline_h264_to_webrtc_passes_video() -> None:
    p = plan(M, av(h264(), aac()), "webrtc")
    assert p["video"] == PassThrough("video", "h264")
    assert transcode(p, "audio").to_codec == "opus"


def test_vp8_opus_to_rtmp() -> None:
    p = plan(M, av(Track("video", "vp8", width=640, height=480, frame_rate=30.0), opus()), "rtmp")
    assert (transcode(p, "video").from_codec, transcode(p, "video").to_codec) == ("vp8", "h264")
    assert (transcode(p, "audio").from_codec, transcode(p, "audio").to_codec) == ("opus", "aac")


def test_mpeg1_mp2_to_rtmp() -> None:
    src = av(
        Track("video", "mpeg1video", width=640, height=480, frame_rate=25.0),
        Track("audio", "mp2", sample_rate=44100, channels=2),
    )
    p = plan(M, src, "rtmp")
    assert (transcode(p, "video").from_codec, transcode(p, "video").to_codec) == ("mpeg1video", "h264")
    assert (transcode(p, "audio").from_codec, transcode(p, "audio").to_codec) == ("mp2", "aac")


def test_h264_aac_to_h5_gets_even_size_and_standard_rate() -> None:
    p = plan(M, av(h264(width=1280, height=721, frame_rate=15.0), aac()), "h5")
    v = transcode(p, "video")
    assert (v.from_codec, v.to_codec) == ("h264", "mpeg1video")
    assert v.params["width"] % 2 == 0 and v.params["height"] % 2 == 0  # type: ignore[operator]
    assert (v.params["width"], v.params["height"]) == (1280, 720)
    assert v.params["frame_rate"] in STANDARD_RATES
    assert v.params["b_frames"] is False
    a = transcode(p, "audio")
    assert (a.from_codec, a.to_codec) == ("aac", "mp2")
    assert a.params["sample_rate"] in (32000, 44100, 48000)


@pytest.mark.parametrize(("size", "out"), [
    ((1920, 1080), (1280, 720)),    # 1080p -> 720p
    ((1080, 1920), (720, 1280)),    # a phone held upright: the same pixels, turned
    ((3840, 2160), (1280, 720)),
    ((1440, 1080), (1108, 830)),    # 4:3 keeps 4:3 (even sizes)
    ((1280, 720), (1280, 720)),     # at the cap or under it: the source's size
    ((640, 360), (640, 360)),
])
def test_mpeg1_for_jsmpeg_is_at_most_720p_keeping_the_aspect(size: tuple[int, int],
                                                              out: tuple[int, int]) -> None:
    """jsmpeg decodes on the viewer's CPU (phones manage ~720p30), and 1.5 Mbit/s is a 720p
    MPEG-1 rate: the shipped MPEG-1 step has max_pixels = 1280 x 720."""
    v = transcode(plan(M, av(h264(width=size[0], height=size[1], frame_rate=30.0), aac()), "h5"),
                  "video")
    assert (v.params["width"], v.params["height"]) == out
    assert "max_pixels" not in v.params  # a planning rule, not an encoder setting


def test_max_pixels_must_be_a_positive_whole_number(tmp_path: Path) -> None:
    import shutil

    shutil.copytree(ROOT / "matrix", tmp_path / "m")
    toml = tmp_path / "m" / "transcodes.toml"
    toml.write_text(toml.read_text().replace("max_pixels = 921_600", "max_pixels = 0.5"))
    with pytest.raises(MatrixError, match=r"params\.max_pixels: expected a positive whole number"):
        load_matrix(tmp_path / "m")


def test_h5_to_h5_is_none() -> None:
    src = av(
        Track("video", "mpeg1video", width=640, height=480, frame_rate=30000 / 1001),
        Track("audio", "mp2", sample_rate=44100, channels=2),
    )
    p = plan(M, src, "h5")
    assert p.passthrough_all
    assert p["video"] == PassThrough("video", "mpeg1video")


def test_whep_offer_vp8_first_still_passes_h264() -> None:
    spec = TargetSpec("webrtc", {"video": ["vp8", "h264"], "audio": ["opus"]})
    p = plan(M, av(h264(), opus()), spec)
    assert p["video"] == PassThrough("video", "h264")
    assert p.passthrough_all


def test_whep_offer_without_source_codec_transcodes_to_an_offered_one() -> None:
    p = plan(M, av(h264(), opus()), TargetSpec("webrtc", {"video": ["vp8"]}))
    assert transcode(p, "video").to_codec == "vp8"
    p = plan(M, av(Track("video", "mpeg1video", width=640, height=480, frame_rate=25.0), opus()),
             TargetSpec("webrtc", {"video": ["vp8", "h264"]}))
    assert transcode(p, "video").to_codec == "h264"  # the gateway's preference among those offered


def test_offer_with_nothing_usable_drops() -> None:
    p = plan(M, av(h264(), opus()), TargetSpec("webrtc", {"audio": ["pcmu"]}))
    assert isinstance(p["audio"], Drop) and "pcmu" in p["audio"].reason
    assert p["video"] == PassThrough("video", "h264")
    assert "dropped" in str(p)


def test_udp_offered_aac_passes_aac() -> None:
    p = plan(M, av(h264(), aac()), TargetSpec("udp", {"audio": ["aac"]}))
    assert p.passthrough_all


def test_udp_offered_opus_transcodes_aac() -> None:
    p = plan(M, av(h264(), aac()), TargetSpec("udp", {"audio": ["opus"]}))
    a = transcode(p, "audio")
    assert (a.from_codec, a.to_codec, a.params["sample_rate"]) == ("aac", "opus", 48000)
    assert p["video"] == PassThrough("video", "h264")


def test_udp_by_name_accepts_either() -> None:
    assert plan(M, av(h264(), aac()), "udp").passthrough_all
    assert plan(M, av(h264(), opus()), "udp").passthrough_all


def test_opus_44k_to_webrtc_resamples() -> None:
    p = plan(M, av(h264(), opus(sample_rate=44100)), "webrtc")
    a = transcode(p, "audio")
    assert (a.from_codec, a.to_codec, a.params["sample_rate"]) == ("opus", "opus", 48000)


def test_unknown_params_do_not_force_work() -> None:
    p = plan(M, av(Track("video", "h264"), Track("audio", "opus")), "webrtc")
    assert p.passthrough_all


# --- variant keys, str, errors ----------------------------------------------------------------


def test_variant_keys_equal_for_equal_plans() -> None:
    a = plan(M, av(h264(), aac()), "webrtc")
    b = plan(M, av(h264(), aac()), TargetSpec("webrtc", {"video": ["vp8", "h264"], "audio": ["opus"]}))
    assert a == b and a.variant_key() == b.variant_key()
    assert hash(a.variant_key()) == hash(b.variant_key())
    shared = {a.variant_key(): "pipeline"}
    assert shared[b.variant_key()] == "pipeline"
    # rtmp and miniprogram viewers of the same stream share the (pass-through) variant
    assert plan(M, av(h264(), aac()), "rtmp").variant_key() == plan(M, av(h264(), aac()), "miniprogram").variant_key()
    # a different plan is a different variant
    assert plan(M, av(h264(), aac()), TargetSpec("webrtc", {"video": ["vp8"]})).variant_key() != a.variant_key()
    assert plan(M, av(h264(), aac()), "h5").variant_key() != a.variant_key()


def test_str_is_readable() -> None:
    s = str(plan(M, av(h264(has_b_frames=True), aac()), "webrtc"))
    assert s.startswith("plan for webrtc:")
    assert "h264 -> h264" in s and "b_frames=False" in s and "aac -> opus" in s
    assert "pass-through" in str(plan(M, av(h264(), aac()), "rtmp"))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="unknown protocol 'hls'"):
        plan(M, av(h264(), aac()), "hls")
    with pytest.raises(ValueError, match="audio"):
        plan(M, {"video": aac()}, "rtmp")


def test_publish_side_helpers() -> None:
    assert negotiate_publish(M, "webrtc", {"video": ["vp8", "h264"], "audio": ["opus"]}) == {
        "video": "h264",
        "audio": "opus",
    }
    assert negotiate_publish(M, "webrtc", {"video": ["av1"]}) == {"video": None}
    assert check_publish(M, "rtmp", av(h264(), aac())) == []
    assert check_publish(M, "webrtc", av(h264(has_b_frames=True), opus()))  # WHIP refuses B-frames
    assert check_publish(M, "rtmp", av(h264(), opus()))  # FLV can't carry Opus


# --- properties -------------------------------------------------------------------------------

VIDEO = ("h264", "vp8", "mpeg1video")
AUDIO = ("aac", "opus", "mp2")


@st.composite
def sources(draw: st.DrawFn) -> dict[str, Track]:
    unknown_or = lambda s: st.one_of(st.just(0), s)  # noqa: E731
    video = Track(
        "video",
        draw(st.sampled_from(VIDEO)),
        width=draw(unknown_or(st.integers(16, 4096))),
        height=draw(unknown_or(st.integers(16, 2160))),
        frame_rate=draw(st.one_of(st.just(0.0), st.floats(1.0, 120.0))),
        has_b_frames=draw(st.booleans()),
    )
    audio = Track(
        "audio",
        draw(st.sampled_from(AUDIO)),
        sample_rate=draw(unknown_or(st.sampled_from([8000, 16000, 22050, 32000, 44100, 48000, 96000]))),
        channels=draw(unknown_or(st.integers(1, 8))),
    )
    return av(video, audio)


def output_track(source: Track, t: PassThrough | Transcode) -> Track:
    if isinstance(t, PassThrough):
        return source
    p = t.params
    return Track(
        t.kind,  # type: ignore[arg-type]
        t.to_codec,
        width=int(p.get("width", 0)),  # type: ignore[arg-type]
        height=int(p.get("height", 0)),  # type: ignore[arg-type]
        frame_rate=float(p.get("frame_rate", 0.0)),  # type: ignore[arg-type]
        has_b_frames=bool(p.get("b_frames", False)),
        sample_rate=int(p.get("sample_rate", 0)),  # type: ignore[arg-type]
        channels=int(p.get("channels", 0)),  # type: ignore[arg-type]
    )


@settings(max_examples=60, deadline=None)
@given(src=sources(), target=st.sampled_from(M.play_protocols))
def test_transcode_output_is_playable_as_is(src: dict[str, Track], target: str) -> None:
    """Whatever the source, what the plan produces passes straight through to the same target."""
    p = plan(M, src, target)
    assert set(p.tracks) == set(src)
    out = {}
    for kind, t in p.tracks.items():
        assert not isinstance(t, Drop), f"{src[kind]} to {target}: {t}"
        out[kind] = output_track(src[kind], t)
    again = plan(M, out, target)
    assert again.passthrough_all, f"{p} -> {again}"


@settings(max_examples=30, deadline=None)
@given(src=sources(), target=st.sampled_from(M.play_protocols))
def test_planning_is_deterministic(src: dict[str, Track], target: str) -> None:
    assert plan(M, src, target).variant_key() == plan(M, src, target).variant_key()


def test_matrix_is_shared_and_reusable() -> None:
    assert isinstance(M, Matrix) and {M: 1}[M] == 1  # hashable by identity, fine for caches
