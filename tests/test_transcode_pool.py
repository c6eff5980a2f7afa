"""The transcode process pool with real PyAV steps in real worker processes.

Inputs are a small H.264 (B-frames) + AAC FLV made by the FFmpeg CLI and demuxed by PyAV into
internal ``Frame``s, as the RTMP ingest would produce them.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from fractions import Fraction

import av
import pytest

from gateway import planner
from gateway.codecs import h264
from gateway.hub.stream import Stream
from gateway.media import Frame, StreamInfo, Track
from gateway.transcode import pool as pool_mod
from gateway.transcode import variant as variant_mod
from gateway.transcode.step import needed_for_decoding
from gateway.transcode.transcoder import Transcoder

from conftest import _make_clip

SEQ = b"\x00\x00\x01\xb3"


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Track, list[Frame]]]:
    """Per kind: the source track and its frames in decode order (AVCC, raw AAC)."""
    path = _make_clip(tmp_path_factory.mktemp("pool") / "b.flv", bframes=True, seconds=3)
    out: dict[str, tuple[Track, list[Frame]]] = {}
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        vt = Track("video", "h264", bytes(v.codec_context.extradata or b""), width=640, height=360,
                   frame_rate=30.0, profile="high", has_b_frames=True)
        at = Track("audio", "aac", bytes(a.codec_context.extradata or b""), sample_rate=44100,
                   channels=2)
        frames: dict[str, list[Frame]] = {"video": [], "audio": []}
        for p in c.demux(v, a):
            if not p.size or p.pts is None or p.dts is None:
                continue
            kind = p.stream.type
            track = vt if kind == "video" else at
            frames[kind].append(Frame(track, bytes(p), p.pts, p.dts, Fraction(p.time_base),
                                      p.is_keyframe))
    out["video"] = (vt, frames["video"])
    out["audio"] = (at, frames["audio"])
    return out


def _plan(media: dict[str, tuple[Track, list[Frame]]]) -> planner.Plan:
    tracks = {k: t for k, (t, _) in media.items()}
    return planner.plan(planner.load_matrix(), tracks, "h5")  # h264 -> mpeg1video, aac -> mp2


def _transcode(media: dict[str, tuple[Track, list[Frame]]], kind: str) -> planner.Transcode:
    t = _plan(media).get(kind)
    assert isinstance(t, planner.Transcode)
    return t


async def _until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.01)


def _run(coro_fn: Callable[[Transcoder], Awaitable[None]], processes: int = -1,
         threads: int = 1, capacity: float = 0.0) -> None:
    """Each test on its own loop with its own transcoder, whose pool never outlives it."""
    tc = Transcoder(processes, threads, capacity)

    async def main() -> None:
        try:
            await coro_fn(tc)
        finally:
            tc.shutdown()

    asyncio.run(main())


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_frames_round_trip_with_timing_latency_and_counters(media) -> None:
    vt, vframes = media["video"]
    at, aframes = media["audio"]

    async def main(tc: Transcoder) -> None:
        loop_thread = threading.get_ident()
        got: dict[str, list[Frame]] = {"video": [], "audio": []}
        threads: set[int] = set()

        def deliver(kind: str) -> Callable[[list[Frame]], None]:
            def take(frames: list[Frame]) -> None:
                threads.add(threading.get_ident())
                got[kind].extend(frames)
            return take

        before = tc.counters.snapshot()
        p = tc.pool()
        assert len(p.processes) == 2
        v = p.open("test video", _transcode(media, "video"), vt, deliver("video"), 60)
        a = p.open("test audio", _transcode(media, "audio"), at, deliver("audio"), 200)
        assert v._child is not a._child  # least loaded: the audio step goes to the idle process
        for i in range(max(len(vframes), len(aframes))):
            if i < len(vframes):
                v.submit(vframes[i])
            if i < len(aframes):
                a.submit(aframes[i])
            if i % 10 == 9:  # stay under the in-flight bound (the first process start is slow)
                await _until(lambda: v.in_flight == 0 and a.in_flight == 0)
        await _until(lambda: v.in_flight == 0 and a.in_flight == 0)

        assert threads == {loop_thread}  # delivered on the event loop
        assert v.frames_in == len(vframes) and a.frames_in == len(aframes)
        assert v.dropped == a.dropped == 0
        assert len(v.timings.latency) == len(vframes) and len(a.timings.latency) == len(aframes)
        assert all(ms >= 0 for ms in v.timings.latency)
        out = got["video"]
        assert v.frames_out == len(out)
        # without a flush the decoder keeps its reorder delay (a few frames) at the end
        assert len(vframes) - 6 <= len(out) < len(vframes)
        assert [f.pts for f in out] == sorted(f.pts for f in vframes)[:len(out)]
        assert all(f.dts == f.pts and f.time_base == vframes[0].time_base for f in out)
        track = out[0].track
        assert all(f.track is track for f in out)  # one Track object: the variant compares by identity
        assert track.codec == "mpeg1video" and (track.width, track.height) == (640, 360)
        assert out[0].keyframe and out[0].data.startswith(SEQ)
        audio = got["audio"]
        assert a.frames_out == len(audio) > 0 and audio[0].track.codec == "mp2"
        assert all(f.track is audio[0].track for f in audio)
        first = audio[0].pts * audio[0].time_base  # the audio step keeps the source's timeline
        assert abs(first - aframes[0].pts * aframes[0].time_base) < Fraction(1, 1000)
        pts = [f.pts for f in audio]
        assert pts == sorted(pts)
        after = tc.counters.snapshot()  # counted in the children, summed up here
        assert after["decoders_opened"] - before["decoders_opened"] == 2
        assert after["encoders_opened"] - before["encoders_opened"] == 2
        assert after["frames_encoded"] - before["frames_encoded"] >= len(out) + len(audio)
        v.stop()
        a.stop()
        await _until(lambda: not v._child.steps and not a._child.steps)

    _run(main, processes=2)


def test_steps_of_one_group_share_a_process(media) -> None:
    vt, _ = media["video"]
    at, _ = media["audio"]

    async def main(tc: Transcoder) -> None:
        p = tc.pool()
        g1, g2 = object(), object()
        v1 = p.open("v1", _transcode(media, "video"), vt, lambda f: None, 60, group=g1)
        v2 = p.open("v2", _transcode(media, "video"), vt, lambda f: None, 60, group=g2)
        a1 = p.open("a1", _transcode(media, "audio"), at, lambda f: None, 200, group=g1)
        a2 = p.open("a2", _transcode(media, "audio"), at, lambda f: None, 200, group=g2)
        assert v1._child is not v2._child  # least loaded first...
        assert a1._child is v1._child and a2._child is v2._child  # ...then with its variant
        for s in (v1, v2, a1, a2):
            s.stop()
        await _until(lambda: all(not c.steps for c in (v1._child, v2._child)))

    _run(main, processes=2)


def test_codec_threads_of_one_process_share_its_steps(media) -> None:
    """Two threads in one process: every step's output stays complete and in order."""
    vt, vframes = media["video"]
    at, aframes = media["audio"]

    async def main(tc: Transcoder) -> None:
        p = tc.pool()
        (child,) = p.processes
        got: dict[str, list[Frame]] = {}
        steps = []
        for i in range(3):
            for kind, track, limit in (("video", vt, 60), ("audio", at, 200)):
                name = f"{kind}{i}"
                got[name] = []
                steps.append((name, p.open(name, _transcode(media, kind), track, got[name].extend,
                                           limit, group=i)))
        await _until(lambda: len(os.listdir(f"/proc/{child.pid}/task")) >= 2)  # main + 1 more
        for i in range(max(len(vframes), len(aframes))):
            for name, s in steps:
                frames = vframes if name.startswith("video") else aframes
                if i < len(frames):
                    s.submit(frames[i])
            if i % 10 == 9:
                await _until(lambda: all(s.in_flight == 0 for _, s in steps))
        await _until(lambda: all(s.in_flight == 0 for _, s in steps))
        for name, s in steps:
            out = got[name]
            assert s.dropped == 0 and s.frames_out == len(out) > 0, name
            assert [f.pts for f in out] == sorted(f.pts for f in out), name
        for i in range(1, 3):  # the same input gives the same output, whichever thread coded it
            for kind in ("video", "audio"):
                assert [f.data for f in got[f"{kind}{i}"]] == [f.data for f in got[f"{kind}0"]]
        for _, s in steps:
            s.stop()

    _run(main, processes=1, threads=2)


def _disposable(frames: list[Frame]) -> list[bool]:
    size = h264.parse_avc_config(frames[0].track.config).nal_length_size
    return [h264.is_disposable(f.data, size) for f in frames]


def _decoded(frames: list[Frame]) -> dict[int, bytes]:
    """pts -> picture bytes, decoding ``frames`` with FFmpeg's H.264 decoder."""
    ctx = av.CodecContext.create("h264", "r")
    ctx.extradata = frames[0].track.config
    pictures: dict[int, bytes] = {}
    for f in [*frames, None]:
        packet = None
        if f is not None:
            packet = av.Packet(f.data)
            packet.pts, packet.dts = f.pts, f.dts
        for vf in ctx.decode(packet):
            pictures[vf.pts] = b"".join(bytes(p) for p in vf.planes)
    return pictures


def test_non_reference_frames_can_go_without_changing_the_others(media) -> None:
    _, frames = media["video"]
    disposable = _disposable(frames)
    assert 0 < sum(disposable) < len(frames) // 2  # x264's B-frames that nothing references
    assert not any(d for d, f in zip(disposable, frames, strict=False) if f.keyframe)
    full = _decoded(frames)
    kept = [f for d, f in zip(disposable, frames, strict=False) if not d]
    assert _decoded(kept) == {f.pts: full[f.pts] for f in kept}  # bit-exact, none missing


def test_a_long_queue_sheds_non_reference_frames_first(media, caplog) -> None:
    vt, vframes = media["video"]
    disposable = _disposable(vframes)

    async def main(tc: Transcoder) -> None:
        out: list[Frame] = []
        p = tc.pool()
        v = p.open("shedding video", _transcode(media, "video"), vt, out.extend, 60, shed_at=3)
        for f in vframes[:5]:  # a starting process: these wait, whatever the queue's length
            v.submit(f)
        assert (v.frames_in, v.shed) == (5, 0)
        await _until(lambda: v.in_flight == 0)  # warm now
        with caplog.at_level(logging.WARNING, logger="gateway.transcode.pool"):
            for f in vframes[5:45]:  # no await: the queue only grows
                v.submit(f)
        expected = sum(disposable[8:45])  # from the 4th frame in flight on, each disposable one
        assert (v.shed, v.dropped, v.skipped) == (expected, 0, 0)
        assert v.frames_in == 45 - expected
        assert "shedding video: transcoder behind" in caplog.text
        await _until(lambda: v.in_flight == 0)
        v.stop()
        v.join()
        # what was coded is a clean MPEG-1 stream: nothing the decoder needed went missing
        ctx = av.CodecContext.create("mpeg1video", "r")
        pictures = [vf for f in out for vf in ctx.decode(av.Packet(f.data))]
        assert len(pictures) >= len(out) - 1 and len(out) >= v.frames_in - 5

    _run(main, processes=1)


def test_the_least_loaded_process_is_judged_by_what_the_steps_cost(media) -> None:
    """A 1080p variant weighs 2.25 of a 720p one, a 360p one 0.25 (``transcode_cost``): a big
    step goes where the small ones are, not where the count of steps is lowest."""
    vt, _ = media["video"]

    async def main(tc: Transcoder) -> None:
        p = tc.pool()
        t = _transcode(media, "video")
        steps = [p.open(f"w{i}", t, vt, lambda frames: None, 60, weight=w)
                 for i, w in enumerate((2.25, 0.25, 0.25, 0.25))]
        big, small = steps[0]._child, steps[1]._child
        assert big is not small and all(s._child is small for s in steps[1:])
        second = p.open("another big one", t, vt, lambda frames: None, 60, weight=2.25)
        assert second._child is small  # by count (1 against 3) it went to ``big``
        assert (big.load, small.load) == (2.25, 3.0)
        for s in (*steps, second):
            s.stop()
        await _until(lambda: not big.steps and not small.steps)
        assert (big.load, small.load) == (0.0, 0.0)
        # a variant weighs its steps by their cost (what they take of the transcode capacity)
        source = Stream("live/weigh", StreamInfo("rtmp"), "test")
        source.set_track(vt)
        source.set_track(media["audio"][0])
        matrix = planner.load_matrix()
        var, plan = tc.media_for(matrix, source, "h5")
        assert isinstance(var, variant_mod.Variant)
        for kind, w in var.workers.items():
            assert isinstance(w, pool_mod.PoolStep)
            assert w.weight == planner.transcode_cost(matrix, plan.tracks[kind]) > 0  # type: ignore[arg-type]
        assert var.cost == sum(w.weight for w in var.workers.values())  # type: ignore[attr-defined]
        source.drop_sink(("variant", plan.variant_key()))

    _run(main, processes=2)


def test_a_thread_worker_sheds_the_same_way(media) -> None:
    """``transcode_processes = 0``: the thread worker's queue sheds like a process step's."""
    vt, vframes = media["video"]
    disposable = _disposable(vframes)
    gate = threading.Event()

    class Held:  # codes nothing until the gate opens: the queue only grows meanwhile
        def process(self, frame: Frame) -> list[Frame]:
            gate.wait(10)
            return []

        def flush(self) -> list[Frame]:
            return []

        def close(self) -> None:
            pass

    async def main(tc: Transcoder) -> None:
        w = variant_mod.Worker("held video", _transcode(media, "video"), vt, lambda t, s: Held(),
                               lambda frames: None, asyncio.get_running_loop())
        gate.set()
        w.submit(vframes[0])
        await _until(lambda: w.timings.latency.counts != [0] * len(w.timings.latency.counts))
        gate.clear()
        w.submit(vframes[1])
        await _until(lambda: w._q.qsize() == 0)  # the worker holds it, blocked
        shed_at = variant_mod.SHED_FRAMES["video"]
        for f in vframes[2:62]:
            w.submit(f)
        expected = sum(disposable[2 + shed_at:62])  # once shed_at frames wait, each disposable one
        assert (w.shed, w.dropped) == (expected, 0) and expected > 0
        assert w._q.qsize() == 60 - expected
        gate.set()
        w.stop()
        w.join()

    _run(main)


def test_in_flight_bound_drops_video_until_keyframe(media, caplog) -> None:
    vt, vframes = media["video"]
    at, aframes = media["audio"]
    keys = [i for i, f in enumerate(vframes) if f.keyframe]
    assert keys[:2] == [0, 30]

    async def main(tc: Transcoder) -> None:
        out: list[Frame] = []
        p = tc.pool()
        v = p.open("bounded video", _transcode(media, "video"), vt, out.extend, 5)
        a = p.open("bounded audio", _transcode(media, "audio"), at, lambda f: None, 3)
        with caplog.at_level(logging.WARNING, logger="gateway.transcode.pool"):
            for f in vframes[:30]:  # no await: no acknowledgement can come back meanwhile
                v.submit(f)
            for f in aframes[:10]:
                a.submit(f)
        assert (v.frames_in, v.in_flight, v.dropped) == (5, 5, 1)  # then waits for a keyframe
        assert v.skipped == 24  # counted apart: what the drop cost until that keyframe
        assert (a.frames_in, a.in_flight, a.dropped, a.skipped) == (3, 3, 7, 0)
        assert "bounded video: transcoder cannot keep up" in caplog.text
        await _until(lambda: v.in_flight == 0 and a.in_flight == 0)
        for f in vframes[30:33]:  # resumes at the next keyframe
            v.submit(f)
        assert v.frames_in == 8 and v.dropped == 1 and v.skipped == 24
        await _until(lambda: v.in_flight == 0)
        assert len(v.timings.latency) == 8
        v.stop()
        a.stop()

    _run(main, processes=1)


def test_killed_process_fails_its_steps_and_a_new_step_works(media, caplog) -> None:
    vt, vframes = media["video"]

    async def main(tc: Transcoder) -> None:
        p = tc.pool()
        failures: list[str] = []
        out: list[Frame] = []
        s = p.open("doomed", _transcode(media, "video"), vt, out.extend, 60)
        s.on_failed = failures.append
        for f in vframes[:10]:
            s.submit(f)
        await _until(lambda: s.in_flight == 0)
        assert out
        pid = p.processes[0].pid
        assert pid is not None
        with caplog.at_level(logging.ERROR, logger="gateway.transcode.pool"):
            os.kill(pid, signal.SIGKILL)
            await _until(lambda: s.failed is not None)
        assert failures and "transcode process lost" in failures[0]
        assert "doomed: transcoder failed" in caplog.text
        n = s.frames_in
        s.submit(vframes[30])  # a failed step ignores its input
        assert s.frames_in == n
        s.stop()
        s.join(0.1)

        out2: list[Frame] = []
        s2 = p.open("fresh", _transcode(media, "video"), vt, out2.extend, 60)
        assert p.processes[0].pid != pid  # restarted for the new step
        for f in vframes[:10]:
            s2.submit(f)
        await _until(lambda: s2.in_flight == 0)
        assert s2.failed is None and out2 and out2[0].keyframe
        assert _gone(pid)  # the killed process was reaped, not left a zombie

    _run(main, processes=1)


def test_step_that_cannot_open_fails_alone(media) -> None:
    vt, vframes = media["video"]

    async def main(tc: Transcoder) -> None:
        p = tc.pool()
        good = _transcode(media, "video")
        bad = replace(good, to_codec="nope")
        s = p.open("bad", bad, vt, lambda f: None, 60)
        await _until(lambda: s.failed is not None)
        assert "cannot encode video codec" in (s.failed or "")
        out: list[Frame] = []
        s2 = p.open("good", good, vt, out.extend, 60)
        for f in vframes[:5]:
            s2.submit(f)
        await _until(lambda: s2.in_flight == 0)
        assert out and s2.failed is None

    _run(main, processes=1)


def test_child_log_records_reach_the_gateway_log(media, caplog) -> None:
    at, aframes = media["audio"]

    async def main(tc: Transcoder) -> None:
        p = tc.pool()
        s = p.open("noisy", _transcode(media, "audio"), at, lambda f: None, 200)
        with caplog.at_level(logging.WARNING):
            for f in aframes[:3]:
                s.submit(Frame(f.track, b"\xff" * 40, f.pts, f.dts, f.time_base, True))
            await _until(lambda: s.in_flight == 0)
            await _until(lambda: "gateway.transcode.audio" in {r.name for r in caplog.records})
        assert s.failed is None  # bad input is skipped, the step lives on

    _run(main, processes=1)


def test_shutdown_leaves_no_child_processes(media) -> None:
    vt, vframes = media["video"]
    pids: list[int] = []

    async def main(tc: Transcoder) -> None:
        p = tc.pool()
        s = p.open("short", _transcode(media, "video"), vt, lambda f: None, 60)
        for f in vframes[:5]:
            s.submit(f)
        await _until(lambda: s.in_flight == 0)
        pids.extend(pr.pid for pr in p.processes if pr.pid is not None)
        assert len(pids) == 2
        tc.shutdown()  # with a step still open: the process frees it and exits
        assert p.closed and not p.processes
        assert all(_gone(pid) for pid in pids)
        with pytest.raises(RuntimeError):
            p.open("late", _transcode(media, "video"), vt, lambda f: None, 60)

    _run(main, processes=2)
    assert not [c for c in multiprocessing.active_children() if c.pid in pids]


class _Collect:
    """A sink of the variant: what its viewers would get."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def on_track(self, track: Track) -> None:
        pass

    def on_metadata(self, metadata: dict[str, object]) -> None:
        pass

    def on_frame(self, frame: Frame) -> None:
        self.frames.append(frame)

    def on_end(self, reason: str) -> None:
        pass


@pytest.mark.parametrize("processes", [-1, 0])
def test_variant_runs_steps_where_configured(media, processes: int) -> None:
    vt, vframes = media["video"]
    at, aframes = media["audio"]

    async def main(tc: Transcoder) -> None:
        source = Stream("live/pool", StreamInfo("rtmp"), "test")
        source.set_track(vt)
        source.set_track(at)
        plan = _plan(media)
        key = ("variant", plan.variant_key())
        var = source.sink(key, lambda s: variant_mod.Variant(s, plan, key, tc))
        viewer = var.sink("viewer", lambda s: _Collect())
        want = pool_mod.PoolStep if processes else variant_mod.Worker
        assert all(isinstance(w, want) for w in var.workers.values())
        merged = sorted(vframes[:40] + aframes[:50], key=lambda f: f.dts * f.time_base)
        for f in merged:
            source.push(f)
            await asyncio.sleep(0.002)
        def video_stats() -> dict[str, object]:
            v = var.stats()["video"]
            assert isinstance(v, dict)
            return v

        await _until(lambda: {"video", "audio"} <= {f.track.kind for f in viewer.frames}
                     and video_stats()["out"] >= 30)  # type: ignore[operator]
        stats = video_stats()
        # pushed faster than real time: on a slow host the step may shed (never drop) a
        # non-reference frame once ~1 s is queued; every frame is counted either way
        assert stats["in"] + stats["shed"] == 40 and stats["dropped"] == stats["skipped"] == 0
        assert stats["latency_ms_p99"] is not None
        assert {t.codec for t in var.tracks.values()} == {"mpeg1video", "mp2"}
        var.drop_sink("viewer")  # last viewer: steps stop, the variant leaves the source
        assert var.closed and key not in source.sinks

    _run(main, processes=processes)


def test_audio_overtakes_queued_video_of_other_steps(media) -> None:
    """In a process, audio frames are coded before the video frames already waiting there."""
    vt, vframes = media["video"]
    at, aframes = media["audio"]

    async def main(tc: Transcoder) -> None:
        p = tc.pool()  # one codec thread: the order alone decides
        done: list[str] = []
        v = p.open("v", _transcode(media, "video"), vt, lambda fs: done.append("video"), 200)
        a = p.open("a", _transcode(media, "audio"), at, lambda fs: done.append("audio"), 200)
        await _until(lambda: v.frames_in == 0 and v.in_flight == 0)
        v.submit(vframes[0])
        await _until(lambda: len(v.timings.latency) == 1)  # the process is up, the step open
        for f in vframes[1:60]:  # a backlog of a couple hundred ms of coding
            v.submit(f)
        await asyncio.sleep(0.02)
        for f in aframes[:10]:
            a.submit(f)
        vlat, alat = v.timings.latency, a.timings.latency
        await _until(lambda: v.frames_in == len(vlat) and a.frames_in == len(alat))
        # audio waited for at most the video frame being coded, not for the whole backlog
        assert max(alat) < max(vlat) / 3, (list(alat), max(vlat))
        last_audio = max(i for i, k in enumerate(done) if k == "audio")
        assert last_audio < len(done) - 10, done  # most video came back after all the audio
        v.stop()
        a.stop()

    _run(main, processes=1, threads=1)


@pytest.mark.parametrize("workers", ["processes", "threads"])
def test_variant_starting_on_a_backlog_starts_at_its_newest_picture_with_audio(
        media, workers: str) -> None:
    """A variant that starts on a GOP in the cache only decodes the GOP up to its newest frames
    (the H.264 frames no other frame references not even that): its first picture is a keyframe
    of about the newest source picture, not the GOP's first one, and audio is released from
    that keyframe's time on: a viewer's first second is not silent."""
    vt, vframes = media["video"]
    at, aframes = media["audio"]

    async def main(tc: Transcoder) -> None:
        if workers == "threads":
            tc.processes = 0  # transcode_processes = 0
        source = Stream("live/backlog", StreamInfo("rtmp"), "test")
        source.set_track(vt)
        source.set_track(at)
        merged = sorted(vframes[:45] + aframes[:65], key=lambda f: f.dts * f.time_base)
        for f in merged:
            source.push(f)  # in the GOP cache before any viewer
        plan = _plan(media)
        key = ("variant", plan.variant_key())
        var = source.sink(key, lambda s: variant_mod.Variant(s, plan, key, tc))
        viewer = var.sink("viewer", lambda s: _Collect())
        assert isinstance(var.workers["video"], variant_mod.Worker) == (workers == "threads")
        gop_video = [f for f in source.gop if f.track.kind == "video"]
        assert len(gop_video) >= 10 and source.gop[0].keyframe and vt.has_b_frames
        decoded0 = tc.counters.frames_decoded
        await _until(lambda: var.stats()["video"]["out"] >= 1)  # type: ignore[index]
        await asyncio.sleep(0.3)
        got = viewer.frames
        assert got[0].track.kind == "video" and got[0].keyframe
        start = got[0].pts * got[0].time_base
        newest = max(f.pts * f.time_base for f in gop_video)
        # not the GOP's first picture (1.5 s older): the coded tail and the reorder delay apart
        assert newest - start < 0.3, (float(start), float(newest))
        # (the counters are the codec processes' own, reported with their results)
        assert var.stats()["video"]["out"] <= variant_mod.CODED_TAIL_B  # type: ignore[index]
        tail = variant_mod.CODED_TAIL_B
        needed = sum(needed_for_decoding(f) for f in gop_video[:-tail]) + tail
        assert needed < len(gop_video)  # the non-reference B-frames are not even decoded
        audio_in = var.stats()["audio"]["in"]  # type: ignore[index]  # one AAC frame a packet
        # video pictures out of the decoder (its reorder delay holds back a few)
        decoded = tc.counters.frames_decoded - decoded0 - audio_in
        assert needed - tail <= decoded <= needed, (decoded, needed, len(gop_video))
        audio = [f for f in got if f.track.kind == "audio"]
        assert audio, "no audio reached the viewer"
        assert all(f.pts * f.time_base >= start for f in audio)
        assert float(audio[0].pts * audio[0].time_base - start) < 0.1  # audio from the start on
        var.drop_sink("viewer")

    _run(main)


def test_audio_coded_after_the_first_keyframe_but_older_than_it_is_dropped(media) -> None:
    """Audio and video are coded in separate steps: when the audio step lags (a busy thread or
    codec process), audio older than the variant's first video keyframe comes out after it.
    Pushed, it would sit in the GOP behind the keyframe with older timestamps, and a viewer
    would get audio from before its first picture."""
    from gateway.transcode.factory import make_step

    vt, vframes = media["video"]
    at, aframes = media["audio"]

    class Lagging:
        """The real audio step, held back until the video step has delivered its keyframe."""

        def __init__(self, step: object, go: threading.Event) -> None:
            self.step, self.go = step, go

        def process(self, frame: Frame) -> list[Frame]:
            self.go.wait(10)
            return self.step.process(frame)  # type: ignore[attr-defined]

        def flush(self) -> list[Frame]:
            return self.step.flush()  # type: ignore[attr-defined]

        def close(self) -> None:
            self.step.close()  # type: ignore[attr-defined]

    go = threading.Event()

    def factory(t: planner.Transcode, source: Track) -> object:
        step = make_step(t, source)
        return Lagging(step, go) if t.kind == "audio" else step

    async def main(tc: Transcoder) -> None:
        source = Stream("live/lag", StreamInfo("rtmp"), "test")
        source.set_track(vt)
        source.set_track(at)
        plan = _plan(media)
        key = ("variant", plan.variant_key())
        var = source.sink(key, lambda s: variant_mod.Variant(s, plan, key, tc, factory=factory))
        viewer = var.sink("viewer", lambda s: _Collect())
        merged = sorted(vframes[:20] + aframes[:30], key=lambda f: f.dts * f.time_base)
        for f in merged:
            source.push(f)
        await _until(lambda: any(f.track.kind == "video" for f in viewer.frames))
        go.set()  # the audio step catches up now: its first frames are older than the picture
        await _until(lambda: var.stats()["audio"]["out"] >= 25)  # type: ignore[index]
        await asyncio.sleep(0.1)
        got = viewer.frames
        assert got[0].track.kind == "video" and got[0].keyframe
        start = got[0].pts * got[0].time_base
        audio = [f for f in got if f.track.kind == "audio"]
        assert audio, "no audio reached the viewer"
        assert all(f.pts * f.time_base >= start for f in audio), (
            float(start), [float(f.pts * f.time_base) for f in audio[:5]])
        gop_audio = [f for f in var.gop if f.track.kind == "audio"]
        assert all(f.pts * f.time_base >= start for f in gop_audio)
        var.drop_sink("viewer")

    _run(main)


def test_a_gop_too_long_to_catch_up_on_waits_for_the_next_keyframe(
        media, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Catching up is bounded: a camera's 60 s GOP would hold up every variant sharing the codec
    process while it is decoded, so the variant starts at the source's next keyframe instead."""
    vt, vframes = media["video"]
    at, _ = media["audio"]
    monkeypatch.setattr(variant_mod, "CATCH_UP_MAX", 5)
    keys = [i for i, f in enumerate(vframes) if f.keyframe]
    assert keys[:2] == [0, 30]

    async def main(tc: Transcoder) -> None:
        source = Stream("live/camera", StreamInfo("rtmp"), "test")
        source.set_track(vt)
        source.set_track(at)
        for f in vframes[:25]:
            source.push(f)
        plan = _plan(media)
        key = ("variant", plan.variant_key())
        var = source.sink(key, lambda s: variant_mod.Variant(s, plan, key, tc))
        viewer = var.sink("viewer", lambda s: _Collect())
        for f in vframes[25:50]:
            source.push(f)
        await _until(lambda: var.stats()["video"]["out"] >= 10)  # type: ignore[index]
        assert var.workers["video"].frames_in == 50 - 30  # from the next keyframe on
        first = viewer.frames[0]
        assert first.keyframe and first.pts * first.time_base == vframes[30].pts * vframes[30].time_base
        var.drop_sink("viewer")

    with caplog.at_level(logging.INFO):
        _run(main)
    assert "live/camera~h5: the source's GOP is too long to catch up on (14 frames)" in caplog.text


def test_a_variant_starting_on_a_full_gop_drops_no_live_frame(media, monkeypatch) -> None:
    """The GOP cache replayed at a variant's start, then live frames before the worker coded
    anything (its process may still be starting): none is dropped, so the first viewer's video
    does not freeze for a GOP right after its first pictures."""
    vt, vframes = media["video"]
    at, _ = media["audio"]
    monkeypatch.setitem(variant_mod.QUEUE_FRAMES, "video", 40)

    async def main(tc: Transcoder) -> None:
        source = Stream("live/fullgop", StreamInfo("rtmp"), "test")
        source.set_track(vt)
        source.set_track(at)
        for f in vframes[:30]:
            source.push(f)  # a whole GOP in the cache before any viewer
        plan = _plan(media)
        key = ("variant", plan.variant_key())
        var = source.sink(key, lambda s: variant_mod.Variant(s, plan, key, tc))
        viewer = var.sink("viewer", lambda s: _Collect())
        for f in vframes[30:70]:  # no await: nothing can be coded meanwhile
            source.push(f)
        w = var.workers["video"]
        coded = variant_mod.CODED_TAIL_B + 40  # the GOP's newest frames, then the live ones
        assert (w.frames_in, w.dropped, w.skipped) == (coded, 0, 0)  # (the rest only decoded)
        await _until(lambda: var.stats()["video"]["out"] >= coded - 4)  # type: ignore[index]
        assert viewer.frames[0].keyframe
        var.drop_sink("viewer")

    _run(main)


def test_prestart_starts_the_processes_with_the_gateway() -> None:
    from gateway import app
    from gateway.config import Config

    async def main(_: Transcoder) -> None:
        gw = await app.start(Config(host="127.0.0.1", rtmp_port=0, http_port=0,
                                    transcode_processes=1, transcode_prestart=True))
        try:
            pool = gw.ctx.transcoder.running_pool
            assert pool is not None  # started with the gateway, before any transcode
            procs = pool.processes
            assert len(procs) == 1 and procs[0].is_alive()
        finally:
            await gw.close()
        assert not procs[0].is_alive()

    _run(main)


def test_a_one_track_source_gets_a_relay_that_costs_nothing_and_is_never_refused(
        media) -> None:
    """A viewer of a source with one track so far is attached to a relaying variant, so that
    the other track, if it comes, can be adopted (transcoded where needed). The relay runs no
    codec: it counts nothing against the transcode capacity and is served even when adopted
    tracks have taken the capacity past its limit."""
    vt, vframes = media["video"]
    matrix = planner.load_matrix()

    async def main(tc: Transcoder) -> None:
        tc.processes = 0  # threads: no process start-up
        other = Stream("live/busy", StreamInfo("rtmp"), "test")
        other.set_track(vt)
        other.set_track(media["audio"][0])
        busy, _ = tc.media_for(matrix, other, "h5")  # H.264 -> MPEG-1 + AAC -> MP2
        assert isinstance(busy, variant_mod.Variant) and busy.cost > 0.1
        tc.capacity = 0.1  # now past the limit
        with pytest.raises(variant_mod.VariantRefused):
            tc.media_for(matrix, other, "webrtc")  # a new transcode is refused
        source = Stream("live/relay", StreamInfo("rtmp"), "test")
        source.set_track(vt)  # video only, so far
        media_, plan = tc.media_for(matrix, source, "rtmp")
        assert plan.passthrough_all and isinstance(media_, variant_mod.Variant)
        assert media_.cost == 0 and not media_.workers
        viewer = media_.sink("viewer", lambda s: _Collect())
        for f in vframes[:10]:
            source.push(f)
        assert [f.data for f in viewer.frames] == [f.data for f in vframes[:10]]  # as they are
        again, _ = tc.media_for(matrix, source, "rtmp")
        assert again is media_  # shared by the plan's viewers
        media_.drop_sink("viewer")
        other.end("test over")

    _run(main)
