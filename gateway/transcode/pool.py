"""Transcode steps in worker processes, so that coding never competes for the gateway's GIL.

Why processes: with one thread per step, the event loop and the Python parts of every step share
one GIL, and each re-acquisition after a codec call can wait a whole switch interval; latency then
grows with the number of variants although the codecs themselves are cheap. Here the gateway
process only moves bytes: a step lives in one of K child processes (default: one per CPU, each
hosting many steps; a variant's steps share the least loaded one, loads counted in transcode
cost, so a 1080p30 variant weighs nine 360p30 ones) and the parent talks to it over
a socket pair with a compact framing:

* to the child: ``open(step, kind, transcode, source track)``, ``track(step, id, Track)`` (once per new
  input ``Track`` object), ``frame(step, track id, pts, dts, time base, flags, data)`` (flags: key;
  catch-up, i.e. decode only and no result),
  ``close(step)``;
* back: ``result(step, [frame...], codec errors)`` once per input frame but catch-up ones (empty
  when the step had nothing ready: it is also the acknowledgement that bounds the frames in
  flight), ``track(step, id, Track)``
  before the first frame of each output track, ``counters(deltas)``, ``error(step, text)``,
  ``closed(step)`` and ``log(level, logger, text)``. A busy child sends an audio step's results
  together with the next video result (``_Held``): one wake-up of the gateway, not two.

Headers are ``struct``-packed and payloads are the frames' own bytes (``sendmsg`` scatter, no
copy); only ``Track``/``Transcode`` descriptions are pickled, and only when they change, so the
per-frame cost on the event loop is a header pack/unpack and one ``Frame`` (a few us). The
parent reads with ``loop.add_reader``, not a reader thread: with the loop 80% busy, a thread that
must win the GIL back to post each result measured ~200 ms median delay, ``add_reader`` ~2 ms. It
writes without blocking (what the kernel does not take waits for ``add_writer``) and works only
on its loop thread. A child's codec threads take its messages audio steps' first and the rest in
arrival order (``_Schedule``), a step on one thread at a time; a fixed few threads, not one per
step, which measured worse video latency.

Children are started with the ``spawn`` method (never ``fork`` a process running an event loop
and threads); as with any ``spawn``, a program that embeds the gateway needs the usual
``if __name__ == "__main__":`` guard. A child that dies fails its steps (their tracks stop, as a
failing thread step does) and is replaced for new steps; the gateway keeps running.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import itertools
import logging
import multiprocessing
import pickle
import signal
import socket
import struct
import threading
import time
import traceback
from collections.abc import Callable
from fractions import Fraction
from typing import Any

from .. import planner
from ..cpus import usable_cpus
from ..media import Frame, Track
from .step import COUNTERS, Admission, Admitted, Timings, catch_up, named

__all__ = ["Pool", "PoolStep", "default_processes", "get_pool", "shutdown"]

log = logging.getLogger(__name__)

Deliver = Callable[[list[Frame]], None]

# -- wire format ----------------------------------------------------------------------------
# Every message: u32 length of what follows, u8 type, u32 step id, payload.
_HDR = struct.Struct("<IBI")
_FRAME = struct.Struct("<IqqqqB")  # track id, pts, dts, time base num/den, flags; then data
_KEY, _CATCH_UP = 1, 2  # frame flags: keyframe; decode only, no result (``step.catch_up``)
_FRAME_MSG = struct.Struct("<IBIIqqqqB")  # header + _FRAME in one pack, on the parent's hot path
_OUT = struct.Struct("<IqqqqBI")  # same plus the data length (several frames per result)
_RESULT_HEAD = struct.Struct("<HIII")  # frames, us waiting in the process and coding, codec errors
_TRACK_ID = struct.Struct("<I")
_COUNTERS = struct.Struct("<qqqq")
_AUDIO, _OTHER = b"a"[0], b"-"[0]  # first byte of an open message: the step's kind
_COUNTER_NAMES = ("decoders_opened", "encoders_opened", "frames_decoded", "frames_encoded")

OPEN, TRACK, FRAME, CLOSE = b"o"[0], b"t"[0], b"f"[0], b"c"[0]  # parent -> child
RESULT, COUNTERS_MSG, ERROR, CLOSED, LOG, READY = (b"r"[0], b"n"[0], b"e"[0], b"x"[0],
                                                   b"l"[0], b"y"[0])  # child -> parent (+TRACK)

#: Rough CPU share of a step by kind, for "least loaded" when its owner gives no ``weight``:
#: 720p video ~3.4 ms a frame at 30 fps, audio a few tenths of a ms at ~40 packets a second.
WEIGHT = {"video": 1.0, "audio": 0.1}
_SOCKET_BUFFER = 4 << 20  # a few hundred frames in the kernel before the parent buffers
_READ_SIZE = 1 << 20
_IOV_MAX = 512  # buffers per sendmsg (Linux allows 1024)
HELP_AFTER = 0.010  # s a message may wait for the first codec thread before a helper is woken
HOLD_MAX = 0.005  # s an audio step's results may wait for other results to share their send
#: Signals that stop the gateway. A whole process group gets them at once (Ctrl-C; systemd's
#: stop; ``timeout``): the codec processes leave the stop to the gateway, which ends its streams
#: first and then closes their sockets. After SIGTERM a codec process still exits by itself
#: within ``TERM_GRACE`` s, should the gateway never close it.
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
TERM_GRACE = 5


class _Reader:
    """Receives into one reused buffer: a fresh 1 MiB ``recv`` per message costs an mmap."""

    __slots__ = ("_buf", "_view")

    def __init__(self) -> None:
        self._buf = bytearray(_READ_SIZE)
        self._view = memoryview(self._buf)

    def recv(self, sock: socket.socket, flags: int = 0) -> bytes:
        n = sock.recv_into(self._buf, 0, flags)
        return self._view[:n].tobytes()
_MAX_TRACKS = 8  # Track ids remembered per step and direction; tracks change rarely


def _header(kind: int, step_id: int, payload_len: int) -> bytes:
    return _HDR.pack(payload_len + 5, kind, step_id)


def _messages(data: bytes) -> tuple[list[tuple[int, int, int, int]], int]:
    """Complete messages in ``data`` as (type, step, payload start, end), and bytes consumed."""
    out: list[tuple[int, int, int, int]] = []
    o, n = 0, len(data)
    unpack = _HDR.unpack_from
    while n - o >= 9:
        length, kind, sid = unpack(data, o)
        end = o + 4 + length
        if end > n:
            break
        out.append((kind, sid, o + 9, end))
        o = end
    return out, o


def _remember(table: dict[int, Any], key: int, value: Any) -> None:
    """Bounded id table: old tracks are never referenced again once a newer one was sent."""
    if len(table) >= _MAX_TRACKS:
        del table[next(iter(table))]
    table[key] = value


# ============================================================================ child process


class _Forward(logging.Handler):
    """Child log records go to the parent, so they reach the gateway's own handlers."""

    def __init__(self, send: Callable[[bytes], None]) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # logging must never break a step
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            payload = pickle.dumps((record.levelno, record.name, text), protocol=5)
            self._send(_header(LOG, 0, len(payload)) + payload)


class _ChildStep:
    __slots__ = ("name", "next_out", "out_ids", "step", "tb", "tb_key", "tracks")

    def __init__(self, step: Any, name: str) -> None:
        self.step = step
        self.name = name
        self.tracks: dict[int, Track] = {}
        self.tb_key: tuple[int, int] = (1, 1000)
        self.tb = Fraction(1, 1000)
        self.out_ids: dict[int, tuple[int, Track]] = {}  # id(Track) -> (wire id, Track)
        self.next_out = 0


_Msg = tuple[int, int, bytes, int, int, float]  # type, step, buffer, payload start, end, received


class _Held:
    """One codec thread's results not sent yet: an audio step's results ride with the next
    other result, so a busy process sends (and wakes the gateway) once per video frame instead
    of once per frame of any kind. A fast result waits at most ``HOLD_MAX`` plus one video
    frame's coding; an idle thread sends at once (``flush`` before it waits).

    Only with one codec thread (``coalesce``): with helpers a step's next frame may code on
    another thread, whose results must not overtake the held ones.
    """

    __slots__ = ("_parts", "_send", "_since", "coalesce")

    def __init__(self, send: Callable[[list[bytes]], None], coalesce: bool) -> None:
        self._send = send
        self.coalesce = coalesce
        self._parts: list[bytes] = []
        self._since = 0.0

    def __bool__(self) -> bool:
        return bool(self._parts)

    def add(self, parts: list[bytes], fast: bool) -> None:
        """Results of one message of an audio (``fast``) or other step."""
        if parts:
            if not self._parts:
                self._since = time.perf_counter()
            self._parts += parts
        if self._parts and (not self.coalesce or not fast
                            or time.perf_counter() - self._since > HOLD_MAX):
            self.flush()

    def flush(self) -> None:
        if self._parts:
            parts, self._parts = self._parts, []
            self._send(parts)


class _Schedule:
    """The child's order of work: audio steps first, everything else in arrival order.

    Why: an audio frame codes in a tenth of a millisecond, a 720p video frame in a few; FIFO
    would make every audio frame wait behind the video frames of all the process's variants.
    All messages of one step go to the same queue, so a step's own order is kept; the variant
    re-aligns audio with its video at start (``Variant`` holds audio until the first video
    keyframe). A step's kind is the first byte of its ``open`` message.
    """

    def __init__(self) -> None:
        self.fast: collections.deque[_Msg] = collections.deque()
        self.fifo: collections.deque[_Msg] = collections.deque()
        self._audio: set[int] = set()

    def __bool__(self) -> bool:
        return bool(self.fast or self.fifo)

    def add(self, kind: int, sid: int, buf: bytes, start: int, end: int,
            received: float) -> None:
        if kind == OPEN and end > start and buf[start] == _AUDIO:
            self._audio.add(sid)
        if sid in self._audio:
            self.fast.append((kind, sid, buf, start, end, received))
            if kind == CLOSE:
                self._audio.discard(sid)
        else:
            self.fifo.append((kind, sid, buf, start, end, received))

    def is_fast(self, sid: int) -> bool:
        """Whether ``sid`` is an audio step (its frames code in a tenth of a millisecond)."""
        return sid in self._audio

    def oldest(self, busy: set[int]) -> float | None:
        """When the oldest message ``take(busy)`` could return arrived (None: there is none)."""
        times = [m[5] for q in (self.fast, self.fifo) for m in q if m[1] not in busy]
        return min(times) if times else None

    def take(self, busy: set[int] | frozenset[int] = frozenset()) -> _Msg | None:
        """The next message whose step no other thread is coding (a step's order is kept:
        its oldest message is the first of its id in its queue), or None."""
        for q in (self.fast, self.fifo):
            if not q:
                continue
            if not busy:
                return q.popleft()
            for i, m in enumerate(q):
                if m[1] not in busy:
                    del q[i]
                    return m
        return None


def _child_main(sock: socket.socket, log_level: int, threads: int = 1,
                coding: Any = None) -> None:
    """Entry point of a worker process: serve steps until the parent closes the socket.

    ``threads`` codec threads share the work (PyAV releases the GIL while coding), a step on
    one thread at a time. Default one (``Config.transcode_threads``): more lets a process use a
    core another process leaves idle, but on the 2-CPU test VM that measured no better at
    saturation than one single-threaded process per CPU (A/B at 14 and 15 variants, within
    the VM's noise).

    ``coding`` (shared memory, one slot per codec thread) holds the step each thread is coding a
    frame of, 0 when none: if the process dies there, the parent knows which step it died on.

    The first thread reads the socket, without blocking between two pieces of work and
    blocking when it has nothing to do; an awake helper also looks for input between two
    pieces of work, never blocking. The first thread wakes a helper only for a backlog (work
    waiting longer than ``HELP_AFTER``). Why: a wake-up costs tens of microseconds here (a
    context switch; in a VM often an inter-processor interrupt); a helper waiting in ``recv``
    or woken whenever two messages waited measured ~2000 switches a second at six variants
    instead of 165, and 15-17% more CPU.
    """
    # a stop is the gateway's to handle (see ``_STOP_SIGNALS``); both were blocked since the start
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: signal.alarm(TERM_GRACE))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    send_lock = threading.Lock()  # codec threads, and the log handler from codec callbacks

    def send(data: bytes) -> None:
        with send_lock:
            sock.sendall(data)

    root = logging.getLogger()
    root.handlers[:] = [_Forward(send)]
    root.setLevel(log_level)
    try:
        # PyAV: imported here, never in the gateway process
        from .factory import make_step
    except Exception:
        logging.getLogger(__name__).exception("transcode process cannot import its codecs")
        return
    # what the imports made lives as long as the process: keep it out of every collection, so a
    # full one (triggered by the codecs' short-lived objects) does not stall a frame for ms
    gc.freeze()
    try:
        send(_header(READY, 0, 0))
    except OSError:  # the gateway stopped while this process was starting
        return
    steps: dict[int, _ChildStep] = {}
    work = _Schedule()
    cond = threading.Condition()
    busy: set[int] = set()  # steps a codec thread is working on
    reading = threading.Lock()  # the socket's read side and ``buf``
    state = {"closed": False, "idle": 0}  # "idle": helpers waiting for work
    buf = b""
    reader = _Reader()
    sent = [COUNTERS.snapshot()]

    def receive(block: bool) -> None:
        """Queue what the parent sent (caller holds ``reading``); a closed socket ends the process."""
        nonlocal buf
        try:
            data = reader.recv(sock, 0 if block else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        with cond:
            if not data:
                state["closed"] = True
                cond.notify_all()
                return
            buf = buf + data if buf else data
            msgs, used = _messages(buf)
            now = time.perf_counter()
            for kind, sid, start, end in msgs:
                work.add(kind, sid, buf, start, end, now)
            buf = buf[used:]

    def send_out(out: list[bytes]) -> None:
        with send_lock:
            now = COUNTERS.snapshot()
            if now != sent[0]:
                deltas = _COUNTERS.pack(*(now[k] - sent[0][k] for k in _COUNTER_NAMES))
                out.insert(0, _header(COUNTERS_MSG, 0, len(deltas)) + deltas)
                sent[0] = now
            if out:
                sock.sendall(b"".join(out))

    def code(first: bool, slot: int = 0) -> None:
        held = _Held(send_out, coalesce=threads == 1)
        try:
            while True:
                # between two pieces of work, look for new input: audio that arrived while a
                # video frame was coding goes before the video frames already waiting (a helper
                # skips this while the first thread waits in recv)
                if reading.acquire(blocking=first):
                    try:
                        receive(block=False)
                    finally:
                        reading.release()
                with cond:
                    while True:
                        if state["closed"]:
                            return
                        msg = work.take(busy)
                        if msg is not None or first or held:
                            break
                        state["idle"] += 1
                        cond.wait()
                        state["idle"] -= 1
                    if msg is not None:
                        busy.add(msg[1])
                        if first and state["idle"]:
                            since = work.oldest(busy)
                            if since is not None and time.perf_counter() - since > HELP_AFTER:
                                cond.notify()  # a backlog this thread alone is not clearing
                if msg is None:  # nothing to do: what is held goes now, then wait for the parent
                    held.flush()
                    if first:
                        with reading:
                            receive(block=True)
                    continue
                kind, sid, mbuf, start, end, received = msg
                try:
                    if coding is not None:
                        coding[slot] = sid
                    out = _child_handle(kind, sid, mbuf, start, end, steps, make_step, received)
                    if coding is not None:  # (an exception here ends the process: on this step)
                        coding[slot] = 0
                    # sent (or held, with one thread) while the step is still busy here: with
                    # helpers, the step's next message may code on another thread as soon as it
                    # is free, and that result must not reach the parent before this one
                    held.add(out, fast=work.is_fast(sid))
                finally:
                    with cond:
                        busy.discard(sid)
        except OSError:  # e.g. BrokenPipeError: the gateway went away
            pass
        finally:
            with cond:
                state["closed"] = True
                cond.notify_all()

    helpers = [threading.Thread(target=code, args=(False, i), name=f"codec-{i}", daemon=True)
               for i in range(1, max(1, threads))]
    for t in helpers:
        t.start()
    try:
        code(True)
    finally:
        for t in helpers:
            t.join()
        for st in steps.values():
            with contextlib.suppress(Exception):  # exiting anyway
                st.step.close()


def _child_handle(kind: int, sid: int, buf: bytes, start: int, end: int,
                  steps: dict[int, _ChildStep], make_step: Callable[..., Any],
                  received: float) -> list[bytes]:
    """One message from the parent; returns the bytes to send back."""
    if kind == FRAME:
        st = steps.get(sid)
        if st is None:
            return []  # the step failed to open; the parent already knows
        tid, pts, dts, num, den, flags = _FRAME.unpack_from(buf, start)
        if (num, den) != st.tb_key:
            st.tb_key, st.tb = (num, den), Fraction(num, den)
        frame = Frame(st.tracks[tid], buf[start + _FRAME.size:end], pts, dts, st.tb,
                      bool(flags & _KEY))
        if flags & _CATCH_UP:  # not in flight for the parent: no result
            try:
                catch_up(st.step, frame)
            except Exception:
                logging.getLogger(__name__).exception(
                    "%s: transcode step failed on a frame; skipped", st.name)
            return []
        began = time.perf_counter()
        try:
            frames = st.step.process(frame)
        except Exception:
            logging.getLogger(__name__).exception(
                "%s: transcode step failed on a frame; skipped", st.name)
            frames = []
        done = time.perf_counter()
        return _result(sid, st, frames, _us(began - received), _us(done - began))
    if kind == TRACK:
        st = steps.get(sid)
        if st is not None:
            (tid,) = _TRACK_ID.unpack_from(buf, start)
            _remember(st.tracks, tid, pickle.loads(buf[start + 4:end]))
        return []
    if kind == OPEN:
        transcode, source, name = pickle.loads(buf[start + 1:end])  # after the kind byte
        try:
            step = named(make_step(transcode, source), name)
        except Exception as e:  # noqa: BLE001 - reported to the parent, which fails the track
            text = f"{type(e).__name__}: {e}".encode()
            return [_header(ERROR, sid, len(text)) + text]
        st = _ChildStep(step, name)
        st.tracks[0] = source
        steps[sid] = st
        return []
    if kind == CLOSE:
        st = steps.pop(sid, None)
        if st is not None:
            try:
                st.step.close()
            except Exception:
                logging.getLogger(__name__).exception("%s: closing the step failed", st.name)
        return [_header(CLOSED, sid, 0)]
    return []


def _us(seconds: float) -> int:
    return min(0xFFFFFFFF, max(0, round(seconds * 1e6)))


def _result(sid: int, st: _ChildStep, frames: list[Frame], wait_us: int,
            coding_us: int) -> list[bytes]:
    parts: list[bytes] = []
    errors = min(0xFFFFFFFF, getattr(st.step, "errors", 0))  # the step's count so far
    body = [_RESULT_HEAD.pack(len(frames), wait_us, coding_us, errors)]
    for f in frames:
        entry = st.out_ids.get(id(f.track))
        if entry is None or entry[1] is not f.track:
            st.next_out += 1
            entry = (st.next_out, f.track)
            _remember(st.out_ids, id(f.track), entry)
            desc = _TRACK_ID.pack(entry[0]) + pickle.dumps(f.track, protocol=5)
            parts.append(_header(TRACK, sid, len(desc)) + desc)
        tb = f.time_base
        body.append(_OUT.pack(entry[0], f.pts, f.dts, tb.numerator, tb.denominator,
                              f.keyframe, len(f.data)))
        body.append(f.data)
    size = sum(len(b) for b in body)
    parts.append(_header(RESULT, sid, size))
    parts.extend(body)
    return parts


# ============================================================================ gateway process


class PoolStep(Admitted):
    """The gateway's handle on one step in a worker process; same surface as a thread Worker.

    ``failed`` is set (and the track stops) when the step cannot open or its process dies
    (``lost``; ``died_on``: while coding this step); ``on_failed`` tells the owner, which may
    open a new step in a live process.
    """

    def __init__(self, step_id: int, name: str, t: planner.Transcode, source: Track,
                 deliver: Deliver, limit: int, child: _Child, group: object = None,
                 shed_at: int | None = None, weight: float | None = None) -> None:
        self.step_id = step_id
        self.group = group
        self.weight = WEIGHT.get(t.kind, 0.5) if weight is None else weight
        self.name = name
        self.transcode = t
        self.source = source
        self.kind = t.kind
        self.frames_in = 0
        self.frames_out = 0
        self.timings = Timings()  # arrival -> outputs back: sockets, process queue, coding
        self.failed: str | None = None
        self.lost = False  # failed because its process died (not because it could not open)
        self.died_on = False  # ... while coding a frame of this step (the likely cause)
        self.on_failed: Callable[[str], None] | None = None
        self._deliver = deliver
        self._admission = Admission(name, t.kind, limit, log, shed_at)
        self._child = child
        self._stopped = False
        self._arrivals: collections.deque[float] = collections.deque()  # in flight, FIFO
        self._sent_track: Track | None = source
        self._next_track = 0
        self._out_tracks: dict[int, Track] = {}
        self._tb_key: tuple[int, int] = (1, 1000)
        self._tb = Fraction(1, 1000)
        self._done = threading.Event()

    @property
    def in_flight(self) -> int:
        return len(self._arrivals)

    def submit(self, frame: Frame, replay: bool = False) -> None:
        if self._stopped or self.failed is not None:
            return
        if not self._admission.admit(frame, len(self._arrivals), replay):
            return
        self._arrivals.append(time.perf_counter())
        self.frames_in += 1
        self._child.send_frame(self, frame)

    def catch_up(self, frames: list[Frame]) -> None:
        """Frames from a keyframe on that the step only decodes (``step.catch_up``): cheap, not
        in flight, no result; the next frames continue their GOP."""
        if self._stopped or self.failed is not None or not frames:
            return
        self._admission.caught_up(frames[0])
        for f in frames:
            self._child.send_frame(self, f, _CATCH_UP)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.failed is None:
            self._child.close_step(self)
        else:
            self._done.set()

    def join(self, timeout: float = 5.0) -> None:
        """Wait for the process to confirm the close; a no-op on the loop's own thread, which
        is the one that would read that confirmation."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self._child.loop:
            self._done.wait(timeout)

    # -- called by the child connection, on the loop ------------------------------------------

    def _track_id(self, track: Track) -> tuple[int, bool]:
        if track is self._sent_track:
            return self._next_track, False
        self._next_track += 1
        self._sent_track = track
        return self._next_track, True

    def _result(self, frames: list[Frame], now: float, wait_ms: float,
                coding_ms: float) -> None:
        if self._arrivals:
            self._admission.warm = True
            self.timings.add((now - self._arrivals.popleft()) * 1000, wait_ms, coding_ms)
        if frames:
            self.frames_out += len(frames)
            try:
                self._deliver(frames)
            except Exception:
                log.exception("%s: delivering transcoded frames failed", self.name)

    def _fail(self, text: str) -> None:
        if self.failed is not None:
            return
        self.failed = text
        self._arrivals.clear()
        self._done.set()
        log.error("%s: transcoder failed (%s); track stopped", self.name, text)
        if self.on_failed is not None:
            try:
                self.on_failed(text)
            except Exception:
                log.exception("%s: failure callback failed", self.name)


class _Child:
    """One worker process and the parent's end of its socket; lives on the loop's thread."""

    def __init__(self, index: int, loop: asyncio.AbstractEventLoop,
                 ctx: multiprocessing.context.BaseContext, threads: int = 1) -> None:
        self.index = index
        self.loop = loop
        self.steps: dict[int, PoolStep] = {}
        self.load = 0.0
        self.alive = True
        self._started = time.perf_counter()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for s in (parent, child):
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                try:
                    s.setsockopt(socket.SOL_SOCKET, opt, _SOCKET_BUFFER)
                except OSError:
                    pass
        # which step each codec thread is on (see ``_child_main``): a crash is blamed on that one
        self.coding = ctx.RawArray("q", max(1, threads))  # type: ignore[attr-defined]
        self.process: multiprocessing.process.BaseProcess = ctx.Process(  # type: ignore[attr-defined]
            target=_child_main, args=(child, logging.getLogger().getEffectiveLevel(), threads,
                                      self.coding),
            name=f"gateway-transcode-{index}", daemon=True)
        # the child starts with SIGINT and SIGTERM blocked (a mask survives fork and exec), so a
        # signal to the whole process group cannot interrupt its start-up; ``_child_main``
        # then ignores them and unblocks (this thread's own mask is restored at once)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            self.process.start()
        except BaseException:
            parent.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            child.close()
        parent.setblocking(False)
        self.sock = parent
        self._fd = parent.fileno()
        self._wbuf = bytearray()
        self._out: list[bytes] = []  # queued by _send, written by _flush
        self._rbuf = b""
        self._reader = _Reader()
        loop.add_reader(self._fd, self._on_readable)
        log.debug("transcode process %d started (pid %s)", index, self.process.pid)

    # -- writing ------------------------------------------------------------------------------

    def _send(self, parts: list[bytes]) -> None:
        """Queue for this loop iteration: frames of many publishers that arrive together go
        out in one ``sendmsg`` and wake the process once."""
        if not self.alive:
            return
        if not self._out:
            self.loop.call_soon(self._flush)
        self._out += parts

    def _flush(self) -> None:
        parts, self._out = self._out, []
        if not self.alive or not parts:
            return
        if self._wbuf:  # the kernel still has not taken earlier bytes: keep the order
            self._wbuf += b"".join(parts)
            return
        sent = 0
        try:
            for i in range(0, len(parts), _IOV_MAX):
                chunk = parts[i:i + _IOV_MAX]
                n = self.sock.sendmsg(chunk)
                sent += n
                if n < sum(len(p) for p in chunk):
                    break
        except BlockingIOError:
            pass
        except OSError as e:
            self._lost(f"socket error: {e}")
            return
        total = sum(len(p) for p in parts)
        if sent < total:
            rest = b"".join(parts)[sent:]
            self._wbuf += rest
            self.loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        try:
            sent = self.sock.send(self._wbuf)
        except BlockingIOError:
            return
        except OSError as e:
            self._lost(f"socket error: {e}")
            return
        del self._wbuf[:sent]
        if not self._wbuf:
            self.loop.remove_writer(self._fd)

    def open_step(self, step: PoolStep) -> None:
        self.steps[step.step_id] = step
        self.load += step.weight
        payload = bytes((_AUDIO if step.kind == "audio" else _OTHER,)) + pickle.dumps(
            (step.transcode, step.source, step.name), protocol=5)
        self._send([_header(OPEN, step.step_id, len(payload)), payload])

    def send_frame(self, step: PoolStep, frame: Frame, flags: int = 0) -> None:
        tid, new = step._track_id(frame.track)
        parts: list[bytes] = []
        if new:
            desc = _TRACK_ID.pack(tid) + pickle.dumps(frame.track, protocol=5)
            parts.append(_header(TRACK, step.step_id, len(desc)) + desc)
        tb = frame.time_base
        data = frame.data
        parts.append(_FRAME_MSG.pack(len(data) + _FRAME.size + 5, FRAME, step.step_id, tid,
                                     frame.pts, frame.dts, tb.numerator, tb.denominator,
                                     frame.keyframe | flags))
        parts.append(data)
        self._send(parts)

    def close_step(self, step: PoolStep) -> None:
        self.load -= step.weight
        self._send([_header(CLOSE, step.step_id, 0)])

    # -- reading ------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            data = self._reader.recv(self.sock)
        except BlockingIOError:
            return
        except OSError as e:
            self._lost(f"socket error: {e}")
            return
        if not data:
            self._lost("process exited")
            return
        buf = self._rbuf + data if self._rbuf else data
        msgs, used = _messages(buf)
        self._rbuf = buf[used:]
        now = time.perf_counter()
        for kind, sid, start, end in msgs:
            try:
                self._dispatch(kind, sid, buf, start, end, now)
            except Exception:
                log.exception("transcode process %d: bad message %r", self.index, kind)

    def _dispatch(self, kind: int, sid: int, buf: bytes, start: int, end: int,
                  now: float) -> None:
        if kind == RESULT:
            step = self.steps.get(sid)
            if step is None:
                return
            count, wait_us, coding_us, step.errors = _RESULT_HEAD.unpack_from(buf, start)
            o = start + _RESULT_HEAD.size
            frames: list[Frame] = []
            for _ in range(count):
                tid, pts, dts, num, den, key, size = _OUT.unpack_from(buf, o)
                o += _OUT.size
                if (num, den) != step._tb_key:
                    step._tb_key, step._tb = (num, den), Fraction(num, den)
                frames.append(Frame(step._out_tracks[tid], buf[o:o + size], pts, dts, step._tb,
                                    bool(key)))
                o += size
            step._result(frames, now, wait_us / 1000, coding_us / 1000)
        elif kind == COUNTERS_MSG:
            COUNTERS.add(**dict(zip(_COUNTER_NAMES, _COUNTERS.unpack_from(buf, start))))
        elif kind == TRACK:
            step = self.steps.get(sid)
            if step is not None:
                (tid,) = _TRACK_ID.unpack_from(buf, start)
                _remember(step._out_tracks, tid, pickle.loads(buf[start + 4:end]))
        elif kind == CLOSED:
            step = self.steps.pop(sid, None)
            if step is not None:
                step._done.set()
        elif kind == ERROR:
            step = self.steps.pop(sid, None)
            if step is not None:
                if not step._stopped:
                    self.load -= step.weight
                    step._stopped = True
                step._fail(buf[start:end].decode(errors="replace"))
        elif kind == LOG:
            level, name, text = pickle.loads(buf[start:end])
            logging.getLogger(name).log(level, "%s", text)
        elif kind == READY:
            log.info("transcode process %d (pid %s) ready in %.0f ms", self.index,
                     self.process.pid, (now - self._started) * 1000)

    # -- end ----------------------------------------------------------------------------------

    def _lost(self, why: str) -> None:
        """The process died or the socket broke: fail its steps; the pool starts a new one."""
        if not self.alive:
            return
        self._detach()
        self.process.join(0)  # reap it if it is already gone; the pool collects it later if not
        code = self.process.exitcode
        log.error("transcode process %d (pid %s) lost: %s%s; %d step(s) failed", self.index,
                  self.process.pid, why, "" if code is None else f", exit code {code}",
                  len(self.steps))
        steps, self.steps = list(self.steps.values()), {}
        on = set(self.coding) - {0}
        for step in steps:
            step.lost = True
            step.died_on = step.step_id in on
            if step.died_on:
                log.error("transcode process %d died while coding %s", self.index, step.name)
            step._fail(f"transcode process lost: {why}")

    def _detach(self) -> None:
        self.alive = False
        with contextlib.suppress(Exception):  # the loop may be closed at interpreter exit
            self.loop.remove_reader(self._fd)
            if self._wbuf:
                self.loop.remove_writer(self._fd)
        self._wbuf.clear()
        self._out = []
        self.sock.close()

    def stop(self) -> None:
        """Closing the socket is the stop signal: the child frees its steps and exits."""
        if self.alive:
            self._detach()
            for step in self.steps.values():
                step._stopped = True  # later input is ignored, not counted as "cannot keep up"
                step._done.set()
            self.steps = {}

    def join(self, timeout: float) -> None:
        self.process.join(timeout)
        if self.process.exitcode is None:
            log.warning("transcode process %d did not exit; killing it", self.index)
            self.process.kill()
            self.process.join(1.0)


class Pool:
    """K worker processes on one event loop; a new step goes to the least loaded process."""

    def __init__(self, processes: int, loop: asyncio.AbstractEventLoop, threads: int = 1) -> None:
        self.size = max(1, processes)
        self.threads = max(1, threads)
        self.loop = loop
        self._ctx = multiprocessing.get_context("spawn")
        self._children: list[_Child | None] = [None] * self.size
        self._dead: list[_Child] = []
        self._ids = itertools.count(1)
        self.closed = False
        for i in range(self.size):  # all at once: the next variant's steps find a warm process
            self._children[i] = _Child(i, loop, self._ctx, self.threads)

    @property
    def processes(self) -> list[multiprocessing.process.BaseProcess]:
        return [c.process for c in self._children if c is not None]

    def open(self, name: str, t: planner.Transcode, source: Track, deliver: Deliver,
             limit: int, group: object = None, shed_at: int | None = None,
             weight: float | None = None) -> PoolStep:
        """Start a step; its outputs go to ``deliver`` on the loop, one call per input frame
        that produced any. At most ``limit`` input frames are in flight; more are dropped;
        from ``shed_at`` on, disposable video frames are shed (see ``Admission``).

        Steps of one ``group`` (a variant's tracks) share a process: it codes their frames in
        arrival order, so audio and video outputs come back as interleaved as they went in
        instead of one track racing ahead (e.g. through a backlog while a process starts).
        ``weight``: the step's share of a CPU (``planner.transcode_cost``, so a 1080p variant
        weighs more than a 360p one), which decides the least loaded process; by kind if None."""
        if self.closed:
            raise RuntimeError("transcode pool is shut down")
        for i, c in enumerate(self._children):
            if c is None or not c.alive:
                if c is not None:
                    self._dead.append(c)
                self._children[i] = _Child(i, self.loop, self._ctx, self.threads)
        self._reap()
        live = [c for c in self._children if c is not None]
        mates = [c for c in live if group is not None
                 and any(s.group is group and not s._stopped for s in c.steps.values())]
        child = mates[0] if mates else min(live, key=lambda c: c.load)
        step = PoolStep(next(self._ids), name, t, source, deliver, limit, child, group, shed_at,
                        weight)
        child.open_step(step)
        return step

    def _reap(self) -> None:
        """Collect exited processes (no zombies) without waiting for the others."""
        running: list[_Child] = []
        for c in self._dead:
            c.process.join(0)
            if c.process.exitcode is None:
                running.append(c)
        self._dead = running

    def shutdown(self, timeout: float = 3.0) -> None:
        """Stop every process (their steps end) and wait for them; kill what does not exit."""
        if self.closed:
            return
        self.closed = True
        children = [c for c in self._children if c is not None] + self._dead
        self._children = [None] * self.size
        self._dead = []
        for c in children:
            c.stop()
        deadline = time.monotonic() + timeout
        for c in children:
            c.join(max(0.0, deadline - time.monotonic()))


_POOLS: dict[asyncio.AbstractEventLoop, Pool] = {}
_POOLS_LOCK = threading.Lock()


def default_processes() -> int:
    """One per CPU this process may use (``taskset``, cpusets and a container's CPU quota
    included): with one codec thread each, the processes can use every core."""
    return usable_cpus()


def get_pool(processes: int = -1, threads: int = 1) -> Pool:
    """The pool of the running loop, started on first use with ``processes`` (< 1: one per
    CPU) of ``threads`` codec threads each. Its size is fixed until ``shutdown()``; pools of
    loops that have closed are stopped."""
    loop = asyncio.get_running_loop()
    with _POOLS_LOCK:
        pool = _POOLS.get(loop)
        if pool is not None and not pool.closed:
            return pool
        stale = [p for lp, p in _POOLS.items() if lp.is_closed() or p.closed]
        for p in stale:
            del _POOLS[p.loop]
    for p in stale:
        p.shutdown()
    pool = Pool(processes if processes > 0 else default_processes(), loop, threads)
    with _POOLS_LOCK:
        _POOLS[loop] = pool
    return pool


def shutdown(timeout: float = 3.0) -> None:
    """Stop the pool of the running loop (every pool when no loop runs here); the next
    transcode starts a new one. Blocks until the processes exited (normally a few ms)."""
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    with _POOLS_LOCK:
        if loop is None:
            pools = list(_POOLS.values())
            _POOLS.clear()
        else:
            pool = _POOLS.pop(loop, None)
            pools = [] if pool is None else [pool]
    for p in pools:
        p.shutdown(timeout)
