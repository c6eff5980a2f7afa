"""Audio transcode steps with real codecs: every pair decodes, durations hold, no drift, no priming shift.

Sources are made by the FFmpeg CLI from a signal of 50 ms tone bursts at every whole second, so
A/V sync can be measured: the energy centroid of each burst in the transcoded output must sit
where it sits in the source (decoded by PyAV's container path, independently of the step).
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from gateway import planner
from gateway.media import Frame, Track
from gateway.transcode.audio import AudioTranscoder
from gateway.transcode.factory import make_step
from gateway.transcode.step import Counters

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
BURSTS = "if(lt(mod(t\\,1)\\,0.05)\\,0.8*sin(2*PI*1000*t)\\,0)"
FRAME_SIZE = {"aac": 1024, "opus": 960, "mp2": 1152}
DECODER = {"aac": "aac", "opus": "opus", "mp2": "mp2"}


def _make(path: Path, codec: str, rate: int, channels: int, seconds: int) -> Path:
    if path.exists():
        return path
    enc = {"aac": ["-c:a", "aac", "-b:a", "128k", "-f", "flv"],  # FLV: like an RTMP ingest
           "opus": ["-c:a", "libopus", "-b:a", "96k", "-f", "webm"],
           "mp2": ["-c:a", "mp2", "-b:a", "192k", "-f", "mpegts"]}[codec]  # TS: pts start at 1.4 s
    layout = "stereo" if channels == 2 else "mono"
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"aevalsrc={BURSTS}:s={rate}:c={layout}:d={seconds}", *enc, str(path)],
        check=True, timeout=60,
    )
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("audio")
    return {
        "aac": _make(d / "aac.flv", "aac", 44100, 2, 4),
        "opus": _make(d / "opus.webm", "opus", 48000, 2, 4),
        "mp2": _make(d / "mp2.ts", "mp2", 44100, 2, 4),
        "aac60": _make(d / "aac60.flv", "aac", 44100, 2, 60),
    }


def demux(path: Path) -> tuple[Track, list[Frame]]:
    """Frames as an ingest would produce them (raw packets, container pts, codec config)."""
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        codec = {"aac": "aac", "opus": "opus", "mp2": "mp2"}[s.codec_context.name]
        track = Track("audio", codec, bytes(s.codec_context.extradata or b""),
                      sample_rate=s.codec_context.sample_rate, channels=s.codec_context.channels)
        tb = Fraction(s.time_base)
        frames = [Frame(track, bytes(p), p.pts, p.dts, tb, True) for p in c.demux(s) if p.size]
    return track, frames


def run(step: AudioTranscoder, frames: list[Frame]) -> list[Frame]:
    out: list[Frame] = []
    for f in frames:
        out += step.process(f)
    out += step.flush()
    return out


def pcm(frames: list[Frame]) -> tuple[float, int, int, np.ndarray]:
    """Decode output frames independently: (start s, rate, channels, mono float samples)."""
    track = frames[0].track
    ctx = av.CodecContext.create(DECODER[track.codec], "r")
    if track.config:
        ctx.extradata = track.config
    decoded = []
    for f in frames:
        p = av.Packet(f.data)
        p.pts = f.pts
        p.time_base = f.time_base
        decoded += ctx.decode(p)
    decoded += ctx.decode(None)
    first = decoded[0]
    start = float(frames[0].pts * frames[0].time_base)
    samples = np.concatenate([_mono(fr) for fr in decoded])
    return start, first.sample_rate, first.layout.nb_channels, samples


def pcm_of_file(path: Path) -> tuple[float, int, np.ndarray]:
    with av.open(str(path)) as c:
        decoded = list(c.decode(audio=0))
    first = decoded[0]
    return float(first.pts * first.time_base), first.sample_rate, np.concatenate(
        [_mono(fr) for fr in decoded])


def _mono(frame: av.AudioFrame) -> np.ndarray:
    a = frame.to_ndarray()
    if not frame.format.is_planar:
        a = a.reshape(-1, frame.layout.nb_channels).T
    a = a[0].astype(np.float64)
    return a / 32768.0 if frame.format.name.startswith("s16") else a


def centroids(start: float, rate: int, x: np.ndarray, seconds: range) -> list[float]:
    """Mid-point (s) of each burst between its half-amplitude edges, in a 2 ms RMS envelope.

    Half amplitude ignores codec pre-echo and ringing, which shift an energy centroid.
    """
    t = start + np.arange(len(x)) / rate
    win = max(1, rate // 500)
    env = np.sqrt(np.convolve(x * x, np.ones(win) / win, mode="same"))
    out = []
    for k in seconds:
        idx = np.nonzero((t > k - 0.4) & (t < k + 0.45))[0]
        seg = env[idx]
        above = np.nonzero(seg > seg.max() / 2)[0]
        out.append(float((t[idx[above[0]]] + t[idx[above[-1]]]) / 2))
    return out


PAIRS = [
    ("aac", "opus", 48000, 2),
    ("opus", "aac", 48000, 2),
    ("aac", "mp2", 44100, 2),
    ("opus", "mp2", 44100, 2),
    ("mp2", "aac", 48000, 2),
    ("mp2", "opus", 48000, 1),
    ("aac", "aac", 48000, 1),  # same codec: resample and downmix
    ("mp2", "mp2", 48000, 2),
    ("opus", "opus", 48000, 1),
]


@pytest.mark.parametrize(("src", "dst", "rate", "channels"), PAIRS)
def test_pair_converts_and_keeps_timing(sources: dict[str, Path], src: str, dst: str, rate: int,
                                        channels: int) -> None:
    track, frames = demux(sources[src])
    counters = Counters()  # the step's owner's
    before = counters.snapshot()
    step = AudioTranscoder(track, dst, sample_rate=rate, channels=channels, bitrate=96_000,
                           counters=counters)
    out = run(step, frames)
    after = counters.snapshot()
    assert step.errors == 0 and step.dropped == 0
    assert after["decoders_opened"] == before["decoders_opened"] + 1
    assert after["encoders_opened"] == before["encoders_opened"] + 1
    assert after["frames_decoded"] - before["frames_decoded"] >= len(frames) - 1
    assert after["frames_encoded"] - before["frames_encoded"] >= len(out)

    out_track = out[0].track
    assert all(f.track is out_track for f in out)
    assert out_track.codec == dst and out_track.sample_rate == rate
    assert out_track.channels == channels and out_track.bitrate == 96_000
    assert all(f.time_base == Fraction(1, rate) and f.dts == f.pts for f in out)
    size = FRAME_SIZE[dst]
    assert [f.pts - out[0].pts for f in out] == [i * size for i in range(len(out))]  # no gaps

    # first output at the first input instant: priming compensated, no leading silence. The
    # instant is that of the first decoded sample: an Opus source's first packet starts its
    # 312-sample pre-skip earlier (WebM pts -7 ms), which is not audio.
    ref_start, ref_rate, ref = pcm_of_file(sources[src])
    t_in = float(frames[0].pts * frames[0].time_base)
    assert abs(ref_start - t_in) < 0.008
    t_out = float(out[0].pts * out[0].time_base)
    assert abs(t_out - ref_start) < 0.001
    # same total duration within one frame
    in_size = FRAME_SIZE[src] / track.sample_rate
    end_in = float(frames[-1].pts * frames[-1].time_base) + in_size
    end_out = float(out[-1].pts * out[-1].time_base) + size / rate
    assert abs(end_out - end_in) <= size / rate + 0.002

    start, dec_rate, dec_channels, x = pcm(out)
    assert (dec_rate, dec_channels) == (rate, channels)
    assert abs(len(x) / rate - (end_out - t_out)) < 0.001
    ref_c = centroids(ref_start, ref_rate, ref, range(int(ref_start) + 1, int(ref_start) + 4))
    out_c = centroids(start, rate, x, range(int(ref_start) + 1, int(ref_start) + 4))
    skew = [round((o - r) * 1000, 2) for o, r in zip(out_c, ref_c, strict=False)]
    assert max(abs(s) for s in skew) < 1.0, f"A/V skew {skew} ms"


def test_round_trip_60s_has_no_drift(sources: dict[str, Path],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """AAC -> Opus -> AAC over a minute: first/last instants and every burst stay put."""
    track, frames = demux(sources["aac60"])
    to_opus = AudioTranscoder(track, "opus", sample_rate=48000, channels=2, bitrate=64_000)
    opus = run(to_opus, frames)
    back = AudioTranscoder(opus[0].track, "aac", sample_rate=44100, channels=2, bitrate=128_000)
    aac = run(back, opus)
    assert to_opus.errors == back.errors == 0
    assert to_opus.filled == back.filled == 0  # FLV's 1 ms rounding is not mistaken for gaps

    def instant(f: Frame) -> float:
        return float(f.pts * f.time_base)

    # Each stage: first output at its first input instant (within FLV's 1 ms rounding), last
    # output within one frame of its last input (a stage may add up to one frame of padding
    # to complete its last frame, which the next stage then carries as audio).
    for stage_in, stage_out in ((frames, opus), (opus, aac)):
        assert abs(instant(stage_out[0]) - instant(stage_in[0])) < 0.001
        frame_s = max(960 / 48000, 1024 / 44100)
        assert abs(instant(stage_out[-1]) - instant(stage_in[-1])) <= frame_s
    assert abs(instant(aac[-1]) - instant(frames[-1])) <= 960 / 48000 + 1024 / 44100

    ref_start, ref_rate, ref = pcm_of_file(sources["aac60"])
    ref_c = centroids(ref_start, ref_rate, ref, range(1, 60))
    for out in (opus, aac):
        start, rate, _, x = pcm(out)
        skew = [(o - r) * 1000 for o, r in zip(centroids(start, rate, x, range(1, 60)), ref_c, strict=False)]
        with capsys.disabled():
            print(f"\n{out[0].track.codec}: burst skew vs source over 60 s: "
                  f"first {skew[0]:+.3f} ms, last {skew[-1]:+.3f} ms, max {max(map(abs, skew)):.3f} ms")
        assert max(abs(s) for s in skew) < 1.0
        assert abs(skew[-1] - skew[0]) < 0.5  # no drift


def test_gap_is_filled_with_silence_and_stays_in_sync(sources: dict[str, Path]) -> None:
    """Lost input packets: the output stays continuous and later bursts keep their instants."""
    track, frames = demux(sources["aac"])
    lossy = frames[:60] + frames[70:]  # ~230 ms lost
    step = AudioTranscoder(track, "opus", sample_rate=48000, channels=2)
    out = run(step, lossy)
    assert step.filled > 0 and step.errors == 0
    assert [f.pts - out[0].pts for f in out] == [i * 960 for i in range(len(out))]
    start, rate, _, x = pcm(out)
    ref_start, ref_rate, ref = pcm_of_file(sources["aac"])
    for o, r in zip(centroids(start, rate, x, range(2, 4)), centroids(ref_start, ref_rate, ref, range(2, 4)), strict=False):
        assert abs(o - r) < 0.001


def test_duplicates_dropped_and_jumps_reanchor(sources: dict[str, Path]) -> None:
    track, frames = demux(sources["aac"])
    jump = 10_000  # ms
    shifted = [replace(f, pts=f.pts + jump, dts=f.dts + jump) for f in frames[100:]]
    feed = frames[:100] + [frames[99]] + shifted  # one duplicate, then a 10 s timestamp jump
    step = AudioTranscoder(track, "mp2", sample_rate=44100, channels=2)
    out = run(step, feed)
    assert step.dropped == 1
    times = [float(f.pts * f.time_base) for f in out]
    assert all(b > a for a, b in itertools.pairwise(times))
    assert any(b - a > 9 for a, b in itertools.pairwise(times))
    start_after = next(t for t in times if t > 9)
    assert abs(start_after - float(shifted[0].pts * shifted[0].time_base)) < 0.05


def test_corrupt_frame_is_skipped_not_fatal(sources: dict[str, Path]) -> None:
    track, frames = demux(sources["opus"])
    bad = frames[:50] + [replace(frames[50], data=b"\xff" * 3)] + frames[51:]
    bad[10] = replace(frames[10], data=b"")
    step = AudioTranscoder(track, "aac", sample_rate=48000, channels=2)
    out = run(step, bad)
    assert step.errors >= 1
    pcm(out)  # still decodes


def test_aac_without_config_and_opus_without_head(sources: dict[str, Path]) -> None:
    """Tracks that only know rate/channels (e.g. RTP Opus) still decode."""
    _, frames = demux(sources["opus"])
    bare = Track("audio", "opus", b"", sample_rate=48000, channels=2)
    out = run(AudioTranscoder(bare, "aac"), [replace(f, track=bare) for f in frames])
    assert out and out[0].track.config  # the ASC
    _, aac_frames = demux(sources["aac"])
    bare_aac = Track("audio", "aac", b"", sample_rate=44100, channels=2)
    out = run(AudioTranscoder(bare_aac, "opus"), [replace(f, track=bare_aac) for f in aac_frames])
    assert len(out) > 100 and out[0].track.config.startswith(b"OpusHead")


def test_config_change_mid_stream_keeps_output_track(sources: dict[str, Path]) -> None:
    """A publisher switching 44.1 kHz AAC to 48 kHz Opus-decoded AAC: one output Track."""
    t1, f1 = demux(sources["aac"])
    t2, f2 = demux(sources["mp2"])
    end = f1[-1].pts + 23
    offset = end - round(f2[0].pts * f2[0].time_base * 1000)
    second = [Frame(t2, f.data, round(f.pts * f.time_base * 1000) + offset,
                    round(f.dts * f.time_base * 1000) + offset, Fraction(1, 1000), True) for f in f2]
    step = AudioTranscoder(t1, "opus", sample_rate=48000, channels=2)
    out = run(step, f1 + second)
    assert step.errors == 0
    assert len({id(f.track) for f in out}) == 1
    assert [f.pts - out[0].pts for f in out] == [i * 960 for i in range(len(out))]


def test_a_codec_change_from_samples_the_encoder_takes_as_they_are(tmp_path: Path) -> None:
    """An h5 publisher's TS switching from AAC to MP2 (``cat a.ts b.ts``, an encoder restarted
    under a running upload), coded to AAC at the source's rate and layout: the AAC samples go
    to the encoder unconverted (with their decoder's time base), the MP2 ones through a
    resampler (with its own). PyAV's FIFO refuses a frame in another time base than its first,
    and every frame after the switch failed ("Frame does not match AudioFifo parameters")."""
    t1, f1 = demux(_make(tmp_path / "aac.flv", "aac", 44100, 1, 3))
    t2, f2 = demux(_make(tmp_path / "mp2.ts", "mp2", 44100, 1, 3))
    ms = Fraction(1, 1000)
    end = f1[-1].pts + 23 + 100  # 100 ms missing at the switch: filled with silence
    offset = end - round(f2[0].pts * f2[0].time_base * 1000)
    second = [Frame(t2, f.data, round(f.pts * f.time_base * 1000) + offset,
                    round(f.dts * f.time_base * 1000) + offset, ms, True) for f in f2]
    step = AudioTranscoder(t1, "aac", sample_rate=44100, channels=1)
    out = run(step, f1 + second)
    assert step.errors == 0 and step.filled > 0
    assert [f.pts - out[0].pts for f in out] == [i * 1024 for i in range(len(out))]
    _, rate, _, x = pcm(out)
    assert len(x) / rate > 6.0  # both 3 s sources and the gap: nothing lost


def test_factory_builds_audio_steps_from_plans(sources: dict[str, Path]) -> None:
    m = planner.load_matrix()
    track, frames = demux(sources["aac"])
    p = planner.plan(m, {"audio": track}, "h5")
    t = p.get("audio")
    assert isinstance(t, planner.Transcode)
    step = make_step(t, track)
    out = run(step, frames[:50])  # type: ignore[arg-type]
    assert out[0].track.codec == "mp2" and out[0].track.sample_rate == 44100
    step.close()


def test_flush_ends_a_segment_and_the_step_can_start_again(sources: dict[str, Path]) -> None:
    track, frames = demux(sources["aac"])
    step = AudioTranscoder(track, "opus")
    first = run(step, frames[:40])
    later = [replace(f, pts=f.pts + 60_000, dts=f.dts + 60_000) for f in frames[40:80]]
    second = run(step, later)
    assert first[0].track is not second[0].track  # a new segment is a new configuration
    assert abs(float(second[0].pts * second[0].time_base) - 60 - float(
        frames[40].pts * frames[40].time_base)) < 0.001
    step.close()
