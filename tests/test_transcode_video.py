"""Video transcode steps with real codecs: keyframe first, no B-frames, source timing, decodable.

Clips are made by the FFmpeg CLI in the containers the matching ingests carry (FLV for H.264,
MPEG-TS for MPEG-1, WebM for VP8) and demuxed by PyAV into internal ``Frame``s.
"""

from __future__ import annotations

import itertools
import shutil
import statistics
import subprocess
import time
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import pytest

from gateway import planner
from gateway.codecs import h264
from gateway.media import Frame, Track
from gateway.transcode.factory import make_step
from gateway.transcode.step import Counters
from gateway.transcode.video import Threading, VideoTranscoder, nominal_rate

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
SEQ = b"\x00\x00\x01\xb3"
I, P = int(av.video.frame.PictureType.I), int(av.video.frame.PictureType.P)


def _make(path: Path, size: str, rate: int, enc: list[str], seconds: int = 3) -> Path:
    if not path.exists():
        subprocess.run(
            [FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
             "-i", f"testsrc2=size={size}:rate={rate}", "-t", str(seconds), "-pix_fmt", "yuv420p",
             *enc, str(path)],
            check=True, timeout=120,
        )
    return path


X264_B = ["-c:v", "libx264", "-preset", "veryfast", "-profile:v", "high", "-bf", "2", "-g", "30"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("video")
    return {
        "h264_720p": _make(d / "b720.flv", "1280x720", 30, [*X264_B, "-f", "flv"]),
        "h264_360p": _make(d / "b360.flv", "640x360", 30, [*X264_B, "-f", "flv"]),
        "h264_15fps": _make(d / "b15.flv", "640x360", 15, [*X264_B, "-f", "flv"]),
        "mpeg1": _make(d / "m1.ts", "640x360", 25,
                       ["-c:v", "mpeg1video", "-b:v", "1500k", "-bf", "2", "-g", "25",
                        "-f", "mpegts"]),
        "vp8": _make(d / "v.webm", "640x360", 30,
                     ["-c:v", "libvpx", "-b:v", "1M", "-deadline", "realtime", "-cpu-used", "8",
                      "-g", "30", "-f", "webm"]),
    }


def demux(path: Path) -> tuple[Track, list[Frame]]:
    """Frames as an ingest would produce them (AVCC for H.264, container pts/dts)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        cc = s.codec_context
        codec = {"h264": "h264", "vp8": "vp8", "libvpx": "vp8", "mpeg1video": "mpeg1video"}[cc.name]
        rate = float(s.average_rate or s.guessed_rate or 0)
        track = Track("video", codec, bytes(cc.extradata or b"") if codec == "h264" else b"",
                      width=cc.width, height=cc.height, frame_rate=round(rate, 3),
                      has_b_frames=codec != "vp8")
        tb = Fraction(s.time_base)
        frames = [Frame(track, bytes(p), p.pts, p.dts if p.dts is not None else p.pts, tb,
                        p.is_keyframe) for p in c.demux(s) if p.size]
    return track, frames


def run(step: VideoTranscoder, frames: list[Frame]) -> tuple[list[Frame], list[float]]:
    out: list[Frame] = []
    times: list[float] = []
    for f in frames:
        t0 = time.perf_counter()
        out += step.process(f)
        times.append(time.perf_counter() - t0)
    out += step.flush()
    return out, times


def decode(out: list[Frame]) -> list[av.VideoFrame]:
    track = out[0].track
    ctx = av.CodecContext.create({"h264": "h264", "vp8": "vp8", "mpeg1video": "mpeg1video"}[
        track.codec], "r")
    if track.config:
        ctx.extradata = track.config  # avcC: the AVCC frames decode as they are
    pictures: list[av.VideoFrame] = []
    for f in out:
        p = av.Packet(f.data)
        p.pts = p.dts = f.pts
        pictures += ctx.decode(p)
    pictures += ctx.decode(None)
    return pictures


def check(out: list[Frame], src: list[Frame], codec: str, size: tuple[int, int]) -> None:
    """What every video step promises, whatever the codecs."""
    assert len(out) == len(src)
    track = out[0].track
    assert all(f.track is track for f in out)
    assert track.codec == codec and (track.width, track.height) == size
    assert size[0] % 2 == 0 and size[1] % 2 == 0 and not track.has_b_frames
    assert out[0].keyframe
    # source timing: the source's presentation instants, in its time base, dts == pts
    assert [f.pts for f in out] == sorted(f.pts for f in src)
    assert all(f.dts == f.pts and f.time_base == src[0].time_base for f in out)
    if codec == "mpeg1video":
        assert all(f.data.startswith(SEQ) for f in out if f.keyframe)
        assert out[0].data.startswith(SEQ)
    if codec == "h264":
        cfg = h264.parse_avc_config(track.config)
        assert cfg.sps and cfg.pps and cfg.nal_length_size == 4
        types = [h264.avcc_nal_types(f.data) for f in out]
        assert h264.NAL_IDR in types[0]
        assert all(h264.NAL_SPS not in t and h264.NAL_PPS not in t for t in types)
        assert all((h264.NAL_IDR in t) == f.keyframe for t, f in zip(types, out, strict=False))
        sps = h264.parse_sps(cfg.sps[0])
        assert (sps.width, sps.height) == size and track.profile == sps.profile
    pictures = decode(out)
    assert len(pictures) == len(out)
    assert {int(p.pict_type) for p in pictures} <= {I, P}  # no B-frames
    assert int(pictures[0].pict_type) == I
    assert all((p.width, p.height) == size for p in pictures)


def test_h264_with_b_frames_to_mpeg1_720p(clips: dict[str, Path],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    track, frames = demux(clips["h264_720p"])
    assert track.has_b_frames and any(f.pts != f.dts for f in frames)
    counters = Counters()  # the step's owner's
    before = counters.snapshot()
    step = VideoTranscoder(track, "mpeg1video", width=1280, height=720, frame_rate=30.0,
                           bitrate=1_500_000, gop=30, counters=counters)
    cpu0 = time.process_time()
    out, times = run(step, frames)
    cpu_ms = (time.process_time() - cpu0) * 1000 / len(frames)
    after = counters.snapshot()
    check(out, frames, "mpeg1video", (1280, 720))
    assert step.errors == 0 and step.skipped == 0
    assert sum(f.keyframe for f in out) == 3  # GOP 30 from params, 90 frames
    assert after["decoders_opened"] - before["decoders_opened"] == 1
    assert after["encoders_opened"] - before["encoders_opened"] == 1
    assert after["frames_decoded"] - before["frames_decoded"] == len(frames)
    assert after["frames_encoded"] - before["frames_encoded"] == len(frames)
    assert out[0].data[7] & 0x0F == 5  # frame_rate_code 5 = 30 fps

    cli = _ffmpeg_cli_ms_per_frame(clips["h264_720p"], len(frames))
    ms = sorted(t * 1000 for t in times)
    with capsys.disabled():
        print(f"\nH264(B) 720p30 -> MPEG-1, 1 thread: wall mean {statistics.fmean(ms):.2f} ms/frame, "
              f"median {statistics.median(ms):.2f}, p95 {ms[int(len(ms) * 0.95)]:.2f}, "
              f"max {ms[-1]:.2f}; CPU {cpu_ms:.2f} ms/frame "
              f"(ffmpeg -threads 1 CLI: {cli:.2f} ms/frame wall, incl. demux and start-up)")


def _ffmpeg_cli_ms_per_frame(clip: Path, frames: int) -> float:
    """Reference cost of the same job in the FFmpeg CLI, for comparison only."""
    t0 = time.perf_counter()
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-threads", "1", "-i", str(clip),
         "-threads", "1", "-c:v", "mpeg1video", "-b:v", "1500k", "-bf", "0", "-g", "30",
         "-f", "null", "-"],
        check=True, timeout=60,
    )
    return (time.perf_counter() - t0) * 1000 / frames


def test_h264_to_mpeg1_scaled(clips: dict[str, Path]) -> None:
    track, frames = demux(clips["h264_720p"])
    step = VideoTranscoder(track, "mpeg1video", width=641, height=361, frame_rate=25.0)
    out, _ = run(step, frames[:30])
    check(out, frames[:30], "mpeg1video", (640, 360))  # odd sizes made even


def test_15fps_source_to_mpeg1_keeps_frames_and_timing(clips: dict[str, Path]) -> None:
    """MPEG-1 header says 23.976 (the planner's snap), pictures keep the source's 15 fps."""
    track, frames = demux(clips["h264_15fps"])
    t = planner.plan(planner.load_matrix(), {"video": track}, "h5").get("video")
    assert isinstance(t, planner.Transcode) and t.params["frame_rate"] == 23.976
    step = make_step(t, track)
    assert isinstance(step, VideoTranscoder) and step.rate == Fraction(24000, 1001)
    out, _ = run(step, frames)
    check(out, frames, "mpeg1video", (640, 360))  # same count: nothing duplicated
    assert out[0].data[7] & 0x0F == 1  # frame_rate_code 1 = 23.976
    assert out[0].track.frame_rate == 23.976
    gaps = [float((b.pts - a.pts) * b.time_base) for a, b in itertools.pairwise(out)]
    assert all(abs(g - 1 / 15) < 0.002 for g in gaps)  # the source's 15 fps cadence


@pytest.mark.parametrize("clip", ["mpeg1", "vp8", "h264_360p"])
def test_to_h264_without_b_frames(clips: dict[str, Path], clip: str) -> None:
    track, frames = demux(clips[clip])
    counters = Counters()  # the step's owner's
    before = counters.snapshot()
    step = VideoTranscoder(track, "h264", frame_rate=track.frame_rate, bitrate=1_000_000, gop=60,
                           profile="baseline", counters=counters)
    out, _ = run(step, frames)
    after = counters.snapshot()
    check(out, frames, "h264", (640, 360))
    assert out[0].track.profile in ("baseline", "constrained-baseline")
    assert step.errors == 0
    assert after["decoders_opened"] - before["decoders_opened"] == 1
    assert after["encoders_opened"] - before["encoders_opened"] == 1
    assert after["frames_decoded"] - before["frames_decoded"] == len(frames)
    assert after["frames_encoded"] - before["frames_encoded"] == len(frames)


def test_to_vp8(clips: dict[str, Path]) -> None:
    track, frames = demux(clips["h264_360p"])
    out, _ = run(VideoTranscoder(track, "vp8", frame_rate=30.0, bitrate=800_000), frames[:30])
    check(out, frames[:30], "vp8", (640, 360))


def test_start_mid_gop_and_corrupt_frames_are_skipped(clips: dict[str, Path]) -> None:
    track, frames = demux(clips["h264_360p"])
    feed = frames[5:]  # joins mid-GOP: nothing decodable before the keyframe at 30
    feed[40] = replace(feed[40], data=b"\x00\x00\x00\x05\x65garbage-garbage")
    feed[50] = replace(feed[50], data=b"\x01")  # not even a valid AVCC length
    step = VideoTranscoder(track, "h264", frame_rate=30.0, profile="baseline")
    out, _ = run(step, feed)
    assert step.skipped == 25
    assert step.errors >= 1
    assert out and out[0].keyframe and h264.NAL_IDR in h264.avcc_nal_types(out[0].data)
    assert len(out) >= len(feed) - step.skipped - 10  # everything else came through
    assert [f.pts for f in out] == sorted(f.pts for f in out)
    assert len(decode(out)) == len(out)


def test_source_config_change_keeps_output_track(clips: dict[str, Path]) -> None:
    """A publisher switching resolution mid-stream: new decoder, same encoder and Track."""
    t1, f1 = demux(clips["h264_720p"])
    _, f2 = demux(clips["h264_360p"])
    shift = f1[-1].pts + 100
    second = [replace(f, pts=f.pts + shift, dts=f.dts + shift) for f in f2[:30]]
    counters = Counters()  # the step's owner's
    before = counters.snapshot()
    step = VideoTranscoder(t1, "mpeg1video", width=640, height=360, frame_rate=30.0,
                           counters=counters)
    out, _ = run(step, f1[:30] + second)
    assert counters.snapshot()["decoders_opened"] - before["decoders_opened"] == 2
    check(out, f1[:30] + second, "mpeg1video", (640, 360))


def test_threaded_decoder_and_encoder(clips: dict[str, Path]) -> None:
    track, frames = demux(clips["h264_360p"])
    threads = Threading(decoder_threads=2, encoder_threads=2, thread_type="FRAME")
    out, _ = run(VideoTranscoder(track, "mpeg1video", frame_rate=30.0, threading=threads), frames)
    check(out, frames, "mpeg1video", (640, 360))


def test_factory_builds_video_step_from_plan(clips: dict[str, Path]) -> None:
    track, frames = demux(clips["h264_720p"])
    m = planner.load_matrix()
    t = planner.plan(m, {"video": track}, "webrtc").get("video")
    assert isinstance(t, planner.Transcode) and t.to_codec == "h264"  # B-frames must go
    step = make_step(t, track)
    assert isinstance(step, VideoTranscoder)
    out, _ = run(step, frames[:20])
    check(out, frames[:20], "h264", (1280, 720))
    assert out[0].track.frame_rate == 30.0 and out[0].track.bitrate == t.params["bitrate"]


def test_nominal_rate() -> None:
    assert nominal_rate(29.97) == Fraction(30000, 1001)
    assert nominal_rate(23.976) == Fraction(24000, 1001)
    assert nominal_rate(59.94) == Fraction(60000, 1001)
    assert nominal_rate(25.0) == 25 and nominal_rate(12.5) == Fraction(25, 2)


def test_flush_then_reuse_starts_with_a_keyframe(clips: dict[str, Path]) -> None:
    track, frames = demux(clips["h264_360p"])
    step = VideoTranscoder(track, "h264", frame_rate=30.0)
    first, _ = run(step, frames[:30])
    second, _ = run(step, frames[30:60])
    assert first[0].track is not second[0].track
    check(second, frames[30:60], "h264", (640, 360))
    step.close()
