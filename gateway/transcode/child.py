"""The codec process's side of the transcode pool: serve steps until the gateway closes the socket.

A child is started by ``pool._Child`` (``spawn``) with its end of a socket pair and runs
``child_main``. Everything it keeps lives in one ``_ChildLoop`` (steps, work queue, codec
threads, counters): nothing here is module state, so each process owns exactly what it serves.
The messages are those of ``messages.py``; ``pool.py`` describes the exchange.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import logging
import pickle
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from fractions import Fraction
from typing import Any

from ..media import Frame, Track
from .messages import (
    AUDIO_STEP,
    CATCH_UP,
    CLOSE,
    CLOSED,
    COUNTER_NAMES,
    COUNTERS_MSG,
    COUNTS,
    ERROR,
    FRAME,
    FRAME_HEAD,
    KEY,
    LOG,
    OPEN,
    OUT_HEAD,
    READY,
    RESULT,
    RESULT_HEAD,
    TRACK,
    TRACK_ID,
    Reader,
    header,
    messages,
    remember,
)
from .step import Counters, Step, catch_up, named

log = logging.getLogger(__name__)

HELP_AFTER = 0.010  # s a message may wait for the first codec thread before a helper is woken
HOLD_MAX = 0.005  # s an audio step's results may wait for other results to share their send
#: Signals that stop the gateway. A whole process group gets them at once (Ctrl-C; systemd's
#: stop; ``timeout``): the codec processes leave the stop to the gateway, which ends its streams
#: first and then closes their sockets. After SIGTERM a codec process still exits by itself
#: within ``TERM_GRACE`` s, should the gateway never close it.
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
TERM_GRACE = 5

#: Builds a step from its ``Transcode`` and source ``Track``, counting into the given counters.
MakeStep = Callable[..., Step]


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
            self._send(header(LOG, 0, len(payload)) + payload)


def _us(seconds: float) -> int:
    return min(0xFFFFFFFF, max(0, round(seconds * 1e6)))


class _ChildStep:
    """One step served here, with the track ids of both directions of its messages."""

    __slots__ = ("name", "next_out", "out_ids", "step", "tb", "tb_key", "tracks")

    def __init__(self, step: Any, name: str) -> None:
        self.step = step
        self.name = name
        self.tracks: dict[int, Track] = {}
        self.tb_key: tuple[int, int] = (1, 1000)
        self.tb = Fraction(1, 1000)
        self.out_ids: dict[int, tuple[int, Track]] = {}  # id(Track) -> (wire id, Track)
        self.next_out = 0

    def result(self, sid: int, frames: list[Frame], wait_us: int, coding_us: int) -> list[bytes]:
        """The result message of one input frame, after a description of each new output track."""
        parts: list[bytes] = []
        errors = min(0xFFFFFFFF, getattr(self.step, "errors", 0))  # the step's count so far
        body = [RESULT_HEAD.pack(len(frames), wait_us, coding_us, errors)]
        for f in frames:
            entry = self.out_ids.get(id(f.track))
            if entry is None or entry[1] is not f.track:
                self.next_out += 1
                entry = (self.next_out, f.track)
                remember(self.out_ids, id(f.track), entry)
                desc = TRACK_ID.pack(entry[0]) + pickle.dumps(f.track, protocol=5)
                parts.append(header(TRACK, sid, len(desc)) + desc)
            tb = f.time_base
            body.append(OUT_HEAD.pack(entry[0], f.pts, f.dts, tb.numerator, tb.denominator,
                                      f.keyframe, len(f.data)))
            body.append(f.data)
        size = sum(len(b) for b in body)
        parts.append(header(RESULT, sid, size))
        parts.extend(body)
        return parts


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
        if kind == OPEN and end > start and buf[start] == AUDIO_STEP:
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


class _Closed(Exception):
    """The socket closed (or a codec thread ended): every codec thread stops."""


class _ChildLoop:
    """Everything one codec process serves: its steps, the work they wait for, its codec threads.

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

    def __init__(self, sock: socket.socket, threads: int = 1, coding: Any = None) -> None:
        self.sock = sock
        self.threads = max(1, threads)
        self.coding = coding
        #: this process's codec work, sent to the gateway as deltas with the results
        self.counters = Counters()
        self.steps: dict[int, _ChildStep] = {}
        self.work = _Schedule()
        self.cond = threading.Condition()  # guards work, busy, closed and idle
        self.busy: set[int] = set()  # steps a codec thread is working on
        self.closed = False
        self.idle = 0  # helpers waiting for work
        self._reading = threading.Lock()  # the socket's read side and ``_buf``
        self._buf = b""
        self._reader = Reader()
        self._send_lock = threading.Lock()  # codec threads, and the log handler from callbacks
        self._sent = self.counters.snapshot()
        self._make_step: MakeStep | None = None

    # -- the socket -----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def send_out(self, out: list[bytes]) -> None:
        """Results of a codec thread, after the counters' change since the last send."""
        with self._send_lock:
            now = self.counters.snapshot()
            if now != self._sent:
                deltas = COUNTS.pack(*(now[k] - self._sent[k] for k in COUNTER_NAMES))
                out.insert(0, header(COUNTERS_MSG, 0, len(deltas)) + deltas)
                self._sent = now
            if out:
                self.sock.sendall(b"".join(out))

    def receive(self, block: bool) -> None:
        """Queue what the parent sent (caller holds ``_reading``); a closed socket ends the
        process."""
        try:
            data = self._reader.recv(self.sock, 0 if block else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        with self.cond:
            if not data:
                self.closed = True
                self.cond.notify_all()
                return
            buf = self._buf + data if self._buf else data
            msgs, used = messages(buf)
            now = time.perf_counter()
            for kind, sid, start, end in msgs:
                self.work.add(kind, sid, buf, start, end, now)
            self._buf = buf[used:]

    # -- codec threads --------------------------------------------------------------------------

    def run(self, make_step: MakeStep) -> None:
        """Serve until the parent closes the socket, then free every step."""
        self._make_step = make_step
        helpers = [threading.Thread(target=self.code, args=(False, i), name=f"codec-{i}",
                                    daemon=True) for i in range(1, self.threads)]
        for t in helpers:
            t.start()
        try:
            self.code(True)
        finally:
            for t in helpers:
                t.join()
            for st in self.steps.values():
                with contextlib.suppress(Exception):  # exiting anyway
                    st.step.close()

    def code(self, first: bool, slot: int = 0) -> None:
        """One codec thread: the first one (``first``) also waits on the socket when idle."""
        held = _Held(self.send_out, coalesce=self.threads == 1)
        try:
            while True:
                self._poll(first)
                msg = self._take(first, bool(held))
                if msg is None:  # nothing to do: what is held goes now, then wait for the parent
                    held.flush()
                    if first:
                        with self._reading:
                            self.receive(block=True)
                    continue
                self._do(msg, slot, held)
        except (OSError, _Closed):  # e.g. BrokenPipeError: the gateway went away
            pass
        finally:
            with self.cond:
                self.closed = True
                self.cond.notify_all()

    def _poll(self, first: bool) -> None:
        """Between two pieces of work, look for new input: audio that arrived while a video
        frame was coding goes before the video frames already waiting (a helper skips this
        while the first thread waits in recv)."""
        if self._reading.acquire(blocking=first):
            try:
                self.receive(block=False)
            finally:
                self._reading.release()

    def _take(self, first: bool, holding: bool) -> _Msg | None:
        """The next message for this thread, marked busy; None for the first thread (or one
        ``holding`` results) when there is none. A helper waits for work; the first thread
        wakes one for a backlog it alone is not clearing."""
        with self.cond:
            while True:
                if self.closed:
                    raise _Closed
                msg = self.work.take(self.busy)
                if msg is not None or first or holding:
                    break
                self.idle += 1
                self.cond.wait()
                self.idle -= 1
            if msg is not None:
                self.busy.add(msg[1])
                if first and self.idle:
                    since = self.work.oldest(self.busy)
                    if since is not None and time.perf_counter() - since > HELP_AFTER:
                        self.cond.notify()
            return msg

    def _do(self, msg: _Msg, slot: int, held: _Held) -> None:
        """Handle one message on this thread's ``coding`` slot and send (or hold) its results."""
        kind, sid, buf, start, end, received = msg
        try:
            if self.coding is not None:
                self.coding[slot] = sid
            out = self.handle(kind, sid, buf, start, end, received)
            if self.coding is not None:  # (an exception here ends the process: on this step)
                self.coding[slot] = 0
            # sent (or held, with one thread) while the step is still busy here: with
            # helpers, the step's next message may code on another thread as soon as it
            # is free, and that result must not reach the parent before this one
            held.add(out, fast=self.work.is_fast(sid))
        finally:
            with self.cond:
                self.busy.discard(sid)

    # -- messages -------------------------------------------------------------------------------

    def handle(self, kind: int, sid: int, buf: bytes, start: int, end: int,
               received: float) -> list[bytes]:
        """One message from the parent; returns the bytes to send back."""
        if kind == FRAME:
            return self._frame(sid, buf, start, end, received)
        if kind == TRACK:
            st = self.steps.get(sid)
            if st is not None:
                (tid,) = TRACK_ID.unpack_from(buf, start)
                remember(st.tracks, tid, pickle.loads(buf[start + 4:end]))
            return []
        if kind == OPEN:
            return self._open(sid, buf, start, end)
        if kind == CLOSE:
            return self._close(sid)
        return []

    def _frame(self, sid: int, buf: bytes, start: int, end: int, received: float) -> list[bytes]:
        st = self.steps.get(sid)
        if st is None:
            return []  # the step failed to open; the parent already knows
        tid, pts, dts, num, den, flags = FRAME_HEAD.unpack_from(buf, start)
        if (num, den) != st.tb_key:
            st.tb_key, st.tb = (num, den), Fraction(num, den)
        frame = Frame(st.tracks[tid], buf[start + FRAME_HEAD.size:end], pts, dts, st.tb,
                      bool(flags & KEY))
        if flags & CATCH_UP:  # not in flight for the parent: no result
            try:
                catch_up(st.step, frame)
            except Exception:
                log.exception("%s: transcode step failed on a frame; skipped", st.name)
            return []
        began = time.perf_counter()
        try:
            frames = st.step.process(frame)
        except Exception:
            log.exception("%s: transcode step failed on a frame; skipped", st.name)
            frames = []
        done = time.perf_counter()
        return st.result(sid, frames, _us(began - received), _us(done - began))

    def _open(self, sid: int, buf: bytes, start: int, end: int) -> list[bytes]:
        transcode, source, name = pickle.loads(buf[start + 1:end])  # after the kind byte
        assert self._make_step is not None
        try:
            step = named(self._make_step(transcode, source, counters=self.counters), name)
        except Exception as e:  # noqa: BLE001 - reported to the parent, which fails the track
            text = f"{type(e).__name__}: {e}".encode()
            return [header(ERROR, sid, len(text)) + text]
        st = _ChildStep(step, name)
        st.tracks[0] = source
        self.steps[sid] = st
        return []

    def _close(self, sid: int) -> list[bytes]:
        st = self.steps.pop(sid, None)
        if st is not None:
            try:
                st.step.close()
            except Exception:
                log.exception("%s: closing the step failed", st.name)
        return [header(CLOSED, sid, 0)]


def child_main(sock: socket.socket, log_level: int, threads: int = 1, coding: Any = None) -> None:
    """Entry point of a worker process: serve steps until the parent closes the socket (see
    ``_ChildLoop``); its log records go to the gateway."""
    # a stop is the gateway's to handle (see ``STOP_SIGNALS``); both were blocked since the start
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: signal.alarm(TERM_GRACE))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    loop = _ChildLoop(sock, threads, coding)
    root = logging.getLogger()
    root.handlers[:] = [_Forward(loop.send)]
    root.setLevel(log_level)
    try:
        # PyAV's codecs: imported here, never in the gateway process
        from .factory import make_step
    except Exception:
        log.exception("transcode process cannot import its codecs")
        return
    # what the imports made lives as long as the process: keep it out of every collection, so a
    # full one (triggered by the codecs' short-lived objects) does not stall a frame for ms
    gc.freeze()
    try:
        loop.send(header(READY, 0, 0))
    except OSError:  # the gateway stopped while this process was starting
        return
    loop.run(make_step)
