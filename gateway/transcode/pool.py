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
  together with the next video result (``child._Held``): one wake-up of the gateway, not two.

Headers are ``struct``-packed and payloads are the frames' own bytes (``sendmsg`` scatter, no
copy); only ``Track``/``Transcode`` descriptions are pickled, and only when they change, so the
per-frame cost on the event loop is a header pack/unpack and one ``Frame`` (a few us). The
parent reads with ``loop.add_reader``, not a reader thread: with the loop 80% busy, a thread that
must win the GIL back to post each result measured ~200 ms median delay, ``add_reader`` ~2 ms. It
writes without blocking (what the kernel does not take waits for ``add_writer``) and works only
on its loop thread. A child's codec threads take its messages audio steps' first and the rest in
arrival order (``child._Schedule``), a step on one thread at a time; a fixed few threads, not
one per step, which measured worse video latency.

The child's side is ``child.py``, the framing both sides share ``messages.py``; a pool belongs
to one gateway's ``Transcoder`` (nothing here is module state). Children are started with the
``spawn`` method (never ``fork`` a process running an event loop and threads); as with any
``spawn``, a program that embeds the gateway needs the usual ``if __name__ == "__main__":``
guard. A child that dies fails its steps (their tracks stop, as a
failing thread step does) and is replaced for new steps; the gateway keeps running.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import multiprocessing
import pickle
import signal
import socket
import threading
import time
from collections.abc import Callable
from fractions import Fraction

from .. import planner
from ..cpus import usable_cpus
from ..media import Frame, Track
from .child import STOP_SIGNALS, child_main
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
    FRAME_MSG,
    LOG,
    OPEN,
    OTHER_STEP,
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
from .step import Admission, Admitted, Counters, Timings

__all__ = ["Pool", "PoolStep", "default_processes"]

log = logging.getLogger(__name__)

Deliver = Callable[[list[Frame]], None]

#: Rough CPU share of a step by kind, for "least loaded" when its owner gives no ``weight``:
#: 720p video ~3.4 ms a frame at 30 fps, audio a few tenths of a ms at ~40 packets a second.
WEIGHT = {"video": 1.0, "audio": 0.1}
_SOCKET_BUFFER = 4 << 20  # a few hundred frames in the kernel before the parent buffers
_IOV_MAX = 512  # buffers per sendmsg (Linux allows 1024)


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
            self._child.send_frame(self, f, CATCH_UP)

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
                 ctx: multiprocessing.context.BaseContext, threads: int = 1,
                 counters: Counters | None = None) -> None:
        self.index = index
        self.loop = loop
        #: where the process's codec counts go (its pool's owner's)
        self.counters = Counters() if counters is None else counters
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
        # which step each codec thread is on (see ``child._ChildLoop``): a crash is blamed on that one
        self.coding = ctx.RawArray("q", max(1, threads))
        self.process: multiprocessing.process.BaseProcess = ctx.Process(  # type: ignore[attr-defined]
            target=child_main, args=(child, logging.getLogger().getEffectiveLevel(), threads,
                                      self.coding),
            name=f"gateway-transcode-{index}", daemon=True)
        # the child starts with SIGINT and SIGTERM blocked (a mask survives fork and exec), so a
        # signal to the whole process group cannot interrupt its start-up; ``child_main``
        # then ignores them and unblocks (this thread's own mask is restored at once)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
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
        self._reader = Reader()
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
        payload = bytes((AUDIO_STEP if step.kind == "audio" else OTHER_STEP,)) + pickle.dumps(
            (step.transcode, step.source, step.name), protocol=5)
        self._send([header(OPEN, step.step_id, len(payload)), payload])

    def send_frame(self, step: PoolStep, frame: Frame, flags: int = 0) -> None:
        tid, new = step._track_id(frame.track)
        parts: list[bytes] = []
        if new:
            desc = TRACK_ID.pack(tid) + pickle.dumps(frame.track, protocol=5)
            parts.append(header(TRACK, step.step_id, len(desc)) + desc)
        tb = frame.time_base
        data = frame.data
        parts.append(FRAME_MSG.pack(len(data) + FRAME_HEAD.size + 5, FRAME, step.step_id, tid,
                                     frame.pts, frame.dts, tb.numerator, tb.denominator,
                                     frame.keyframe | flags))
        parts.append(data)
        self._send(parts)

    def close_step(self, step: PoolStep) -> None:
        self.load -= step.weight
        self._send([header(CLOSE, step.step_id, 0)])

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
        msgs, used = messages(buf)
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
            count, wait_us, coding_us, step.errors = RESULT_HEAD.unpack_from(buf, start)
            o = start + RESULT_HEAD.size
            frames: list[Frame] = []
            for _ in range(count):
                tid, pts, dts, num, den, key, size = OUT_HEAD.unpack_from(buf, o)
                o += OUT_HEAD.size
                if (num, den) != step._tb_key:
                    step._tb_key, step._tb = (num, den), Fraction(num, den)
                frames.append(Frame(step._out_tracks[tid], buf[o:o + size], pts, dts, step._tb,
                                    bool(key)))
                o += size
            step._result(frames, now, wait_us / 1000, coding_us / 1000)
        elif kind == COUNTERS_MSG:
            self.counters.add(**dict(zip(COUNTER_NAMES, COUNTS.unpack_from(buf, start), strict=True)))
        elif kind == TRACK:
            step = self.steps.get(sid)
            if step is not None:
                (tid,) = TRACK_ID.unpack_from(buf, start)
                remember(step._out_tracks, tid, pickle.loads(buf[start + 4:end]))
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

    def __init__(self, processes: int, loop: asyncio.AbstractEventLoop, threads: int = 1,
                 counters: Counters | None = None) -> None:
        self.size = max(1, processes)
        self.threads = max(1, threads)
        self.loop = loop
        #: the codec work of every process of the pool, summed up from their reports
        self.counters = Counters() if counters is None else counters
        self._ctx = multiprocessing.get_context("spawn")
        self._children: list[_Child | None] = [None] * self.size
        self._dead: list[_Child] = []
        self._ids = itertools.count(1)
        self.closed = False
        for i in range(self.size):  # all at once: the next variant's steps find a warm process
            self._children[i] = _Child(i, loop, self._ctx, self.threads, self.counters)

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
                self._children[i] = _Child(i, self.loop, self._ctx, self.threads, self.counters)
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


def default_processes() -> int:
    """One per CPU this process may use (``taskset``, cpusets and a container's CPU quota
    included): with one codec thread each, the processes can use every core."""
    return usable_cpus()

