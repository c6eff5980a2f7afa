"""A stream's timeline that only goes forward, whatever its source's clock does.

An encoder restarted without a new connection, or MPEG-TS files concatenated into one publish,
send timestamps that jump back by seconds. Passed on, that breaks players: an MSE player (flv.js,
mpegts.js) appends the new media at an earlier position in its buffer and freezes until its clock
catches up; FFmpeg rewrites what it reads as "non-monotonic DTS". So the hub re-bases the source:
a track whose decode time goes back by more than ``JUMP_BACK`` continues one frame after its last
output frame, and the other tracks, when their jump comes, share that same shift if it fits them
(within ``JUMP_BACK``), so audio and video stay in sync. Where the shared shift makes a track
overlap its past, audio drops the overlapping packets and video is nudged forward (its frames
depend on each other).

Forward jumps are passed on: one track alone may legitimately pause (audio sent only when there is
sound), and collapsing its gap would shift it against the other track.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Final

from ..media import Frame

log = logging.getLogger(__name__)

JUMP_BACK: Final = 0.5  # s a track's dts may go back before it counts as a new source clock
_DEFAULT_STEP: Final = {"video": 1 / 30, "audio": 0.02}  # s, until a track's own step is seen


@dataclass(slots=True)
class _Track:
    offset: float  # s added to the source's time
    last_in: float  # s, source time of the last frame
    last_out: float  # s, output time of the last frame
    step: float  # s between the last two frames: where the next one falls after a jump
    dropping: bool = False  # audio overlapping its past after a shared re-base
    shift_key: tuple[Fraction, float] | None = None  # (time base, offset) of ``shift``
    shift: int = 0  # offset in ticks of ``shift_key``'s time base
    tb: Fraction | None = None  # the last frame's time base
    seconds: float = 0.0  # ``tb`` in seconds


class Timeline:
    """One stream's re-basing state; ``place`` each frame before it reaches the sinks."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tracks: dict[str, _Track] = {}
        self._latest = 0.0  # the most recent shift, for tracks whose jump comes later
        self.jumps = 0  # re-bases, for diagnostics
        self.dropped = 0  # audio packets dropped as overlap

    def place(self, frame: Frame) -> Frame | None:
        """``frame`` on the output timeline (itself when nothing needs to change), or None when
        it is to be dropped."""
        tb = frame.time_base
        kind = frame.track.kind
        s = self._tracks.get(kind)
        if s is None:
            t = frame.dts * tb.numerator / tb.denominator
            s = self._tracks[kind] = _Track(self._latest, t, t + self._latest,
                                            _DEFAULT_STEP.get(kind, 0.02))
            s.tb, s.seconds = tb, float(tb)
            return self._shifted(frame, s)
        if tb is not s.tb:  # every frame's, on this per-frame path: Fraction's fields are slow
            s.tb, s.seconds = tb, float(tb)
        t = frame.dts * s.seconds
        if t < s.last_in - JUMP_BACK:
            self._rebase(s, kind, t)
        elif t > s.last_in:
            s.step = min(t - s.last_in, 1.0)
        s.last_in = t
        out = t + s.offset
        if s.dropping:
            if out <= s.last_out:
                self.dropped += 1
                return None
            s.dropping = False
        s.last_out = max(out, s.last_out)
        return self._shifted(frame, s)

    def _rebase(self, s: _Track, kind: str, t: float) -> None:
        back = s.last_in - t
        want = s.last_out + s.step  # where this track's next frame belongs
        shared = t + self._latest
        if abs(shared - want) <= JUMP_BACK and self._latest != s.offset:
            s.offset = self._latest  # the other track already jumped by about as much
            if shared < want:
                if kind == "audio":
                    s.dropping = True
                else:
                    s.offset += want - shared
            how = "with the stream's other tracks"
        else:
            s.offset = want - t
            self._latest = s.offset
            self.jumps += 1
            how = "re-based"
        log.info("%s: %s timestamps went back %.3f s; the timeline continues (%s, shift %+.3f s)",
                 self.name, kind, back, how, s.offset)

    @staticmethod
    def _shifted(frame: Frame, s: _Track) -> Frame:
        if s.offset == 0.0:
            return frame
        tb = frame.time_base
        if s.shift_key != (tb, s.offset):
            s.shift_key = (tb, s.offset)
            s.shift = round(s.offset * tb.denominator / tb.numerator)
        return replace(frame, pts=frame.pts + s.shift, dts=frame.dts + s.shift)
