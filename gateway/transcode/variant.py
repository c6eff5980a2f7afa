"""Shared, on-demand output variants of a stream.

A *variant* is the source stream after the planner's answer for one target: pass-through tracks
are forwarded as the very same ``Frame`` objects (never decoded), transcoded tracks go through a
``Step`` in a worker process of its gateway's transcode pool (``pool.py``: coding there never
competes with the event loop for the GIL), or in a worker thread of the gateway process when
``Transcoder.processes`` is 0 or a custom step factory asks for it. A variant is itself a
``Stream`` (tracks, GOP cache, sinks), so outputs attach to it exactly as to a published stream,
and every viewer with the same plan shares it: 100 jsmpeg viewers cost one H264->MPEG1
transcode. It starts with its first sink and stops (steps closed, codecs freed) when its last
sink leaves. Starting one is refused while its cost would take the running ones past the
transcode capacity, or while that transcode of that stream cools down after crashes
(``VariantRefused``, see ``Transcoder.media_for``): the gateway's ``Transcoder`` keeps that
account, nothing here is module state.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import TYPE_CHECKING, Protocol

from .. import planner
from ..hub.sessions import Code, Refusal
from ..hub.stream import Stream
from ..media import Frame, StreamInfo, Track
from .step import (
    Admission,
    Admitted,
    Step,
    Timings,
    catch_up,
    named,
    needed_for_decoding,
)

if TYPE_CHECKING:
    from .pool import PoolStep
    from .transcoder import Transcoder

log = logging.getLogger(__name__)

StepFactory = Callable[[planner.Transcode, Track], Step]

HOLD_AUDIO_FRAMES = 500  # ~10 s of audio held while the first video keyframe is coded
QUEUE_FRAMES = {"video": 60, "audio": 200}  # ~2 s of input; beyond it the step is behind
#: audio coded from this far (s) before a starting variant's first video frame (``_catch_up``);
#: older audio would be dropped at once by the variant's start in sync
AUDIO_BEFORE_VIDEO = Fraction(1, 2)
CODED_TAIL_B = 4  # newest video frames of the GOP coded when the source has B-frames
#: At most this many 720p frames (fewer of larger ones) decoded to catch up (~0.4 s of a core):
#: a longer GOP (a camera's 60 s) waits for the next keyframe instead, as without a GOP cache
CATCH_UP_MAX = 300
SHED_FRAMES = {"video": 30}  # ~1 s queued: shed non-reference frames (see Admission)
#: A step whose process died while coding it is restarted at most this often per
#: ``RESTART_WINDOW`` seconds; beyond that the variant ends (its viewers are told why and may
#: come back to a fresh one). Steps that were only hosted there restart without counting.
RESTARTS = 3
RESTART_WINDOW = 60.0
#: After that, the same variant of the same published stream is refused for this long: each new
#: variant would crash a process again, and with it the other streams' variants there.
COOL_DOWN = 60.0
CAPACITY_RETRY = 15.0  # s: Retry-After of a refusal for capacity


class VariantRefused(Refusal):
    """A new variant is not started now: that transcode of that stream kept crashing its process,
    or the transcode capacity is in use. ``str()`` says which; ``retry_after`` is in seconds."""

    retry_after: float

    def __init__(self, reason: str, retry_after: float) -> None:
        super().__init__(Code.UNAVAILABLE, reason, retry_after)


#: Plans one kind of a source's tracks again for a variant's target: (its plan, its cost).
Replan = Callable[[Mapping[str, Track], str], tuple[planner.TrackPlan | None, float]]


class TrackWorker(Protocol):
    """What a variant needs from whatever runs one of its steps (thread ``Worker``, ``PoolStep``)."""

    transcode: planner.Transcode
    kind: str
    frames_in: int
    frames_out: int
    errors: int
    timings: Timings
    failed: str | None  # why the step stopped for good; None while it runs

    @property
    def dropped(self) -> int: ...

    @property
    def skipped(self) -> int: ...

    @property
    def shed(self) -> int: ...

    def submit(self, frame: Frame, replay: bool = False) -> None:
        """Queue ``frame`` (``replay``: from the source's GOP cache, as the variant starts)."""

    def catch_up(self, frames: list[Frame]) -> None:
        """Frames from a keyframe on, only to be decoded (see ``step.catch_up``)."""

    def stop(self) -> None: ...

    def join(self, timeout: float = 5.0) -> None: ...


class Worker(Admitted):
    """One transcode step in its own thread, fed by a bounded queue, results back on the loop."""

    def __init__(self, name: str, t: planner.Transcode, source: Track, factory: StepFactory,
                 deliver: Callable[[list[Frame]], None], loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self.transcode = t
        self.source = source
        self.kind = t.kind
        self._factory = factory
        self._deliver = deliver
        self._loop = loop
        limit = QUEUE_FRAMES.get(t.kind, 100)
        # a start-up replay of up to ``limit`` frames comes on top of the live bound
        # a frame and its arrival; a list: frames to catch up on; None: stop
        self._q: queue.Queue[tuple[Frame, float] | list[Frame] | None] = queue.Queue(2 * limit)
        self._admission = Admission(name, t.kind, limit, log, SHED_FRAMES.get(t.kind))
        self.frames_in = 0
        self.frames_out = 0
        self.timings = Timings()  # the queue is the wait, there is no transport
        self.failed: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"transcode {name}", daemon=True)
        self._thread.start()

    def submit(self, frame: Frame, replay: bool = False) -> None:
        # only this thread puts, the worker only takes: an admitted frame always fits
        if self._admission.admit(frame, self._q.qsize(), replay):
            self._q.put_nowait((frame, time.perf_counter()))
            self.frames_in += 1

    def catch_up(self, frames: list[Frame]) -> None:
        if frames:
            self._admission.caught_up(frames[0])
            self._q.put_nowait(frames)  # one slot, at the start: it fits

    def stop(self) -> None:
        try:
            self._q.put_nowait(None)
        except queue.Full:
            # make room for the stop marker; what is dropped would never be delivered anyway
            try:
                self._q.get_nowait()
            except queue.Empty:
                pass
            self._q.put_nowait(None)

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        step: Step | None = None
        try:
            step = named(self._factory(self.transcode, self.source), self.name)
            while True:
                item = self._q.get()
                if item is None:
                    break
                if isinstance(item, list):
                    for f in item:
                        catch_up(step, f)
                    continue
                frame, arrived = item
                began = time.perf_counter()
                try:
                    out = step.process(frame)
                except Exception:
                    log.exception("%s: transcode step failed on a frame; skipped", self.name)
                    continue
                self.errors = getattr(step, "errors", 0)
                done = time.perf_counter()
                self._admission.warm = True  # a flag, read by the loop's thread: no lock needed
                self.timings.add((done - arrived) * 1000, (began - arrived) * 1000,
                                 (done - began) * 1000)
                if out:
                    self.frames_out += len(out)
                    self._post(out)
        except Exception as e:
            self.failed = f"{type(e).__name__}: {e}"
            log.exception("%s: transcoder failed; track stopped", self.name)
        finally:
            if step is not None:
                try:
                    step.close()
                except Exception:
                    log.exception("%s: closing the step failed", self.name)

    def _post(self, frames: list[Frame]) -> None:
        try:
            self._loop.call_soon_threadsafe(self._deliver, frames)
        except RuntimeError:  # loop closed during shutdown
            pass


class Variant(Stream):
    """The source after one plan; a sink of the source and a stream for its own sinks."""

    def __init__(self, source: Stream, plan: planner.Plan, key: object, transcoder: Transcoder,
                 factory: StepFactory | None = None, costs: dict[str, float] | None = None,
                 replan: Replan | None = None) -> None:
        """``transcoder``: the gateway's, whose pool runs the steps and whose capacity the
        variant takes; ``factory``: steps in threads made by it instead (tests)."""
        super().__init__(f"{source.key}~{plan.protocol}", StreamInfo(source.info.protocol),
                         source.publisher)
        self.source = source
        self.plan = plan
        self.key_in_source = key
        #: per transcoded kind, ``planner.transcode_cost``: what the variant takes of the
        #: transcode capacity until stopped, and how its steps weigh on a codec process
        self.costs = dict(costs or {})
        self._replan = replan
        self.transcoder = transcoder
        transcoder.started(self)
        self.info.metadata = dict(source.info.metadata)
        self._factory = factory
        self._loop = asyncio.get_running_loop()
        self.workers: dict[str, TrackWorker] = {}
        self.closed = False
        self.restarts: dict[str, int] = {}  # steps restarted after their process died, per kind
        self._restarted: dict[str, collections.deque[float]] = {}  # per kind: deaths on the step
        for track in source.tracks.values():
            self._track_in(track)
        # audio waits for the first transcoded video keyframe: until then a viewer could not use
        # it (viewers start at a video keyframe), and audio coded ahead of a video backlog would
        # otherwise be lost to every viewer; bounded, oldest dropped
        self._held: collections.deque[Frame] | None = (
            collections.deque(maxlen=HOLD_AUDIO_FRAMES) if "video" in self.workers else None)
        #: after the first video keyframe, audio older than it (held, or still being coded:
        #: its step lags the video's) is dropped: it would go out behind the keyframe
        self._audio_from: Fraction | None = None
        for frame in self._catch_up(source.gop):
            self._in(frame, replay=True)
        if self.workers.get("video") is not None and not source.gop:
            source.request_keyframe()  # the video decoder can only start at one
        what = "variant" if plan.transcodes else "relay (no codec; a late track joins it)"
        log.info("%s: %s started: %s", source.key, what, plan)

    @property
    def cost(self) -> float:
        """What the variant takes of the transcode capacity until stopped."""
        return sum(self.costs.values())

    def _catch_up(self, gop: list[Frame]) -> list[Frame]:
        """Start (or restart) the video step at the newest frame of the source's GOP cache: the
        frames before it are only decoded (those no frame references not even that), and audio
        older than it is not coded, since the variant starts its viewers at its first video
        keyframe. So a viewer gets the current picture at once, not the GOP (up to ~8 s with
        OBS's default keyframe interval) re-encoded in a burst, then a freeze where it
        overflowed the queue.
        Returns the frames still to submit."""
        worker = self.workers.get("video")
        video = [i for i, f in enumerate(gop) if f.track.kind == "video"]
        # coded: the newest frame, or the newest few where B-frames make the decoder hold
        # pictures back to reorder them (it would output nothing for the newest one alone)
        tail = CODED_TAIL_B if video and gop[video[-1]].track.has_b_frames else 1
        at = video[-tail] if len(video) > tail else 0
        if worker is None or at == 0:
            return gop
        start = gop[at].dts * gop[at].time_base - AUDIO_BEFORE_VIDEO
        decode = [f for f in gop[:at] if f.track.kind == "video" and needed_for_decoding(f)]
        track = gop[at].track
        if len(decode) * max(1.0, track.width * track.height / 921_600) > CATCH_UP_MAX:
            # bounded: decoding it would hold up every variant that shares the codec process
            log.info("%s: the source's GOP is too long to catch up on (%d frames); video starts "
                     "at its next keyframe", self.key, len(decode))
            self.source.request_keyframe()
            return []
        worker.catch_up(decode)
        return [f for i, f in enumerate(gop) if i >= at
                or (f.track.kind != "video" and f.dts * f.time_base >= start)]

    def request_keyframe(self) -> bool:
        return self.source.request_keyframe()

    @property
    def has_video(self) -> bool:
        """Planned video counts before the encoder's first output, so that the variant's
        viewers and GOP start at a video keyframe, not at audio that happens to come first."""
        return "video" in self.output_kinds()

    def output_kinds(self) -> frozenset[str]:
        """Planned kinds count before their encoder's first output: an FLV header must name
        every kind a viewer will get (see ``FlvOutput.header_bytes``)."""
        planned = {k for k, tp in self.plan.tracks.items() if not isinstance(tp, planner.Drop)}
        return frozenset(self.tracks) | planned

    # -- sink of the source ---------------------------------------------------------------

    def _track_in(self, track: Track) -> None:
        tp = self.plan.get(track.kind)
        if tp is None:
            tp = self._adopt(track)
        if tp is None or isinstance(tp, planner.Drop):
            return
        if isinstance(tp, planner.PassThrough):
            self.set_track(track)
            return
        assert isinstance(tp, planner.Transcode)
        old = self.workers.pop(track.kind, None)
        if old is not None:
            old.stop()
        self.workers[track.kind] = self._worker(f"{self.key} {tp.from_codec}->{tp.to_codec}", tp,
                                                track)

    def _adopt(self, track: Track) -> planner.TrackPlan | None:
        """Plan a kind the variant started without. A source's video can show up seconds after
        its audio (a TS publisher that began mid-GOP is known to have video at its first
        keyframe), after viewers have settled for audio only: their variant takes the video
        in now, instead of staying audio-only for its whole life. Its key in the source
        becomes the full plan's, so later viewers of that plan share it."""
        if self._replan is None:
            return None
        tp, cost = self._replan(self.source.tracks, track.kind)
        if tp is None:
            return None
        self.plan = planner.Plan(self.plan.protocol, {**self.plan.tracks, track.kind: tp})
        if cost:
            self.costs[track.kind] = cost
        key = ("variant", self.plan.variant_key())
        sinks = self.source.sinks
        if sinks.get(self.key_in_source) is self and key not in sinks:
            del sinks[self.key_in_source]
            sinks[key] = self
            self.key_in_source = key
        log.info("%s: %s came after the variant started; now %s", self.key, track.kind, self.plan)
        return tp

    def _worker(self, name: str, tp: planner.Transcode, track: Track) -> TrackWorker:
        """A pool step, unless threads are configured or the factory cannot cross a process."""
        limit = QUEUE_FRAMES.get(tp.kind, 100)
        if self.transcoder.processes != 0 and self._factory is None:
            try:
                step = self.transcoder.pool().open(
                    name, tp, track, self._deliver, limit, group=self,
                    shed_at=SHED_FRAMES.get(tp.kind), weight=self.costs.get(tp.kind))
            except Exception:  # a transcode in a thread beats no transcode
                log.exception("%s: cannot use the transcode pool; using a thread", name)
            else:
                step.on_failed = lambda _text: self._step_failed(step)
                return step
        return Worker(name, tp, track, self._factory or self.transcoder.make_step, self._deliver,
                      self._loop)

    def on_track(self, track: Track) -> None:
        """A new track mid-stream (a publisher's new sequence header: other size, sample rate).
        A running step of the same codec keeps going: it drains its decoder's pictures of the
        old configuration and opens a new decoder at the track's first keyframe, its encoder
        and output track unchanged. A new step would lose the frames in flight at the switch,
        and its viewers would get a new output track (MPEG-1 sequence header, AAC config)."""
        if self.closed:
            return
        w = self.workers.get(track.kind)
        if w is not None and w.failed is None and w.transcode.from_codec == track.codec:
            return
        self._track_in(track)

    def on_metadata(self, metadata: dict[str, object]) -> None:
        if not self.closed:
            self.set_metadata(metadata)

    def on_frame(self, frame: Frame) -> None:
        if not self.closed:
            self._in(frame)

    def _in(self, frame: Frame, replay: bool = False) -> None:
        w = self.workers.get(frame.track.kind)
        if w is not None:
            w.submit(frame, replay)
            return
        if frame.track.kind in self.tracks and self.tracks[frame.track.kind] is frame.track:
            self._out(frame)

    def on_end(self, reason: str) -> None:
        self._stop()
        self.end(reason)

    def _deliver(self, frames: list[Frame]) -> None:
        if self.closed:
            return
        for f in frames:
            self._out(f)

    def _out(self, frame: Frame) -> None:
        held = self._held
        if held is None:
            if self._audio_from is not None and frame.track.kind == "audio":
                if frame.pts * frame.time_base < self._audio_from:
                    return
                self._audio_from = None  # one step's frames come in order: the rest are newer
            self.push(frame)
        elif frame.track.kind == "audio":
            held.append(frame)
        elif frame.track.kind == "video" and frame.keyframe:
            self._held = None
            self.push(frame)
            start = self._audio_from = frame.pts * frame.time_base
            for f in held:
                if f.pts * f.time_base >= start:
                    self.push(f)
        else:
            self.push(frame)

    def _step_failed(self, step: PoolStep) -> None:
        """A step's process died (a crash in a codec, the OOM killer, a kill): the variants it
        hosted belong to other streams too, so each restarts its step in a live process and its
        viewers keep playing (video again at once: the new decoder catches up on the source's
        GOP). A step the process keeps dying on (a bitstream that crashes the decoder) ends its
        variant with a reason, so that it does not take a process, and the other streams'
        variants, down for ever; the variants that were only in the same process restart every
        time."""
        if self.closed or not step.lost or self.workers.get(step.kind) is not step:
            return  # a step that cannot open stays stopped: the variant goes on without it
        now = time.monotonic()
        times = self._restarted.setdefault(step.kind, collections.deque())
        if step.died_on:
            times.append(now)
        while times and now - times[0] > RESTART_WINDOW:
            times.popleft()
        if len(times) > RESTARTS:
            n = len(times)
            reason = (f"{step.kind} transcoder failed {n} time{'s' if n > 1 else ''} in "
                      f"{RESTART_WINDOW:.0f} s ({step.failed})")
            log.error("%s: %s; variant ended, refused for %.0f s", self.key, reason, COOL_DOWN)
            self.transcoder.refuse(self.source, self.key_in_source, COOL_DOWN)
            self._stop()
            self.end(reason)
            self.source.drop_sink(self.key_in_source)
            return
        track = self.source.tracks.get(step.kind)
        if track is None:
            return
        self.restarts[step.kind] = self.restarts.get(step.kind, 0) + 1
        log.warning("%s: restarting the %s transcode in a live process (%s)", self.key, step.kind,
                    step.failed)
        self._track_in(track)
        if step.kind == "video":
            # the new decoder catches up on the source's GOP, as a starting variant does, so
            # its viewers see pictures again at once instead of at the next keyframe
            worker = self.workers["video"]
            replay = [f for f in self._catch_up(self.source.gop) if f.track.kind == "video"]
            for f in replay:
                worker.submit(f, replay=True)
            if not replay:
                self.source.request_keyframe()  # the new decoder starts at one

    # -- lifecycle ---------------------------------------------------------------------------

    def drop_sink(self, key: object) -> None:
        super().drop_sink(key)
        if not self.sinks and not self.closed:
            log.info("%s: last viewer left, variant stopped", self.key)
            self._stop()
            self.source.drop_sink(self.key_in_source)

    def _stop(self) -> None:
        if self.closed:
            return
        self.closed = True
        for w in self.workers.values():
            w.stop()

    def stats(self) -> dict[str, object]:
        """Per transcoded track: frames in/out/dropped (and ``skipped``: video frames discarded
        after a drop until the next keyframe; ``shed``: non-reference frames not coded while
        the queue was long; ``errors``: frames the codecs rejected, a damaged source, since the
        step (re)started; ``restarts``: steps restarted after their process died),
        arrival->ready latency p50/p99 (ms) of
        the recent frames and how much of it was waiting for the worker and coding, and the
        cumulative histograms of each (diff two snapshots for a window)."""
        out: dict[str, object] = {}
        for kind, w in self.workers.items():
            out[kind] = {"step": f"{w.transcode.from_codec}->{w.transcode.to_codec}",
                         "in": w.frames_in, "out": w.frames_out, "dropped": w.dropped,
                         "skipped": w.skipped, "shed": w.shed, "errors": w.errors,
                         "restarts": self.restarts.get(kind, 0),
                         **w.timings.stats()}
        return out

