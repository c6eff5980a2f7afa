"""One gateway's transcoding: where steps run, how much may run, and who is refused.

Built once per gateway from its ``Config`` (``Transcoder.from_config``) and held by its
``Context``. It owns what used to be module state, so that two gateways in one process share
nothing: its process pool (started on the first transcode, or at once by ``prestart``), the
running variants and the capacity they take, the per-stream cool-downs after crashes, and the
codec counters of its steps wherever they run.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Mapping

from .. import planner
from ..config import Config
from ..hub.stream import Stream
from ..media import Track
from .pool import Pool, default_processes
from .step import Counters, Step
from .variant import CAPACITY_RETRY, Variant, VariantRefused

__all__ = ["Transcoder", "VariantRefused"]

log = logging.getLogger(__name__)


class Transcoder:
    """Where one gateway's variants run their steps and how many may run.

    ``processes``: < 0 one worker process per CPU, 0 threads of this process, N > 0 that many
    processes (of ``threads`` codec threads each). ``capacity``: the sum of
    ``planner.transcode_cost`` the running variants may take; 0: no limit. Past it a new
    variant is refused: one more transcode than the CPUs can carry slows every variant down
    together (at 17 on 2 CPUs all fell to ~26 fps), so the viewers already watching come first.
    The three are plain attributes: a change applies to the variants started after it.
    """

    def __init__(self, processes: int = -1, threads: int = 1, capacity: float = 0.0) -> None:
        self.processes = processes
        self.threads = threads
        self.capacity = capacity
        #: codec work of this gateway's steps: in its threads, and as its processes report it
        self.counters = Counters()
        self._pool: Pool | None = None
        #: the pool is started on the loop's thread and stopped from an executor's
        self._pool_lock = threading.Lock()
        self._running: weakref.WeakSet[Variant] = weakref.WeakSet()
        #: Per published stream: variant key -> until when it is refused (see
        #: ``variant.COOL_DOWN``). A new publisher on the key is a new ``Stream``, and starts
        #: with a clean slate.
        self._refused: weakref.WeakKeyDictionary[Stream, dict[object, float]] = (
            weakref.WeakKeyDictionary())

    @classmethod
    def from_config(cls, config: Config) -> Transcoder:
        """The gateway's transcoder as its configuration says (capacity -1: per usable CPU)."""
        return cls(config.transcode_processes, config.transcode_threads,
                   config.effective_transcode_capacity())

    def describe(self) -> str:
        """Where steps run, for the start-up log line."""
        if self.processes == 0:
            return "threads of this process"
        return f"{self.processes if self.processes > 0 else default_processes()} worker processes"

    # -- the process pool -------------------------------------------------------------------------

    @property
    def running_pool(self) -> Pool | None:
        """The pool if it runs (started by a transcode or ``prestart``), else None."""
        pool = self._pool
        return pool if pool is not None and not pool.closed else None

    def pool(self) -> Pool:
        """The pool on the running loop, started on first use; its size is fixed until
        ``shutdown()``, after which the next transcode starts a new one. A pool of a loop that
        has closed is stopped and replaced; one of a loop still running elsewhere is an error:
        a transcoder belongs to one gateway, on one loop."""
        loop = asyncio.get_running_loop()
        with self._pool_lock:
            pool = self._pool
            if pool is not None and not pool.closed and pool.loop is loop:
                return pool
            if pool is not None and not pool.closed and not pool.loop.is_closed():
                raise RuntimeError("this transcoder's pool runs on another event loop")
            self._pool = None
        if pool is not None:
            pool.shutdown()  # (a no-op when it was shut down already)
        size = self.processes if self.processes > 0 else default_processes()
        pool = Pool(size, loop, self.threads, self.counters)
        with self._pool_lock:
            self._pool = pool
        return pool

    def prestart(self) -> None:
        """Start the worker processes now (``transcode_prestart``), unless steps run in threads."""
        if self.processes != 0:
            self.pool()

    def make_step(self, t: planner.Transcode, source: Track) -> Step:
        """A step in a thread of this process, counting into ``counters``."""
        from .factory import (
            make_step,  # PyAV's codecs: only once a thread step is needed
        )

        return make_step(t, source, counters=self.counters)

    def shutdown(self, timeout: float = 3.0) -> None:
        """Stop the pool's processes (their steps end) and wait for them, killing what does not
        exit; blocking (normally a few ms), so the gateway calls it from an executor."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(timeout)

    # -- capacity and refusals --------------------------------------------------------------------

    def started(self, variant: Variant) -> None:
        """A variant of this gateway started: its cost counts until it stops."""
        self._running.add(variant)

    def used(self) -> float:
        """The capacity the running variants take."""
        return float(sum(v.cost for v in list(self._running) if not v.closed))

    def load(self) -> dict[str, float]:
        """What the running variants take of the capacity, for operators (``/api/streams``)."""
        return {"used": round(self.used(), 2), "capacity": self.capacity}

    def refuse(self, stream: Stream, key: object, seconds: float) -> None:
        """Refuse the variant ``key`` of ``stream`` for ``seconds`` (it kept crashing its process)."""
        self._refused.setdefault(stream, {})[key] = time.monotonic() + seconds

    # -- planning ---------------------------------------------------------------------------------

    def media_for(self, matrix: planner.Matrix, stream: Stream,
                  target: str | planner.TargetSpec) -> tuple[Stream, planner.Plan]:
        """The stream a viewer of ``target`` should attach to: the source itself when every
        track passes through, else the shared variant for this plan (started now if it is the
        first; ``VariantRefused`` while that transcode of this stream is cooling down after
        crashes, or while its cost would take the running variants past ``capacity``).

        A source with one track so far gets a variant even when that track passes through (it
        costs no codec: it only relays): its other track may still come (a TS publisher that
        began mid-GOP has video from its first keyframe, seconds after the audio), and may need
        a transcode for this viewer (H.264 for jsmpeg), which only a variant can adopt."""
        plan = planner.plan(matrix, stream.tracks, target)
        if plan.passthrough_all and len(stream.tracks) >= 2:
            return stream, plan
        key = ("variant", plan.variant_key())
        running = stream.sinks.get(key)
        if isinstance(running, Variant):  # joining it costs nothing more
            return running, plan
        until = self._refused.get(stream, {}).get(key)
        if until is not None and (wait := until - time.monotonic()) > 0:
            raise VariantRefused(f"{stream.key}: transcoding it for {plan.protocol} crashed "
                                 f"repeatedly; try again in {wait:.0f} s", wait)
        costs = {t.kind: planner.transcode_cost(matrix, t) for t in plan.transcodes}
        cost = sum(costs.values())
        capacity = self.capacity
        if capacity > 0 and cost > 0:  # (a relay of a one-track source costs nothing)
            used = self.used()
            if used + cost > capacity + 1e-9:  # (the caller logs the refusal)
                raise VariantRefused(
                    f"{stream.key}: the gateway's transcode capacity is in use ({used:.1f} of "
                    f"{capacity:g}; transcoding this stream for {plan.protocol} needs "
                    f"{cost:.2f}); try again later", CAPACITY_RETRY)

        def replan(tracks: Mapping[str, Track],
                   kind: str) -> tuple[planner.TrackPlan | None, float]:
            tp = planner.plan(matrix, tracks, target).get(kind)
            cost = planner.transcode_cost(matrix, tp) if isinstance(tp, planner.Transcode) else 0.0
            return tp, cost

        return stream.sink(key, lambda s: Variant(s, plan, key, self, costs=costs,
                                                  replan=replan)), plan
