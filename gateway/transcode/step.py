"""The contract of one transcode step: encoded frames of one track in, encoded frames out.

Steps are synchronous and single-threaded: a variant runs each step in its own worker thread
(PyAV releases the GIL while coding), never on the event loop. Output frames keep the source's
timeline (their pts/dts convert to the same instants as the input's), so a transcoded track stays
in sync with a passed-through one.
"""

from __future__ import annotations

import bisect
import collections
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import av

from ..codecs import h264
from ..media import Frame, Track


class Step(Protocol):
    def process(self, frame: Frame) -> list[Frame]:
        """Feed one source frame; return the output frames that became ready (maybe none)."""

    def flush(self) -> list[Frame]:
        """Drain buffered output at end of stream."""

    def close(self) -> None:
        """Free codec contexts; the step is not used afterwards."""

    # optional: ``catch_up(frame) -> None``, decode only (see ``catch_up`` below)


def catch_up(step: Step, frame: Frame) -> None:
    """Feed ``frame`` to bring the step's decoder up to date, without coding output for it.

    A variant that starts in the middle of a long GOP (OBS's default keyframe interval is ~8 s)
    must decode from the GOP's keyframe, but its viewers want the newest picture, not the whole
    GOP re-encoded, sent in a burst and then a wait for the next keyframe. A step that cannot
    only decode codes the frame and its output is discarded."""
    only_decode = getattr(step, "catch_up", None)
    if only_decode is not None:
        only_decode(frame)
    else:
        step.process(frame)


def needed_for_decoding(frame: Frame, nal_length_size: int = 0) -> bool:
    """False for an H.264 frame that no other frame references (every slice ``nal_ref_idc``
    0, e.g. a non-reference B-frame): a decoder may skip it and decode the rest unchanged.
    ``nal_length_size``: the track's, if the caller knows it."""
    track = frame.track
    if track.codec != "h264" or frame.keyframe:
        return True
    try:
        if not nal_length_size:
            nal_length_size = h264.nal_length_size(track.config)
        return not h264.is_disposable(frame.data, nal_length_size)
    except h264.H264Error:
        return True


@dataclass
class Counters:
    """Codec usage of one owner (a gateway's ``Transcoder``, a codec process, a lone step), so
    that tests can prove pass-through decodes nothing; two gateways in a process count apart."""

    decoders_opened: int = 0
    encoders_opened: int = 0
    frames_decoded: int = 0
    frames_encoded: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **deltas: int) -> None:
        with self.lock:
            for k, v in deltas.items():
                setattr(self, k, getattr(self, k) + v)

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {k: getattr(self, k) for k in
                    ("decoders_opened", "encoders_opened", "frames_decoded", "frames_encoded")}


class Admission:
    """Which frames enter a transcoder's bounded queue, for thread and process workers alike.

    Video (re)starts only at a keyframe, since a decoder cannot start elsewhere; a full queue
    drops the frame (video then waits for the next keyframe) and says so, instead of growing.
    Before that, from ``shed_at`` queued frames on, H.264 frames no other frame references
    (non-reference B-frames) are shed one by one: a transcoder a little short of CPU loses
    single frames and keeps its latency, instead of a whole GOP at a time after seconds of
    backlog. Not before the worker is ``warm`` (has coded a frame): a queue that builds up
    while a worker process starts is a one-off wait, not a sign of falling behind.

    A variant starts by feeding its steps the source's GOP cache at once (``replay``): up to
    ``limit`` such frames are admitted and, while they wait, not counted as backlog. Counted,
    a full GOP filled the queue by itself, and the live frames behind it were dropped: new
    viewers' video froze for a GOP right after their first pictures.
    """

    def __init__(self, name: str, kind: str, limit: int, log: logging.Logger,
                 shed_at: int | None = None) -> None:
        self.name = name
        self.log = log
        self.limit = limit
        self.video = kind == "video"
        self.shed_at = limit if shed_at is None or not self.video else min(shed_at, limit)
        self.need_key = self.video
        self.dropped = 0
        self.skipped = 0  # after a drop: video frames discarded until the next keyframe
        self.shed = 0  # disposable frames not coded because the queue was long
        self.warm = False  # set by the worker once it has coded a frame
        self.admitted = 0
        self.replayed = 0  # admitted as a start-up replay; they are the oldest in the queue
        self._nal_sizes: tuple[Track | None, int] = (None, 4)  # track -> its AVCC length size

    def caught_up(self, first: Frame) -> None:
        """Frames from the keyframe ``first`` on went to the step to catch up (``catch_up``):
        the frames after them continue its GOP."""
        if first.keyframe:
            self.need_key = False

    def admit(self, frame: Frame, queued: int, replay: bool = False) -> bool:
        """Whether ``frame`` goes in, with ``queued`` frames admitted and not coded yet."""
        if self._admit(frame, queued, replay):
            self.admitted += 1
            return True
        return False

    def _admit(self, frame: Frame, queued: int, replay: bool) -> bool:
        if self.need_key:
            if not frame.keyframe:
                if self.dropped:  # not the start, which waits for its first keyframe anyway
                    self.skipped += 1
                return False
            self.need_key = False
        if replay and self.replayed < self.limit:
            self.replayed += 1
            return True
        # what is queued beyond the replayed frames still waiting (coded in arrival order)
        queued -= max(0, self.replayed - (self.admitted - queued))
        if queued < self.shed_at:
            return True
        if queued < self.limit:
            if not self.warm or not self._disposable(frame):
                return True
            self.shed += 1
            if self.shed == 1 or self.shed % 100 == 0:
                self.log.warning("%s: transcoder behind (%d frames queued), shedding non-reference "
                                 "frames (%d so far)", self.name, queued, self.shed)
            return False
        self.dropped += 1
        self.need_key = self.video
        if self.dropped == 1 or self.dropped % 100 == 0:
            self.log.warning("%s: transcoder cannot keep up (%d input frames dropped so far)",
                             self.name, self.dropped)
        return False

    def _disposable(self, frame: Frame) -> bool:
        track = frame.track
        if track.codec != "h264" or frame.keyframe:
            return False
        cached, size = self._nal_sizes
        if track is not cached:
            try:
                size = h264.nal_length_size(track.config)
            except h264.H264Error:
                return False
            self._nal_sizes = (track, size)
        return not needed_for_decoding(frame, size)


class Admitted:
    """A worker's ``Admission`` counts as the worker's own attributes (what ``TrackWorker``
    and the stats read), for thread and process workers alike."""

    _admission: Admission
    errors = 0  # frames the step's codecs rejected (``CodecStep.errors``), as last reported

    @property
    def dropped(self) -> int:
        return self._admission.dropped

    @property
    def skipped(self) -> int:
        return self._admission.skipped

    @property
    def shed(self) -> int:
        return self._admission.shed


def _latency_edges() -> tuple[float, ...]:
    """Bucket upper bounds: 1 ms up to 100 ms (the targets are tens of ms), coarser beyond."""
    return (*range(1, 101), *range(110, 1001, 10), *range(1100, 10001, 100))


class Latency:
    """Arrival -> output-ready times of one step, in ms.

    Two views: the last ``recent`` samples (``p50``/``p99`` of what happens now) and a
    cumulative histogram that never forgets, so that a reader can take two snapshots and get
    the percentiles of exactly the frames in between (a benchmark's window, without the start).
    """

    EDGES: Final[tuple[float, ...]] = _latency_edges()

    def __init__(self, recent: int = 2000) -> None:
        self.recent: collections.deque[float] = collections.deque(maxlen=recent)
        self.counts = [0] * (len(self.EDGES) + 1)  # the last bucket: beyond the last edge

    def add(self, ms: float) -> None:
        self.recent.append(ms)
        self.counts[bisect.bisect_left(self.EDGES, ms)] += 1

    def __len__(self) -> int:
        return len(self.recent)

    def __iter__(self) -> Iterator[float]:
        return iter(self.recent)

    def percentile(self, q: float) -> float | None:
        """Of the recent samples."""
        lat = sorted(self.recent)
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None

    def histogram(self) -> dict[str, int]:
        """Sparse cumulative histogram: bucket upper bound in ms ("inf" last) -> count."""
        edges = self.EDGES
        return {(str(edges[i]) if i < len(edges) else "inf"): n
                for i, n in enumerate(self.counts) if n}


class Timings:
    """Per input frame of one step: arrival -> output ready (``latency``), and of that the time
    spent waiting for the worker (``wait``) and coding (``coding``); the rest is transport."""

    def __init__(self) -> None:
        self.latency = Latency()
        self.wait = Latency()
        self.coding = Latency()

    def add(self, latency_ms: float, wait_ms: float, coding_ms: float) -> None:
        self.latency.add(latency_ms)
        self.wait.add(wait_ms)
        self.coding.add(coding_ms)

    def stats(self) -> dict[str, object]:
        """Recent p50/p99 and the cumulative histograms (diff two snapshots for a window)."""
        return {"latency_ms_p50": self.latency.percentile(0.5),
                "latency_ms_p99": self.latency.percentile(0.99),
                "latency_hist_ms": self.latency.histogram(),
                "wait_ms_p99": self.wait.percentile(0.99),
                "coding_ms_p50": self.coding.percentile(0.5),
                "coding_ms_p99": self.coding.percentile(0.99),
                "wait_hist_ms": self.wait.histogram(),
                "coding_hist_ms": self.coding.histogram()}


def histogram_percentile(hist: dict[str, int], q: float) -> float | None:
    """Percentile of a (difference of) ``Latency.histogram()``: the bucket's upper bound, so
    never optimistic; ``inf`` when it falls beyond the last bucket."""
    items = sorted(((float(k), n) for k, n in hist.items() if n > 0), key=lambda kv: kv[0])
    total = sum(n for _, n in items)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for edge, n in items:
        seen += n
        if seen >= rank:
            return edge
    return items[-1][0]


FFMPEG_ERRORS: Final = (av.FFmpegError, ValueError)


class CodecStep:
    """What the PyAV steps share: a decoder ``_dec``, counted decoding, rate-limited errors."""

    _dec: Any = None
    _enc: Any = None
    errors = 0
    #: where the step counts its codecs' work: its owner's, given to the constructor, else its own
    counters: Counters
    log = logging.getLogger(__name__)
    #: whose step this is (``live/cam~h5 h264->mpeg1video``), set by its owner (``named``): an
    #: operator must see which stream a decode error belongs to
    label = ""

    @property
    def _who(self) -> str:
        return f"{self.label}: " if self.label else ""

    def _decode_packet(self, packet: av.Packet | None) -> list[Any]:
        """Decode one packet (None drains); no decoder yet, or an error: nothing."""
        if self._dec is None:
            return []
        return self._code(self._dec, "decode", packet, "frames_decoded")

    def _encode_packets(self, frame: Any) -> list[av.Packet]:
        """Encode one frame (None flushes)."""
        return self._code(self._enc, "encode", frame, "frames_encoded")

    def _code(self, ctx: Any, verb: str, item: Any, counter: str) -> list[Any]:
        """One codec call, counted; an FFmpeg error is logged (rate-limited) and skipped."""
        try:
            out: list[Any] = getattr(ctx, verb)(item)
        except FFMPEG_ERRORS as e:
            self._error("%s %s error: %s", ctx.name, verb, e)
            return []
        if out:
            self.counters.add(**{counter: len(out)})
        return out

    def _error(self, msg: str, *args: object) -> None:
        """Count and log, rate-limited: a broken source must not flood the log."""
        self.errors += 1
        if self.errors <= 5 or self.errors % 100 == 0:
            self.log.warning("%s" + msg + " (%d errors so far; frame skipped)", self._who, *args,
                             self.errors)


def named(step: Step, name: str) -> Step:
    """``step`` with its owner's name for its log lines (a step other than a PyAV one is left as is)."""
    if isinstance(step, CodecStep):
        step.label = name
    return step
